"""Timing shared by the benchmark scripts: best of several runs, synchronising a GPU."""

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeat: int) -> float:
    """The fastest of ``repeat`` timed calls, after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best
