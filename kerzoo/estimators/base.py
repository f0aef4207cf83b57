"""The estimator interface (what a plugin implements)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Plan:
    """One step's evaluation points. ``points[k]`` maps direction index -> scale; ``{}`` is theta.

    Optional per-tensor factors: at a point, tensor p moves by scale * perturb_factor(i, p) * z_i,
    and the estimate for p is sum_i g_i * update_factor(i, p) * z_i (KerZOO with one r per tensor).
    """

    seeds: list[int]
    points: list[dict[int, float]]
    extra: dict[str, Any] = field(default_factory=dict)
    perturb_factor: Callable[[int, Any], float] | None = None
    update_factor: Callable[[int, Any], float] | None = None


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
