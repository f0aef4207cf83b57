"""The training loop: steps, evaluation, metrics, checkpoints that resume bit-exactly, the
trajectory log, and the plot.

Everything random in a step derives from (seed, step): the batch (a seeded sample) and the
optimizer's directions. So a run resumed from a checkpoint at step k continues exactly as the
run that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from ..seeds import derive
from . import data as data_mod
from .model import load_model, trainable_state
from .tasks import make_task

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    pass


def schedule_factor(name: str, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - t if name == "linear" else 0.5 * (1 + math.cos(math.pi * t))


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise TrainingError(f"checkpoint {str(path)!r} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                            "move it away to start afresh, or restore it from a copy") from None
    if not isinstance(ck, dict) or not {"step", "params", "optimizer"} <= set(ck):
        raise TrainingError(f"checkpoint {str(path)!r} is not a kerzoo checkpoint (keys {sorted(ck)[:6]})")
    return ck


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of steps < step (and header lines without a step)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", -1) < step]
    path.write_text("".join(line + "\n" for line in keep))


class Run:
    def __init__(self, cfg: dict, resume: bool = True, progress: bool = True):
        import kerzoo

        self.cfg, self.progress = cfg, progress
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        self.out = Path(t["out"])
        self.out.mkdir(parents=True, exist_ok=True)
        d, task_type = cfg["data"], cfg["task"]["type"]
        fields = {"multiple_choice": {"options": d["options_key"]}, "lm": {"answer": d["answer_key"]}}.get(task_type)
        examples = data_mod.load_examples(d["source"], d["text_key"], d["label_key"], fields,
                                          require_label=task_type != "lm")
        self.train_set, self.eval_set = data_mod.split(examples, d["eval_size"], t["seed"])
        self.model, self.tokenizer, self.kind = load_model(cfg["model"])
        self.task = make_task(cfg["task"], self.tokenizer, self.kind, examples)
        self.opt = kerzoo.optimizer(dict(cfg["optimizer"]), self.model, seed=t["seed"])
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.step = 0
        self.metrics_path, self.traj_path = self.out / "metrics.jsonl", self.out / "trajectory.jsonl"
        ck = self.out / CHECKPOINT
        if resume and ck.exists():
            self._restore(load_checkpoint(ck))
        else:
            for p in (self.metrics_path, self.traj_path):
                p.unlink(missing_ok=True)
            self._write(self.traj_path, {"kind": "header", "model": cfg["model"], "optimizer": cfg["optimizer"],
                                         "seed": t["seed"], "trainable": sorted(trainable_state(self.model))})

    def _restore(self, ck: dict) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in ck["params"].items():
                if name not in params:
                    raise TrainingError(f"checkpoint has parameter {name!r} that this model lacks: "
                                        "was it written with another model config?")
                params[name].copy_(value)
        self.opt.load_state_dict(ck["optimizer"])
        self.step = ck["step"]
        _truncate_jsonl(self.metrics_path, self.step + 1)  # metrics count steps done: keep 0..step
        _truncate_jsonl(self.traj_path, self.step)  # records are numbered from 0: keep 0..step-1

    def _write(self, path: Path, record: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def batch(self, step: int) -> list[dict]:
        rng = random.Random(derive(self.cfg["train"]["seed"], "batch", step))
        return [self.train_set[i] for i in rng.sample(range(len(self.train_set)), self.cfg["train"]["batch_size"])]

    def evaluate(self) -> float:
        return self.task.accuracy(self.model, self.eval_set, self.cfg["train"]["eval_batch_size"])

    def save(self) -> None:
        atomic_save({"step": self.step, "params": trainable_state(self.model), "optimizer": self.opt.state_dict(),
                     "config": self.cfg}, self.out / CHECKPOINT)

    def train(self, stop_at: int | None = None) -> dict:
        t = self.cfg["train"]
        total = t["steps"]
        end = total if stop_at is None else min(total, stop_at)
        first_acc = None
        if self.step == 0:
            first_acc = self.evaluate()
            self._write(self.metrics_path, {"step": 0, "eval_acc": first_acc, "time": 0.0})
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="kerzoo train", unit="step", dynamic_ncols=True)
        streak, start = 0, time.perf_counter()
        while self.step < end:
            factor = schedule_factor(t["schedule"], self.step, total, t["warmup_steps"])
            for g, lr in zip(self.opt.param_groups, self.base_lrs):
                g["lr"] = lr * factor
            batch = self.batch(self.step)
            skipped_before = self.opt.skipped_steps
            loss = self.opt.step(lambda: self.task.loss(self.model, batch))
            self._write(self.traj_path, self.opt.last_record)
            streak = streak + 1 if self.opt.skipped_steps > skipped_before else 0
            self.step += 1
            record = {"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                      "time": time.perf_counter() - start}
            if self.step % t["eval_every"] == 0 or self.step == total:
                record["eval_acc"] = self.evaluate()
            self._write(self.metrics_path, record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", **({"acc": f"{record['eval_acc']:.3f}"} if "eval_acc" in record else {}))
            if streak >= t["max_nan_streak"]:
                raise TrainingError(f"{streak} steps in a row had a non-finite loss (last at step {self.step}); "
                                    f"stopped. The last good checkpoint is {self.out / CHECKPOINT}: lower the "
                                    "learning rate or eps and resume")
            if self.step % t["checkpoint_every"] == 0 or self.step == total:
                self.save()
        if bar is not None:
            bar.close()
        return {"first_acc": first_acc, "step": self.step}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot(metrics_path: Path, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    k = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="0.8", lw=0.6, label="loss")
    ax.plot(steps, smooth, color="C0", label=f"loss (mean of {k + 1})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    acc = [(r["step"], r["eval_acc"]) for r in rows if "eval_acc" in r]
    ax2.plot([a for a, _ in acc], [b for _, b in acc], "o-", color="C1", label="eval accuracy")
    ax2.set_ylabel("eval accuracy")
    fig.legend(loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
