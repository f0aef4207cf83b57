"""Named optimizers: presets composed of named parts, and the resolution of a spec into one.

A spec is a preset name, or a dict of parts and options:
``{"estimator": "kernel", "kernel": "legendre3", "projection": "dense", "update": "sgd", "lr":
1e-6}``. Each option is routed to the part whose defaults name it; an option no part knows is an
error that names it and its closest known option.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from .hookspecs import hookimpl

PARTS = ("estimator", "projection", "update")
OPTIMIZER_OPTIONS = {
    "lr": 1e-6,
    "eps": 1e-3,
    "weight_decay": 0.0,
    "seed": 0,
    "perturb": "auto",
    "stochastic_rounding": None,
    "clip": 0.0,
    "module": None,
}
DEFAULT_PARTS = {"estimator": "two-point", "projection": "dense", "update": "sgd"}


@dataclass(frozen=True)
class Preset:
    """A named optimizer: its parts and its option defaults."""

    name: str
    parts: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def spec(self) -> dict[str, Any]:
        return {**self.parts, **self.options}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())


@dataclass
class Resolved:
    spec: dict[str, Any]
    parts: dict[str, type]
    part_options: dict[str, dict[str, Any]]
    options: dict[str, Any]

    def arguments(self) -> dict[str, Any]:
        """ZOOptimizer's keyword arguments but params: fresh parts, the options and the spec."""
        made = {k: self.parts[k](**self.part_options[k]) for k in PARTS}
        return {**made, **self.options, "spec": self.spec}

    def build(self, params: Any):
        from .optim import ZOOptimizer

        return ZOOptimizer(params, **self.arguments())


def resolve(spec: Any, overrides: dict[str, Any] | None = None) -> Resolved:
    from .plugins import get_registry

    overrides = dict(overrides or {})
    if isinstance(spec, str) and spec.endswith((".toml", ".yaml", ".yml")):
        spec = load_spec_file(spec)
    if isinstance(spec, str):
        preset = get_registry("optimizers")[spec]
        merged = {**preset.spec(), **overrides}
    elif isinstance(spec, dict):
        merged = {**spec, **overrides}
        base = merged.pop("preset", None)
        if base is not None:
            merged = {**get_registry("optimizers")[base].spec(), **merged}
    else:
        raise TypeError(
            f"an optimizer spec is a preset name or a dict of parts, got {type(spec).__name__}"
        )
    full = {**DEFAULT_PARTS, **merged}
    kinds = {"estimator": "estimators", "projection": "projections", "update": "updates"}
    parts = {
        k: get_registry(kinds[k])[full[k]] if isinstance(full[k], str) else full[k] for k in PARTS
    }
    part_options: dict[str, dict[str, Any]] = {k: {} for k in PARTS}
    options: dict[str, Any] = {}
    unknown = []
    for key, value in full.items():
        if key in PARTS:
            continue
        if key in OPTIMIZER_OPTIONS:
            options[key] = value
            continue
        owner = next((k for k in PARTS if key in parts[k].defaults), None)
        if owner is None:
            unknown.append(key)
        else:
            part_options[owner][key] = value
    if unknown:
        known = sorted({*OPTIMIZER_OPTIONS, *PARTS, *(o for k in PARTS for o in parts[k].defaults)})
        msgs = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            msgs.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"unknown optimizer option(s) {', '.join(msgs)} for estimator {full['estimator']!r}, "
            f"projection {full['projection']!r}, update {full['update']!r}; known options: "
            f"{', '.join(known)}"
        )
    return Resolved(full, parts, part_options, options)


def optimizer_class(spec: Any, defaults: dict[str, Any] | None = None) -> type:
    """A ZOOptimizer subclass with the torch signature ``cls(params, lr=..., **options)``."""
    from .optim import ZOOptimizer

    defaults = dict(defaults or {})
    resolve(spec, defaults)  # a bad spec or option fails here, not when the class is first used
    label = spec if isinstance(spec, str) else "spec"

    class PresetOptimizer(ZOOptimizer):
        __doc__ = f"kerzoo optimizer {label!r} as a torch optimizer class: cls(params, lr=...)."

        def __init__(self, params: Any, **options: Any):
            super().__init__(params, **resolve(spec, {**defaults, **options}).arguments())

        def step(self, closure=None):  # type: ignore[override]
            if closure is None:
                raise ValueError(
                    "a ZO optimizer needs a closure: opt.step(lambda: loss_of(batch)); it has no "
                    "gradient to step on after a backward. With transformers, train with "
                    "kerzoo.hf.ZOTrainer (it takes this class as optimizer_cls_and_kwargs); with "
                    "accelerate, see docs/integrations.md"
                )
            return super().step(closure)

    PresetOptimizer.__name__ = PresetOptimizer.__qualname__ = (
        "".join(w.capitalize() for w in str(label).replace("_", "-").split("-")) + "ZO"
    )
    return PresetOptimizer


