"""Built-in plugin: low-rank directions for 2-D tensors (SubZero, LOZO); 1-D tensors stay dense.

subspace (SubZero, docs/algorithms.md): per 2-D tensor W (m x n), U (m x r) and V (n x r) with
orthonormal columns, from the QR of Gaussian matrices seeded by (refresh index, key), redrawn
every T steps; per direction S_i ~ N(0, I_r) from (seed_i, key) and
    Z_i = sqrt(m n) / r * U S_i V^T,
so that E[Z (.) Z] = 1 per element, as for a dense Gaussian z. sum_i c_i Z_i is applied as
one W += (sqrt(mn)/r) U (sum_i c_i S_i) V^T with the engine's add_lowrank: no m x n temporary.

lowrank (LOZO): Z_i = U_i V^T / sqrt(r) with U_i ~ N(0, 1)^{m x r} fresh for each direction and
step (from (seed_i, key)) and V ~ N(0, 1)^{n x r} redrawn every nu steps; sum_i c_i Z_i =
(sum_i c_i U_i) V^T / sqrt(r). The 1/sqrt(r) makes E[Z (.) Z] = 1 (LOZO's paper has r = 1).

Both hold their bases only (subspace: (m + n) r numbers per matrix; lowrank: n r), and the
bases are a pure function of (seed, step // period, key): state_dict records the refresh
index and a resumed run regenerates them bit for bit.
"""

from __future__ import annotations

import math

import torch

from .. import engine
from ..hookspecs import hookimpl
from ..seeds import derive
from .base import Projection
from .dense import Z_MAX, add_dense_many


def gaussian(shape, seed: int, key: int, dtype=torch.float32, device=None) -> torch.Tensor:
    return engine.fill_z(torch.empty(shape, dtype=dtype, device=device), seed, key)


def orthonormal(rows: int, r: int, seed: int, key: int, device=None) -> torch.Tensor:
    """Q of the QR of a seeded Gaussian rows x r matrix: orthonormal columns (float64 QR)."""
    g = gaussian((rows, r), seed, key, torch.float64, device)
    q, rr = torch.linalg.qr(g)
    return (q * torch.sign(torch.diagonal(rr))).to(torch.float32)  # a unique Q


class LowRankDirections(Projection):
    """Directions that are low-rank on matrices (``factors`` gives c, U, S, V) and dense z on every
    other tensor: how SubZero, LOZO and P-GAP apply them, one engine call for all the 1-D tensors
    of a pass and one add_lowrank per matrix."""

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        if len(p.whole_shape) == 2:
            engine.add_lowrank(target, *self.factors(p, coefs, seeds))
        else:
            add_dense_many(
                [(p, target)], coefs, seeds, rounding=rounding, rounding_seed=rounding_seed
            )

    def move(self, p, target, restore, new):
        """Restore and perturb in one pass: the two share the bases, so their sum is one term."""
        self.add(p, target, [restore[0], new[0]], [restore[1], new[1]])

    def add_many(self, items, coefs, seeds, rounding="nearest", rounding_seed=0):
        flat = [(p, t) for p, t in items if len(p.whole_shape) != 2]
        add_dense_many(flat, coefs, seeds, rounding=rounding, rounding_seed=rounding_seed)
        for p, target in items:
            if len(p.whole_shape) == 2:
                self.add(p, target, coefs, seeds)

    def move_many(self, items, restore, new):
        self.add_many(items, [restore[0], new[0]], [restore[1], new[1]])


class _LowRank(LowRankDirections):
    period_option = "refresh"
    shardable = True  # the bases span the whole matrix; a shard of rows takes its rows of U

    def setup(self, params, base_seed):
        self.params, self.base_seed = list(params), base_seed
        for p in self.params:
            if len(p.whole_shape) == 2:
                p.rows()  # a shard must be a block of rows: refused here, not mid-step
        self.index = -1
        self.bases: dict[int, tuple[torch.Tensor, ...]] = {}

    def rank(self, p) -> int:
        return max(1, min(int(self.options["rank"]), *p.whole_shape))

    def begin_step(self, step):
        index = step // max(1, int(self.options[self.period_option]))
        if index != self.index:
            self.index = index
            self.bases = {
                id(p): self.make_bases(p, derive(self.base_seed, "bases", index))
                for p in self.params
                if len(p.whole_shape) == 2
            }

    def factors(self, p, coefs, seeds):
        return self.matrix_factors(p, coefs, seeds) if len(p.whole_shape) == 2 else None

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = -1  # regenerated at the next begin_step, from the step counter

    def memory_bytes(self):
        return sum(t.numel() * t.element_size() for b in self.bases.values() for t in b)


class Subspace(_LowRank):
    """SubZero: Z = sqrt(mn)/r U S V^T in a random subspace redrawn every `refresh` steps."""

    name = "subspace"
    defaults = {"rank": 8, "refresh": 2000}

    def make_bases(self, p, seed):
        m, n = p.whole_shape
        r = self.rank(p)
        dev = p.tensor.device
        return orthonormal(m, r, derive(seed, "U"), p.key, dev), orthonormal(
            n, r, derive(seed, "V"), p.key, dev
        )

    def bounds(self, params):
        """|Z_jk| <= sqrt(mn)/r |U_j| |S| |V_k| <= sqrt(mn)/r * 1 * 7r * 1 (orthonormal columns:
        rows of norm <= 1; |S|_F <= 7r); 1-D tensors: dense z."""
        z = Z_MAX["gaussian"]
        return [
            z * math.sqrt(math.prod(p.whole_shape)) if len(p.whole_shape) == 2 else z
            for p in params
        ]

    def matrix_factors(self, p, coefs, seeds):
        u, v = self.bases[id(p)]
        m, n = p.whole_shape
        r = u.shape[1]
        s = torch.zeros(r, r, dtype=torch.float32, device=u.device)
        for c, sd in zip(coefs, seeds):
            s += c * gaussian((r, r), sd, p.key, device=u.device)
        return math.sqrt(m * n) / r, u[p.rows()], s, v


class LowRankLOZO(_LowRank):
    """LOZO: Z = U V^T / sqrt(r), U fresh each step and direction, V redrawn every `nu` steps."""

    name = "lowrank"
    defaults = {"rank": 1, "nu": 100}
    period_option = "nu"

    def make_bases(self, p, seed):
        return (
            gaussian(
                (p.whole_shape[1], self.rank(p)), derive(seed, "V"), p.key, device=p.tensor.device
            ),
        )

    def bounds(self, params):
        """|Z_jk| <= sum_l |A_jl| |V_kl| / sqrt(r) <= 49 r / sqrt(r); 1-D tensors: dense z."""
        z = Z_MAX["gaussian"]
        return [z * z * math.sqrt(self.rank(p)) if len(p.whole_shape) == 2 else z for p in params]

    def matrix_factors(self, p, coefs, seeds):
        (v,) = self.bases[id(p)]
        rows, r = p.rows(), v.shape[1]
        a = torch.zeros(rows.stop - rows.start, r, dtype=torch.float32, device=v.device)
        for c, sd in zip(
            coefs, seeds
        ):  # rows of the whole m x r Gaussian: its elements from rows.start * r on
            a += c * engine.fill_z(torch.empty_like(a), sd, p.key, rows.start * r)
        return 1.0 / math.sqrt(r), a, torch.eye(r, device=v.device), v


@hookimpl
def kerzoo_register_projections(register):
    register(Subspace)
    register(LowRankLOZO)
