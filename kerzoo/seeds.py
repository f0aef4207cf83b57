"""Deterministic seeds derived from (base seed, step, direction, purpose) by hashing.

Every random choice of a step comes from here, so a run is a pure function of its base seed:
reproducible, resumable from the step counter alone, and replayable from a log of seeds.
"""

from __future__ import annotations

import hashlib


def derive(*parts: object) -> int:
    """A 63-bit seed from any parts (ints and strings), the same on every machine."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def uniform(seed: int, purpose: str) -> float:
    """A float in [0, 1) derived from a seed and a purpose."""
    return derive(seed, purpose) / 2**63


def direction_seeds(base: int, step: int, count: int) -> list[int]:
    return [derive(base, "step", step, "direction", i) for i in range(count)]
