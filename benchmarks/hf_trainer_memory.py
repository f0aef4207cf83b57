"""Peak memory of kerzoo.hf.ZOTrainer against inference, a plain kerzoo loop and Trainer+AdamW.

Each mode runs in a fresh process on a GPT-2-shaped causal LM built from its config (random
weights, every parameter trained, fp32 on the CPU; --device cuda for a GPU): inference (the
forwards a ZO run makes, under no_grad), ZOTrainer with mezo, kerzoo's own loop with mezo (a
list of closures per accumulation window), and transformers.Trainer with AdamW (backward).
Every mode imports transformers' Trainer and builds the model before the baseline is taken.
Reported: the peak resident set (VmHWM; on CUDA max_memory_allocated), the peak above the
baseline (RSS after imports and model build), and both against inference's.

    python benchmarks/hf_trainer_memory.py --out docs/benchmarks/hf-trainer-memory-cpu
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

MODES = ("inference", "zotrainer", "kerzoo-loop", "trainer-adamw")


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Rows(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def child(mode: str, a) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    import kerzoo
    from kerzoo.hf import ZOTrainer

    dev = torch.device(a.device)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=a.vocab, n_positions=a.seq, n_embd=a.hidden, n_layer=a.layers, n_head=8
    )
    model = GPT2LMHeadModel(config).to(dev)
    rows = a.batch * a.accumulate * a.steps
    ids = torch.randint(0, a.vocab, (rows, a.seq), generator=torch.Generator().manual_seed(0))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else rss_now()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    args = TrainingArguments(
        output_dir=str(Path(a.tmp) / mode),
        use_cpu=dev.type == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=a.accumulate,
        learning_rate=1e-6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        max_grad_norm=0,
    )
    if mode == "inference":
        model.eval()
        with torch.no_grad():
            for _ in range(2):  # the two points of each mezo step
                for r in range(0, rows, a.batch):
                    b = ids[r : r + a.batch].to(dev)
                    model(input_ids=b, labels=b)
    elif mode == "zotrainer":
        ZOTrainer(model=model, args=args, train_dataset=Rows(ids), zo="mezo").train()
    elif mode == "kerzoo-loop":
        opt = kerzoo.optimizer("mezo", model, lr=1e-6)
        for s in range(a.steps):
            window = [
                ids[r : r + a.batch].to(dev)
                for r in range(
                    s * a.batch * a.accumulate, (s + 1) * a.batch * a.accumulate, a.batch
                )
            ]
            opt.step([lambda b=b: model(input_ids=b, labels=b).loss for b in window])
    else:
        Trainer(model=model, args=args, train_dataset=Rows(ids)).train()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss_high_water()
    print(json.dumps({"peak_bytes": peak, "base_bytes": base, "weights_bytes": weights}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accumulate", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--child")
    ap.add_argument("--tmp", default="/tmp/kerzoo-hf-memory")
    ap.add_argument("--out", default="docs/benchmarks/hf-trainer-memory-cpu")
    a = ap.parse_args()
    if a.child:
        return child(a.child, a)
    results = {}
    for mode in a.modes:
        cmd = [sys.executable, "-W", "ignore", __file__, *sys.argv[1:], "--child", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
        if out.returncode:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(
            f"{mode:14s} peak {r['peak_bytes'] / 2**20:7.0f} MiB, above baseline "
            f"{(r['peak_bytes'] - r['base_bytes']) / 2**20:7.0f} MiB",
            flush=True,
        )
    inf = results.get("inference")
    lines = [
        "| mode | peak MiB | above baseline MiB | peak / inference | above baseline / inference |",
        "|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        above = r["peak_bytes"] - r["base_bytes"]
        ratio = f"{r['peak_bytes'] / inf['peak_bytes']:.2f}" if inf else "-"
        inf_above = inf["peak_bytes"] - inf["base_bytes"] if inf else 0
        ratio_above = f"{above / inf_above:.2f}" if inf and inf_above > 0 else "-"
        lines.append(
            f"| {mode} | {r['peak_bytes'] / 2**20:.0f} | {above / 2**20:.0f} | {ratio} | "
            f"{ratio_above} |"
        )
    meta = {
        "command": "python benchmarks/hf_trainer_memory.py " + " ".join(sys.argv[1:]),
        "device": a.device,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "shape": {k: getattr(a, k) for k in ("hidden", "layers", "vocab", "batch", "seq")},
        "accumulate": a.accumulate,
        "steps": a.steps,
        "weights_mib": next(iter(results.values()))["weights_bytes"] / 2**20,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("\n".join(lines))
    return None


if __name__ == "__main__":
    main()
