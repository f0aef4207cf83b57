"""Data-parallel ZO training on torch.distributed (``kerzoo train`` under torchrun).

Every rank builds the same optimizer with the same seed, so every rank draws the same
directions. A step's batch is the same sample on every rank (it is seeded by (seed, step));
each rank evaluates its contiguous slice of it, and the task's (loss sum, weight) pair is
all-reduced: 16 bytes per forward. Every rank then knows the same loss at every point and
applies the same update, so replicas stay identical without ever sending a weight.
``train.batch_size`` is the global batch: 2 ranks x 8 examples follow the trajectory of
1 rank x 16, up to the order of a floating-point sum.

With ``distributed.shard = true`` the model is sharded with torch's FSDP2
(``torch.distributed.fsdp.fully_shard``): each transformer block (the model's
``_no_split_modules``), then the root. Every parameter becomes a DTensor holding this rank's block
of rows, the optimizer perturbs and updates only that block at its global element offset
(kerzoo/perturb/dtensor.py), and FSDP gathers a block's weights before its forward and frees them
after. Checkpoints are then sharded through torch.distributed.checkpoint (DCP): each rank writes
its rows, ``checkpoint.pt`` holds the manifest (the sha256 of every file), and the finished run
also writes ``weights.pt``, the trained tensors whole in one file. ``distributed.offload`` adds
FSDP2's CPUOffloadPolicy: the shards live in CPU memory between forwards.

Failures: every collective is wrapped (FSDP's gathers inside a forward too), so a rank that died
or hung (``distributed.timeout``) ends the run on the others with a TrainingError naming the step
and the checkpoint, which is written atomically and so is intact. Every
``distributed.check_every`` steps the ranks compare a hash of their trained parameters (replicated;
sharded: their optimizer steps) and stop if they differ.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .loop import TrainingError


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_env(cfg: dict) -> DataParallel | None:
    """A DataParallel for a process started by torchrun (WORLD_SIZE > 1), else None."""
    if world_from_env() <= 1 and not (
        "WORLD_SIZE" in os.environ and cfg["distributed"]["shard"]
    ):  # one rank under torchrun joins a group only to shard (FSDP2's CPU offload)
        return None
    from .model import resolve_device

    options = dict(cfg["distributed"])
    if options["backend"] == "auto":  # NCCL where the model is on a GPU, gloo on the CPU
        options["backend"] = (
            "nccl" if resolve_device(cfg["model"]["device"]).type == "cuda" else "gloo"
        )
    return DataParallel(options)


class DataParallel:
    """This process's place in the group, and the hooks a Run uses (shard, reduce, callbacks)."""

    PAYLOAD = 16  # one all-reduce of (sum, weight) in float64

    def __init__(self, options: dict, group_init: bool = True):
        import torch.distributed as dist

        self.dist, self.options = dist, options
        backend = options["backend"]
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if group_init and not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            try:
                dist.init_process_group(
                    backend, timeout=datetime.timedelta(seconds=options["timeout"])
                )
            except (RuntimeError, ValueError) as exc:
                raise TrainingError(
                    f"torch.distributed could not start ({backend}): {exc}. Launch with "
                    "torchrun --nproc_per_node N -m kerzoo train CONFIG (it sets RANK, WORLD_SIZE, "
                    "MASTER_ADDR, MASTER_PORT)"
                ) from None
        self.backend = dist.get_backend()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        self.sharded: list | None = None  # the FSDP modules, when distributed.shard
        self.bytes = 0  # payload bytes of this rank's collectives since the last record (training)
        self.eval_bytes = 0  # the same, of evaluations
        self.run = None

    # -- the collectives, each wrapped so that a dead peer ends the run with a clear message --
    def _failed(self, what: str, exc: BaseException) -> TrainingError:
        run = self.run
        step = run.step if run is not None else 0
        kept = (
            f"the last checkpoint, {run.checkpoint_path} (written atomically), is intact"
            if run is not None and run.checkpoint_path.exists()
            else "no checkpoint was written yet"
        )
        return TrainingError(
            f"rank {self.rank} of {self.world}: the {what} at step {step} failed ({exc}); another "
            f"rank has died or stopped answering within distributed.timeout = "
            f"{self.options['timeout']} s. The run is stopped; {kept}. Run the same torchrun "
            "command again to resume"
        )

    def all_reduce(self, t: torch.Tensor, what: str = "all-reduce of the losses") -> torch.Tensor:
        try:
            self.dist.all_reduce(t)
        except Exception as exc:  # gloo and nccl raise RuntimeError subclasses, versions differ
            raise self._failed(what, exc) from None
        self.bytes += t.numel() * t.element_size()
        return t

    def all_gather(self, outs: list[torch.Tensor], t: torch.Tensor, what: str) -> None:
        try:
            self.dist.all_gather(outs, t)
        except Exception as exc:
            raise self._failed(what, exc) from None
        self.bytes += sum(o.numel() * o.element_size() for o in outs) - t.numel() * t.element_size()

    def all_gather_object(self, obj: Any, what: str) -> list:
        out: list = [None] * self.world
        try:
            self.dist.all_gather_object(out, obj)
        except Exception as exc:
            raise self._failed(what, exc) from None
        return out

    # -- the Run's hooks ---------------------------------------------------------------------------
    def shard(self, batch: list) -> list:
        """This rank's contiguous slice of ``batch``."""
        n = len(batch)
        if n < self.world:
            raise TrainingError(
                f"a batch of {n} example(s) cannot be split over {self.world} ranks: make "
                "train.batch_size and the evaluation chunks (train.eval_batch_size, "
                f"data.eval_size) at least {self.world}"
            )
        return batch[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    def reduce(self, total, weight):
        # the loss sum may live on the model's device and the weight be a Python number: both go to
        # the collective's device (NCCL: this rank's GPU) before they are joined. perturb =
        # "batched": total holds the n replicas' sums, one all-reduce of n + 1 numbers
        sums = torch.as_tensor(total, dtype=torch.float64, device=self.device)
        t = torch.cat(
            [
                sums.reshape(-1),
                torch.as_tensor(weight, dtype=torch.float64, device=self.device)[None],
            ]
        )
        t = self.all_reduce(t)
        return (t[0] if sums.dim() == 0 else t[:-1]), t[-1]

    def record(self, run, record: dict) -> None:
        if run.step % self.options["check_every"] == 0 or run.step == run.cfg["train"]["steps"]:
            self.check_replicas(run)
        record["comm_bytes"] = self.bytes
        if self.eval_bytes:
            record["comm_bytes_eval"] = self.eval_bytes
        self.bytes = self.eval_bytes = 0

    def _counted_apart(self, evaluate):
        """``evaluate`` with its bytes counted in eval_bytes, not in the step's."""

        def counted():
            before = self.bytes
            try:
                return evaluate()
            finally:
                self.eval_bytes += self.bytes - before
                self.bytes = before

        return counted

    def check_replicas(self, run) -> None:
        """Stop when the ranks' trained parameters (replicated) or their optimizer steps differ."""
        from .replay import fingerprint

        trained = {
            n: p.detach() for n, p in run.model.named_parameters() if p.requires_grad
        }  # no copy
        mine = run.opt.steps_done if self.sharded else fingerprint(trained)
        seen = self.all_gather_object(mine, "check of the replicas")
        if len(set(seen)) > 1:
            what = "optimizer steps" if self.sharded else "parameter hashes"
            raise TrainingError(
                f"the replicas diverged: after step {run.step} the ranks' {what} differ ("
                + ", ".join(f"rank {r}: {s}" for r, s in enumerate(seen))
                + "). Every rank must run the same kerzoo, torch and engine backend (see `kerzoo "
                "info` on each node); the run is stopped and the last checkpoint, "
                f"{run.checkpoint_path}, is kept"
            )

    def check_same_software(self) -> None:
        import kerzoo
        from kerzoo.engine.build import info

        backends = sorted({f"{r['cpu']}/{r['cuda']}" for r in info()})
        mine = (
            f"kerzoo {kerzoo.__version__}, torch {torch.__version__}, engine {', '.join(backends)}"
        )
        seen = self.all_gather_object(mine, "check of the software on each rank")
        if len(set(seen)) > 1:
            raise TrainingError(
                "the ranks run different software (kerzoo, torch, engine backend): "
                + "; ".join(f"rank {r}: {s}" for r, s in enumerate(seen))
                + ". Install the same versions on every node: the ranks must compute the same "
                "update"
            )

    def attach(self, run) -> tuple[Any, dict]:
        """Set the Run's hooks; return what the optimizer is built over and its extra options."""
        self.run = run
        run.shard, run.reduce = self.shard, self.reduce
        run.evaluate = self._counted_apart(self._guarded(run.evaluate, "evaluation"))
        run.callbacks.append(self.record)
        self.check_same_software()
        if self.options["shard"]:
            self.sharded = shard_model(run.model, self)
            # FSDP's all-gathers run inside each forward: a dead peer fails there
            run.batch_loss = self._guarded(run.batch_loss, "forward (FSDP's all-gather)")
        return run.model, {}

    def built(self, run) -> None:
        """After the optimizer is built: the Run's loss is the global batch's already (reduce),
        so the optimizer's own mean over the mesh (for a user's FSDP2 model) is not needed."""
        if self.sharded:
            run.opt._reduce = None

    def _guarded(self, fn, what: str):
        """``fn`` with a torch.distributed failure inside it (a peer gone) made the run's
        TrainingError."""

        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except TrainingError:
                raise
            except Exception as exc:
                if not from_collective(exc):
                    raise
                raise self._failed(what, exc) from None

        return guarded

    def _params(self, run) -> dict[str, Any]:
        """The trained parameters, resharded: DTensors holding this rank's rows."""
        from kerzoo.perturb import dtensor

        dtensor.reshard(self.sharded)  # a forward of the Run's own leaves the root gathered
        return {n: p for n, p in run.model.named_parameters() if p.requires_grad}

    def full_state(self, run) -> dict[str, torch.Tensor]:
        """The trained tensors whole; sharded, gathered one at a time and kept by rank 0 only
        (the other ranks return an empty dict)."""
        from .model import trainable_state

        if not self.sharded:
            return trainable_state(run.model)
        out = {}
        for name, p in self._params(run).items():
            try:
                whole = p.full_tensor().detach()
                if self.rank == 0:
                    out[name] = whole.to("cpu", copy=True)  # never a view of a shard
                del whole
            except Exception as exc:
                if not from_collective(exc):
                    raise
                raise self._failed(f"gather of {name}", exc) from None
        return out

    # -- sharded checkpoints: DCP files in shards-<step>/, their manifest in checkpoint.pt ---------
    def save_shards(self, run) -> dict:
        """Every rank writes its rows of the trained tensors (DCP) and its optimizer state into
        ``out/shards-<step>/``; returns the manifest that checkpoint.pt keeps: the folder, the
        world size and each file's [size, sha256] (hashed by the ranks in turn)."""
        import torch.distributed.checkpoint as dcp

        name = f"shards-{run.step:08d}"
        folder = run.out / name
        if self.rank == 0 and folder.exists():  # left by a run killed before its manifest
            shutil.rmtree(folder)
        self.barrier(f"removal of a stale {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        params = self._params(run)
        write_file(run.opt.state_dict(), folder / f"optimizer-{self.rank}.pt", run)
        try:
            dcp.save({"params": params}, checkpoint_id=folder)
        except dcp.api.CheckpointException as exc:  # a rank could not write its files
            kept = (
                f"the previous checkpoint {run.checkpoint_path} (step {run.saved_step}) is intact"
                if run.checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"could not write the sharded checkpoint {folder} ({exc}); {kept}. Free some "
                "space (or fix the folder) and run the same command to resume"
            ) from None
        except Exception as exc:
            if not from_collective(exc):
                raise
            raise self._failed("sharded checkpoint (DCP save)", exc) from None
        files = self.all_gather_object(
            sorted(f.name for f in folder.iterdir()), "listing of the checkpoint"
        )[0]
        mine = {f: [(folder / f).stat().st_size, _sha256(folder / f)] for f in self._turn(files)}
        hashes: dict = {}
        for part in self.all_gather_object(mine, "hashes of the checkpoint files"):
            hashes.update(part)
        if run.cfg["train"]["steps"] == run.step:
            self.export(run)
        return {"folder": name, "world": self.world, "files": hashes}

    def _turn(self, files: list[str]) -> list[str]:
        return files[self.rank :: self.world]

    def load_shards(self, run, ck: dict, path: Path) -> None:
        """Check the files of a sharded checkpoint against its manifest (each rank a share of
        them), then load this rank's rows and optimizer state."""
        import torch.distributed.checkpoint as dcp

        manifest = ck["shards"]
        folder = path.parent / manifest["folder"]
        files = sorted(manifest["files"])
        problems = [verify(folder, f, manifest["files"][f], path) for f in self._turn(files)]
        seen = self.all_gather_object([p for p in problems if p], "check of the checkpoint files")
        for found in seen:
            if found:
                raise TrainingError(found[0])
        try:
            dcp.load({"params": self._params(run)}, checkpoint_id=folder)
        except Exception as exc:
            if from_collective(exc):
                raise self._failed("sharded checkpoint (DCP load)", exc) from None
            raise TrainingError(
                f"the sharded checkpoint {folder} could not be loaded ({type(exc).__name__}: "
                f"{exc}); it is left as it is: pass --fresh to start over"
            ) from None
        state = torch.load(folder / f"optimizer-{self.rank}.pt", weights_only=False)
        run.opt.load_state_dict(state)

    def saved(self, run) -> None:
        """After rank 0 wrote checkpoint.pt: it removes the shards-<step>/ folders no
        checkpoint*.pt refers to, and every rank waits for it (a rank returns from a checkpoint
        once it is complete)."""
        if self.rank == 0:
            self._prune(run)
        self.barrier("end of the checkpoint")

    def _prune(self, run) -> None:
        keep = {f"shards-{run.step:08d}"}
        keep |= {f"shards-{p.stem.split('-')[1]}" for p in run.out.glob("checkpoint-*.pt")}
        for folder in run.out.glob("shards-*"):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def export(self, run) -> None:
        """``out/weights.pt``: the trained tensors whole, one torch.save file loadable without
        torch.distributed (rank 0 writes it, every rank joins the gathers)."""
        state = self.full_state(run)
        if self.rank != 0:
            return
        path = run.out / EXPORT
        tmp = path.with_name(path.name + ".tmp")
        write_file(state, tmp, run)
        os.replace(tmp, path)

    def barrier(self, what: str) -> None:
        self.all_reduce(torch.zeros(1, device=self.device), what)
        self.bytes -= 4  # a barrier, not a payload of the step

    def close(self) -> None:
        """Leave the group together (a rank leaving first can abort a peer's pending gloo I/O)."""
        if self.dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer is gone: nothing to wait for
                self.dist.barrier()
            self.dist.destroy_process_group()


EXPORT = "weights.pt"


def shard_model(model: torch.nn.Module, dp: DataParallel) -> list:
    """Shard ``model`` with FSDP2's ``fully_shard``: each transformer block (the classes its
    ``_no_split_modules`` name; else each module of a ModuleList), then the root; with
    ``distributed.offload``, under CPUOffloadPolicy. Returns the FSDP modules."""
    from torch.distributed.device_mesh import init_device_mesh

    from kerzoo.perturb import dtensor

    try:
        fsdp = dtensor.fsdp2("distributed.shard = true")
    except RuntimeError as exc:
        raise TrainingError(str(exc)) from None
    options: dict[str, Any] = {"mesh": init_device_mesh(dp.device.type, (dp.world,))}
    if dp.options["offload"]:
        # pinned memory needs an accelerator; on the CPU the shards are in CPU memory anyway
        options["offload_policy"] = fsdp.CPUOffloadPolicy(pin_memory=dp.device.type == "cuda")
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [c for m in model.modules() if isinstance(m, torch.nn.ModuleList) for c in m]
    for block in blocks:
        fsdp.fully_shard(block, **options)
    fsdp.fully_shard(model, **options)
    return [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)]


def from_collective(exc: BaseException) -> bool:
    """Whether ``exc`` came out of torch.distributed (a collective whose peer is gone): a
    DistError, or (gloo raises plain RuntimeErrors) an error raised inside torch.distributed."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    inner = Path(tb.tb_frame.f_code.co_filename) if tb is not None else None
    return inner is not None and Path(torch.distributed.__file__).parent in inner.parents


def write_file(obj: Any, path: Path, run) -> None:
    """torch.save ``obj`` to ``path`` and flush it to disk; a disk error is a TrainingError."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        kept = (
            f"the previous checkpoint {run.checkpoint_path} is intact"
            if run.checkpoint_path.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"could not write {path} ({exc.strerror or exc}); {kept}. Free some space (or fix "
            "the folder) and run the same command to resume"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(folder: Path, name: str, mark: list, manifest: Path) -> str | None:
    """None when ``folder/name`` has the size and sha256 the manifest recorded, else why not."""
    path = folder / name
    way_on = (
        "nothing was loaded and it is left as it is: resume from an older checkpoint (copy a "
        "checkpoint-<step>.pt of the folder over checkpoint.pt) or start over with --fresh"
    )
    if not path.exists():
        return f"checkpoint file {path} (named by {manifest}) is missing; {way_on}"
    size, digest = mark
    if path.stat().st_size != size or _sha256(path) != digest:
        return (
            f"checkpoint file {path} is corrupt: its content hash does not match the one "
            f"{manifest} recorded (the file was truncated or altered after it was written); "
            f"{way_on}"
        )
    return None


def checkpoint_params(path: Path, ck: dict | None = None) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint, whole, in this process (no torch.distributed): a
    replicated checkpoint's own, or a sharded one's read from its DCP files (checked first).
    ``ck``: the checkpoint already loaded from ``path``."""
    from .loop import load_checkpoint

    path = Path(path)
    ck = load_checkpoint(path) if ck is None else ck
    if ck.get("shards") is None:
        return ck["params"]
    import torch.distributed.checkpoint as dcp

    manifest = ck["shards"]
    folder = path.parent / manifest["folder"]
    for name, mark in sorted(manifest["files"].items()):
        problem = verify(folder, name, mark, path)
        if problem:
            raise TrainingError(problem)
    meta = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    state = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith("params.")
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=folder, no_dist=True)
    return {k[len("params.") :]: v for k, v in state.items()}


def traffic_line(run) -> str:
    """Bytes per step this rank sent, beside what a first-order data-parallel step all-reduces."""
    from .loop import read_jsonl

    steps = [r["comm_bytes"] for r in read_jsonl(run.metrics_path) if "comm_bytes" in r]
    if not steps:
        return "communication: no step recorded"
    mean = sum(steps) / len(steps)
    grads = sum(p.numel() * 4 for p in run.model.parameters() if p.requires_grad)
    line = (
        f"communication: {mean:,.0f} bytes per training step per rank (mean of {len(steps)}); a "
        f"first-order data-parallel step all-reduces {grads:,} bytes of fp32 gradients "
        f"({grads / max(mean, 1):,.0f}x more)"
    )
    if run.sharded:
        from kerzoo.perturb import dtensor

        dtensor.reshard(run.parallel.sharded)  # the root stays gathered after a forward
        gathered = sum(
            (p.numel() - p.to_local().numel()) * p.element_size()
            for p in run.model.parameters()
            if dtensor.is_dtensor(p)
        )
        line += (
            f"; besides, FSDP's all-gathers bring each rank the {gathered:,} bytes of parameters "
            "it does not hold, every forward (not counted above)"
        )
    return line
