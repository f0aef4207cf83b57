"""The host's share of a ZO step: per-tensor Python and dispatch, measured where nothing else costs.

    python benchmarks/host_overhead.py [--tensors 388] [--json FILE]

A model of N tiny tensors (N/2 Linear(8, 8) layers; 388 is OPT-1.3B's count) on one CPU thread:
its forward and the kernels take microseconds, so a step's time is what the optimizer's host
side costs per step. On a GPU this cost is paid on top of the kernels (they are asynchronous
only as long as the host keeps ahead), and for a 1B-scale model it is a visible part of a step
(docs/benchmarks/engine-h200.md). Per preset and perturbation mode: the median of 20 steps after
3, measured in --rounds rounds over all of them (a busy moment hits one round of each), and the
median of the rounds reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kerzoo

from common import write_json


class Tiny(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x.square().mean()


def measure(name: str, mode: str, layers: int, dtype, steps: int = 20) -> float:
    model = Tiny(layers).to(dtype)
    x = torch.randn(4, 8, dtype=dtype)
    opt = kerzoo.optimizer(name, model, lr=1e-7, perturb=mode)
    closure = lambda: model(x)
    for _ in range(3):
        opt.step(closure)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.step(closure)
        times.append(time.perf_counter() - t)
    opt.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tensors", type=int, default=388)
    ap.add_argument(
        "--presets", nargs="+", default=["mezo", "kerzoo", "subzero", "lozo", "pgap", "hizoo"]
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    layers = args.tensors // 2
    model, x = Tiny(layers).to(torch.bfloat16), torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(20):
            model(x)
        forward = (time.perf_counter() - t) / 20
    rows = {
        "tensors": 2 * layers,
        "dtype": "bfloat16",
        "forward_s": forward,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "steps": {},
    }
    print(f"{2 * layers} tensors, bf16, one forward {forward * 1e3:.2f} ms")
    runs = [f"{name} {mode}" for name in args.presets for mode in ("inplace", "onthefly")]
    seen: dict[str, list[float]] = {run: [] for run in runs}
    for _ in range(args.rounds):
        for run in runs:
            name, mode = run.split()
            seen[run].append(measure(name, mode, layers, torch.bfloat16))
    for run in runs:
        rows["steps"][run] = statistics.median(seen[run])
        print(
            f"{run:20s} {rows['steps'][run] * 1e3:7.1f} ms a step  (rounds: "
            + ", ".join(f"{s * 1e3:.1f}" for s in seen[run])
            + ")",
            flush=True,
        )
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
