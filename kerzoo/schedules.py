"""Named learning-rate schedules with warm-up, as torch LR schedulers (docs/algorithms.md,
Schedules).

    sched = kerzoo.schedule("cosine", opt, total_steps=20_000, warmup=500)
    ... opt.step(closure); sched.step()

The factor multiplying each group's initial lr at step t (w = warmup, T = total_steps):
t < w: (t + 1) / w; then with u = min(1, (t - w) / max(1, T - w)):
constant 1; linear 1 - (1 - m) u; cosine m + (1 - m)(1 + cos(pi u)) / 2, where m = min_factor.
A ZOOptimizer reads ``group["lr"]`` at every step, so any torch scheduler works as well.
"""

from __future__ import annotations

import difflib
import math

import torch

SCHEDULES = ("constant", "linear", "cosine")


def factor(
    name: str, step: int, total_steps: int, warmup: int = 0, min_factor: float = 0.0
) -> float:
    """The lr multiplier of schedule ``name`` at ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    u = min(1.0, max(0, step - warmup) / max(1, total_steps - warmup))
    if name == "linear":
        return 1.0 - (1.0 - min_factor) * u
    if name == "cosine":
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * u))
    raise _unknown(name)


def _unknown(name: object) -> ValueError:
    close = difflib.get_close_matches(str(name), SCHEDULES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown schedule {name!r}{hint}: use one of {', '.join(SCHEDULES)}")


def schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup: int = 0,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A torch LambdaLR following schedule ``name``; call ``.step()`` after each ``opt.step``.

    Its state_dict (the step count) goes into a checkpoint beside the optimizer's.
    """
    if name not in SCHEDULES:
        raise _unknown(name)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if not 0 <= warmup <= total_steps:
        raise ValueError(f"warmup must be in [0, total_steps={total_steps}], got {warmup!r}")
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: factor(name, step, total_steps, warmup, min_factor)
    )
