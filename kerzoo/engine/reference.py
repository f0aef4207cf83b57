"""The pure-torch kernels of the engine's ops: the reference, and the default implementation.

Every op works chunk by chunk (``CHUNK`` elements), so even this path never allocates a
temporary proportional to a parameter tensor. Arithmetic is in float64 for float32/float64
tensors and float32 for bf16/fp16, with one rounding to the tensor's dtype per written value.
``fill_z_foreach`` is fill_z on each tensor of a list; ``add_z_table`` applies one row of a
coefficient table to each tensor of a list, and add_z_multi and restore_perturb are one-row
tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .philox import generate, random_words

CHUNK = 1 << 20
DIST_CODES = {"gaussian": 0, "rademacher": 1}
DIST_NAMES = {v: k for k, v in DIST_CODES.items()}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float32/float64 tensors, so that theta + c z is rounded once (as the compiled
    kernels' fused multiply-add does); float32 for bf16/fp16."""
    return torch.float64 if dtype in (torch.float64, torch.float32) else torch.float32


def _coef(c: float, dtype: torch.dtype) -> float:
    """The coefficient as the compiled kernels hold it: float32 unless the tensor is float64.
    With it, c * z is exact in float64, so theta + c z is rounded once, like a fused multiply-add.
    """
    return c if dtype == torch.float64 else float(torch.tensor(c, dtype=torch.float32))


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


def _z(
    seed: int, key: int, start: int, count: int, dist: int, like: torch.Tensor, dtype: torch.dtype
):
    return generate(seed, key, start, count, DIST_NAMES[dist], device=like.device).to(dtype)


def fill_z(out: torch.Tensor, seed: int, key: int, offset: int, dist: int) -> None:
    flat = out.view(-1)
    for a, b in _chunks(flat.numel()):
        flat[a:b] = _z(seed, key, offset + a, b - a, dist, flat, torch.float32).to(out.dtype)


def stochastic_round(
    x: torch.Tensor, dtype: torch.dtype, seed: int, key: int, start: int
) -> torch.Tensor:
    """Round float32 ``x`` to bf16/fp16 up or down with probability given by the distance.

    Random bits: the Philox words of (seed, key) at the elements' global indices, so the result
    is deterministic. For the two neighbours lo <= x <= hi in ``dtype``, P(hi) = (x - lo)/(hi - lo).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        return x.to(dtype)
    down = x.to(dtype)
    down_f = down.to(torch.float32)
    # the neighbour on the other side of x
    toward = torch.where(
        x >= down_f, torch.full_like(x, float("inf")), torch.full_like(x, float("-inf"))
    )
    other = torch.nextafter(down, toward.to(dtype))
    other_f = other.to(torch.float32)
    gap = other_f - down_f
    frac = torch.where(gap != 0, (x - down_f) / gap, torch.zeros_like(x))
    u = random_words(seed, key, start, x.numel(), device=x.device).to(torch.float64) * 2.0**-32
    return torch.where(u.to(torch.float32).view_as(x) < frac, other, down)


def phases(row: Sequence[float], seeds: Sequence[int], split: int) -> list[tuple[list, list]]:
    """A table row as its two rounding phases, (coefs, seeds) of columns [0, split) and of
    [split, q), each with the columns of one seed summed in float64 in column order."""
    out = []
    for a, b in ((0, split), (split, len(seeds))):
        merged: dict[int, float] = {}
        for c, s in zip(row[a:b], seeds[a:b]):
            merged[int(s)] = merged.get(int(s), 0.0) + float(c)
        out.append((list(merged.values()), list(merged)))
    return out


def _apply(theta, terms, key, offset, dist, stochastic, rounding_seed) -> None:
    """theta += phase 1, rounded (where both phases have terms), then += phase 2, rounded as
    asked; zero coefficients skipped, so an all-zero row leaves theta as it is."""
    c1, c2 = terms[0][0], terms[1][0]
    if not any(c1) and not any(c2):
        return
    ct = compute_dtype(theta.dtype)
    flat = theta.view(-1)
    for a, b in _chunks(flat.numel()):
        acc = flat[a:b].to(ct)
        zs: dict[int, torch.Tensor] = {}  # a seed of both phases (restore, then perturb) drawn once
        for k, (coefs, seeds) in enumerate(terms):
            if k == 1 and c1 and c2:
                acc = acc.to(theta.dtype).to(ct)
            for c, s in zip(coefs, seeds):
                if c != 0.0:
                    if s not in zs:
                        zs[s] = _z(s, key, offset + a, b - a, dist, flat, ct)
                    acc = acc + _coef(c, theta.dtype) * zs[s]
        if stochastic and c2:
            flat[a:b] = stochastic_round(acc.float(), theta.dtype, rounding_seed, key, offset + a)
        else:
            flat[a:b] = acc.to(theta.dtype)


def add_z_table(
    thetas,
    coefs: torch.Tensor,
    seeds: Sequence[int],
    keys: Sequence[int],
    offsets: Sequence[int],
    dist: int,
    split: int = 0,
    stochastic: bool = False,
    rounding_seed: int = 0,
) -> None:
    """thetas[t] += sum_i coefs[t, i] z(seeds[i], keys[t]): columns [0, split) rounded on their
    own first (the restore of a move), then [split, q), rounded as asked (csrc/table.h)."""
    rows = coefs.to(torch.float64).tolist()
    for t, row, k, o in zip(thetas, rows, keys, offsets, strict=True):
        _apply(t, phases(row, seeds, split), k, o, dist, stochastic, rounding_seed)


def add_z_multi(
    theta: torch.Tensor,
    coefs: Sequence[float],
    seeds: Sequence[int],
    key: int,
    offset: int,
    dist: int,
    stochastic: bool = False,
    rounding_seed: int = 0,
) -> None:
    """theta += sum_i coefs[i] * z(seeds[i]), one rounding per element."""
    _apply(theta, phases(coefs, seeds, 0), key, offset, dist, stochastic, rounding_seed)


def restore_perturb(
    theta: torch.Tensor,
    c_restore: float,
    seed_restore: int,
    c_new: float,
    seed_new: int,
    key: int,
    offset: int,
    dist: int,
) -> None:
    """t = round(theta + c_restore z(seed_restore)); theta = round(t + c_new z(seed_new))."""
    terms = phases([c_restore, c_new], [seed_restore, seed_new], 1)
    _apply(theta, terms, key, offset, dist, False, 0)


def add_lowrank(
    theta: torch.Tensor, c: float, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor
) -> None:
    """theta (m x n) += c U S V^T, by row chunks: the temporary is one chunk, never m x n."""
    ct = compute_dtype(theta.dtype)
    us = (u.to(ct) @ s.to(ct)) * c  # m x r
    vt = v.to(ct).t()
    rows = max(1, CHUNK // max(1, theta.shape[1]))
    if theta.dtype == ct:
        for a in range(0, theta.shape[0], rows):
            theta[a : a + rows].addmm_(us[a : a + rows], vt)
        return
    for a in range(0, theta.shape[0], rows):
        block = theta[a : a + rows]
        block.copy_(torch.addmm(block.to(ct), us[a : a + rows], vt).to(theta.dtype))


def fill_z_foreach(outs, seed: int, keys: Sequence[int], offsets: Sequence[int], dist: int) -> None:
    for t, k, o in zip(outs, keys, offsets, strict=True):
        fill_z(t, seed, k, o, dist)
