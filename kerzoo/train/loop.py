"""The training loop: steps, evaluation, metrics, checkpoints that resume bit-exactly, the
trajectory log, and the plot.

Everything random in a step derives from (seed, step): the batch (a seeded sample) and the
optimizer's directions; the learning rate is a function of the step. So a run resumed from a
checkpoint at step k continues exactly as the run that never stopped.

The loss of a batch is one method, ``Run.batch_loss``: the examples go through ``self.shard``
(identity here) and the task's (sum, weight) through ``self.reduce`` (identity here), so a
data-parallel run (docs/distributed.md) replaces these two and every rank, using the same seeds,
sees the same loss. Evaluation goes through the same pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..schedules import factor as schedule_factor
from ..seeds import derive
from . import config as config_mod, data as data_mod
from .model import count_parameters, load_model, resolve_device, trainable_state
from .replay import environment, fingerprint
from .tasks import make_task

CHECKPOINT = "checkpoint.pt"
LOCK = ".kerzoo.lock"
MAGIC = b"KERZOO-CHECKPOINT 1\n"
_HELD: dict[str, int] = {}  # output folder -> the fd of its lock, held by this process


class TrainingError(RuntimeError):
    """The run cannot go on: the message says what is kept and what to do."""


def _checkpoint_bytes(obj: Any) -> tuple[bytes, memoryview]:
    """The checkpoint file's header (MAGIC, "sha256 <hex of the payload>") and its payload,
    torch.save's bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()
    return MAGIC + b"sha256 " + hashlib.sha256(payload).hexdigest().encode() + b"\n", payload


