"""The perturbation layer: one coefficient table per step, and the strategies that apply it.

- ``table``: ``Table`` (per tensor and direction: scale, per-group eps, per-tensor factors,
  clipping) and ``Rows`` (what each tensor adds at one point).
- ``base``: the ``Perturber`` interface and ``InPlace``.
- ``onthefly``: ``OnTheFly``, a perturbed transient per module forward (exact restore).
- ``outputs``: ``OutputPerturbation``, low-rank directions added to nn.Linear outputs.
"""

from __future__ import annotations

from .base import InPlace, Perturber
from .onthefly import OnTheFly
from .outputs import OutputPerturbation
from .table import Rows, Table

STRATEGIES = {"inplace": InPlace, "onthefly": OnTheFly, "outputs": OutputPerturbation}


def make(mode: str, module, infos, projection) -> Perturber:
    """The Perturber for ``mode`` ('inplace', 'onthefly', 'outputs')."""
    if mode == "inplace":
        return InPlace(infos, projection)
    return STRATEGIES[mode](module, infos, projection)


__all__ = [
    "STRATEGIES",
    "InPlace",
    "OnTheFly",
    "OutputPerturbation",
    "Perturber",
    "Rows",
    "Table",
    "make",
]
