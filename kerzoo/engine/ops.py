"""The engine's ops, registered with torch.library in the namespace ``kerzoo``.

The pure-torch reference (reference.py) is each op's default kernel
(CompositeExplicitAutograd); the compiled extension, when built, registers CPU and CUDA
kernels for the same ops, which the dispatcher then prefers (as bitsandbytes does). Every op
mutates its first argument in place and returns nothing; its fake kernel (``register_fake``:
what torch.compile and meta tensors run) checks the shapes and dtypes the kernels need.
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
    # over a list of tensors (one key and offset each): one call per pass over a model
    "fill_z_foreach": "fill_z_foreach(Tensor(a!)[] outs, int seed, int[] keys, int[] offsets, int "
    "dist) -> ()",
    # thetas[t] += sum_i coefs[t, i] z(seeds[i], keys[t]); coefs: a float64/float32 CPU tensor,
    # tensors x seeds; columns [0, split) are rounded on their own first (csrc/table.h)
    "add_z_table": (
        "add_z_table(Tensor(a!)[] thetas, Tensor coefs, int[] seeds, int[] keys, int[] offsets, "
        "int dist, int split, bool stochastic, int rounding_seed) -> ()"
    ),
}

_lib = torch.library.Library("kerzoo", "DEF")
for _schema in SCHEMAS.values():
    _lib.define(_schema)

_impl = torch.library.Library("kerzoo", "IMPL")
for _name in SCHEMAS:
    _impl.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")

OPS = tuple(SCHEMAS)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _tensor(t, what: str) -> None:
    torch._check(
        t.dtype in DTYPES,
        lambda: f"kerzoo: {what} must be float32, float64, float16 or bfloat16, got {t.dtype}",
    )
    torch._check(t.is_contiguous(), lambda: f"kerzoo: {what} must be contiguous")


def _dist(dist: int) -> None:
    torch._check(dist in (0, 1), lambda: f"kerzoo: dist must be 0 (gaussian) or 1, got {dist}")


def _lists(ts, keys, offsets, what: str) -> None:
    torch._check(
        len(keys) == len(ts) == len(offsets),
        lambda: f"kerzoo: {len(ts)} {what} but {len(keys)} keys and {len(offsets)} offsets",
    )
    for t in ts:
        _tensor(t, what)
    torch._check(
        len({t.device for t in ts}) <= 1, lambda: f"kerzoo: all {what} must be on one device"
    )


@torch.library.register_fake("kerzoo::fill_z")
def _(out, seed, key, offset, dist):
    _tensor(out, "out")
    _dist(dist)


@torch.library.register_fake("kerzoo::add_z_multi")
def _(theta, coefs, seeds, key, offset, dist, stochastic, rounding_seed):
    _tensor(theta, "theta")
    _dist(dist)
    torch._check(
        len(coefs) == len(seeds),
        lambda: f"kerzoo: {len(coefs)} coefs but {len(seeds)} seeds: give one of each",
    )


@torch.library.register_fake("kerzoo::restore_perturb")
def _(theta, c_restore, seed_restore, c_new, seed_new, key, offset, dist):
    _tensor(theta, "theta")
    _dist(dist)


@torch.library.register_fake("kerzoo::add_lowrank")
def _(theta, c, u, s, v):
    _tensor(theta, "theta")
    torch._check(
        theta.dim() == 2, lambda: f"kerzoo: add_lowrank needs a 2-D theta, got {theta.dim()}-D"
    )
    torch._check(
        u.dim() == 2 and s.dim() == 2 and v.dim() == 2,
        lambda: "kerzoo: add_lowrank needs 2-D U, S and V",
    )
    m, n = theta.shape
    r = s.shape[0]
    torch._check(
        tuple(u.shape) == (m, r) and tuple(s.shape) == (r, r) and tuple(v.shape) == (n, r),
        lambda: (
            f"kerzoo: add_lowrank of theta {tuple(theta.shape)} needs U {(m, r)}, S {(r, r)} "
            f"and V {(n, r)}, got {tuple(u.shape)}, {tuple(s.shape)} and {tuple(v.shape)}"
        ),
    )
    torch._check(
        all(x.is_floating_point() for x in (u, s, v)),
        lambda: "kerzoo: add_lowrank needs floating-point U, S and V",
    )


@torch.library.register_fake("kerzoo::fill_z_foreach")
def _(outs, seed, keys, offsets, dist):
    _lists(outs, keys, offsets, "outs")
    _dist(dist)


@torch.library.register_fake("kerzoo::add_z_table")
def _(thetas, coefs, seeds, keys, offsets, dist, split, stochastic, rounding_seed):
    _lists(thetas, keys, offsets, "thetas")
    _dist(dist)
    torch._check(
        tuple(coefs.shape) == (len(thetas), len(seeds)),
        lambda: (
            f"kerzoo: coefs must be {len(thetas)} x {len(seeds)} (tensors x seeds), got "
            f"{tuple(coefs.shape)}"
        ),
    )
    torch._check(
        coefs.dtype in (torch.float64, torch.float32),
        lambda: f"kerzoo: coefs must be float64 or float32, got {coefs.dtype}",
    )
    torch._check(
        coefs.device.type == "cpu",
        lambda: f"kerzoo: coefs must be a CPU tensor (launch parameters), got {coefs.device}",
    )
    torch._check(
        0 <= split <= len(seeds), lambda: f"kerzoo: split must be in [0, {len(seeds)}], got {split}"
    )
