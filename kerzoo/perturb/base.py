"""The Perturber interface: how the optimizer enters and leaves a point.

A Perturber gets the step's ``Rows`` (kerzoo.perturb.table) and makes the closures' forwards see
theta + sum_i c_i z_i for each tensor. Strategies: ``InPlace`` writes the parameters (fused
restore-and-perturb passes); ``OnTheFly`` (kerzoo.perturb.onthefly) shows each module's forward a
perturbed transient and never writes W while perturbed; ``OutputPerturbation``
(kerzoo.perturb.outputs) adds a low-rank direction to nn.Linear outputs. Only ``update`` changes
theta.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

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
        self._add(rows, self._way_back(), rounding, rounding_seed)

    def _way_back(self) -> list:
        """Per tensor, the (coefficients, seeds) that take it from where it is back to theta,
        or None: it is at theta."""
        return [None] * len(self.infos)

    def _passes(self, rows: Rows, restore: Sequence) -> list[tuple[list, list, list]]:
        """One pass per distinct (restore, rows) pair: (items, coefficients, seeds) with
        target += restore, then += rows, fused."""
        passes: dict[tuple, list] = {}
        for t, info in enumerate(self.infos):
            passes.setdefault((restore[t], rows.of[t]), []).append((info, info.tensor))
        work = []
        for (back, k), items in passes.items():
            cs, ss = rows.entries[k]
            if back is not None:
                cs, ss = back[0] + cs, back[1] + ss
            if cs:
                work.append((items, list(cs), list(ss)))
        return work

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
        at = {id(info): t for t, info in enumerate(self.infos)}
        adds = [
            (info, target, cs, ss, scale[at[id(info)]])
            for items, cs, ss in self._passes(rows, self._way_back())
            for info, target in items
        ]
        seen = {id(a[0]) for a in adds}
        adds += [
            (i, i.tensor, [], [], scale[t]) for t, i in enumerate(self.infos) if id(i) not in seen
        ]
        with named("projection", self.projection):
            guard.check_adds(self.projection, adds, rounding, rounding_seed)

    def _add(self, rows: Rows, restore: Sequence, rounding: str, rounding_seed: int) -> None:
        with named("projection", self.projection):
            for items, cs, ss in self._passes(rows, restore):
                self.projection.add_many(
                    items, cs, ss, rounding=rounding, rounding_seed=rounding_seed
                )

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
        """Move the parameters from the current point to ``rows`` (None: theta)."""
        if rows is None and self.current is None:
            return
        back = self.current
        passes: dict[tuple, list] = {}
        for t, info in enumerate(self.infos):
            key = (back.of[t] if back else None, rows.of[t] if rows else None)
            passes.setdefault(key, []).append((info, info.tensor))
        with named("projection", self.projection):
            self._moves(back, rows, passes)
        self.current = rows

    def _moves(self, back: Rows | None, rows: Rows | None, passes: dict) -> None:
        for (b, k), items in passes.items():
            rc, rs = back.entries[b] if b is not None else ((), ())
            rc = tuple(-c for c in rc)
            nc, ns = rows.entries[k] if k is not None else ((), ())
            if len(rc) == 1 and len(nc) == 1:
                self.projection.move_many(items, (rc[0], rs[0]), (nc[0], ns[0]))
            else:
                if rc:
                    self.projection.add_many(items, list(rc), list(rs))
                if nc:
                    self.projection.add_many(items, list(nc), list(ns))

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
        neg = [(tuple(-c for c in cs), ss) for cs, ss in back.entries]
        return [neg[back.of[t]] for t in range(len(self.infos))]

    def update(self, rows, rounding="nearest", rounding_seed=0):
        """Restore and update in one pass per tensor class."""
        self._add(rows, self._way_back(), rounding, rounding_seed)
        self.current = None  # (a projection raising before it wrote: still at the point)
