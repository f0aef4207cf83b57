"""The perturbation layer: one coefficient table per step, and the strategies that apply it.

- ``table``: ``Table`` (per tensor and direction: scale, per-group eps, per-tensor factors,
  clipping) and ``Rows`` (what each tensor adds at one point).
- ``base``: the ``Perturber`` interface and ``InPlace``.
- ``onthefly``: ``OnTheFly``, a perturbed transient per module forward (exact restore).
- ``outputs``: ``OutputPerturbation``, low-rank directions added to nn.Linear outputs.
- ``batched``: ``Batched``, all of a step's points in one forward over a replicated batch.
"""

from __future__ import annotations

from .base import InPlace, Perturber
from .batched import Batched, replica_losses, replicate
from .onthefly import OnTheFly
from .outputs import OutputPerturbation
from .table import Rows, Table

STRATEGIES = {
    "inplace": InPlace,
    "onthefly": OnTheFly,
    "outputs": OutputPerturbation,
    "batched": Batched,
}


def make(mode: str, module, infos, projection) -> Perturber:
    """The Perturber for ``mode`` ('inplace', 'onthefly', 'outputs', 'batched')."""
    if mode == "inplace":
        return InPlace(infos, projection)
    return STRATEGIES[mode](module, infos, projection)


__all__ = [
    "STRATEGIES",
    "Batched",
    "InPlace",
    "OnTheFly",
    "OutputPerturbation",
    "Perturber",
    "Rows",
    "Table",
    "make",
    "replica_losses",
    "replicate",
]
