"""The projection interface (what a plugin implements).

A projection adds seeded directions to a tensor: ``add(p, target, coefs, seeds)`` makes
target += sum_i coefs[i] * Z_i(seeds[i], p), where Z_i is the projection's direction for the
tensor ``p``. The optimizer never builds a Z itself. ``target`` is ``p.tensor`` (in-place
mode) or a transient copy of it (on-the-fly mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass
class ParamInfo:
    """A trainable tensor: its stable name, the engine key of the name, the tensor, its group."""

    name: str
    key: int
    tensor: torch.Tensor
    group: int
    offset: int = 0  # global flat index of tensor's first element (shards)
    shape: tuple[int, ...] | None = (
        None  # the whole tensor's shape when ``tensor`` is a shard of it
    )

    @property
    def whole_shape(self) -> tuple[int, ...]:
        """The shape of the whole tensor: a shard's directions are slices of the whole one's."""
        return tuple(self.shape) if self.shape is not None else tuple(self.tensor.shape)

    def rows(self) -> slice:
        """The rows of the whole tensor that ``tensor`` holds (a shard of a matrix: whole rows)."""
        whole = self.whole_shape
        per_row = math.prod(whole[1:])
        if tuple(self.tensor.shape[1:]) != whole[1:] or self.offset % max(per_row, 1):
            raise ValueError(
                f"{self.name}: a shard of a {len(whole)}-D tensor must be a block of whole rows, "
                f"got shape {tuple(self.tensor.shape)} at element offset {self.offset} of {whole}"
            )
        start = self.offset // max(per_row, 1)
        return slice(start, start + self.tensor.shape[0])


class Projection:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # True when the projection gives a shard (ParamInfo.offset, .shape) exactly its slice of the
    # whole tensor's direction: elementwise projections for any flat slice, low-rank ones for
    # blocks of rows
    shardable: ClassVar[bool] = False
    # True when end_step needs the loss at theta itself: the optimizer refuses, when it is built,
    # an estimator whose points do not include theta ({})
    needs_center: ClassVar[bool] = False
    # True when Z_i(seed, p) is the same at every step (no bases or state that change): an update
    # rule may then rebuild past steps' directions from their seeds (momentum-replay)
    stationary: ClassVar[bool] = False
    # True when add() reads p.tensor's values (a mask from the weights): p.tensor must then be
    # theta itself while a point is active, so the optimizer perturbs on the fly
    reads_weights: ClassVar[bool] = False

    def __init__(self, **options: Any):
        from ..registry import unknown_options

        unknown_options(f"projection {self.name!r}", options, self.defaults)
        self.options = {**self.defaults, **options}

    def setup(self, params: Sequence[ParamInfo], base_seed: int) -> None:
        """Called once with every trainable tensor."""

    def begin_step(self, step: int) -> None:
        """Called before each step's first evaluation (refresh bases here)."""

    def add(
        self,
        p: ParamInfo,
        target: torch.Tensor,
        coefs: Sequence[float],
        seeds: Sequence[int],
        rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        raise NotImplementedError

    def move(
        self, p: ParamInfo, target: torch.Tensor, restore: tuple[float, int], new: tuple[float, int]
    ) -> None:
        """target += restore[0] Z(restore[1]), rounded, then += new[0] Z(new[1]): point to point."""
        self.add(p, target, [restore[0]], [restore[1]])
        self.add(p, target, [new[0]], [new[1]])

    def add_many(
        self,
        items: Sequence[tuple[ParamInfo, torch.Tensor]],
        coefs: Sequence[float],
        seeds: Sequence[int],
        rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        """add() on each (tensor, target) pair with the same coefficients. The optimizer calls this
        once per pass over the model; an elementwise projection overrides it with one engine call
        for all the targets (on a GPU, a launch per 48 tensors instead of one per tensor)."""
        for p, target in items:
            self.add(p, target, coefs, seeds, rounding=rounding, rounding_seed=rounding_seed)

    def move_many(
        self,
        items: Sequence[tuple[ParamInfo, torch.Tensor]],
        restore: tuple[float, int],
        new: tuple[float, int],
    ) -> None:
        """move() on each (tensor, target) pair."""
        for p, target in items:
            self.move(p, target, restore, new)

    def add_table(
        self,
        items: Sequence[tuple[ParamInfo, torch.Tensor]],
        rows: Sequence[Sequence[float]],
        of: Sequence[int],
        seeds: Sequence[int],
        split: int = 0,
        rounding: str = "nearest",
        rounding_seed: int = 0,
    ) -> None:
        """A pass whose tensors take different coefficients (per-tensor factors): item k adds
        sum_i rows[of[k]][i] Z_i(seeds[i]). With 0 < split < q, a move from a point to the next:
        the terms [0, split) (the restore) are added and rounded first, then the others. The
        optimizer calls this once per pass over the model; the default makes one ``add_many``
        (``move_many`` for a move of one direction) per distinct row, and the dense projection
        one engine call (``add_z_table``) for all the rows."""
        groups: dict[int, list] = {}
        for item, k in zip(items, of, strict=True):
            groups.setdefault(k, []).append(item)
        for k, group in groups.items():
            cs, ss = list(rows[k]), list(seeds)
            if 0 < split < len(cs) and split == 1 and len(cs) == 2 and rounding == "nearest":
                self.move_many(group, (cs[0], ss[0]), (cs[1], ss[1]))
            elif 0 < split < len(cs):
                self.add_many(group, cs[:split], ss[:split])
                self.add_many(group, cs[split:], ss[split:], rounding, rounding_seed)
            elif cs:
                self.add_many(group, cs, ss, rounding=rounding, rounding_seed=rounding_seed)

    def materialize(
        self, p: ParamInfo, coefs: Sequence[float], seeds: Sequence[int]
    ) -> torch.Tensor:
        """sum_i coefs[i] Z_i as a new float32 (float64 for float64) tensor shaped like p."""
        dtype = torch.float64 if p.tensor.dtype == torch.float64 else torch.float32
        out = torch.zeros(p.tensor.shape, dtype=dtype, device=p.tensor.device)
        self.add(p, out, coefs, seeds)
        return out

    def bounds(self, params: Sequence[ParamInfo]) -> list[float | None]:
        """For each tensor, a bound b with |Z_i| <= b in every element of every direction, or
        None (unknown): the update guard (kerzoo.perturb.guard) then checks an update of that
        tensor in a workspace before writing it. A non-finite bound (a state gone non-finite)
        skips the step."""
        return [None] * len(params)

    def end_step(
        self,
        step: int,
        seeds: Sequence[int],
        plan: Any,
        losses: Sequence[float],
        coefs: Sequence[float],
    ) -> None:
        """Called after each completed step's update (and on replay, from the record), with the
        estimator's plan (its points and per-tensor factors), the losses at those points and the
        estimate's coefficients g_i. Projections that learn from the losses (P-GAP's gradient
        subspace, HiZOO's Hessian) update their state here; not called on a skipped step."""

    def factors(self, p: ParamInfo, coefs: Sequence[float], seeds: Sequence[int]) -> Any:
        """sum_i coefs[i] Z_i as low-rank factors (c, U, S, V) with Z = c U S V^T, or None when
        the direction of ``p`` is not low-rank. Lets a linear layer perturb its output instead of
        its weight: y + c (x V) S^T U^T."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def memory_bytes(self) -> int:
        """Bytes the projection holds between steps (bases, buffers)."""
        return 0