def atomic_save(obj: Any, path: Path, kept: str | None = None) -> None:
    """Write a content-hashed checkpoint to a temporary file, flush it to disk, then rename it
    over ``path`` (atomic on POSIX). A disk error removes the temporary file and is a
    TrainingError naming the path; ``kept`` says what the previous checkpoint is."""
    tmp = path.with_name(path.name + ".tmp")
    header, payload = _checkpoint_bytes(obj)
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        was = kept or (
            f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint yet"
        )
        raise TrainingError(
            f"could not write the checkpoint {tmp} ({exc.strerror or exc}); the temporary file "
            f"is removed and {was}. Free some space (or fix the folder) and run the same command "
            "to resume"
        ) from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint whose content hash is checked before anything in it is unpickled."""
    way_on = (
        "it is left as it is: resume from an older checkpoint (copy a checkpoint-<step>.pt "
        "of the folder, or a backup, over it) or start over with --fresh"
    )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrainingError(
            f"checkpoint {str(path)!r} is unreadable ({exc.strerror or exc}); {way_on}"
        ) from None
    end = data.find(b"\n", len(MAGIC))
    line, payload = data[len(MAGIC) : end], memoryview(data)[end + 1 :]
    if not data.startswith(MAGIC) or end < 0 or not line.startswith(b"sha256 "):
        raise TrainingError(
            f"checkpoint {str(path)!r} is corrupt or unreadable, or not a kerzoo training "
            "checkpoint (it lacks kerzoo's content-hash header: written by another program, "
            f"damaged at its start, or by an older kerzoo); {way_on}"
        )
    if hashlib.sha256(payload).hexdigest().encode() != line[7:]:
        raise TrainingError(
            f"checkpoint {str(path)!r} is corrupt: its content hash does not match (the file "
            f"was truncated or altered after it was written); nothing was loaded and {way_on}"
        )
    try:
        ck = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    except Exception as exc:
        raise TrainingError(
            f"checkpoint {str(path)!r} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
            f"{way_on}"
        ) from None
    if not isinstance(ck, dict) or not {"step", "params", "optimizer", "config", "logs"} <= set(ck):
        keys = sorted(ck)[:6] if isinstance(ck, dict) else type(ck).__name__
        raise TrainingError(
            f"checkpoint {str(path)!r} is not a kerzoo training checkpoint ({keys}); "
            "move it away or pass --fresh"
        )
    return ck


def lock_folder(out: Path) -> str | None:
    """Take the output folder's lock (an flock on ``out/.kerzoo.lock``, which holds the pid and
    host) for this process, until ``release_folder`` or the process ends. Another process
    holding it is a TrainingError naming it. The kernel drops the lock of a killed process, so
    its lock is taken over; returns that run's record ("pid N on host H ..."), else None.
    A process takes a folder's lock once: a second Run on the folder in the same process
    (a resume) shares it."""
    import fcntl
    import socket

    key = str(out.resolve())
    if key in _HELD:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "pid unknown"
        os.close(fd)
        raise TrainingError(
            f"the output folder {out} is in use by another kerzoo train ({holder}; lock "
            f"{path}): two runs writing one folder would mix their logs. Wait for that run to "
            "end or stop it, or give this run another --out"
        ) from None
    stale = os.pread(fd, 4096, 0).decode(errors="replace").strip() or None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
    _HELD[key] = fd
    return stale


def release_folder(out: Path) -> None:
    """Drop this process's lock on ``out`` (the file stays, emptied: an empty lock file is a
    run that ended; a filled one whose flock is free is a run that was killed)."""
    fd = _HELD.pop(str(out.resolve()), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def _digest(path: Path, size: int | None = None) -> str:
    with path.open("rb") as f:
        return hashlib.sha256(f.read() if size is None else f.read(size)).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a line cut short by a kill (the last one) is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Run:
    """A training run. ``parallel`` (a distributed.DataParallel) makes it one rank of a
    data-parallel run: it sets the shard/reduce hooks, and only rank 0 writes files."""

    def __init__(self, cfg: dict, resume: bool = True, progress: bool = True, parallel: Any = None):
        import kerzoo

        self.cfg, self.progress, self.parallel = cfg, progress, parallel
        self.writer = parallel is None or parallel.rank == 0
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        self.out = Path(t["out"])
        self.metrics_path, self.traj_path = (
            self.out / "metrics.jsonl",
            self.out / "trajectory.jsonl",
        )
        self.checkpoint_path = self.out / CHECKPOINT
        self.saved_step: int | None = None  # the step of checkpoint.pt, once there is one
        self.took_over = None  # the record of a killed run whose lock this run took over
        if self.writer:
            self.took_over = lock_folder(self.out)
            for tmp in self.out.glob("*.tmp"):  # left by a run killed while writing
                tmp.unlink(missing_ok=True)
        self.device = resolve_device(cfg["model"]["device"])
        ck = (
            load_checkpoint(self.checkpoint_path, self.device)
            if resume and self.checkpoint_path.exists()
            else None
        )
        if ck is not None:
            changed = config_mod.trajectory_changes(ck["config"], cfg)
            if changed:
                raise TrainingError(
                    f"{self.checkpoint_path} was written by a run with another config ("
                    + "; ".join(changed)
                    + "): resuming would not continue it. Pass --fresh to "
                    "start over, another --out, or the config that wrote it"
                )
        d, task_type = cfg["data"], cfg["task"]["type"]
        fields = {
            "multiple_choice": {"options": d["options_key"]},
            "lm": {"answer": d["answer_key"]},
        }.get(task_type)
        examples = data_mod.load_examples(
            d["source"], d["text_key"], d["label_key"], fields, require_label=task_type != "lm"
        )
        self.train_set, self.eval_set = data_mod.split(examples, d["eval_size"], t["seed"])
        self.model, self.tokenizer, self.kind = load_model(cfg["model"], self.device)
        self.task = make_task(cfg["task"], self.tokenizer, self.kind, examples)
        self.trained, self.total_params = count_parameters(self.model)
        if ck is not None and ck["params"] is not None:  # a sharded one's: after sharding
            self._restore_params(ck)
        start_state = trainable_state(self.model) if ck is None and self.writer else None
        self.step, self.elapsed = (
            0,
            0.0,
        )  # elapsed: training seconds up to self.step, across resumes
        self._started = False
        self.shard: Callable[[list[dict]], list[dict]] = lambda batch: batch
        self.reduce: Callable[[Any, Any], tuple[Any, Any]] = lambda total, weight: (total, weight)
        self.callbacks: list[
            Callable[[Run, dict], None]
        ] = []  # may add keys to each step's metrics record
        over: dict[str, Any] = {}
        params: Any = self.model
        if parallel is not None:
            params, over = parallel.attach(self)
        try:
            self.opt = kerzoo.optimizer(dict(cfg["optimizer"]), params, seed=t["seed"], **over)
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise config_mod.ConfigError(f"[optimizer] {cfg['optimizer']!r}: {message}") from None
        if parallel is not None:
            parallel.built(self)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
        if ck is not None:
            self._restore_optimizer(ck)
        elif self.writer:
            for p in (self.metrics_path, self.traj_path, self.checkpoint_path):
                p.unlink(missing_ok=True)
            for p in self.out.glob("checkpoint-*.pt"):
                p.unlink()
            for p in self.out.glob("shards-*"):  # a sharded run's DCP folders
                shutil.rmtree(p, ignore_errors=True)
            self._write(
                self.traj_path,
                {
                    "kind": "header",
                    "model": cfg["model"],
                    "optimizer": cfg["optimizer"],
                    "seed": t["seed"],
                    "trainable": sorted(start_state),
                    "fingerprint": fingerprint(start_state),
                    "kerzoo": kerzoo.__version__,
                    "torch": torch.__version__,
                    "engine": environment(self.device),
                },
            )

    @property
    def sharded(self) -> bool:
        return self.parallel is not None and self.parallel.sharded is not None

    def _restore_params(self, ck: dict) -> None:
        params = dict(self.model.named_parameters())
        missing = sorted(set(trainable_state(self.model)) - set(ck["params"]))
        if missing:
            raise TrainingError(
                f"checkpoint {self.checkpoint_path} lacks trained parameter(s) {missing[:3]}: "
                "was it written with another model config? Pass --fresh to start over"
            )
        with torch.no_grad():
            for name, value in ck["params"].items():
                if name not in params:
                    raise TrainingError(
                        f"checkpoint has parameter {name!r} that this model lacks: "
                        "was it written with another model config? Pass --fresh to start over"
                    )
                params[name].copy_(value)

    def _restore_optimizer(self, ck: dict) -> None:
        world = self.parallel.world if self.parallel else 1
        was = ck.get("shards")
        if was is not None or self.sharded or "optimizer_ranks" in ck:
            if was is None or not self.sharded or was["world"] != world:
                before = (
                    f"{was['world']} ranks with sharded parameters"
                    if was is not None
                    else "an older kerzoo's sharded parameters"
                    if "optimizer_ranks" in ck
                    else "replicated parameters"
                )
                now = (
                    f"{world} ranks with sharded parameters"
                    if self.sharded
                    else "replicated parameters"
                )
                raise TrainingError(
                    f"{self.checkpoint_path} was written by a run with {before}; this run has "
                    f"{now}, and each rank's checkpoint files hold its shard. Resume with the "
                    "same number of ranks and distributed.shard, or pass --fresh"
                )
            self.parallel.load_shards(self, ck, self.checkpoint_path)
        else:
            self.opt.load_state_dict(ck["optimizer"])
        self.step, self.elapsed = ck["step"], float(ck.get("elapsed", 0.0))
        self.saved_step = self.step
        if self.writer:
            for path in (self.traj_path, self.metrics_path):
                self._rewind(path, ck["logs"].get(path.name))

    def _rewind(self, path: Path, mark: list | None) -> None:
        """Cut ``path`` back to where it was when the checkpoint was written, after checking
        that its first bytes are the ones the checkpoint saw (size and sha256)."""
        if mark is None:
            return
        size, digest = mark
        way_on = (
            f"the checkpoint {self.checkpoint_path} (step {self.step}) and the log must go "
            "together: restore the log from a copy, or pass --fresh to start over"
        )
        have = path.stat().st_size if path.exists() else None
        if have is None or have < size:
            what = "is missing" if have is None else f"ends early ({have} of {size} bytes)"
            raise TrainingError(
                f"{path} {what}: resuming would write a log that cannot be replayed; {way_on}"
            )
        if _digest(path, size) != digest:
            raise TrainingError(
                f"{path} was altered before step {self.step} (its first {size} bytes differ "
                f"from those the checkpoint recorded); {way_on}"
            )
        os.truncate(path, size)  # drop the records written after the checkpoint

    def _write(self, path: Path, record: dict) -> None:
        if not self.writer:
            return
        try:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            kept = (
                f"the checkpoint {self.checkpoint_path} is intact"
                if self.checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"could not write {path} ({exc.strerror or exc}); {kept}. Free some space (or "
                "fix the folder) and run the same command to resume"
            ) from None

    def close(self) -> None:
        """Release the output folder's lock (also when the process ends)."""
        if self.writer:
            release_folder(self.out)

    # -- the loss and the metric: the two places a data-parallel run hooks into ----------------
    def batch(self, step: int) -> list[list[dict]]:
        """The micro-batches of ``step``: a sample without replacement, seeded by its step.

        The seed is (seed, "batch", step)."""
        t = self.cfg["train"]
        n = min(t["batch_size"] * t["grad_accum"], len(self.train_set))
        rng = random.Random(derive(t["seed"], "batch", step))
        picked = [self.train_set[i] for i in rng.sample(range(len(self.train_set)), n)]
        size = -(-n // t["grad_accum"])
        return [picked[i : i + size] for i in range(0, n, size)]

    def batch_loss(self, batch: list[dict]) -> torch.Tensor:
        """The mean loss of ``batch``: sum over this process's shard, reduced, over the weight."""
        total, weight = self.task.loss_sum(self.model, self.shard(batch))
        total, weight = self.reduce(total, weight)
        return total / weight

    @torch.no_grad()
    def evaluate(self) -> float:
        size = self.cfg["train"]["eval_batch_size"]
        right = count = 0
        for i in range(0, len(self.eval_set), size):
            r, c = self.task.score(self.model, self.shard(self.eval_set[i : i + size]))
            right, count = right + r, count + c
        right, count = self.reduce(right, count)
        return float(right) / float(count)

    # -- the loop --------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint (rank 0; every rank joins in when the parameters are sharded)."""
        if self.sharded:  # each rank writes its rows (DCP); checkpoint.pt is their manifest
            params, extra = None, {"optimizer": None, "shards": self.parallel.save_shards(self)}
        elif self.writer:
            params, extra = trainable_state(self.model), {"optimizer": self.opt.state_dict()}
        if self.writer:
            logs = {}
            for path in (self.traj_path, self.metrics_path):
                if path.exists():
                    with path.open("rb") as f:
                        os.fsync(f.fileno())  # on disk before the checkpoint that counts on it
                    logs[path.name] = [path.stat().st_size, _digest(path)]
            self._keep_older()
            atomic_save(
                {
                    "step": self.step,
                    "params": params,
                    **extra,
                    "config": self.cfg,
                    "world": self.parallel.world if self.parallel else 1,
                    "elapsed": self.elapsed,
                    "logs": logs,
                },
                self.checkpoint_path,
                kept=(
                    f"the previous checkpoint {self.checkpoint_path} (step {self.saved_step}) is "
                    "intact"
                    if self.checkpoint_path.exists()
                    else "no checkpoint was written yet"
                ),
            )
            self.saved_step = self.step
        if self.sharded:
            self.parallel.saved(self)

    def _keep_older(self) -> None:
        """train.keep_checkpoints = K > 1: the checkpoint about to be replaced stays as
        checkpoint-<step>.pt (a hard link: no copy, no moment without checkpoint.pt), and
        only the newest K - 1 of those are kept."""
        keep = self.cfg["train"]["keep_checkpoints"]
        if keep < 2 or not self.checkpoint_path.exists() or self.saved_step in (None, self.step):
            return
        older = self.out / f"checkpoint-{self.saved_step:08d}.pt"
        older.unlink(missing_ok=True)
        try:
            os.link(self.checkpoint_path, older)
        except OSError:
            import shutil

            shutil.copy2(self.checkpoint_path, older)
        for stale in sorted(self.out.glob("checkpoint-*.pt"))[: -(keep - 1)]:
            stale.unlink()

    def _set_lr(self) -> None:
        t = self.cfg["train"]
        f = schedule_factor(
            t["schedule"], self.step, t["steps"], t["warmup_steps"], t["min_lr_factor"]
        )
        for g, lr in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr * f

    def train(self, stop_at: int | None = None) -> dict:
        """Steps until train.steps (or ``stop_at``); returns the eval accuracy at start and end."""
        t = self.cfg["train"]
        total = t["steps"]
        end = total if stop_at is None else min(total, stop_at)
        if (
            self.step == 0 and not self._started
        ):  # the same decision on every rank: evaluate() is collective
            self._write(self.metrics_path, {"step": 0, "eval_acc": self.evaluate(), "time": 0.0})
        self._started = True
        bar = None
        if self.progress and self.step < end:
            from tqdm import tqdm

            bar = tqdm(
                total=total, initial=self.step, desc="kerzoo train", unit="step", dynamic_ncols=True
            )
        streak, smooth = 0, None
        start = time.perf_counter() - self.elapsed
        try:
            while self.step < end:
                self._set_lr()
                batches = self.batch(self.step)
                skipped_before = self.opt.skipped_steps
                loss = self.opt.step([lambda b=b: self.batch_loss(b) for b in batches])
                self._write(self.traj_path, self.opt.last_record)
                streak = streak + 1 if self.opt.skipped_steps > skipped_before else 0
                self.step += 1
                self.elapsed = time.perf_counter() - start
                record = {
                    "step": self.step,
                    "loss": loss if math.isfinite(loss) else None,
                    "lr": self.opt.param_groups[0]["lr"],
                    "time": round(self.elapsed, 3),
                }
                if streak:
                    record["skipped"] = True
                if self.step % t["eval_every"] == 0 or self.step == total:
                    record["eval_acc"] = self.evaluate()
                for callback in self.callbacks:
                    callback(self, record)
                self._write(self.metrics_path, record)
                if math.isfinite(loss):
                    smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{smooth:.4f}" if smooth is not None else "nan"}
                    if "eval_acc" in record:
                        bar.set_postfix({**post, "acc": f"{record['eval_acc']:.3f}"})
                    elif self.step % 10 == 0:
                        bar.set_postfix(post)
                if streak >= t["max_nan_streak"]:
                    kept = (
                        f"the last checkpoint, {self.checkpoint_path}, is kept"
                        if self.checkpoint_path.exists()
                        else "no checkpoint was written yet"
                    )
                    raise TrainingError(
                        f"{streak} steps in a row had a non-finite loss or coefficient (the last "
                        f"at step {self.step}; skipped, the parameters restored): stopped; the "
                        f"parameters are those of the last step that was taken and {kept}. Lower "
                        "the learning rate or eps in [optimizer] (or fix the estimator plugin "
                        "the warnings name) and run again (it resumes from the checkpoint)"
                    )
                if self.step % t["checkpoint_every"] == 0 or self.step == total:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        return self.summary()

    def summary(self) -> dict:
        """Accuracy at the start and the latest, from the metrics file (so also after a resume)."""
        evals = [
            (r["step"], r["eval_acc"]) for r in read_jsonl(self.metrics_path) if "eval_acc" in r
        ]
        return {
            "step": self.step,
            "first_acc": evals[0][1] if evals else None,
            "last_acc": evals[-1][1] if evals else None,
            "last_eval_step": evals[-1][0] if evals else None,
        }


def read_metrics(path: Path) -> list[dict]:
    return read_jsonl(path)


def plot(metrics_path: Path, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    pts = [
        (r["step"], r["loss"])
        for r in rows
        if r.get("loss") is not None and math.isfinite(r["loss"])
    ]
    steps, losses = [s for s, _ in pts], [v for _, v in pts]
    k = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - k) : i + 1]) / len(losses[max(0, i - k) : i + 1])
        for i in range(len(losses))
    ]
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
