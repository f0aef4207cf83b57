"""The engine's ops, registered with torch.library in the namespace ``kerzoo``.

The pure-torch reference (reference.py) is each op's default kernel
(CompositeExplicitAutograd); the compiled extension, when built, registers CPU and CUDA
kernels for the same ops, which the dispatcher then prefers (as bitsandbytes does). Meta
kernels are no-ops: every op mutates its first argument in place and returns nothing.
"""

from __future__ import annotations

import torch

from . import reference

SCHEMAS = {
    "fill_z": "fill_z(Tensor(a!) out, int seed, int key, int offset, int dist) -> ()",
    "add_z_multi": (
        "add_z_multi(Tensor(a!) theta, float[] coefs, int[] seeds, int key, int offset, int dist, "
        "bool stochastic, int rounding_seed) -> ()"
    ),
    "restore_perturb": (
        "restore_perturb(Tensor(a!) theta, float c_restore, int seed_restore, float c_new, int "
        "seed_new, int key, int offset, int dist) -> ()"
    ),
    "add_lowrank": "add_lowrank(Tensor(a!) theta, float c, Tensor u, Tensor s, Tensor v) -> ()",
    # the same passes over a list of tensors (one key and offset each): one call per pass
    "fill_z_foreach": "fill_z_foreach(Tensor(a!)[] outs, int seed, int[] keys, int[] offsets, int "
    "dist) -> ()",
    "add_z_multi_foreach": (
        "add_z_multi_foreach(Tensor(a!)[] thetas, float[] coefs, int[] seeds, int[] keys, int[] "
        "offsets, int dist, bool stochastic, int rounding_seed) -> ()"
    ),
    "restore_perturb_foreach": (
        "restore_perturb_foreach(Tensor(a!)[] thetas, float c_restore, int seed_restore, float "
        "c_new, int seed_new, int[] keys, int[] offsets, int dist) -> ()"
    ),
}

_lib = torch.library.Library("kerzoo", "DEF")
for _schema in SCHEMAS.values():
    _lib.define(_schema)

_impl = torch.library.Library("kerzoo", "IMPL")
for _name in SCHEMAS:
    _impl.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")
    _impl.impl(_name, lambda *args, **kwargs: None, "Meta")

OPS = tuple(SCHEMAS)
