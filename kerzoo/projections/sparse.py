"""Built-in plugin: sparse directions (docs/algorithms.md, Sparse directions).

- ``sparse-mezo`` (Sparse MeZO, Liu et al., arXiv 2402.15751): z_i masked to the weights whose
  magnitude is at most a per-tensor threshold h_t, the ``1 - sparsity`` quantile of |theta_t| at
  the start of each step. The mask m = (|theta| <= h_t) is recomputed from the weights at every
  pass, so nothing but one threshold per tensor is held; it needs the weights unperturbed while
  a point is active, which the on-the-fly mode gives (``perturb="auto"`` picks it).
- ``lezo`` (LeZO, arXiv 2410.09823): each step perturbs and updates a random subset of the
  model's blocks (the tensors sharing a name prefix up to the first number, e.g.
  ``model.layers.3.``; tensors outside numbered blocks form one block), chosen from (seed, step):
  the passes over the other blocks are skipped.

Both are dense Gaussian z where they act, and 0 elsewhere: E[Z Zᵀ] = diag(mask), so the estimate
is the gradient restricted to the chosen weights (not rescaled: the step along them is lr's).
"""

from __future__ import annotations

import math
import re

import torch

from .. import engine
from ..hookspecs import hookimpl
from ..seeds import derive, uniform
from .base import Projection
from .dense import Dense, add_dense_many, add_dense_table


def _add_rounded(target: torch.Tensor, delta: torch.Tensor, rounding: str, seed: int) -> None:
    """target += delta (float32/64) with one rounding: nearest, or stochastic for bf16."""
    if target.dtype == delta.dtype:
        target.add_(delta)
        return
    total = target.to(delta.dtype).add_(delta)
    if rounding == "stochastic" and target.dtype == torch.bfloat16:
        # add uniform random low bits below bf16's mantissa, then truncate: rounds up with the
        # probability of the remainder (seeded, so a replay rounds the same way)
        g = torch.Generator(device=total.device).manual_seed(seed & (2**63 - 1))
        noise = torch.randint(0, 1 << 16, total.shape, generator=g, device=total.device)
        bits = (total.view(torch.int32) + noise.to(torch.int32)) & ~0xFFFF
        target.copy_(bits.view(torch.float32))
        return
    if rounding == "stochastic":
        raise ValueError(
            f"projection 'sparse-mezo': stochastic rounding into {target.dtype} is not "
            "implemented; use stochastic_rounding=False, or bf16 weights"
        )
    target.copy_(total)


class SparseMeZO(Dense):
    """Sparse MeZO: dense z masked to |theta| <= the per-tensor (1 - sparsity) quantile."""

    name = "sparse-mezo"
    defaults = {"dist": "gaussian", "sparsity": 0.75}
    shardable = False  # the threshold is a quantile of the whole tensor
    stationary = False  # the mask follows the weights
    reads_weights = True  # the mask is computed from the unperturbed weights

    def __init__(self, **options):
        super().__init__(**options)
        self.sparsity = float(self.options["sparsity"])
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(
                f"projection 'sparse-mezo': sparsity must be in [0, 1) (the share of the largest "
                f"weights left unperturbed), got {self.sparsity!r}"
            )
        self.thresholds: dict[str, float] = {}
        self.params = []

    def setup(self, params, base_seed):
        self.params = list(params)

    def begin_step(self, step):
        """h_t: the (1 - sparsity) quantile of |theta_t|, from the weights at the step's start."""
        for p in self.params:
            a = p.tensor.detach().abs().flatten().float()
            k = max(1, min(a.numel(), round((1.0 - self.sparsity) * a.numel())))
            self.thresholds[p.name] = float(a.kthvalue(k).values)

    def mask(self, p) -> torch.Tensor:
        return p.tensor.detach().abs() <= self.thresholds[p.name]

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
        delta = torch.zeros(target.shape, dtype=dtype, device=target.device)
        engine.add_z_multi(delta, list(coefs), list(seeds), p.key, p.offset, self.options["dist"])
        delta.mul_(self.mask(p))
        _add_rounded(target, delta, rounding, derive(rounding_seed, p.key))

    def move(self, p, target, restore, new):
        self.add(p, target, [restore[0]], [restore[1]])
        self.add(p, target, [new[0]], [new[1]])

    def add_many(self, items, coefs, seeds, rounding="nearest", rounding_seed=0):
        for p, target in items:
            self.add(p, target, coefs, seeds, rounding, rounding_seed)

    def move_many(self, items, restore, new):
        for p, target in items:
            self.move(p, target, restore, new)

    add_table = Projection.add_table  # per row, through add_many: the mask is per tensor

    def state_dict(self):
        return {"thresholds": dict(self.thresholds)}

    def load_state_dict(self, state):
        self.thresholds = dict(state.get("thresholds", {}))

    def memory_bytes(self):
        return 8 * len(self.thresholds)


_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def block_of(name: str) -> str:
    """The block a tensor belongs to: its name up to the first numbered component, or ''."""
    m = _BLOCK.match(name)
    return m.group(1) if m else ""


class LeZO(Dense):
    """LeZO: dense z on a random share of the model's blocks each step, 0 on the others."""

    name = "lezo"
    defaults = {"dist": "gaussian", "fraction": 0.25}
    shardable = True
    stationary = False  # the chosen blocks change every step

    def __init__(self, **options):
        super().__init__(**options)
        self.fraction = float(self.options["fraction"])
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(
                f"projection 'lezo': fraction must be in (0, 1] (the share of blocks perturbed "
                f"per step), got {self.fraction!r}"
            )
        self.base_seed, self.blocks, self.active = 0, [], set()

    def setup(self, params, base_seed):
        self.base_seed = int(base_seed)
        self.blocks = sorted({block_of(p.name) for p in params})

    def begin_step(self, step):
        """ceil(fraction x blocks) blocks, the lowest of a seeded score per (step, block)."""
        k = max(1, math.ceil(len(self.blocks) * self.fraction))
        score = {b: uniform(derive(self.base_seed, "lezo", step), b) for b in self.blocks}
        self.active = set(sorted(self.blocks, key=lambda b: score[b])[:k])

    def chosen(self, items):
        return [(p, t) for p, t in items if block_of(p.name) in self.active]

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        if block_of(p.name) in self.active:
            super().add(p, target, coefs, seeds, rounding, rounding_seed)

    def move(self, p, target, restore, new):
        if block_of(p.name) in self.active:
            super().move(p, target, restore, new)

    def add_many(self, items, coefs, seeds, rounding="nearest", rounding_seed=0):
        items = self.chosen(items)
        if items:
            add_dense_many(items, coefs, seeds, self.options["dist"], rounding, rounding_seed)

    def move_many(self, items, restore, new):
        items = self.chosen(items)
        if items:
            super().move_many(items, restore, new)

    def add_table(self, items, rows, of, seeds, split=0, rounding="nearest", rounding_seed=0):
        kept = [(item, k) for item, k in zip(items, of) if block_of(item[0].name) in self.active]
        if kept:
            add_dense_table(
                [i for i, _ in kept],
                rows,
                [k for _, k in kept],
                seeds,
                split,
                self.options["dist"],
                rounding,
                rounding_seed,
            )


@hookimpl
def kerzoo_register_projections(register):
    register(SparseMeZO)
    register(LeZO)
