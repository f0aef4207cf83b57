"""kerzoo in transformers' Trainer (and TRL's SFTTrainer): ``ZOTrainer``, ``ZOSFTTrainer``.

    from kerzoo.hf import ZOTrainer
    trainer = ZOTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-6),
                        train_dataset=ds, zo="mezo")
    trainer.train()

Everything Trainer takes, plus ``zo=``: a preset name or spec dict as ``kerzoo.optimizer``
takes it (default "mezo"). What changes against Trainer (docs/integrations.md):
- no backward: each micro-batch's loss is a closure, and at the last micro-batch of an
  accumulation window the kerzoo optimizer evaluates all of them at the same perturbation (one
  ZO step, the loss their mean); no parameter gets a ``.grad``;
- the forwards run in eval mode (dropout off), whatever mode Trainer left the model in;
- lr, its schedule and warm-up come from TrainingArguments (Trainer's scheduler on the kerzoo
  optimizer's param groups), and so does ``weight_decay`` (decoupled, not on 1-D tensors);
- the logs carry ``projected_grad`` (the last step's mean coefficient, (L+ - L-)/(2 eps) for the
  two-point estimator) and ``projected_grad_rms`` (over the steps since the last log), not a
  grad_norm: there is no gradient; ``max_grad_norm`` has nothing to clip (kerzoo's ``clip``
  option is the ZO counterpart);
- an optimizer with perturb="batched" (e.g. zo={"preset": "fzoo", "perturb": "batched"}) runs
  each micro-batch once per step, repeated n times (kerzoo.replicate), for the n points, and
  computes each replica's causal-LM loss (next-token cross entropy on ``labels``, as the model
  does; summed over num_items_in_batch where Trainer scales it); a compute_loss override or
  compute_loss_func, label smoothing, or inputs without ``labels`` are refused;
- ``checkpoint-N`` holds the kerzoo optimizer's state (step, projection state): a resumed run
  continues the same trajectory bit for bit.
This module imports transformers; ``import kerzoo`` does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer

import kerzoo

from .optim import ZOOptimizer

_FROM_ARGS = ("lr", "weight_decay")


class _TrainerStep(torch.optim.Optimizer):
    """The optimizer Trainer holds: the kerzoo optimizer's groups, state and state_dict, and a
    ``step()`` that only acknowledges the ZO step the trainer already ran in training_step."""

    def __init__(self, zo: ZOOptimizer):  # no super().__init__: every attribute is zo's
        self.zo = zo
        self._stepped = False
        self._loss = float("nan")

    param_groups = property(
        lambda self: self.zo.param_groups, lambda self, v: setattr(self.zo, "param_groups", v)
    )
    state = property(lambda self: self.zo.state, lambda self, v: setattr(self.zo, "state", v))
    defaults = property(
        lambda self: self.zo.defaults, lambda self, v: setattr(self.zo, "defaults", v)
    )

    def stepped(self, loss: float) -> None:
        self._stepped, self._loss = True, loss

    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            return self.zo.step(closure)
        if not self._stepped:
            raise RuntimeError(
                "ZOTrainer's optimizer was stepped without a closure before its ZO step ran; "
                "the step runs in ZOTrainer.training_step (do not call optimizer.step() yourself)"
            )
        self._stepped = False
        return self._loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass  # no parameter has a gradient

    def state_dict(self) -> dict[str, Any]:
        return self.zo.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.zo.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"ZOTrainer step of {self.zo.__class__.__name__}({self.zo.spec})"


def _causal_lm_classes() -> set[str]:
    """The class names of transformers' causal LMs (AutoModelForCausalLM's mapping)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


