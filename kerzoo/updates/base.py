"""The update-rule interface (what a plugin implements).

An update rule either is *linear* (the change is a combination of the step's directions,
sum_i c_i z_i: SGD, sign-SGD), so the optimizer fuses it with the last restore in one pass,
or it implements ``apply(ctx)`` with full access to per-tensor state (momentum, Adam) and to
extra evaluations (the conservative rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..projections.base import ParamInfo, Projection


@dataclass
class UpdateContext:
    params: list[ParamInfo]
    coefs: list[float]  # g_i, the estimate is sum_i g_i z_i
    seeds: list[int]
    projection: Projection
    groups: list[dict[str, Any]]
    state: Callable[[ParamInfo], dict]  # per-tensor state (saved in state_dict)
    # L(theta + sum_i c_i scale(p) z_i), scale(p) optional per tensor (e.g. ctx.lr); None in replay
    evaluate_at: Callable[..., float | None]
    record: dict[str, Any] = field(default_factory=dict)  # what the rule chose, for replay
    # the step's coefficient table (kerzoo.perturb.Table): per-tensor update factors and clipping
    table: Any = None

    def __post_init__(self) -> None:
        self._index = {id(p): t for t, p in enumerate(self.params)}

    def lr(self, p: ParamInfo) -> float:
        return float(self.groups[p.group]["lr"])

    def for_tensor(self, p: ParamInfo, coefs: Sequence[float]) -> list[float]:
        """Per-direction coefficients as they apply to tensor p: times its update factors
        (per-tensor estimator factors, per-group eps, clipping) from the step's table."""
        if self.table is None:
            return list(coefs)
        return self.table.estimate_coefs(self._index[id(p)], coefs)

    def add(self, p: ParamInfo, coefs: Sequence[float]) -> None:
        """p += sum_i coefs[i] z_i."""
        from ..perturb.base import named

        with named("projection", self.projection):
            self.projection.add(p, p.tensor, self.for_tensor(p, coefs), self.seeds)

    def check(self, moves: Sequence[tuple[ParamInfo, Sequence[float]]]) -> None:
        """Before ``add(p, coefs)`` for each (p, coefs) of ``moves``: raise
        guard.NonFiniteUpdate, writing nothing, when one would make its tensor non-finite."""
        from ..perturb import guard
        from ..perturb.base import named

        adds = [(p, p.tensor, self.for_tensor(p, cs), self.seeds, 1.0) for p, cs in moves]
        with named("projection", self.projection):
            guard.check_adds(self.projection, adds)

    def estimate(self, p: ParamInfo) -> torch.Tensor:
        """The estimated gradient of p, materialised (a temporary the size of p)."""
        from ..perturb.base import named

        with named("projection", self.projection):
            return self.projection.materialize(p, self.for_tensor(p, self.coefs), self.seeds)


class Update:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    memory: ClassVar[str] = "none"  # what the rule holds, for `kerzoo list updates`
    # True when the rule rebuilds past steps' directions from their seeds: the projection must
    # be stationary (checked when the optimizer is built)
    replays_directions: ClassVar[bool] = False
    # True when apply() changes nothing but ctx's parameters and ctx.state and evaluates no loss:
    # the optimizer then runs it first on a copy of each tensor and of its state (one tensor at
    # a time), and an update that would make either non-finite skips the step with nothing
    # written (kerzoo.perturb.guard). False: the parameters are checked after the update, and a
    # non-finite one is an error that cannot restore them.
    trial: ClassVar[bool] = False

    def __init__(self, **options: Any):
        from ..registry import unknown_options

        unknown_options(f"update {self.name!r}", options, self.defaults)
        self.options = {**self.defaults, **options}

    def safe(
        self,
        ctx: UpdateContext,
        p: ParamInfo,
        z: float,
        theta: float,
        state: dict[str, float],
        limit: float,
    ) -> bool:
        """True when this step's ``apply`` provably leaves ``p`` and its state finite (then it
        is not tried first on copies, Update.trial), given: ``z`` >= |Z_i| of every element of
        every direction (the projection's bound), ``theta`` >= max|p|, ``state`` the max |x|
        of each buffer of p's state (absent before the first step) and ``limit``, the largest
        magnitude p may reach (half its dtype's). False: not known, tried first."""
        return False

    def linear(self, coefs: Sequence[float], lr: float) -> list[float] | None:
        """Coefficients c_i of the change sum_i c_i z_i, or None if the rule is not linear."""
        return None

    def apply(self, ctx: UpdateContext, replay: dict[str, Any] | None = None) -> None:
        """Change the parameters (after they were restored). ``replay`` is the rule's record."""
        raise NotImplementedError
