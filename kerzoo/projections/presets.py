"""Built-in plugin: the named optimizers of the subspace, aligned and Hessian projections.

(subzero, lozo and kerzoo-subspace are registered by kerzoo.presets.)
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..presets import Preset

TWO_POINT_SGD = {"estimator": "two-point", "update": "sgd"}
PGAP = {"rank": 8, "refresh": 200, "probe_steps": 16, "delta": 1.0, "ema": 0.9}

PRESETS = (
    Preset(
        "pgap",
        {**TWO_POINT_SGD, "projection": "aligned"},
        {"lr": 1e-6, "eps": 1e-3, **PGAP},
        "P-GAP: two-point estimate along directions aligned with a rank-8 gradient-subspace "
        "estimate, re-estimated from 16 rank-1 probe steps every 200 steps",
    ),
    Preset(
        "hizoo",
        {**TWO_POINT_SGD, "estimator": "three-point", "projection": "hessian"},
        {"lr": 1e-6, "eps": 1e-3, "alpha": 1e-8, "init": 1.0},
        "HiZOO: z preconditioned by a diagonal Hessian estimate learnt from L+, L-, L0 "
        "(3 forwards, one full-size fp32 buffer)",
    ),
    Preset(
        "sparse-mezo",
        {**TWO_POINT_SGD, "projection": "sparse-mezo"},
        {"lr": 1e-6, "eps": 1e-3, "sparsity": 0.75},
        "Sparse MeZO: two-point MeZO on the weights below each tensor's 25 % magnitude "
        "quantile, mask from the weights on the fly",
    ),
    Preset(
        "lezo",
        {**TWO_POINT_SGD, "projection": "lezo"},
        {"lr": 1e-6, "eps": 1e-3, "fraction": 0.25},
        "LeZO: two-point MeZO on a random quarter of the model's blocks each step",
    ),
    Preset(
        "kerzoo-lowrank",
        {"estimator": "kernel", "projection": "lowrank", "update": "sgd"},
        {"lr": 1e-6, "eps": 1e-3, "kernel": "legendre3", "directions": 3, "rank": 1, "nu": 100},
        "KerZOO's kernel-weighted estimator over LOZO's low-rank directions",
    ),
    Preset(
        "kerzoo-pgap",
        {"estimator": "kernel", "projection": "aligned", "update": "sgd"},
        {"lr": 1e-6, "eps": 1e-3, "kernel": "legendre3", "directions": 3, **PGAP},
        "KerZOO's kernel-weighted estimator over P-GAP's aligned directions",
    ),
)


@hookimpl
def kerzoo_register_optimizers(register):
    for preset in PRESETS:
        register(preset)
