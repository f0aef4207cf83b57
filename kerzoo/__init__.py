"""kerzoo: zeroth-order fine-tuning of large language models on one seeded-perturbation engine.

import kerzoo
opt = kerzoo.optimizer("kerzoo", model.parameters(), lr=1e-6, eps=1e-3, seed=0)
loss = opt.step(closure)
"""

from __future__ import annotations

from typing import Any

from .registry import NameClashError, RegistrationError, UnknownNameError

__version__ = "0.1.0"


def optimizer(spec: Any, params: Any, **overrides: Any):
    """A ZOOptimizer from a preset name (``"mezo"``, ``"kerzoo"``...) or a dict of named parts.

    ``params`` is a module (enables on-the-fly perturbation), an iterable of parameters, or
    param groups. Keyword overrides replace the preset's options.
    """
    from .optim import make_optimizer

    return make_optimizer(spec, params, **overrides)


def optim_class(spec: Any = "mezo", **defaults: Any) -> type:
    """A torch-style optimizer class for a preset name or spec: ``cls(params, lr=..., **kw)``.

    For code that takes an optimizer class and builds it itself, e.g. ``ZOTrainer(...,
    optimizer_cls_and_kwargs=(kerzoo.optim_class("kerzoo"), {"lr": 1e-6}))``. ``defaults``
    replace the preset's options; the keywords given to the class replace both.
    """
    from .presets import optimizer_class

    return optimizer_class(spec, defaults)


def schedule(name: str, optimizer: Any, total_steps: int, warmup: int = 0, min_factor: float = 0.0):
    """A torch LR scheduler by name: constant, linear or cosine, with warm-up (kerzoo.schedules)."""
    from .schedules import schedule as make

    return make(name, optimizer, total_steps, warmup, min_factor)


def replicate(batch: Any, n: int) -> Any:
    """For ``perturb="batched"`` closures: the batch repeated n times along dim 0."""
    from .perturb.batched import replicate as rep

    return rep(batch, n)


def replica_losses(logits: Any, labels: Any, n: int) -> Any:
    """For ``perturb="batched"`` closures: each replica's causal-LM loss (as ``labels=`` gives)."""
    from .perturb.batched import replica_losses as losses

    return losses(logits, labels, n)


def _names(kind: str) -> list[str]:
    from .plugins import get_registry

    return list(get_registry(kind))


def list_optimizers() -> list[str]:
    """Names of the registered optimizer presets."""
    return _names("optimizers")


def list_estimators() -> list[str]:
    return _names("estimators")


def list_kernels() -> list[str]:
    return _names("kernels")


def list_projections() -> list[str]:
    return _names("projections")


def list_updates() -> list[str]:
    return _names("updates")


__all__ = [
    "optimizer",
    "optim_class",
    "schedule",
    "replicate",
    "replica_losses",
    "list_optimizers",
    "list_estimators",
    "list_kernels",
    "list_projections",
    "list_updates",
    "UnknownNameError",
    "NameClashError",
    "RegistrationError",
    "__version__",
]
