"""Per-step time and held memory of every registered optimizer on all-MiniLM-L6-v2 (CPU).

    python benchmarks/presets_step.py [--steps 20] [--batch 16]

All 22.7 M parameters are trained (the whole model is perturbed), on batches of 16 words
from the default task. Held memory: what the optimizer keeps between steps (projection bases,
update buffers), measured from its tensors.
"""

import argparse
import time

import torch

import kerzoo
from kerzoo.train import config, data, model as M, tasks

from common import held_bytes, write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = config.load(None)
    cfg["model"]["trainable"] = []
    model, tok, kind = M.load_model(cfg["model"])
    task = tasks.Classification(cfg["task"], tok, kind, 2)
    batch = data.load_examples("vader-polarity")[: args.batch]
    closure = lambda: task.loss(model, batch)
    with torch.no_grad():
        closure()
        t = time.perf_counter()
        for _ in range(5):
            closure()
        forward = (time.perf_counter() - t) / 5
    rows = {"forward_s": forward, "params": sum(p.numel() for p in model.parameters())}
    for name in kerzoo.list_optimizers():
        opt = kerzoo.optimizer(name, model, lr=0.0, eps=1e-3)
        opt.step(closure)
        t = time.perf_counter()
        for _ in range(args.steps):
            opt.step(closure)
        step = (time.perf_counter() - t) / args.steps
        rows[name] = {
            "step_s": step,
            "forwards": len(opt.last_record["losses"]) + (3 if name == "zo-sgd-cons" else 0),
            "held_MB": held_bytes(opt) / 1e6,
        }
        opt.close()
        print(name, rows[name], flush=True)
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
