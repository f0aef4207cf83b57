"""Built-in plugin: dense Gaussian (or Rademacher) directions from the engine (MeZO's z)."""

from __future__ import annotations

from .. import engine
from ..hookspecs import hookimpl
from .base import Projection


class Dense(Projection):
    """z_i = the engine's z(seed_i, key, j) for every element: no memory held."""

    name = "dense"
    defaults = {"dist": "gaussian"}
    shardable = True

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        engine.add_z_multi(target, list(coefs), list(seeds), p.key, p.offset, self.options["dist"],
                           rounding=rounding, rounding_seed=rounding_seed)

    def move(self, p, target, restore, new):
        engine.restore_perturb(target, restore[0], restore[1], new[0], new[1], p.key, p.offset, self.options["dist"])


@hookimpl
def kerzoo_register_projections(register):
    register(Dense)
