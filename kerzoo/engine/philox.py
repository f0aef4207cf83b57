"""Philox4x32-10 in plain torch: the reference counter-based generator (docs/algorithms.md,
Random numbers).

z(seed, key, j) for element j (flat, global index) of the tensor named by ``key``:
- Philox key (k0, k1) = (seed & 0xFFFFFFFF, seed >> 32);
- block b = j // 4, lane j % 4, counter = (b_lo, b_hi, key_lo, key_hi);
- Gaussian: u = x * 2^-32 + 2^-33 (as cuRAND), Box-Muller on (x0, x1) -> lanes 0, 1 and on
  (x2, x3) -> lanes 2, 3: r = sqrt(-2 ln u_a), (r cos 2 pi t, r sin 2 pi t), t = u_b - round(u_b);
- Rademacher: +1 where the lane's top bit is 0, else -1.

uint32 arithmetic is emulated in int64 with masks; the 32x32 -> 64-bit product is split in
16-bit halves so that nothing overflows int64.
"""

from __future__ import annotations

import math

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF
ROUNDS = 10
DISTS = ("gaussian", "rademacher")


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of m * x for a constant m < 2^32 and int64 x in [0, 2^32)."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    t1 = x * m_lo  # < 2^48
    t2 = x * m_hi  # < 2^48
    s = t1 + ((t2 & 0xFFFF) << 16)  # < 2^49
    return (t2 >> 16) + (s >> 32), s & MASK


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Ten Philox rounds on int64 tensors holding uint32 words; returns four uint32 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def check_seed_key(seed: int, key: int) -> None:
    for name, v in (("seed", seed), ("key", key)):
        if not isinstance(v, int) or not 0 <= v < 2**63:
            raise ValueError(f"{name} must be an int in [0, 2**63), got {v!r}")


def random_words(seed: int, key: int, start: int, count: int, device=None) -> torch.Tensor:
    """The uint32 word of each element j in [start, start + count), as int64."""
    check_seed_key(seed, key)
    first, last = start // 4, (start + count - 1) // 4
    b = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    k = (seed & MASK, (seed >> 32) & MASK)
    words = philox4x32(
        (b & MASK, b >> 32, torch.full_like(b, key & MASK), torch.full_like(b, (key >> 32) & MASK)),
        k,
    )
    flat = torch.stack(words, dim=1).reshape(-1)
    lo = start - 4 * first
    return flat[lo : lo + count]


def _uniform(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) * 2.0**-32 + 2.0**-33


def normals_from_words(words4: torch.Tensor) -> torch.Tensor:
    """Box-Muller on a (blocks, 4) int64 tensor of words -> (blocks, 4) float32 normals."""
    u = _uniform(words4)
    r01 = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    r23 = torch.sqrt(-2.0 * torch.log(u[:, 2]))
    # cos(2 pi u) = cos(2 pi t) with t = u - round(u) in [-1/2, 1/2]: a small, exact argument
    a01 = (2.0 * math.pi) * (u[:, 1] - torch.round(u[:, 1]))
    a23 = (2.0 * math.pi) * (u[:, 3] - torch.round(u[:, 3]))
    return torch.stack(
        (r01 * torch.cos(a01), r01 * torch.sin(a01), r23 * torch.cos(a23), r23 * torch.sin(a23)), 1
    )


def generate(
    seed: int, key: int, start: int, count: int, dist: str = "gaussian", device=None
) -> torch.Tensor:
    """z(seed, key, j) for j in [start, start + count), float32, computed from whole blocks."""
    if dist not in DISTS:
        raise ValueError(f"unknown dist {dist!r}: use one of {', '.join(DISTS)}")
    check_seed_key(seed, key)
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first, last = start // 4, (start + count - 1) // 4
    b = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    k = (seed & MASK, (seed >> 32) & MASK)
    words = torch.stack(
        philox4x32(
            (
                b & MASK,
                b >> 32,
                torch.full_like(b, key & MASK),
                torch.full_like(b, (key >> 32) & MASK),
            ),
            k,
        ),
        1,
    )
    if dist == "gaussian":
        z = normals_from_words(words)
    else:
        z = 1.0 - 2.0 * (words >> 31).to(torch.float32)
    lo = start - 4 * first
    return z.reshape(-1)[lo : lo + count]