class ZOTrainerMixin:
    """The ZO training step, for a transformers.Trainer subclass (ZOTrainer, ZOSFTTrainer)."""

    def __init__(self, *args: Any, zo: Any = "mezo", **kwargs: Any):
        if not isinstance(zo, (str, dict)):
            raise TypeError(
                f"zo must be a preset name or a spec dict, got {type(zo).__name__}; pass a built "
                "kerzoo optimizer as optimizers=(opt, None)"
            )
        self.zo = zo
        self._zo_pending: list[tuple[Any, Any]] = []
        self._zo_coefs: list[list[float]] = []
        self._zo_step: _TrainerStep | None = None
        super().__init__(*args, **kwargs)
        args_ = self.args
        if args_.max_grad_norm not in (0, 1.0):  # 1.0 is TrainingArguments' default
            raise ValueError(
                f"max_grad_norm={args_.max_grad_norm} clips a gradient, which a ZO step does not "
                "have; set max_grad_norm=0 and use zo={'preset': ..., 'clip': c} (per-tensor "
                "clipping of the ZO estimate)"
            )
        if args_.world_size > 1:
            raise ValueError(
                f"world_size={args_.world_size}: each process would step on its own losses and "
                "the replicas would drift apart; ZOTrainer runs on one process (kerzoo's data "
                "parallel: docs/distributed.md)"
            )

    # -- the optimizer ----------------------------------------------------------------------
    @property
    def zo_optimizer(self) -> ZOOptimizer | None:
        """The kerzoo optimizer (None before training builds it)."""
        return self._zo_step.zo if self._zo_step is not None else None

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self._zo_step is not None and self.optimizer is not None:
            return self.optimizer  # built already (a second train() call keeps it)
        if self.optimizer is not None:
            if not isinstance(self.optimizer, ZOOptimizer):
                raise TypeError(
                    f"ZOTrainer trains with a kerzoo optimizer, got {type(self.optimizer).__name__}"
                    "; pass zo=<preset or spec> or optimizers=(kerzoo.optimizer(...), None)"
                )
            zo = self.optimizer
        elif self.optimizer_cls_and_kwargs is not None:
            cls, kwargs = self.optimizer_cls_and_kwargs
            if not (isinstance(cls, type) and issubclass(cls, ZOOptimizer)):
                raise TypeError(
                    f"optimizer_cls_and_kwargs names {cls!r}, not a kerzoo optimizer class; use "
                    "kerzoo.optim_class(preset, ...)"
                )
            zo = cls(model, **{"lr": self.args.learning_rate, **kwargs})
        else:
            if isinstance(self.zo, dict):
                given = sorted(k for k in _FROM_ARGS if k in self.zo)
                if given:
                    raise ValueError(
                        f"zo sets {', '.join(given)}: ZOTrainer takes them from TrainingArguments "
                        "(learning_rate=, weight_decay=); remove them from the spec"
                    )
            seed = (
                {} if isinstance(self.zo, dict) and "seed" in self.zo else {"seed": self.args.seed}
            )
            zo = kerzoo.optimizer(
                self.zo,
                model,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                **seed,
            )
        if zo.module is None:
            raise ValueError(
                "the kerzoo optimizer was built without its module, so its forwards could not run "
                "in eval mode (dropout off); build it with the model: kerzoo.optimizer(name, "
                "model, ...), or param groups with module=model"
            )
        self.optimizer = self._zo_step = _TrainerStep(zo)
        return self.optimizer

    # -- the step -------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs = self._prepare_inputs(inputs)
        self._zo_pending.append((inputs, num_items_in_batch))
        if not self.accelerator.gradient_state.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self._zo_pending = self._zo_pending, []
        if len(batches) != self.current_gradient_accumulation_steps:
            raise RuntimeError(
                f"ZOTrainer holds {len(batches)} micro-batches at the end of an accumulation "
                f"window of {self.current_gradient_accumulation_steps}"
            )
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        # a loss scaled for accumulation is sum / (items of the window): the window's loss is
        # their sum, and the step averages its closures, so each is scaled by their count
        factor = len(batches) if scaled else 1

        def closure_of(batch, items):
            def closure():
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, batch, num_items_in_batch=items)
                if self.args.n_gpu > 1:
                    loss = loss.mean()
                return loss * factor

            return closure

        zo = self.zo_optimizer
        if zo.mode == "batched":
            closure_of = self._zo_batched_closure(model, factor)
        loss = self._zo_run(zo, [closure_of(b, n) for b, n in batches])
        self._zo_step.stepped(loss)
        record = zo.last_record or {}
        self._zo_coefs.append([float(c) for c in record.get("coefs", [])])
        return torch.tensor(loss, device=self.args.device)

    def _zo_batched_closure(self, model, factor: int):
        """perturb="batched": closures of n that run the micro-batch repeated n times in one
        forward and return the n replicas' causal-LM losses, each as compute_loss gives it."""
        from .perturb.batched import replica_losses, replicate

        if type(self).compute_loss is not Trainer.compute_loss or self.compute_loss_func:
            raise ValueError(
                "perturb='batched' computes each replica's loss itself (next-token cross entropy "
                f"on labels), so {type(self).__name__}'s own loss (a compute_loss override or "
                "compute_loss_func) would be bypassed; use perturb='onthefly' (the same losses, "
                "one forward per point)"
            )
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        if type(base).__name__ not in _causal_lm_classes():
            raise ValueError(
                f"perturb='batched' computes a causal LM's next-token loss per replica, and "
                f"{type(base).__name__} is not one of transformers' causal-LM classes (its logits "
                "and labels would be read wrongly); use perturb='onthefly' (the model's own loss)"
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"perturb='batched' with n_gpu={self.args.n_gpu}: torch.nn.DataParallel would "
                "split the replicas' rows across GPUs; run one process per GPU (torchrun) or use "
                "perturb='onthefly'"
            )
        if self.args.label_smoothing_factor:
            raise ValueError(
                f"label_smoothing_factor={self.args.label_smoothing_factor} with "
                "perturb='batched': the replicas' losses are plain cross entropy; set it to 0 or "
                "use perturb='onthefly'"
            )

        def closure_of(batch, items):
            if "labels" not in batch:
                raise ValueError(
                    f"perturb='batched' needs the inputs' labels (a causal LM's next-token "
                    f"loss per replica); this batch has {sorted(batch)}: add labels (e.g. "
                    "DataCollatorForLanguageModeling(mlm=False)) or use perturb='onthefly'"
                )

            def closure(n):
                inputs = replicate(dict(batch), n)
                labels = inputs.pop("labels")
                with self.compute_loss_context_manager():
                    logits = model(**inputs).logits
                labels = labels.to(logits.device)
                losses = replica_losses(logits, labels, n)  # each replica's mean over its tokens
                if self.model_accepts_loss_kwargs and items is not None:  # as the model's loss:
                    counts = (labels[:, 1:] != -100).view(n, -1).sum(1)  # sum over the window's
                    losses = losses * counts / torch.as_tensor(items, device=losses.device)
                return losses * factor

            return closure

        return closure_of

    def _zo_run(self, zo: ZOOptimizer, closures: list) -> float:
        return zo.step(closures)

    def _clip_grad_norm(self, model):
        return None  # no gradient: see max_grad_norm in __init__

    def _get_grad_norm(self, model, grad_norm=None):
        return None  # not logged: the logs carry projected_grad instead

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._zo_coefs:
            window, self._zo_coefs = self._zo_coefs, []
            last = window[-1]
            every = [c for cs in window for c in cs if math.isfinite(c)]
            logs["projected_grad"] = sum(last) / len(last) if last else float("nan")
            logs["projected_grad_rms"] = (
                math.sqrt(sum(c * c for c in every) / len(every)) if every else float("nan")
            )
        super().log(logs, *args, **kwargs)


class ZOTrainer(ZOTrainerMixin, Trainer):
    """transformers.Trainer with a kerzoo ZO step: everything Trainer takes, plus ``zo=``."""


def __getattr__(name: str) -> Any:
    if name == "ZOSFTTrainer":
        from ._trl import ZOSFTTrainer

        return ZOSFTTrainer
    raise AttributeError(f"module 'kerzoo.hf' has no attribute {name!r}")
