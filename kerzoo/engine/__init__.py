"""The seeded perturbation engine.

z(seed, key, j) is a pure function of a seed, a parameter's key and an element's global flat
index (Philox4x32-10, philox.py), so a perturbation is regenerated wherever it is needed and
never stored. The ops apply it in place, in fused passes (docs/algorithms.md, Order of passes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from . import ops  # noqa: F401  (registers the torch.library ops)
from .build import build, info, info_lines, load_extension
from .reference import DIST_CODES

__all__ = [
    "param_key",
    "fill_z",
    "add_z",
    "add_z_multi",
    "restore_perturb",
    "add_lowrank",
    "fill_z_foreach",
    "add_z_foreach",
    "add_z_multi_foreach",
    "restore_perturb_foreach",
    "add_z_table",
    "build",
    "info",
    "info_lines",
]


def param_key(name: str) -> int:
    """A stable key in [0, 2**63) for a parameter name: blake2b, the same on every machine."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _dist(dist: str) -> int:
    try:
        return DIST_CODES[dist]
    except KeyError:
        raise ValueError(f"unknown dist {dist!r}: use one of {', '.join(DIST_CODES)}") from None


def _check(theta: torch.Tensor, what: str = "theta") -> None:
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(theta).__name__}")
    if not theta.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {theta.dtype}")
    if not theta.is_contiguous():
        raise ValueError(
            f"{what} must be contiguous (got strides {theta.stride()}): pass t.contiguous() "
            "or perturb the underlying parameter"
        )


_LIMIT = 2**63


def _ints(seed: int, key: int, offset: int) -> None:
    if (
        type(seed) is int
        and type(key) is int
        and type(offset) is int
        and (  # the common case, cheaply
            0 <= seed < _LIMIT and 0 <= key < _LIMIT and 0 <= offset < _LIMIT
        )
    ):
        return
    for name, v in (("seed", seed), ("key", key), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _LIMIT:
            raise ValueError(f"{name} must be an int in [0, 2**63), got {v!r}")


def fill_z(
    out: torch.Tensor, seed: int, key: int, offset: int = 0, dist: str = "gaussian"
) -> torch.Tensor:
    """out[j] = z(seed, key, offset + j) for every flat index j; returns out."""
    _check(out, "out")
    _ints(seed, key, offset)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.fill_z(out, seed, key, offset, _dist(dist))
    return out


def _directions(coefs: Sequence[float], seeds: Sequence[int], rounding: str, rounding_seed: int):
    """Checked directions, one term per seed: restore + update of one direction is one z."""
    if len(coefs) != len(seeds):
        raise ValueError(
            f"coefs and seeds must have the same length, got {len(coefs)} and {len(seeds)}"
        )
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"unknown rounding {rounding!r}: use 'nearest' or 'stochastic'")
    for s in seeds:
        _ints(s, 0, 0)
    _ints(rounding_seed, 0, 0)
    merged: dict[int, float] = {}
    for c, s in zip(coefs, seeds):
        merged[int(s)] = merged.get(int(s), 0.0) + float(c)
    return list(merged.values()), list(merged)


def add_z_multi(
    theta: torch.Tensor,
    coefs: Sequence[float],
    seeds: Sequence[int],
    key: int,
    offset: int = 0,
    dist: str = "gaussian",
    rounding: str = "nearest",
    rounding_seed: int = 0,
) -> None:
    """theta += sum_i coefs[i] * z(seeds[i], key) in one pass, one rounding per element.

    ``rounding="stochastic"`` rounds to bf16/fp16 up or down with the probability of the
    distance (unbiased), from Philox bits of ``rounding_seed``: deterministic.
    """
    _check(theta)
    _ints(0, key, offset)
    coefs, seeds = _directions(coefs, seeds, rounding, rounding_seed)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.add_z_multi(
            theta, coefs, seeds, key, offset, _dist(dist), rounding == "stochastic", rounding_seed
        )


def add_z(
    theta: torch.Tensor, c: float, seed: int, key: int, offset: int = 0, dist: str = "gaussian"
) -> None:
    """theta += c * z(seed, key), arithmetic in float32 (float64 for float64), one rounding."""
    add_z_multi(theta, [c], [seed], key, offset, dist)


def restore_perturb(
    theta: torch.Tensor,
    c_restore: float,
    seed_restore: int,
    c_new: float,
    seed_new: int,
    key: int,
    offset: int = 0,
    dist: str = "gaussian",
) -> None:
    """Restore then perturb in one pass: bit-identical to two add_z calls, half their traffic."""
    _check(theta)
    _ints(seed_restore, key, offset)
    _ints(seed_new, key, offset)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.restore_perturb(
            theta, float(c_restore), seed_restore, float(c_new), seed_new, key, offset, _dist(dist)
        )


def add_lowrank(
    theta: torch.Tensor, c: float, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor
) -> None:
    """theta (m x n) += c * U @ S @ V.T with U (m x r), S (r x r), V (n x r); no m x n temporary."""
    _check(theta)
    if theta.dim() != 2 or U.dim() != 2 or S.dim() != 2 or V.dim() != 2:
        raise ValueError("add_lowrank needs 2-D theta, U, S and V")
    m, n = theta.shape
    r = S.shape[0]
    if U.shape != (m, r) or S.shape != (r, r) or V.shape != (n, r):
        raise ValueError(
            f"shapes do not fit theta {tuple(theta.shape)}: U {tuple(U.shape)} (want {(m, r)}), "
            f"S {tuple(S.shape)} (want {(r, r)}), V {tuple(V.shape)} (want {(n, r)})"
        )
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.add_lowrank(theta, float(c), U, S, V)


