"""Built-in plugin: dense Gaussian (or Rademacher) directions from the engine (MeZO's z)."""

from __future__ import annotations

import torch

from .. import engine
from ..hookspecs import hookimpl
from .base import Projection

# the largest |z| the engine draws: Box-Muller of u >= 2^-33 gives r <= sqrt(66 ln 2) = 6.77
Z_MAX = {"gaussian": 7.0, "rademacher": 1.0}


class Dense(Projection):
    """z_i = the engine's z(seed_i, key, j) for every element: no memory held."""

    name = "dense"
    defaults = {"dist": "gaussian"}
    shardable = True
    stationary = True

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        engine.add_z_multi(
            target,
            list(coefs),
            list(seeds),
            p.key,
            p.offset,
            self.options["dist"],
            rounding=rounding,
            rounding_seed=rounding_seed,
        )

    def bounds(self, params):
        return [Z_MAX[self.options["dist"]]] * len(params)

    def move(self, p, target, restore, new):
        engine.restore_perturb(
            target, restore[0], restore[1], new[0], new[1], p.key, p.offset, self.options["dist"]
        )

    # the same passes over many tensors: one engine call per device, bit for bit per-tensor's
    def add_many(self, items, coefs, seeds, rounding="nearest", rounding_seed=0):
        add_dense_many(items, coefs, seeds, self.options["dist"], rounding, rounding_seed)

    def move_many(self, items, restore, new):
        for targets, keys, offsets, _ in _by_device(items):
            engine.restore_perturb_foreach(
                targets, restore[0], restore[1], new[0], new[1], keys, offsets, self.options["dist"]
            )

    def add_table(self, items, rows, of, seeds, split=0, rounding="nearest", rounding_seed=0):
        add_dense_table(
            items, rows, of, seeds, split, self.options["dist"], rounding, rounding_seed
        )


def add_dense_many(
    items, coefs, seeds, dist="gaussian", rounding="nearest", rounding_seed=0
) -> None:
    """target += sum_i coefs[i] z(seeds[i], p.key) for each (p, target), one engine call per device;
    also the 1-D tensors of the low-rank projections."""
    for targets, keys, offsets, _ in _by_device(items):
        engine.add_z_multi_foreach(
            targets,
            list(coefs),
            list(seeds),
            keys,
            offsets,
            dist,
            rounding=rounding,
            rounding_seed=rounding_seed,
        )


def add_dense_table(
    items, rows, of, seeds, split=0, dist="gaussian", rounding="nearest", rounding_seed=0
) -> None:
    """target += sum_i rows[of[k]][i] z(seeds[i], p.key) for each item k = (p, target), its restore
    terms [0, split) rounded first (Projection.add_table): one engine call per device."""
    for targets, keys, offsets, ks in _by_device(items, of):
        if len(rows) == 1:  # one row for all: broadcast
            table = torch.tensor(rows[0], dtype=torch.float64).expand(len(targets), -1)
        else:
            table = torch.tensor([rows[k] for k in ks], dtype=torch.float64)
        engine.add_z_table(
            targets, table, seeds, keys, offsets, dist, split, rounding, rounding_seed
        )


def _by_device(items, of=None):
    """(targets, keys, offsets, rows of[k]) per device, in the order the items come."""
    of = [0] * len(items) if of is None else list(of)
    targets = [t for _, t in items]
    devices = {t.device for t in targets}
    if len(devices) == 1:  # the common case, in four list passes
        return [(targets, [p.key for p, _ in items], [p.offset for p, _ in items], of)]
    groups: dict = {}
    for (p, target), k in zip(items, of):
        g = groups.setdefault(target.device, ([], [], [], []))
        g[0].append(target)
        g[1].append(p.key)
        g[2].append(p.offset)
        g[3].append(k)
    return list(groups.values())


@hookimpl
def kerzoo_register_projections(register):
    register(Dense)
