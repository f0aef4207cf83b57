"""Peak memory of a ZO step against inference and first-order fine-tuning.

Each mode runs in a fresh process on an OPT-shaped causal LM built from its config (random
weights, every parameter trained, fp32 on the CPU; bf16/CUDA with --device cuda): inference (one
forward under no_grad), three steps of each ZO preset, and three steps of first-order SGD and
Adam (backward through the whole model).
Inference runs six forwards under no_grad (as many as three mezo steps). Reported: the peak resident
set (VmHWM; on CUDA max_memory_allocated) and its ratio to inference.

    python benchmarks/memory.py --model opt-125m --batch 8 --seq 128 \\
        --out docs/benchmarks/memory-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from common import rss_high_water

ZO = ("mezo", "kerzoo", "subzero", "lozo", "pgap", "hizoo", "zo-sgd-mmt", "zo-adam")
MODES = ("inference", *ZO, "fo-sgd", "fo-adam")


def child(mode: str, model_name: str, batch: int, seq: int, device: str, dtype: str) -> None:
    import kerzoo

    from models import opt as build

    dev = torch.device(device)
    model = build(model_name, getattr(torch, dtype), dev)
    ids = torch.randint(
        0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)
    ).to(dev)

    def loss():
        return model(input_ids=ids, labels=ids).loss

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if (
        mode == "inference"
    ):  # as many forwards as three mezo steps: the allocator's high-water mark grows
        with torch.no_grad():
            for _ in range(6):
                loss()
    elif mode.startswith("fo-"):
        opt = (
            torch.optim.SGD(model.parameters(), lr=1e-6)
            if mode == "fo-sgd"
            else torch.optim.Adam(model.parameters(), lr=1e-6)
        )
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
    else:
        opt = kerzoo.optimizer(mode, model, lr=1e-7)
        for _ in range(3):
            opt.step(loss)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss_high_water()
    print(json.dumps({"peak_bytes": peak, "weights_bytes": weights}))


def measure(mode: str, args) -> dict:
    cmd = [
        sys.executable,
        "-W",
        "ignore",
        __file__,
        "--child",
        mode,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--child")
    ap.add_argument("--out", default="docs/benchmarks/memory-cpu")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model, args.batch, args.seq, args.device, args.dtype)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for mode in args.modes:
        results[mode] = measure(mode, args)
        print(f"{mode:12s} peak {results[mode]['peak_bytes'] / 2**20:8.0f} MiB", flush=True)
    base = results.get("inference", {}).get("peak_bytes")
    weights = next(iter(results.values()))["weights_bytes"]
    where = (
        "peak resident set (VmHWM) of the whole process: the Python interpreter, torch and the "
        "model included"
        if args.device == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    lines = [
        "# Peak memory: ZO step, inference and first-order fine-tuning",
        "",
        f"Command: `python benchmarks/memory.py --model {args.model} --batch {args.batch} --seq "
        f"{args.seq} --device {args.device} --dtype {args.dtype}`  ",
        f"Machine: {platform.machine()} {os.cpu_count()}-core VM, torch {torch.__version__}.",
        "",
        f"{args.model} shapes built from its config (random weights, {weights / 2**20:.0f} MiB of "
        f"{args.dtype} weights, every parameter trained), batch {args.batch} x {args.seq} tokens, "
        "LM loss; each mode in a fresh process, three steps (inference: six forwards under "
        f"no_grad). Peak: {where}.",
        "",
        "| mode | peak | vs inference | above inference |",
        "|---|---|---|---|",
    ]
    for mode, r in results.items():
        ratio = f"{r['peak_bytes'] / base:.2f}x" if base else "-"
        above = f"{(r['peak_bytes'] - base) / 2**20:+.0f} MiB" if base else "-"
        lines.append(f"| {mode} | {r['peak_bytes'] / 2**20:.0f} MiB | {ratio} | {above} |")
    lines += [
        "",
        "ZO presets without optimizer state (mezo, kerzoo, subzero, lozo, pgap) hold what "
        "inference holds plus their small state (rank-r factors; see projections-cpu); zo-sgd-mmt "
        "keeps one full-size momentum buffer, hizoo one full-size fp32 Hessian diagonal, zo-adam "
        "two buffers. First-order fine-tuning holds the activations for the backward pass, a "
        "gradient per parameter and, with Adam, two more full-size states.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results},
            indent=1,
        )
    )
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
