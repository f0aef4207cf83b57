"""ZOOptimizer: a torch.optim.Optimizer composed of an estimator, a projection and an update rule.

One step (docs/algorithms.md, Order of passes), for the estimator's points p_1 .. p_k:
1. move theta to p_1 (theta + scale z), evaluate the closure;
2. from each point to the next, restore and perturb in one fused pass, evaluate;
3. restore and update in one pass across all directions (linear rules), or restore, then
   the rule's own update (momentum, Adam, conservative).
In on-the-fly mode (a module was given, and by default when its parameters are fp16/bf16),
the parameters are never written while perturbed: a forward pre-hook of each module builds
W + sum scale z into a transient of that module's size, so only the update changes W and the
restore is exact in every dtype.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import checks, engine, perturb as perturbers
from .estimators.base import Estimator, Plan
from .perturb import Perturber, Rows, Table, dtensor
from .projections.base import ParamInfo, Projection
from .seeds import derive, direction_seeds
from .updates.base import Update, UpdateContext

Closure = Callable[[], Any]
LOW_PRECISION = checks.LOW_PRECISION


class ZOOptimizer(torch.optim.Optimizer):
    """A zeroth-order optimizer: ``loss = opt.step(closure)``.

    ``closure()`` returns the loss of the current batch; it is called under ``torch.no_grad()``
    once per evaluation point (a list of closures is gradient accumulation: every point's loss
    is their mean, at the same perturbation). ``step`` returns the mean loss over the points
    (for the two-point estimator, (L+ + L-)/2 = L(theta) + O(eps^2)).
    """

    def __init__(
        self,
        params: Any,
        *,
        estimator: Estimator,
        projection: Projection,
        update: Update,
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        perturb: str = "auto",
        stochastic_rounding: bool | None = None,
        clip: float = 0.0,
        module: torch.nn.Module | None = None,
        spec: dict | None = None,
    ):
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if perturb not in ("auto", "inplace", "onthefly", "outputs"):
            raise ValueError(
                f"perturb must be 'auto', 'inplace', 'onthefly' or 'outputs', got {perturb!r}"
            )
        given = params if isinstance(params, torch.nn.Module) else module
        if isinstance(params, torch.nn.Module):
            if module is not None and checks.unwrap(module) is not checks.unwrap(params):
                raise ValueError(
                    "pass the module once: as params, or as module= beside param groups"
                )
            module = params
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise ValueError(
                    "the module has no parameter with requires_grad=True: nothing to train"
                )
        # a compiled model's own module: its parameter names (and so the directions drawn for
        # them) are the eager model's, and its hooks are the ones the compiled graph traces
        module = checks.unwrap(module) if module is not None else None
        names = {id(p): n for n, p in module.named_parameters()} if module is not None else {}
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "eps": eps})
        self.estimator, self.projection, self.update_rule = estimator, projection, update
        self.eps, self.seed = float(eps), int(seed)
        if clip < 0:
            raise ValueError(f"clip must be >= 0 (0 turns per-tensor clipping off), got {clip!r}")
        self.clip = float(clip)
        self.spec = {k: v for k, v in (spec or {}).items() if k != "module"}
        self.infos: list[ParamInfo] = []
        # the parameter each tensor the perturber moves belongs to (its optimizer state's key): a
        # DTensor's ParamInfo holds its local shard
        self._owner: dict[int, torch.Tensor] = {}
        self._dtensors: list[tuple[int, torch.Tensor]] = []  # (tensor index, DTensor parameter)
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if not p.is_contiguous():
                    raise ValueError(f"parameter {names.get(id(p), (gi, pi))} is not contiguous")
                if module is not None and id(p) not in names:
                    raise ValueError(
                        f"parameter {pi} of group {gi} is not a parameter of the module given"
                    )
                name, offset, whole = names.get(id(p), f"group{gi}.param{pi}"), 0, None
                tensor = p
                if dtensor.is_dtensor(p):
                    tensor, offset, whole = dtensor.local_shard(p, name)
                    self._dtensors.append((len(self.infos), p))
                info = ParamInfo(name, engine.param_key(name), tensor, gi, offset, whole)
                self._owner[id(info)] = p
                self.infos.append(info)
        # DTensor parameters (FSDP2): each point's loss is averaged over the mesh's ranks
        self._reduce = (
            dtensor.group_of({self.infos[t].name: p for t, p in self._dtensors})
            if self._dtensors
            else None
        )
        self._fsdp: list[torch.nn.Module] = []
        if self._dtensors:
            dtensor.refuse(self, clip, projection)
            self._fsdp = dtensor.fsdp_modules(module, self.infos[self._dtensors[0][0]].name)
        self.projection.setup(self.infos, self.seed)
        low = any(i.tensor.dtype in LOW_PRECISION for i in self.infos)
        if perturb in ("onthefly", "outputs") and module is None:
            raise ValueError(
                f"perturb={perturb!r} needs the module itself: kerzoo.optimizer(name, model)"
            )
        self.mode = (
            perturb
            if perturb != "auto"
            else (
                "onthefly"
                if module is not None and (low or projection.reads_weights)
                else "inplace"
            )
        )
        self.stochastic_rounding = low if stochastic_rounding is None else bool(stochastic_rounding)
        if self._dtensors:
            dtensor.refuse_mode(self)
        checks.before_build(self, module, perturb)
        self.module, self._given_module = module, given
        self.perturber: Perturber = (
            dtensor.ShardedOnTheFly(
                module, self.infos, projection, [self._owner[id(i)] for i in self.infos]
            )
            if self._dtensors and self.mode == "onthefly"
            else perturbers.make(self.mode, module, self.infos, projection)
        )
        self._step = 0
        self.skipped_steps = 0
        self.last_record: dict[str, Any] | None = None

    # -- the step -------------------------------------------------------------------------
    def _evaluate(self, closures: Sequence[Closure] | None, rows: Rows) -> float | None:
        """Loss at theta + rows; None when replaying (in place, the parameters move as they did)."""
        if closures is None:
            self.perturber.replay_at(rows)
            return None
        with self.perturber.at(rows), checks.forward_mode(self.module):
            values = [checks.loss_value(c()) for c in closures]
        dtensor.reshard(self._fsdp)  # FSDP2: the next forward gathers the shards as they are then
        loss = sum(values) / len(values)
        return dtensor.mean_over(loss, *self._reduce) if self._reduce else loss

    def step(self, closure: Closure | Sequence[Closure] | None = None) -> float:  # type: ignore[override]
        if closure is None:
            raise ValueError("a ZO optimizer needs a closure: opt.step(lambda: loss_of(batch))")
        closures = list(closure) if isinstance(closure, (list, tuple)) else [closure]
        checks.compiled_model(self)
        return self._run_step(closures, record=None)

    def replay(self, record: dict[str, Any]) -> None:
        """Re-apply a step from its record, with no forward (rebuilds the weights bit for bit)."""
        if record.get("step") != self._step:
            raise ValueError(
                f"record is for step {record.get('step')} but the optimizer is at step "
                f"{self._step}: replay the records in order from the start"
            )
        for gi, group in enumerate(self.param_groups):
            group["lr"] = record["lr"][gi]
            group["eps"] = record.get("eps", [self.eps] * len(self.param_groups))[gi]
        self._run_step(None, record=record)

    def table(self, plan: Plan) -> Table:
        """The step's coefficient table: per-group eps and the estimator's per-tensor factors.

        Per-group eps: group k moves by rho_k = eps_k / eps times the plan's scales and its
        estimate is divided by rho_k, so E[g] is still the gradient:
        (L+ - L-)/(2 eps) ~ sum_k rho_k <grad_k, z_k>."""
        rho = [float(g["eps"]) / self.eps for g in self.param_groups]
        if any(not r > 0 for r in rho):
            raise ValueError(
                f"every group's eps must be > 0, got {[g['eps'] for g in self.param_groups]}"
            )
        with self._plugin("estimator", self.estimator, self._step):
            factors = self.estimator.tensor_factors(plan, self.infos)
        return Table(self.infos, plan.seeds, rho, factors)

    @contextlib.contextmanager
    def _plugin(self, kind: str, part: Any, step: int):
        """A plugin part raising mid-step: the parameters are restored (settle) and the
        exception, of its own type, goes on with the part's name in its message. An exception
        from the closure (raised in an update rule's evaluation) passes through as it is."""
        try:
            yield
        except Exception as exc:
            self.perturber.settle()
            if not hasattr(exc, "_kerzoo_closure") and not hasattr(exc, "_kerzoo_plugin"):
                where = (
                    f"{kind} {getattr(part, 'name', '') or type(part).__name__!r} raised "
                    f"{type(exc).__name__} at step {step} (parameters restored)"
                )
                if exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
                else:
                    exc.add_note(where)
                exc._kerzoo_plugin = where  # type: ignore[attr-defined]
            raise

    @torch.no_grad()
    def _run_step(self, closures: Sequence[Closure] | None, record: dict[str, Any] | None) -> float:
        step = self._step
        if self._dtensors:  # a forward since the last step may have left modules gathered
            dtensor.reshard(self._fsdp)
            dtensor.rebind(self.infos, self._dtensors)
        seeds = direction_seeds(self.seed, step, self.estimator.directions)
        with self._plugin("estimator", self.estimator, step):
            plan: Plan = self.estimator.plan(step, seeds, self.eps)
        plan.table = table = self.table(plan)
        with self._plugin("projection", self.projection, step):
            self.projection.begin_step(step)
        losses: list[float] = []
        replaying = closures is None
        skipped = bool(record and record.get("skipped"))
        evaluated = plan.points if not skipped else plan.points[: len(record.get("losses", []))]
        for point in evaluated:
            loss = self._evaluate(closures, table.point(point))
            if not replaying:
                losses.append(loss)
                if not math.isfinite(loss):
                    skipped = True
                    break
        if replaying:
            losses = list(record.get("losses", []))
        if skipped:
            self.perturber.settle()
            self._finish(step, seeds, [], losses, skipped=True)
            if not replaying:
                self.skipped_steps += 1
                warnings.warn(
                    f"kerzoo: non-finite loss {losses[-1]} at step {step}: step skipped, "
                    f"parameters restored ({self.skipped_steps} skipped so far)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return float("nan")
        if replaying:
            coefs = list(record["coefs"])
        else:
            with self._plugin("estimator", self.estimator, step):
                coefs = self.estimator.coefficients(plan, losses, self.eps)
            bad = [c for c in coefs if not math.isfinite(c)]
            if bad:  # skipped as a non-finite loss is: it never reaches the weights
                self.perturber.settle()
                self._finish(step, seeds, [], losses, skipped=True)
                self.skipped_steps += 1
                warnings.warn(
                    f"kerzoo: estimator {self.estimator.name!r} gave a non-finite coefficient "
                    f"{bad[0]} at step {step} (losses {losses}): step skipped, parameters "
                    f"restored ({self.skipped_steps} skipped so far)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return float("nan")
            checks.coefficients(self, coefs, step)
        with self._plugin("update", self.update_rule, step):
            rule_record = self._update(
                step, coefs, closures, record.get("update") if record else None, table
            )
        with self._plugin("projection", self.projection, step):
            self.projection.end_step(step, seeds, plan, losses, coefs)
        self._finish(
            step, seeds, coefs, losses, skipped=False, extra={**plan.extra, "update": rule_record}
        )
        return sum(losses) / len(losses) if losses else float("nan")

    def _clip(self, coefs: Sequence[float], table: Table) -> None:
        """Per-tensor clipping: the estimate of tensor t is scaled by min(1, clip / ||g_t||).
        Measuring ||g_t|| builds g_t once, a temporary the tensor's size."""
        scale = []
        for t, info in enumerate(self.infos):
            cs = table.estimate_coefs(t, coefs, clipped=False)
            norm = float(self.projection.materialize(info, cs, table.seeds).norm())
            scale.append(min(1.0, self.clip / norm) if norm > 0 else 1.0)
        table.set_clip(scale)

    def _decay(self) -> None:
        """Decoupled weight decay, not on biases and norms (1-D tensors), as in MeZO."""
        decay: dict[float, list[torch.Tensor]] = {}
        for info in self.infos:
            group = self.param_groups[info.group]
            wd, lr = group["weight_decay"], group["lr"]
            if wd and len(info.whole_shape) > 1:
                decay.setdefault(1.0 - lr * wd, []).append(info.tensor)
        for scale, tensors in decay.items():
            torch._foreach_mul_(tensors, scale)

    def _update(self, step, coefs, closures, replay_rule, table: Table) -> dict[str, Any]:
        if self.clip:
            self._clip(coefs, table)
        rounding = "stochastic" if self.stochastic_rounding else "nearest"
        linear = [self.update_rule.linear(coefs, float(g["lr"])) for g in self.param_groups]
        self._decay()
        if all(c is not None for c in linear):
            if len(set(map(tuple, linear))) == 1:
                rows = table.estimate(linear[0])
            else:  # each group its own lr: per tensor, its group's coefficients
                per_group = [table.estimate(c) for c in linear]
                rows = _pick(per_group, [i.group for i in self.infos])
            self.perturber.update(rows, rounding, derive(self.seed, step, "rounding"))
            return {}
        self.perturber.settle()

        def evaluate_at(
            cs: Sequence[float], scale: Callable[[ParamInfo], float] | None = None
        ) -> float | None:
            """L(theta + sum_i cs[i] * factor(i, p) * scale(p) z_i); scale: e.g. each group's lr."""
            try:
                loss = self._evaluate(closures, table.estimate(cs, scale, skip_zero=True))
            except Exception as exc:
                exc._kerzoo_closure = True  # type: ignore[attr-defined]  # not the rule's
                raise
            self.perturber.settle()
            return loss

        ctx = UpdateContext(
            self.infos,
            coefs,
            table.seeds,
            self.projection,
            self.param_groups,
            lambda p: self.state[self._owner[id(p)]],
            evaluate_at,
            table=table,
        )
        self.update_rule.apply(ctx, replay=replay_rule)
        return ctx.record

    def _finish(self, step, seeds, coefs, losses, skipped, extra=None) -> None:
        self.last_record = {
            "step": step,
            "seeds": seeds,
            "coefs": coefs,
            "losses": losses,
            "skipped": skipped,
            "lr": [float(g["lr"]) for g in self.param_groups],
            "eps": [float(g["eps"]) for g in self.param_groups],
            **(extra or {}),
        }
        self._step = step + 1

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["kerzoo"] = {
            "step": self._step,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
            "projection": self.projection.state_dict(),
            "spec": self.spec,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("kerzoo", None)
        if zo is None:
            raise ValueError("not a kerzoo optimizer state: the 'kerzoo' entry is missing")
        super().load_state_dict(state_dict)
        self._step, self.seed, self.skipped_steps = (
            int(zo["step"]),
            int(zo["seed"]),
            int(zo["skipped_steps"]),
        )
        self.projection.setup(self.infos, self.seed)  # the projection's bases derive from the seed
        self.projection.load_state_dict(zo["projection"])

    @property
    def steps_done(self) -> int:
        return self._step

    def close(self) -> None:
        """Remove the on-the-fly hooks from the module (the optimizer then perturbs in place)."""
        self.perturber.remove()
        self.mode = "inplace"
        self.perturber = perturbers.InPlace(self.infos, self.projection)


def _pick(per_group: Sequence[Rows], groups: Sequence[int]) -> Rows:
    """Rows whose tensor t takes its row from per_group[groups[t]]."""
    entries: dict[tuple, int] = {}
    of = []
    for t, g in enumerate(groups):
        of.append(entries.setdefault(per_group[g][t], len(entries)))
    return Rows(list(entries), of)


def make_optimizer(spec: Any, params: Any, **overrides: Any) -> ZOOptimizer:
    """Build a ZOOptimizer from a preset name or a dict of named parts, plus overrides."""
    from .presets import resolve

    return resolve(spec, overrides).build(params)
