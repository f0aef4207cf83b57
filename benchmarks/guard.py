"""The update guard's cost (docs/run-integrity.md, What a check costs): the passes of one step
alone (a closure that runs no forward and returns a seeded random loss, so every coefficient is
non-zero; in place, as on the fly needs a forward) with the guard and with it switched off, on
all-MiniLM-L6-v2's shapes (random weights, every parameter trained, fp32), one thread.

    python benchmarks/guard.py [--rounds 7] [--presets mezo subzero ...] [--out FILE.json]

Each figure is the best CPU time (time.process_time) over the rounds, the two variants
interleaved, so a burst of load from another process on a shared machine inflates neither.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import contextmanager

import torch

import kerzoo
from kerzoo.optim import ZOOptimizer
from kerzoo.perturb import guard

import models

PRESETS = {
    "mezo": ("mezo", {}),  # dense: the bound from one read
    "subzero": ("subzero", {}),  # low-rank: the bound 7 sqrt(mn), no read of bases
    "momentum": ({"estimator": "two-point", "projection": "dense", "update": "momentum"}, {}),
    "adam": ({"estimator": "two-point", "projection": "dense", "update": "adam"}, {}),
}


@contextmanager
def guard_off():
    saved = guard.check_adds, guard.check_directions, ZOOptimizer._trial
    guard.check_adds = lambda *a, **k: None
    guard.check_directions = lambda *a, **k: None
    ZOOptimizer._trial = lambda *a, **k: None
    try:
        yield
    finally:
        guard.check_adds, guard.check_directions, ZOOptimizer._trial = saved


def cpu_time(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = models.minilm_config(torch.float32)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rng = random.Random(0)

    def no_forward():
        return torch.tensor(rng.random())

    rows = {}
    for key in args.presets:
        spec, options = PRESETS[key]
        opt = kerzoo.optimizer(spec, model, lr=1e-9, eps=1e-3, **options)
        opt.step(no_forward)  # bases, buffers built
        best = {"on": float("inf"), "off": float("inf")}
        for _ in range(args.rounds):
            best["on"] = min(best["on"], cpu_time(lambda: opt.step(no_forward)))
            with guard_off():
                best["off"] = min(best["off"], cpu_time(lambda: opt.step(no_forward)))
        opt.close()
        rows[key] = {**best, "ratio": best["on"] / best["off"]}
        print(
            f"{key:14s} passes with the guard {best['on'] * 1e3:7.1f} ms, without "
            f"{best['off'] * 1e3:7.1f} ms ({rows[key]['ratio']:.2f}x)",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"params": params, "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
