"""Where a named optimizer's step spends its time: torch.profiler over a few steps on an
OPT-shaped model (random weights), the top ops by device time and by CPU time.

    python benchmarks/profile_step.py --model opt-1.3b --device cuda --dtype bfloat16 mezo lozo
    python benchmarks/profile_step.py --model opt-125m --device cpu mezo:perturb=inplace

A name may carry options after a colon (name:key=value,key=value); lr defaults to 1e-7.
"""

from __future__ import annotations

import argparse

import torch
from step_time import CONFIGS, build
from torch.profiler import ProfilerActivity, profile

import kerzoo

from common import sync


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    options: dict = {"lr": 1e-7}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            options[key] = value
    return name, options


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("optimizers", nargs="+", help="name[:key=value,...]")
    ap.add_argument("--model", default="opt-125m", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build(args.model, dtype, device)
    ids = torch.randint(0, 50272, (args.batch, args.seq), device=device)
    loss = lambda: model(input_ids=ids, labels=ids).loss
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for spec in args.optimizers:
        name, options = parse(spec)
        opt = kerzoo.optimizer(name, model, **options)
        opt.step(loss)  # bases, probes and buffers are built here
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                opt.step(loss)
            sync(device)
        opt.close()
        table = prof.key_averages()
        print(f"\n##### {spec} ({opt.mode}), {args.steps} steps")
        if device.type == "cuda":
            print(
                table.table(
                    sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60
                )
            )
        print(
            table.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60)
        )


if __name__ == "__main__":
    main()