def load_spec_file(path: str) -> dict[str, Any]:
    """An optimizer spec from a TOML or YAML file: its [optimizer] table, or the whole file."""
    from .config import read_config_file

    raw = read_config_file(path)
    spec = raw.get("optimizer", raw)
    if not isinstance(spec, dict):
        raise TypeError(
            f"{path}: the optimizer spec must be a table of parts and options, got {spec!r}"
        )
    return dict(spec)


MEZO = {"estimator": "two-point", "projection": "dense", "update": "sgd"}
BUILTIN = (
    Preset(
        "mezo",
        MEZO,
        {"lr": 1e-6, "eps": 1e-3},
        "MeZO (Malladi et al. 2023): two-point SPSA, dense Gaussian z, SGD; memory of inference",
    ),
    Preset(
        "zo-sgd",
        MEZO,
        {"lr": 1e-6, "eps": 1e-3, "directions": 1},
        "ZO-SGD (Zhang et al. 2024 benchmark): two-point estimate, SGD step",
    ),
    Preset(
        "zo-sgd-sign",
        {**MEZO, "update": "sign"},
        {"lr": 1e-6, "eps": 1e-3},
        "ZO-SGD-Sign: step along sign(g) z",
    ),
    Preset(
        "zo-sgd-mmt",
        {**MEZO, "update": "momentum"},
        {"lr": 1e-6, "eps": 1e-3, "beta": 0.9},
        "ZO-SGD with momentum 0.9 (one full-size buffer)",
    ),
    Preset(
        "zo-sgd-mmt-replay",
        {**MEZO, "update": "momentum-replay"},
        {"lr": 1e-6, "eps": 1e-3, "beta": 0.9, "history": 32},
        "ZO-SGD with momentum 0.9 rebuilt from the last 32 steps' seeds (no buffer)",
    ),
    Preset(
        "zo-sgd-cons",
        {**MEZO, "update": "conservative"},
        {"lr": 1e-6, "eps": 1e-3},
        "ZO-SGD-Cons: keep the best of theta, theta -/+ lr g by loss (5 forwards)",
    ),
    Preset(
        "zo-adam",
        {**MEZO, "update": "adam"},
        {"lr": 1e-5, "eps": 1e-3},
        "ZO-Adam: Adam on the two-point estimate (two full-size buffers)",
    ),
    Preset(
        "fzoo",
        {**MEZO, "estimator": "fzoo"},
        {"lr": 1e-5, "eps": 1e-3, "directions": 8, "dist": "rademacher"},
        "FZOO (Dang et al. 2025): 8 one-sided Rademacher differences around L(theta), the step "
        "divided by the losses' standard deviation (9 forwards; perturb='batched': one)",
    ),
    Preset(
        "zo-adam-replay",
        {**MEZO, "update": "adam-replay"},
        {"lr": 1e-5, "eps": 1e-3, "history": 32},
        "ZO-Adam with both moments rebuilt from the last 32 steps' seeds (no buffers)",
    ),
    Preset(
        "kerzoo",
        {**MEZO, "estimator": "kernel"},
        {
            "lr": 1e-6,
            "eps": 1e-3,
            "kernel": "legendre3",
            "directions": 3,
            "r_max": 0.5,
            "r_min": 0.5,
        },
        "KerZOO: kernel-weighted two-point estimator (legendre3), bias O(eps^4), 3 directions",
    ),
    Preset(
        "kerzoo-recipe",
        {**MEZO, "estimator": "kernel"},
        {
            "lr": 1e-6,
            "eps": 1e-3,
            "kernel": "legendre3",
            "directions": 3,
            "C": 4.0,
            "rescale": False,
            "r_max": 1.0,
            "r_min": 1e-4,
            "r_shrink_steps": 4000,
            "r_scope": "tensor",
            "clip": 4e5,
        },
        "The public KerZOO code's recipe: K = 15 r (5 - 7 r^2) on r shrunk over 4000 steps "
        "without rescaling, r per tensor, per-tensor clip 4e5 (primal averaging: add update = "
        "'primal-averaging', one more copy of the weights)",
    ),
    Preset(
        "subzero",
        {**MEZO, "projection": "subspace"},
        {"lr": 1e-6, "eps": 1e-3, "rank": 8, "refresh": 2000},
        "SubZero: two-point estimate in random rank-8 subspaces of each matrix, redrawn every "
        "2000 steps",
    ),
    Preset(
        "lozo",
        {**MEZO, "projection": "lowrank"},
        {"lr": 1e-6, "eps": 1e-3, "rank": 1, "nu": 100},
        "LOZO: low-rank U V^T directions, V kept for 100 steps",
    ),
    Preset(
        "kerzoo-subspace",
        {**MEZO, "estimator": "kernel", "projection": "subspace"},
        {
            "lr": 1e-6,
            "eps": 1e-3,
            "kernel": "legendre3",
            "directions": 3,
            "rank": 8,
            "refresh": 2000,
        },
        "KerZOO's kernel-weighted estimator over SubZero's random subspaces",
    ),
)


@hookimpl
def kerzoo_register_optimizers(register):
    for preset in BUILTIN:
        register(preset)