def _tensors(thetas, keys: Sequence[int], offsets: Sequence[int] | None, what: str = "thetas"):
    thetas = list(thetas)
    keys = [int(k) for k in keys]
    offsets = [0] * len(thetas) if offsets is None else [int(o) for o in offsets]
    if not len(thetas) == len(keys) == len(offsets):
        raise ValueError(
            f"{len(thetas)} {what} but {len(keys)} keys and {len(offsets)} offsets: give one each"
        )
    devices = {t.device for t in thetas if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(
            f"{what} are on several devices {sorted(map(str, devices))}: call once per device"
        )
    for t in thetas:  # once per tensor of every pass: the checks inline, _check names a failure
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.is_contiguous()):
            _check(t, what[:-1])
    if thetas and not (min(keys) >= 0 and max(keys) < _LIMIT):
        for k in keys:
            _ints(0, k, 0)
    if thetas and not (min(offsets) >= 0 and max(offsets) < _LIMIT):
        for o in offsets:
            _ints(0, 0, o)
    return thetas, keys, offsets


def fill_z_foreach(
    outs,
    seed: int,
    keys: Sequence[int],
    offsets: Sequence[int] | None = None,
    dist: str = "gaussian",
) -> None:
    """fill_z on each tensor of a list (one key and offset each), in as few launches as possible."""
    outs, keys, offsets = _tensors(outs, keys, offsets, "outs")
    _ints(seed, 0, 0)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.fill_z_foreach(outs, seed, keys, offsets, _dist(dist))


def add_z_table(
    thetas,
    coefs,
    seeds: Sequence[int],
    keys: Sequence[int],
    offsets: Sequence[int] | None = None,
    dist: str = "gaussian",
    split: int = 0,
    rounding: str = "nearest",
    rounding_seed: int = 0,
) -> None:
    """thetas[t] += sum_i coefs[t, i] * z(seeds[i], keys[t]) for each tensor of a list, in one call
    (on CUDA, one launch per dtype and 48 tensors): a pass over a model whose tensors each take
    their own coefficients (per-tensor factors). ``coefs``: tensors x seeds, a float64 or float32
    CPU tensor (a row may be broadcast: stride 0) or nested lists. Columns [0, split) are added
    and rounded first, then [split, q), rounded as asked: ``split`` > 0 is a move from a point
    to the next, bit for bit restore_perturb's two roundings. Columns of one seed within a phase
    are one term (summed in float64), as in add_z_multi; zero coefficients are skipped."""
    thetas, keys, offsets = _tensors(thetas, keys, offsets)
    if not isinstance(coefs, torch.Tensor):
        coefs = torch.tensor(coefs, dtype=torch.float64).reshape(len(thetas), len(seeds))
    if coefs.dim() != 2 or tuple(coefs.shape) != (len(thetas), len(seeds)):
        raise ValueError(
            f"coefs must be {len(thetas)} x {len(seeds)} (one row per tensor, one column per "
            f"seed), got shape {tuple(coefs.shape)}"
        )
    if coefs.dtype not in (torch.float64, torch.float32) or coefs.device.type != "cpu":
        raise ValueError(
            f"coefs must be a float64 or float32 CPU tensor, got {coefs.dtype} on {coefs.device}: "
            "the kernels take the coefficients as launch parameters"
        )
    if type(split) is not int or not 0 <= split <= len(seeds):
        raise ValueError(f"split must be an int in [0, {len(seeds)}], got {split!r}")
    _directions([0.0] * len(seeds), seeds, rounding, rounding_seed)  # checks seeds and rounding
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.add_z_table(
            thetas,
            coefs,
            [int(s) for s in seeds],
            keys,
            offsets,
            _dist(dist),
            split,
            rounding == "stochastic",
            rounding_seed,
        )


def _row(thetas, coefs: Sequence[float]) -> torch.Tensor:
    """One row of coefficients for every tensor: a broadcast table (stride 0)."""
    return torch.tensor(coefs, dtype=torch.float64).expand(len(thetas), len(coefs))


def add_z_multi_foreach(
    thetas,
    coefs: Sequence[float],
    seeds: Sequence[int],
    keys: Sequence[int],
    offsets: Sequence[int] | None = None,
    dist: str = "gaussian",
    rounding: str = "nearest",
    rounding_seed: int = 0,
) -> None:
    """add_z_multi on each tensor of a list: one pass of a ZO step over a whole model in one call
    (add_z_table with one row for all)."""
    coefs, seeds = _directions(coefs, seeds, rounding, rounding_seed)
    thetas = list(thetas)
    add_z_table(thetas, _row(thetas, coefs), seeds, keys, offsets, dist, 0, rounding, rounding_seed)


def add_z_foreach(
    thetas,
    c: float,
    seed: int,
    keys: Sequence[int],
    offsets: Sequence[int] | None = None,
    dist: str = "gaussian",
) -> None:
    """theta += c * z(seed, key) for each tensor of a list."""
    add_z_multi_foreach(thetas, [c], [seed], keys, offsets, dist)


def restore_perturb_foreach(
    thetas,
    c_restore: float,
    seed_restore: int,
    c_new: float,
    seed_new: int,
    keys: Sequence[int],
    offsets: Sequence[int] | None = None,
    dist: str = "gaussian",
) -> None:
    """restore_perturb on each tensor of a list (add_z_table with one row and split 1)."""
    thetas = list(thetas)
    row = _row(thetas, [float(c_restore), float(c_new)])
    add_z_table(thetas, row, [seed_restore, seed_new], keys, offsets, dist, 1)
