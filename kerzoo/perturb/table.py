"""One step's coefficient table: what every tensor adds at every point (docs/algorithms.md,
Order of passes).

At the start of a step the optimizer builds a ``Table`` once: for each trainable tensor t and
direction i, the factor that multiplies a point's scale when t moves (``perturb[t][i]``: the
estimator's per-tensor factor times the group's eps ratio rho = eps_group / eps) and the factor
that multiplies the estimate's coefficient g_i in t's update (``update[t][i]``: the estimator's
per-tensor weight, divided by rho, times t's clipping scale once it is known). Tensors whose
factors agree form one class, so a model whose tensors all share factors (the common case) has
one class, however many tensors it holds.

A point, or the estimate, becomes ``Rows``: the directions' seeds, the distinct rows of
coefficients and, for each tensor, which row it adds. Perturbers (kerzoo.perturb.base) hand a
pass's rows to the projection at once (``Projection.add_table``): for the dense projection one
engine call (``add_z_table``) however many rows; no closure is called per tensor and point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..projections.base import ParamInfo

Factors = Sequence[float]  # one factor per direction


@dataclass(frozen=True)
class Rows:
    """Tensor t adds sum_i coefs[of[t]][i] Z_i(seeds[i]): the distinct rows, and which is whose."""

    coefs: list[tuple[float, ...]]
    of: list[int]
    seeds: tuple[int, ...]

    def __getitem__(self, t: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
        return self.coefs[self.of[t]], self.seeds

    @property
    def empty(self) -> bool:
        return not self.seeds


class Table:
    """The step's per-tensor factors, grouped into classes of tensors that share them."""

    def __init__(
        self,
        infos: Sequence[ParamInfo],
        seeds: Sequence[int],
        rho: Sequence[float],
        tensor_factors: Sequence[tuple[Factors, Factors]] | None = None,
    ):
        self.infos, self.seeds = list(infos), list(seeds)
        n = len(self.seeds)
        ones = (1.0,) * n
        perturb, update = [], []
        for t, info in enumerate(self.infos):
            r = rho[info.group]
            pf, uf = tensor_factors[t] if tensor_factors is not None else (ones, ones)
            if len(pf) != n or len(uf) != n:
                raise ValueError(
                    f"tensor_factors for {info.name}: {len(pf)} perturbation and {len(uf)} update "
                    f"factors for {n} directions; give one of each per direction"
                )
            perturb.append(tuple(float(f) * r for f in pf))
            update.append(tuple(float(f) / r for f in uf))
        self.perturb, self.update = perturb, update
        self.clip_scale: list[float] | None = None
        self._classes = self._group(perturb)

    @staticmethod
    def _group(factors: Sequence[tuple[float, ...]]) -> list[tuple[tuple[float, ...], list[int]]]:
        classes: dict[tuple[float, ...], list[int]] = {}
        for t, f in enumerate(factors):
            classes.setdefault(f, []).append(t)
        return list(classes.items())

    def _rows(self, classes, idx, coefficient: Callable[[tuple[float, ...]], tuple]) -> Rows:
        rows: dict[tuple, int] = {}
        of = [0] * len(self.infos)
        for f, members in classes:
            k = rows.setdefault(coefficient(f), len(rows))
            for t in members:
                of[t] = k
        return Rows(list(rows), of, tuple(self.seeds[i] for i in idx))

    def point(self, point: dict[int, float]) -> Rows:
        """theta + sum_i point[i] perturb[t][i] z_i for each tensor t."""
        idx = sorted(point)
        return self._rows(self._classes, idx, lambda f: tuple(point[i] * f[i] for i in idx))

    def restore(self, point: dict[int, float]) -> Rows:
        """The move from theta + point back to theta."""
        return self.point({i: -c for i, c in point.items()})

    def set_clip(self, scale: Sequence[float]) -> None:
        """Per-tensor clipping: tensor t's estimate is scaled by scale[t] (min(1, clip/||g_t||))."""
        self.clip_scale = list(scale)

    def update_factors(self, t: int) -> tuple[float, ...]:
        """Tensor t's update factors: the estimator's weight / rho, times t's clipping scale."""
        uf = self.update[t]
        if self.clip_scale is None:
            return uf
        s = self.clip_scale[t]
        return tuple(f * s for f in uf)

    def estimate_coefs(self, t: int, coefs: Sequence[float], clipped: bool = True) -> list[float]:
        """sum_i coefs[i] update[t][i] z_i: coefficients of the estimate as they apply to t."""
        uf = self.update_factors(t) if clipped else self.update[t]
        return [c * f for c, f in zip(coefs, uf)]

    def estimate(
        self,
        coefs: Sequence[float],
        scale: Callable[[ParamInfo], float] | None = None,
        skip_zero: bool = False,
    ) -> Rows:
        """Rows of sum_i coefs[i] update[t][i] scale(t) z_i; ``skip_zero`` leaves out the
        directions whose coefficient is 0 (an evaluation point)."""
        idx = [i for i, c in enumerate(coefs) if c != 0.0] if skip_zero else range(len(coefs))
        factors = []
        for t, info in enumerate(self.infos):
            uf = self.update_factors(t)
            if scale is not None:
                s = scale(info)
                uf = tuple(f * s for f in uf)
            factors.append(uf)
        return self._rows(self._group(factors), idx, lambda f: tuple(coefs[i] * f[i] for i in idx))
