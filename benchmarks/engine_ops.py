"""Throughput of each engine op on one large tensor, per dtype (isolates kernels from launches).

python benchmarks/engine_ops.py --device cuda --numel 500000000
"""

import argparse

import torch

import kerzoo.engine as engine

from common import best_time, write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--numel", type=int, default=50_000_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    engine.load_extension()
    rows = {}
    for name in ("float32", "bfloat16", "float16"):
        dtype = getattr(torch, name)
        x = torch.zeros(args.numel, dtype=dtype, device=device)
        y = torch.empty_like(x)
        b = args.numel * x.element_size()
        ops = {
            "copy": lambda: y.copy_(x),
            "fill_z gaussian": lambda: engine.fill_z(x, 1, 2),
            "fill_z rademacher": lambda: engine.fill_z(x, 1, 2, dist="rademacher"),
            "add_z": lambda: engine.add_z(x, 1e-3, 1, 2),
            "add_z rademacher": lambda: engine.add_z(x, 1e-3, 1, 2, dist="rademacher"),
            "restore_perturb same seed": lambda: engine.restore_perturb(x, -1e-3, 1, -1e-3, 1, 2),
            "add_z_multi 2 seeds": lambda: engine.add_z_multi(x, [1e-3, 1e-3], [1, 2], 2),
        }
        for op, fn in ops.items():
            t = best_time(fn, device, 5)
            moved = b if op.startswith("fill_z") else 2 * b
            rows[f"{name} {op}"] = {
                "s": t,
                "GBps": moved / t / 1e9,
                "Gelem_per_s": args.numel / t / 1e9,
            }
            print(
                f"{name:9} {op:28} {t * 1e3:8.2f} ms {moved / t / 1e9:8.1f} GB/s "
                f"{args.numel / t / 1e9:7.1f} Gelem/s",
                flush=True,
            )
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
