"""The pure-torch kernels of the engine's ops: the reference, and the default implementation.

Every op works chunk by chunk (``CHUNK`` elements), so even this path never allocates a
temporary proportional to a parameter tensor. Arithmetic is in float64 for float32/float64
tensors and float32 for bf16/fp16, with one rounding to the tensor's dtype per written value.
The ``*_foreach`` ops are the single-tensor ops applied to each tensor of a list.
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
    ct = compute_dtype(theta.dtype)
    flat = theta.view(-1)
    for a, b in _chunks(flat.numel()):
        acc = flat[a:b].to(ct)
        for c, s in zip(coefs, seeds):
            if c != 0.0:
                acc = acc + _coef(c, theta.dtype) * _z(s, key, offset + a, b - a, dist, flat, ct)
        if stochastic:
            flat[a:b] = stochastic_round(acc.float(), theta.dtype, rounding_seed, key, offset + a)
        else:
            flat[a:b] = acc.to(theta.dtype)


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
    ct = compute_dtype(theta.dtype)
    flat = theta.view(-1)
    for a, b in _chunks(flat.numel()):
        cr, cn = _coef(c_restore, theta.dtype), _coef(c_new, theta.dtype)
        t = (flat[a:b].to(ct) + cr * _z(seed_restore, key, offset + a, b - a, dist, flat, ct)).to(
            theta.dtype
        )
        flat[a:b] = (t.to(ct) + cn * _z(seed_new, key, offset + a, b - a, dist, flat, ct)).to(
            theta.dtype
        )


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


def add_z_multi_foreach(
    thetas,
    coefs: Sequence[float],
    seeds: Sequence[int],
    keys: Sequence[int],
    offsets: Sequence[int],
    dist: int,
    stochastic: bool = False,
    rounding_seed: int = 0,
) -> None:
    for t, k, o in zip(thetas, keys, offsets, strict=True):
        add_z_multi(t, coefs, seeds, k, o, dist, stochastic, rounding_seed)


def restore_perturb_foreach(
    thetas,
    c_restore: float,
    seed_restore: int,
    c_new: float,
    seed_new: int,
    keys: Sequence[int],
    offsets: Sequence[int],
    dist: int,
) -> None:
    for t, k, o in zip(thetas, keys, offsets, strict=True):
        restore_perturb(t, c_restore, seed_restore, c_new, seed_new, k, o, dist)
