"""The default run exported and reloaded: its held-out accuracy through the model transformers
loads back from <out>/model, against the trained model's (docs/benchmarks/export-default-cpu.md).

python benchmarks/export_roundtrip.py [--steps N] [--out runs/export-roundtrip] [--set KEY=VALUE]

Runs `kerzoo train --fresh` (the default run; --steps shortens it), then evaluates the held-out
set three ways: the accuracy the run logged, the checkpoint's model (what `kerzoo train` held in
memory), and AutoModel.from_pretrained(<out>/model) with AutoTokenizer.from_pretrained of the same
folder, through the run's own task. Prints one JSON object.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from kerzoo.cli import main
from kerzoo.train import config
from kerzoo.train.loop import Run, read_jsonl
from kerzoo.train.tasks import make_task


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run(steps: int | None, out: str, extra: list[str]) -> dict:
    overrides = [f"train.out={out}", *extra] + ([f"train.steps={steps}"] if steps else [])
    argv = ["train", "--fresh"] + [x for o in overrides for x in ("--set", o)]
    started = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit("kerzoo train failed")
    minutes = (time.perf_counter() - started) / 60
    cfg = config.load(None, overrides)
    trained = Run(cfg, progress=False)  # resumes the finished run: the trained weights
    logged = [r["eval_acc"] for r in read_jsonl(trained.metrics_path) if "eval_acc" in r]
    in_memory = trained.evaluate()["eval_acc"]
    batch = trained.eval_set[: cfg["train"]["eval_batch_size"]]
    enc = trained.tokenizer([ex["text"] for ex in batch], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = trained.model(**enc).last_hidden_state

    from transformers import AutoModel, AutoTokenizer

    folder = Path(out) / "model"
    trained.model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trained.task = make_task(
        cfg["task"], tokenizer, trained.kind, trained.train_set + trained.eval_set
    )
    reloaded = trained.evaluate()["eval_acc"]
    with torch.no_grad():
        after = trained.model(**tokenizer([ex["text"] for ex in batch], padding=True,
                                          return_tensors="pt")).last_hidden_state  # fmt: skip
    trained.close()
    return {
        "steps": cfg["train"]["steps"],
        "held_out_examples": len(trained.eval_set),
        "accuracy_before": logged[0],
        "accuracy_logged_at_the_end": logged[-1],
        "accuracy_trained_model": in_memory,
        "accuracy_reloaded_from_the_export": reloaded,
        "same_accuracy": in_memory == reloaded == logged[-1],
        "bit_identical_outputs_on_an_eval_batch": bool(torch.equal(before, after)),
        "export_folder": str(folder),
        "export_folder_mib": round(folder_mib(folder), 1),
        "kerzoo_train_minutes": round(minutes, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="shorten the default run (default: 2000)")
    parser.add_argument("--out", default="runs/export-roundtrip")
    parser.add_argument("--set", action="append", default=[], help="more kerzoo train --set")
    args = parser.parse_args()
    print(json.dumps({**run(args.steps, args.out, args.set), "set": args.set}, indent=2))
