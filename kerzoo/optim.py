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
import copy as _copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import checks, engine, perturb as perturbers
from .estimators.base import Estimator, Plan
from .perturb import Perturber, Rows, Table, dtensor, guard
from .perturb.base import named
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
        if perturb not in perturbers.STRATEGIES and perturb != "auto":
            raise ValueError(
                f"perturb must be 'auto', {', '.join(map(repr, perturbers.STRATEGIES))}, got "
                f"{perturb!r}"
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
        # sharded tensors (DTensors): each rank checks its own shard, and the ranks agree on the
        # verdict (one refusing refuses on all)
        self._sharded = bool(self._dtensors)
        self._fsdp: list[torch.nn.Module] = []
        if self._dtensors:
            dtensor.refuse(self, clip, projection)
            self._fsdp = dtensor.fsdp_modules(module, self.infos[self._dtensors[0][0]].name)
        with self._plugin("projection", projection, "setup"):
            self.projection.setup(self.infos, self.seed)
        low = any(i.tensor.dtype in LOW_PRECISION for i in self.infos)
        if perturb not in ("auto", "inplace") and module is None:
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
        self.module, self._given_module = module, given
        checks.before_build(self, module, perturb)
        self.perturber: Perturber = (
            dtensor.ShardedOnTheFly(
                module, self.infos, projection, [self._owner[id(i)] for i in self.infos]
            )
            if self._dtensors and self.mode == "onthefly"
            else perturbers.make(self.mode, module, self.infos, projection)
        )
        self._step = 0
        self.skipped_steps = 0
        # kerzoo.checks' per-optimizer counters: steps of all-zero coefficients, whether that was
        # warned about, whether a compiled model's stale graphs were dropped
        self._zero_steps, self._zero_warned, self._graphs_checked = 0, False, False
        self.last_record: dict[str, Any] | None = None

    # -- the step -------------------------------------------------------------------------
    def _evaluate(self, closures: Sequence[Closure] | None, rows: Rows) -> float | None:
        """Loss at theta + rows; None when replaying (in place, the parameters move as they did)."""
        if closures is None:
            self.perturber.replay_at(rows)
            return None
        if self.mode == "batched":
            return self._evaluate_together(closures, [rows])[0]
        try:
            with self.perturber.at(rows), checks.forward_mode(self.module):
                values = [checks.loss_value(c()) for c in closures]
        except Exception as exc:
            self._forward_failed(exc)
        dtensor.reshard(self._fsdp)  # FSDP2: the next forward gathers the shards as they are then
        loss = sum(values) / len(values)
        return dtensor.mean_over(loss, *self._reduce) if self._reduce else loss

    def _evaluate_together(self, closures: Sequence[Closure], points: list[Rows]) -> list[float]:
        """perturb='batched': the losses at all points from one call of each closure with n."""
        n = len(points)
        try:
            with self.perturber.at_many(points), checks.forward_mode(self.module):
                values = [checks.loss_values(c(n), n) for c in closures]
        except Exception as exc:
            self._forward_failed(exc)
        return [sum(v[k] for v in values) / len(values) for k in range(n)]

    def _forward_failed(self, exc: Exception) -> None:
        """A closure's forward raised: the parameters back at theta; a plugin's error named."""
        if not hasattr(exc, "_kerzoo_part"):
            self._settle_after(exc)
            raise exc
        with self._plugin("projection", self.projection, self._step):
            raise exc

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
    def _plugin(self, kind: str, part: Any, step: int | str):
        """A plugin part raising mid-step: the parameters are restored (settle) and the
        exception, of its own type, goes on with the name of the part that raised in its
        message: ``kind`` and ``part``'s, or those of a part called inside that tagged it
        (perturb.base.named: a projection's passes, a kernel). An exception from the closure
        (raised in an update rule's evaluation) passes through as it is. ``step`` a string:
        outside a step (the method called: setup, state_dict), with nothing to restore."""
        try:
            yield
        except Exception as exc:
            restored = self._settle_after(exc) if not isinstance(step, str) else None
            if isinstance(exc, guard.NonFiniteUpdate):
                raise
            if not hasattr(exc, "_kerzoo_closure") and not hasattr(exc, "_kerzoo_plugin"):
                kind, name = getattr(exc, "_kerzoo_part", None) or (
                    kind,
                    getattr(part, "name", "") or type(part).__name__,
                )
                state = (
                    "parameters restored"
                    if restored
                    else "parameters NOT restored: restoring them called the failing part "
                    "again; go back to the last checkpoint"
                )
                where = (
                    f"{kind} {name!r} raised {type(exc).__name__} at step {step} ({state})"
                    if restored is not None
                    else f"{kind} {name!r} raised {type(exc).__name__} in {step}"
                )
                if exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
                else:
                    exc.add_note(where)
                exc._kerzoo_plugin = where  # type: ignore[attr-defined]
            raise

    def _settle_after(self, exc: BaseException) -> bool:
        """Back to theta after ``exc``; False when that raised too (a projection failing in
        its passes, needed again to leave the point in place)."""
        try:
            self.perturber.settle()
        except Exception:
            return False
        return True

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
        if not replaying:
            try:  # a projection whose state went non-finite: before any point is visited
                with self._plugin("projection", self.projection, step):
                    self._guarded(lambda: guard.check_directions(self.projection, self.infos))
            except guard.NonFiniteUpdate as exc:
                return self._skip(step, seeds, losses, exc.what)
        evaluated = plan.points if not skipped else plan.points[: len(record.get("losses", []))]
        if self.mode == "batched" and not replaying:
            losses = self._evaluate_together(closures, [table.point(p) for p in evaluated])
            bad = next((k for k, x in enumerate(losses) if not math.isfinite(x)), None)
            if bad is not None:  # recorded as the sequential loop records it
                losses, skipped = losses[: bad + 1], True
            evaluated = []
        for point in evaluated:
            loss = self._evaluate(closures, table.point(point))
            if not replaying:
                losses.append(loss)
                if not math.isfinite(loss):
                    return self._skip(step, seeds, losses, f"non-finite loss {loss}")
        if replaying:
            losses = list(record.get("losses", []))
        if skipped:
            return self._skip(step, seeds, losses, None)
        if replaying:
            coefs = list(record["coefs"])
        else:
            with self._plugin("estimator", self.estimator, step):
                coefs = self.estimator.coefficients(plan, losses, self.eps)
            bad = [c for c in coefs if not math.isfinite(c)]
            if bad:  # skipped as a non-finite loss is: it never reaches the weights
                return self._skip(
                    step,
                    seeds,
                    losses,
                    f"estimator {self.estimator.name!r} gave a non-finite coefficient {bad[0]} "
                    f"(losses {losses})",
                )
            checks.coefficients(self, coefs, step)
        try:
            with self._plugin("update", self.update_rule, step):
                rule_record = self._update(
                    step, coefs, closures, record.get("update") if record else None, table
                )
        except guard.NonFiniteUpdate as exc:  # found before anything was written
            if replaying:  # the run took this step: replaying it otherwise would diverge
                raise ValueError(
                    f"record of step {step}: the run took this step, and replaying it is "
                    f"refused ({exc.what}); the log was written under another engine or "
                    "version, or altered"
                ) from None
            return self._skip(step, seeds, losses, exc.what)
        with self._plugin("projection", self.projection, step):
            self.projection.end_step(step, seeds, plan, losses, coefs)
        self._finish(
            step, seeds, coefs, losses, skipped=False, extra={**plan.extra, "update": rule_record}
        )
        return sum(losses) / len(losses) if losses else float("nan")

    def _guarded(self, check: Callable[[], None]) -> None:
        """Run ``check``; with sharded tensors, the ranks agree: a NonFiniteUpdate on one rank's
        shard is one on every rank."""
        refused: guard.NonFiniteUpdate | None = None
        try:
            check()
        except guard.NonFiniteUpdate as exc:
            refused = exc
        import torch.distributed as dist

        if self._sharded and dist.is_available() and dist.is_initialized():
            group, device = self._reduce or (None, self.infos[0].tensor.device)
            flag = torch.tensor([float(refused is not None)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            if refused is None and float(flag) > 0:
                refused = guard.NonFiniteUpdate("another rank's shard refused the update")
        if refused is not None:
            raise refused

    def _skip(self, step: int, seeds: list[int], losses: list[float], what: str | None) -> float:
        """A skipped step: the parameters restored, the step recorded (with the losses
        evaluated) and, unless replaying (``what`` None), counted and warned about."""
        self.perturber.settle()
        self._finish(step, seeds, [], losses, skipped=True)
        if what is not None:
            self.skipped_steps += 1
            warnings.warn(
                f"kerzoo: {what} at step {step}: step skipped, parameters restored "
                f"({self.skipped_steps} skipped so far)",
                RuntimeWarning,
                stacklevel=4,
            )
        return float("nan")

    def _clip(self, coefs: Sequence[float], table: Table) -> None:
        """Per-tensor clipping: the estimate of tensor t is scaled by min(1, clip / ||g_t||).
        Measuring ||g_t|| builds g_t once, a temporary the tensor's size."""
        scale = []
        for t, info in enumerate(self.infos):
            cs = table.estimate_coefs(t, coefs, clipped=False)
            with named("projection", self.projection):
                norm = float(self.projection.materialize(info, cs, table.seeds).norm())
            scale.append(min(1.0, self.clip / norm) if norm > 0 else 1.0)
        table.set_clip(scale)

    def _decay_scales(self) -> list[float]:
        """Per tensor, decoupled weight decay's factor 1 - lr wd (1.0 for biases and norms,
        1-D tensors, as in MeZO)."""
        scales = []
        for info in self.infos:
            group = self.param_groups[info.group]
            wd, lr = group["weight_decay"], group["lr"]
            scales.append(1.0 - lr * wd if wd and len(info.whole_shape) > 1 else 1.0)
        return scales

    def _decay(self, scales: Sequence[float]) -> None:
        decay: dict[float, list[torch.Tensor]] = {}
        for info, scale in zip(self.infos, scales):
            if scale != 1.0:
                decay.setdefault(scale, []).append(info.tensor)
        for scale, tensors in decay.items():
            torch._foreach_mul_(tensors, scale)

    def _update(self, step, coefs, closures, replay_rule, table: Table) -> dict[str, Any]:
        """The update, checked first (kerzoo.perturb.guard): one that would make a parameter or
        the rule's state non-finite is a NonFiniteUpdate, raised before anything is written."""
        if self.clip:
            self._clip(coefs, table)
        rounding = "stochastic" if self.stochastic_rounding else "nearest"
        linear = [self.update_rule.linear(coefs, float(g["lr"])) for g in self.param_groups]
        scales = self._decay_scales()
        if all(c is not None for c in linear):
            if len(set(map(tuple, linear))) == 1:
                rows = table.estimate(linear[0])
            else:  # each group its own lr: per tensor, its group's coefficients
                per_group = [table.estimate(c) for c in linear]
                rows = _pick(per_group, [i.group for i in self.infos])
            rounding_seed = derive(self.seed, step, "rounding")
            self._guarded(lambda: self.perturber.check(rows, rounding, rounding_seed, scales))
            self._decay(scales)
            self.perturber.update(rows, rounding, rounding_seed)
            return {}

        def evaluate_at(
            cs: Sequence[float], scale: Callable[[ParamInfo], float] | None = None
        ) -> float | None:
            """L(theta + sum_i cs[i] * factor(i, p) * scale(p) z_i); scale: e.g. each group's lr."""
            rows = table.estimate(cs, scale, skip_zero=True)
            if self.mode == "inplace":  # the point is written: refused if it would overflow
                self._guarded(lambda: self.perturber.check(rows))
            try:
                loss = self._evaluate(closures, rows)
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
        self._guarded(lambda: self._trial(ctx, replay_rule, scales))
        self._decay(scales)
        self.perturber.settle()
        self.update_rule.apply(ctx, replay=replay_rule)
        if not self.update_rule.trial:
            self._after(step)
        return ctx.record

    def _trial(self, ctx: UpdateContext, replay_rule: Any, scales: Sequence[float]) -> None:
        """Before a rule's own update: its state must be finite, and a rule that allows it
        (Update.trial) is run first on a copy of each tensor and of its state, one tensor at a
        time; a non-finite result is a NonFiniteUpdate, with nothing written."""
        rule = self.update_rule
        owner = f"update {rule.name!r}"
        held = guard.state_peaks(
            owner, [ctx.state(i) for i in self.infos], [i.name for i in self.infos]
        )
        if not rule.trial:
            return
        restore = self.perturber._way_back()
        with named("projection", self.projection):
            bounds = self.projection.bounds(self.infos)
        tops = guard.peaks([i.tensor for i in self.infos])

        def refused(*_: Any, **__: Any) -> None:
            raise RuntimeError("an update rule with trial = True must not evaluate the loss")

        for t, info in enumerate(self.infos):
            z = bounds[t]
            if z is not None and math.isfinite(z) and math.isfinite(tops[t]):
                back = sum(map(abs, restore[t][0])) if restore[t] is not None else 0.0
                theta = tops[t] * abs(scales[t]) + z * back  # max|p| once settled and decayed
                if rule.safe(ctx, info, z, theta, held[t], guard.limit(info.tensor.dtype)):
                    continue  # proven finite: no trial for this tensor
            copy = ParamInfo(
                info.name,
                info.key,
                info.tensor.detach().clone(),
                info.group,
                info.offset,
                info.shape,
            )
            if scales[t] != 1.0:
                copy.tensor.mul_(scales[t])
            if restore[t] is not None:
                cs, ss = restore[t]
                self.projection.add_many([(copy, copy.tensor)], list(cs), list(ss))
            state = {
                k: v.clone() if isinstance(v, torch.Tensor) else _copy.deepcopy(v)
                for k, v in ctx.state(info).items()
            }
            one = UpdateContext(
                [copy],
                ctx.coefs,
                ctx.seeds,
                ctx.projection,
                ctx.groups,
                lambda _, s=state: s,
                refused,
                table=ctx.table,
            )
            one._index = {id(copy): t}
            rule.apply(one, replay=replay_rule)
            peak = guard.peaks([copy.tensor])[0]
            if not math.isfinite(peak):
                raise guard.NonFiniteUpdate(f"{owner} would make {info.name} non-finite ({peak})")
            guard.check_state(f"{owner}'s update", state, info.name)

    def _after(self, step: int) -> None:
        """After the update of a rule that cannot be tried first: a non-finite parameter is an
        error that says the parameters are not restored."""
        for info, peak in zip(self.infos, guard.peaks([i.tensor for i in self.infos])):
            if not math.isfinite(peak):
                err = FloatingPointError(
                    f"update {self.update_rule.name!r} made {info.name} non-finite ({peak}) at "
                    f"step {step}; the rule cannot be tried first (Update.trial is False), so "
                    "the parameters are NOT restored: go back to the last checkpoint"
                )
                err._kerzoo_plugin = True  # type: ignore[attr-defined]
                raise err

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
            "projection": self._projection_state(),
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
        with self._plugin("projection", self.projection, "load_state_dict"):
            self.projection.setup(self.infos, self.seed)  # its bases derive from the seed
            self.projection.load_state_dict(zo["projection"])

    def _projection_state(self) -> dict[str, Any]:
        with self._plugin("projection", self.projection, "state_dict"):
            return self.projection.state_dict()

    @property
    def steps_done(self) -> int:
        return self._step

    def close(self) -> None:
        """Remove the on-the-fly hooks from the module (the optimizer then perturbs in place)."""
        self.perturber.remove()
        self.mode = "inplace"
        self.perturber = perturbers.InPlace(self.infos, self.projection)


def _pick(per_group: Sequence[Rows], groups: Sequence[int]) -> Rows:
    """Rows whose tensor t takes its row from per_group[groups[t]] (one set of seeds for all)."""
    rows: dict[tuple, int] = {}
    of = [rows.setdefault(per_group[g][t][0], len(rows)) for t, g in enumerate(groups)]
    return Rows(list(rows), of, per_group[0].seeds)


def make_optimizer(spec: Any, params: Any, **overrides: Any) -> ZOOptimizer:
    """Build a ZOOptimizer from a preset name or a dict of named parts, plus overrides."""
    from .presets import resolve

    return resolve(spec, overrides).build(params)
