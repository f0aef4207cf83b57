"""The seeded perturbation engine.

z(seed, key, j) is a pure function of a seed, a parameter's key and an element's global flat
index (Philox4x32-10, philox.py), so a perturbation is regenerated wherever it is needed and
never stored. The ops apply it in place, in fused passes (ALGORITHMS.md, Order of passes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from . import ops  # noqa: F401  (registers the torch.library ops)
from .build import build, info, info_lines, load_extension
from .reference import DIST_CODES

__all__ = [
    "param_key", "fill_z", "add_z", "add_z_multi", "restore_perturb", "add_lowrank",
    "build", "info", "info_lines",
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
        raise ValueError(f"{what} must be contiguous (got strides {theta.stride()}): pass t.contiguous() "
                         "or perturb the underlying parameter")


def _ints(seed: int, key: int, offset: int) -> None:
    for name, v in (("seed", seed), ("key", key), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise ValueError(f"{name} must be an int in [0, 2**63), got {v!r}")


def fill_z(out: torch.Tensor, seed: int, key: int, offset: int = 0, dist: str = "gaussian") -> torch.Tensor:
    """out[j] = z(seed, key, offset + j) for every flat index j; returns out."""
    _check(out, "out")
    _ints(seed, key, offset)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.fill_z(out, seed, key, offset, _dist(dist))
    return out


def add_z_multi(theta: torch.Tensor, coefs: Sequence[float], seeds: Sequence[int], key: int, offset: int = 0,
                dist: str = "gaussian", rounding: str = "nearest", rounding_seed: int = 0) -> None:
    """theta += sum_i coefs[i] * z(seeds[i], key) in one pass, one rounding per element.

    ``rounding="stochastic"`` rounds to bf16/fp16 up or down with the probability of the
    distance (unbiased), from Philox bits of ``rounding_seed``: deterministic.
    """
    _check(theta)
    if len(coefs) != len(seeds):
        raise ValueError(f"coefs and seeds must have the same length, got {len(coefs)} and {len(seeds)}")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"unknown rounding {rounding!r}: use 'nearest' or 'stochastic'")
    for s in seeds:
        _ints(s, key, offset)
    _ints(rounding_seed, key, offset)
    merged: dict[int, float] = {}
    for c, s in zip(coefs, seeds):  # one z per seed: restore + update of one direction is one term
        merged[int(s)] = merged.get(int(s), 0.0) + float(c)
    seeds, coefs = list(merged), list(merged.values())
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.add_z_multi(theta, coefs, seeds, key, offset, _dist(dist), rounding == "stochastic",
                                     rounding_seed)


def add_z(theta: torch.Tensor, c: float, seed: int, key: int, offset: int = 0, dist: str = "gaussian") -> None:
    """theta += c * z(seed, key), arithmetic in float32 (float64 for float64), one rounding."""
    add_z_multi(theta, [c], [seed], key, offset, dist)


def restore_perturb(theta: torch.Tensor, c_restore: float, seed_restore: int, c_new: float, seed_new: int,
                    key: int, offset: int = 0, dist: str = "gaussian") -> None:
    """Restore then perturb in one pass: bit-identical to two add_z calls, half the memory traffic."""
    _check(theta)
    _ints(seed_restore, key, offset)
    _ints(seed_new, key, offset)
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.restore_perturb(theta, float(c_restore), seed_restore, float(c_new), seed_new, key,
                                         offset, _dist(dist))


def add_lowrank(theta: torch.Tensor, c: float, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
    """theta (m x n) += c * U @ S @ V.T with U (m x r), S (r x r), V (n x r); no m x n temporary."""
    _check(theta)
    if theta.dim() != 2 or U.dim() != 2 or S.dim() != 2 or V.dim() != 2:
        raise ValueError("add_lowrank needs 2-D theta, U, S and V")
    m, n = theta.shape
    r = S.shape[0]
    if U.shape != (m, r) or S.shape != (r, r) or V.shape != (n, r):
        raise ValueError(f"shapes do not fit theta {tuple(theta.shape)}: U {tuple(U.shape)} (want {(m, r)}), "
                         f"S {tuple(S.shape)} (want {(r, r)}), V {tuple(V.shape)} (want {(n, r)})")
    load_extension()
    with torch.no_grad():
        torch.ops.kerzoo.add_lowrank(theta, float(c), U, S, V)
