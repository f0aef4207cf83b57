"""The Perturber interface: how the optimizer enters and leaves a point.

A Perturber gets the step's ``Rows`` (kerzoo.perturb.table) and makes the closures' forwards see
theta + sum_i c_i z_i for each tensor, each pass one projection call (``_pass``) with a row per
tensor. Strategies: ``InPlace`` writes the parameters (fused
restore-and-perturb passes); ``OnTheFly`` (kerzoo.perturb.onthefly) shows each module's forward a
perturbed transient and never writes W while perturbed; ``OutputPerturbation``
(kerzoo.perturb.outputs) adds a low-rank direction to nn.Linear outputs. Only ``update`` changes
theta.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ..projections.base import ParamInfo, Projection
from . import guard
from .table import Rows


@contextlib.contextmanager
def named(kind: str, part: object) -> Iterator[None]:
    """An exception raised inside is tagged with the plugin part it came from (``kind`` and
    the part's name), unless a part inside tagged it first: the optimizer's message then
    names that part (ZOOptimizer._plugin)."""
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, "_kerzoo_part"):
            exc._kerzoo_part = (kind, getattr(part, "name", "") or type(part).__name__)  # type: ignore[attr-defined]
        raise


class Perturber:
    """Base class: ``at(rows)`` for forwards at a point, ``settle()`` back to theta, ``update``."""

    mode = ""
    exact_restore = False  # True when leaving a point restores theta bit for bit in every dtype

    def __init__(self, infos: Sequence[ParamInfo], projection: Projection):
        self.infos, self.projection = list(infos), projection

    @contextlib.contextmanager
    def at(self, rows: Rows) -> Iterator[None]:
        """Forwards inside this block see theta + rows."""
        raise NotImplementedError
        yield

    def settle(self) -> None:
        """Make the parameters theta again (before an update rule that reads them)."""

    def replay_at(self, rows: Rows) -> None:
        """Replaying a step (no forward): do to the parameters what ``at(rows)`` did."""

    def update(self, rows: Rows, rounding: str = "nearest", rounding_seed: int = 0) -> None:
        """theta += rows (after leaving the step's last point), rounded as asked."""
        self.settle()
        items = [(info, info.tensor) for info in self.infos]
        self._pass(items, range(len(items)), rows, None, False, rounding, rounding_seed)

    def _pass(
        self,
        items: Sequence[tuple[ParamInfo, torch.Tensor]],
        ts: Sequence[int],
        rows: Rows | None,
        back: Rows | None = None,
        move: bool = False,
        rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        """One projection call for a pass: item k (tensor ts[k]) += rows - back, for each tensor
        its own row; with ``move`` the restore (-back) is rounded first, else both in one."""
        if rows is not None and back is None:
            table, of, seeds = rows.coefs, [rows.of[t] for t in ts], rows.seeds
        elif rows is None and back is not None:
            table, seeds = [tuple(-c for c in cs) for cs in back.coefs], back.seeds
            of = [back.of[t] for t in ts]
        elif rows is not None and back is not None:
            pairs: dict[tuple[int, int], int] = {}
            of = [pairs.setdefault((back.of[t], rows.of[t]), len(pairs)) for t in ts]
            table = [tuple(-c for c in back.coefs[b]) + rows.coefs[k] for b, k in pairs]
            seeds = back.seeds + rows.seeds
        else:
            return
        if seeds:
            split = len(back.seeds) if move and back is not None and rows is not None else 0
            with named("projection", self.projection):
                self.projection.add_table(items, table, of, seeds, split, rounding, rounding_seed)

    def _way_back(self) -> list[tuple[tuple[float, ...], tuple[int, ...]] | None]:
        """Per tensor, the (coefficients, seeds) that take it from where it is back to theta,
        or None: it is at theta."""
        return [None] * len(self.infos)

    def check(
        self,
        rows: Rows,
        rounding: str = "nearest",
        rounding_seed: int = 0,
        scale: Sequence[float] | None = None,
    ) -> None:
        """Raise guard.NonFiniteUpdate, writing nothing, when ``update(rows)`` after each
        tensor t is multiplied by ``scale[t]`` (the weight decay) would leave a tensor
        non-finite (kerzoo.perturb.guard)."""
        scale = scale or [1.0] * len(self.infos)
        adds = []
        for t, (info, back) in enumerate(zip(self.infos, self._way_back())):
            cs, ss = rows[t]
            if back is not None:
                cs, ss = back[0] + cs, back[1] + ss
            adds.append((info, info.tensor, list(cs), list(ss), scale[t]))
        with named("projection", self.projection):
            guard.check_adds(self.projection, adds, rounding, rounding_seed)

    def memory_bytes(self) -> int:
        return 0

    def remove(self) -> None:
        """Detach from the module (hooks)."""


class InPlace(Perturber):
    """Writes theta + sum c_i z_i into the parameters; one fused pass from point to point."""

    mode = "inplace"

    def __init__(self, infos, projection):
        super().__init__(infos, projection)
        self.current: Rows | None = None  # the point the parameters are at (None: theta)

    def goto(self, rows: Rows | None) -> None:
        """Move the parameters from the current point to ``rows`` (None: theta), in one pass."""
        if rows is None and self.current is None:
            return
        items = [(info, info.tensor) for info in self.infos]
        self._pass(items, range(len(items)), rows, self.current, move=True)
        self.current = rows

    @contextlib.contextmanager
    def at(self, rows):
        self.goto(None if rows.empty else rows)
        yield

    def settle(self):
        self.goto(None)

    def replay_at(self, rows):
        self.goto(None if rows.empty else rows)

    def _way_back(self):
        back = self.current
        if back is None:
            return [None] * len(self.infos)
        neg = [tuple(-c for c in cs) for cs in back.coefs]
        return [(neg[back.of[t]], back.seeds) for t in range(len(self.infos))]

    def update(self, rows, rounding="nearest", rounding_seed=0):
        """Restore and update in one pass (one rounding)."""
        items = [(info, info.tensor) for info in self.infos]
        self._pass(items, range(len(items)), rows, self.current, False, rounding, rounding_seed)
        self.current = None  # (a projection raising before it wrote: still at the point)
