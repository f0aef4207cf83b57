"""The pluggy hook specifications of kerzoo.

Each hook receives a ``register(obj, name=None)`` callback; ``name`` defaults to ``obj.name``.
One plugin may register many items. Built-ins use exactly these hooks.
"""

import pluggy

PROJECT = "kerzoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kerzoo_register_kernels(register):
    """Register kernels K(s) on [-1, 1] with E[s K(s)] = 1 for the kernel-weighted estimator."""


@hookspec
def kerzoo_register_estimators(register):
    """Register estimators that turn losses at perturbed points into per-direction scalars."""


@hookspec
def kerzoo_register_projections(register):
    """Register projections that say what a direction z is (dense, subspace, low-rank...)."""


@hookspec
def kerzoo_register_updates(register):
    """Register update rules that turn the estimated gradient into a parameter update."""


@hookspec
def kerzoo_register_optimizers(register):
    """Register named optimizer presets composed of the parts above."""
