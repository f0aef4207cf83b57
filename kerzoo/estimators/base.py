"""The estimator interface (what a plugin implements)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Plan:
    """One step's evaluation points. ``points[k]`` maps direction index -> scale; ``{}`` is theta.

    ``table`` is set by the optimizer: the step's coefficient table (kerzoo.perturb.Table), which
    projections read in ``end_step`` for the estimate as it applies to each tensor.
    """

    seeds: list[int]
    points: list[dict[int, float]]
    extra: dict[str, Any] = field(default_factory=dict)
    table: Any = None


class Estimator:
    """Base class of estimators. Subclasses set ``name``, ``defaults`` and the two methods.

    Options are keyword arguments checked against ``defaults``; ``directions`` is the number
    of seeded directions per step.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {"directions": 1}

    def __init__(self, **options: Any):
        from ..registry import unknown_options

        unknown_options(f"estimator {self.name!r}", options, self.defaults)
        self.options = {**self.defaults, **options}
        self.directions = int(self.options["directions"])
        if self.directions < 1:
            raise ValueError(
                f"estimator {self.name!r}: directions must be >= 1, got {self.directions}"
            )

    def plan(self, step: int, seeds: list[int], eps: float) -> Plan:
        raise NotImplementedError

    def coefficients(self, plan: Plan, losses: list[float], eps: float) -> list[float]:
        raise NotImplementedError

    # Optional: per-tensor factors (KerZOO with one r per tensor). Return None (the default), or
    # one (perturb, update) pair of per-direction factor lists per tensor, in ``params`` order: at
    # a point, tensor p moves by scale * perturb[i] * z_i, and its estimate is
    # sum_i g_i * update[i] * z_i. Called once per step, after ``plan``.
    def tensor_factors(
        self, plan: Plan, params: Sequence[Any]
    ) -> list[tuple[Sequence[float], Sequence[float]]] | None:
        return None
