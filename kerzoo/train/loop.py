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
import re
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
from .tasks import data_fields, make_task

CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tensorboard"  # the folder of the TensorBoard events (log.tensorboard)
LOCK = ".kerzoo.lock"
MAGIC = b"KERZOO-CHECKPOINT 1\n"
_HELD: dict[str, int] = {}  # output folder -> the fd of its lock, held by this process


def summary_writer() -> type:
    """torch's TensorBoard SummaryWriter; a ConfigError naming the extra where tensorboard is
    not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise config_mod.ConfigError(
            "log.tensorboard = true needs the tensorboard package, which is not installed here: "
            "pip install 'kerzoo[tensorboard]' (or set log.tensorboard = false)"
        ) from None
    return SummaryWriter


class TrainingError(RuntimeError):
    """The run cannot go on: the message says what is kept and what to do."""


FAULT = "KERZOO_FAULT"  # "<point>@<step>": tests/train/test_faults.py's kill -9 points


def _fault(point: str, step: int | None) -> bool:
    """True when the fault-injection suite asks this process to die at ``point`` of ``step``
    (the environment variable KERZOO_FAULT = "<point>@<step>"); the caller then writes what a
    write cut short leaves and calls _die. Unset, one dictionary lookup."""
    want = os.environ.get(FAULT)
    return want is not None and want == f"{point}@{step}"


def _die() -> None:
    """kill -9 of this process, as a crash or the OOM killer does it."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


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
            if _fault("checkpoint", obj.get("step")):  # killed mid-write
                f.write(payload[: len(payload) // 2])
                f.flush()
                _die()
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if _fault("rename", obj.get("step")):  # written, not yet in place
            _die()
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


def _line(record: dict) -> str:
    """A log line: the record's JSON with, as its last key, "sum", the first 16 hex digits of
    the SHA-256 of the JSON without it (so a changed byte in any line is found)."""
    text = json.dumps(record)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f'{text[:-1]}, "sum": "{digest}"}}\n' if text != "{}" else text + "\n"


_SUM = re.compile(r', "sum": "([0-9a-f]{16})"\}$')


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL log, each line checked against its "sum" (removed from the
    record). The last line, when a kill cut it short (no newline at its end), is dropped; any
    other line that is not whole is a TrainingError naming the file and the line. A log with
    no sum in any line (written before sums) has its lines read as they are."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    rows, summed = [], any(_SUM.search(line) for line in lines)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _SUM.search(line)
        body = line[: m.start()] + "}" if m else line
        try:
            row = json.loads(body)
            ok = isinstance(row, dict) and (
                hashlib.sha256(body.encode()).hexdigest()[:16] == m[1] if m else not summed
            )
        except json.JSONDecodeError:
            ok = False
        if ok:
            rows.append(row)
        elif n < len(lines):  # a whole line (a newline follows it): damaged, not cut by a kill
            raise TrainingError(
                f"{path}, line {n}, is damaged: its checksum does not match the line written "
                "(a byte changed, or lines cut or joined), so the log cannot be trusted from "
                "there on. Restore the file from a copy; a run resumes from its checkpoint "
                "only with the log that goes with it (--fresh starts over)"
            )
    return rows


def restore_params(model: torch.nn.Module, params: dict, path: Path) -> None:
    """Copy a checkpoint's trained tensors (``params``, read from ``path``) into ``model``; a
    trained parameter it lacks, or one the model lacks, is a TrainingError."""
    have = dict(model.named_parameters())
    missing = sorted(set(trainable_state(model)) - set(params))
    if missing:
        raise TrainingError(
            f"checkpoint {path} lacks trained parameter(s) {missing[:3]}: "
            "was it written with another model config? Pass --fresh to start over"
        )
    with torch.no_grad():
        for name, value in params.items():
            if name not in have:
                raise TrainingError(
                    f"checkpoint has parameter {name!r} that this model lacks: "
                    "was it written with another model config? Pass --fresh to start over"
                )
            have[name].copy_(value)


class Run:
    """A training run. ``parallel`` (a distributed.DataParallel) makes it one rank of a
    data-parallel run: it sets the shard/reduce hooks, and only rank 0 writes files."""

    def __init__(self, cfg: dict, resume: bool = True, progress: bool = True, parallel: Any = None):
        import kerzoo

        self.cfg, self.progress, self.parallel = cfg, progress, parallel
        self.writer = parallel is None or parallel.rank == 0
        self.tensorboard = None  # the SummaryWriter of log.tensorboard, made below
        board = summary_writer() if self.writer and cfg["log"]["tensorboard"] else None
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        self.out = Path(t["out"])
        self.metrics_path, self.traj_path = (
            self.out / "metrics.jsonl",
            self.out / "trajectory.jsonl",
        )
        self.checkpoint_path = self.out / CHECKPOINT
        self._plain: set[Path] = set()  # logs begun without line sums: continued without
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
        self.train_set, self.eval_set = data_mod.load_sets(
            cfg["data"], t["seed"], *data_fields(cfg["task"]["type"], cfg["data"])
        )
        self.model, self.tokenizer, self.kind = load_model(
            cfg["model"], self.device, seed=t["seed"]
        )
        self.task = make_task(
            cfg["task"], self.tokenizer, self.kind, self.train_set + self.eval_set
        )
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
            shutil.rmtree(self.out / TENSORBOARD, ignore_errors=True)
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
            if _fault("start", 0):  # the lock taken and the header written, no step yet
                _die()
        if board is not None:  # a resumed run hides the events of the steps after its checkpoint
            self.tensorboard = board(
                str(self.out / TENSORBOARD), purge_step=self.step + 1 if self.step else None
            )

    @property
    def sharded(self) -> bool:
        return self.parallel is not None and self.parallel.sharded is not None

    def _restore_params(self, ck: dict) -> None:
        restore_params(self.model, ck["params"], self.checkpoint_path)

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
                with path.open("rb") if path.exists() else io.BytesIO() as f:
                    first = f.readline().decode("utf-8", errors="replace").rstrip("\n")
                if first and not _SUM.search(first):  # a log of a kerzoo before line sums
                    self._plain.add(path)

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
                line = _line(record) if path not in self._plain else json.dumps(record) + "\n"
                if _fault(f"torn-{path.stem}", record.get("step")):  # killed mid-line
                    f.write(line[: len(line) // 2])
                    f.flush()
                    _die()
                f.write(line)
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

    def log(self, record: dict) -> None:
        """A metrics record: a line of metrics.jsonl, and its numbers as TensorBoard scalars
        (log.tensorboard) tagged train/KEY, or eval/NAME for a key eval_NAME."""
        self._write(self.metrics_path, record)
        if self.tensorboard is None:
            return
        for key, value in record.items():
            if key in ("step", "time") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self.tensorboard.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        """Release the output folder's lock (also when the process ends)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
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

    def batch_loss(self, batch: list[dict], n: int | None = None) -> torch.Tensor:
        """The mean loss of ``batch``: sum over this process's shard, reduced, over the weight.
        With n (perturb = "batched"): the n replicas' mean losses from one forward over the
        batch repeated n times."""
        shard = self.shard(batch)
        total, weight = (
            self.task.loss_sum(self.model, shard)
            if n is None
            else self.task.loss_sum(self.model, shard, n)
        )
        total, weight = self.reduce(total, weight)
        return total / weight

    def closures(self, batches: list[list[dict]]) -> list[Callable]:
        """The step's closures, one per micro-batch; for perturb = "batched" each takes n."""
        if self.opt.mode == "batched":
            return [lambda n, b=b: self.batch_loss(b, n) for b in batches]
        return [lambda b=b: self.batch_loss(b) for b in batches]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """The metrics of the evaluation set: eval_acc, and for the LM tasks eval_loss (the mean
        token negative log-likelihood) and eval_ppl (its exponential; None past 1e300)."""
        size = self.cfg["train"]["eval_batch_size"]
        sums: dict[str, tuple[Any, Any]] = {}
        for i in range(0, len(self.eval_set), size):
            scores = self.task.score(self.model, self.shard(self.eval_set[i : i + size]))
            for name, (value, weight) in scores.items():
                had, had_weight = sums.get(name, (0, 0))
                sums[name] = (had + value, had_weight + weight)
        out: dict[str, float | None] = {}
        for name, (value, weight) in sums.items():  # the task's order: the same on every rank
            value, weight = self.reduce(value, weight)
            out[f"eval_{name}"] = float(value) / float(weight)
        if "eval_loss" in out:
            loss = out["eval_loss"]
            out["eval_ppl"] = math.exp(loss) if loss < 690 else None
            if not math.isfinite(loss):
                out["eval_loss"] = None
        return out

    # -- the loop --------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint (rank 0; every rank joins in when the parameters are sharded)."""
        if self.sharded:  # each rank writes its rows (DCP); checkpoint.pt is their manifest
            params, extra = None, {"optimizer": None, "shards": self.parallel.save_shards(self)}
        elif self.writer:
            params, extra = trainable_state(self.model), {"optimizer": self.opt.state_dict()}
        if self.tensorboard is not None:
            self.tensorboard.flush()  # the events up to the checkpoint are on disk with it
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
            if _fault("saved", self.step):
                _die()
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
        if _fault("link", self.step):  # the older one linked, the new one not yet written
            _die()
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
        """Steps until train.steps (or ``stop_at``); returns ``summary()``: the eval metrics at
        the start and the end."""
        t = self.cfg["train"]
        total = t["steps"]
        end = total if stop_at is None else min(total, stop_at)
        if (
            self.step == 0 and not self._started
        ):  # the same decision on every rank: evaluate() is collective
            self.log({"step": 0, **self.evaluate(), "time": 0.0})
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
                loss = self.opt.step(self.closures(batches))
                self._write(self.traj_path, self.opt.last_record)
                if _fault("step", self.step):  # between a step's two log lines
                    _die()
                streak = streak + 1 if self.opt.skipped_steps > skipped_before else 0
                self.step += 1
                self.elapsed = time.perf_counter() - start
                coefs = [float(c) for c in (self.opt.last_record or {}).get("coefs", [])]
                projected = sum(coefs) / len(coefs) if coefs else math.nan
                record = {
                    "step": self.step,
                    "loss": loss if math.isfinite(loss) else None,
                    "lr": self.opt.param_groups[0]["lr"],
                    "projected_grad": projected if math.isfinite(projected) else None,
                    "time": round(self.elapsed, 3),
                }
                if streak:
                    record["skipped"] = True
                if self.step % t["eval_every"] == 0 or self.step == total:
                    record.update(self.evaluate())
                for callback in self.callbacks:
                    callback(self, record)
                self.log(record)
                if math.isfinite(loss):
                    smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{smooth:.4f}" if smooth is not None else "nan"}
                    if "eval_acc" in record:
                        post["acc"] = f"{record['eval_acc']:.3f}"
                        if record.get("eval_loss") is not None:
                            post["eval_loss"] = f"{record['eval_loss']:.4f}"
                        bar.set_postfix(post)
                    elif self.step % 10 == 0:
                        bar.set_postfix(post)
                if streak >= t["max_nan_streak"]:
                    kept = (
                        f"the last checkpoint, {self.checkpoint_path}, is kept"
                        if self.checkpoint_path.exists()
                        else "no checkpoint was written yet"
                    )
                    raise TrainingError(
                        f"{streak} steps in a row had a non-finite loss, coefficient, update or "
                        f"state (the last at step {self.step}; skipped, the parameters "
                        "restored): stopped; the "
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
        """The eval metrics at the start and the latest, from the metrics file (so also after a
        resume): accuracy, and for the LM tasks loss and perplexity (None for the others)."""
        evals = [r for r in read_jsonl(self.metrics_path) if "eval_acc" in r]
        out: dict[str, Any] = {
            "step": self.step,
            "last_eval_step": evals[-1]["step"] if evals else None,
        }
        for name in ("acc", "loss", "ppl"):
            out[f"first_{name}"] = evals[0].get(f"eval_{name}") if evals else None
            out[f"last_{name}"] = evals[-1].get(f"eval_{name}") if evals else None
        return out


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
    held = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if held:
        ax.plot([a for a, _ in held], [b for _, b in held], "s--", color="C2", label="eval loss")
    ax2 = ax.twinx()
    acc = [(r["step"], r["eval_acc"]) for r in rows if "eval_acc" in r]
    ax2.plot([a for a, _ in acc], [b for _, b in acc], "o-", color="C1", label="eval accuracy")
    ax2.set_ylabel("eval accuracy")
    fig.legend(loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
