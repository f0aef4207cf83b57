"""Data-parallel ZO training on torch.distributed (``kerzoo train`` under torchrun).

Every rank builds the same optimizer with the same seed, so every rank draws the same
directions. A step's batch is the same sample on every rank (it is seeded by (seed, step));
each rank evaluates its contiguous slice of it, and the task's (loss sum, weight) pair is
all-reduced: 16 bytes per forward. Every rank then knows the same loss at every point and
applies the same update, so replicas stay identical without ever sending a weight.
``train.batch_size`` is the global batch: 2 ranks x 8 examples follow the trajectory of
1 rank x 16, up to the order of a floating-point sum.

With ``distributed.shard = true`` (ZeRO-3 style) each rank keeps only its block of rows of each
trained tensor (elements [a, b) of the flattened tensor) and perturbs and updates only that
block, with the engine's global element offset a, so its perturbation is exactly the slice of the
unsharded one. A module's forward gathers its trained tensors from the ranks and frees them after.
Shards are blocks of whole rows, so every built-in projection shards: the elementwise ones (dense,
hessian) see a flat slice, the low-rank ones (subspace, lowrank, aligned) their rows of U.

Failures: every collective is wrapped, so a rank that died or hung (``distributed.timeout``)
ends the run on the others with a TrainingError naming the step and the checkpoint, which is
written atomically and so is intact. Every ``distributed.check_every`` steps the ranks compare a
hash of their trained parameters (replicated mode) and stop if they differ.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from typing import Any

import torch

from .loop import TrainingError


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_env(cfg: dict) -> DataParallel | None:
    """A DataParallel for a process started by torchrun (WORLD_SIZE > 1), else None."""
    if world_from_env() <= 1:
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
        self.sharded: ShardedParams | None = None
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
        # the collective's device (NCCL: this rank's GPU) before they are stacked
        t = torch.stack(
            [
                torch.as_tensor(x, dtype=torch.float64, device=self.device).reshape(())
                for x in (total, weight)
            ]
        )
        t = self.all_reduce(t)
        return t[0], t[1]

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
        run.evaluate = self._counted_apart(run.evaluate)
        run.callbacks.append(self.record)
        self.check_same_software()
        if not self.options["shard"]:
            return run.model, {}
        self.sharded = ShardedParams(run.model, self)
        return self.sharded.shards(), {"shards": self.sharded.names(), "perturb": "inplace"}

    def full_state(self, run) -> dict[str, torch.Tensor]:
        """The trained tensors whole (gathered from the ranks when sharded)."""
        from .model import trainable_state

        return self.sharded.full_state() if self.sharded else trainable_state(run.model)

    def close(self) -> None:
        """Leave the group together (a rank leaving first can abort a peer's pending gloo I/O)."""
        if self.dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer is gone: nothing to wait for
                self.dist.barrier()
            self.dist.destroy_process_group()


class ShardedParams:
    """ZeRO-3-style shards of the trained tensors along their first dimension: rank r keeps rows
    [r c, (r + 1) c) (c = ceil(rows / world)), a block of whole rows, so elementwise projections see
    a flat slice and low-rank ones their rows of U. A module's forward pre-hook gathers its tensors,
    its forward hook frees them."""

    def __init__(self, model: torch.nn.Module, dp: DataParallel):
        self.dp = dp
        self.entries: dict[int, dict] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            rows = p.shape[0] if p.dim() else 1
            per_row = p.numel() // max(rows, 1)
            c = math.ceil(rows / dp.world)
            a, b = min(dp.rank * c, rows), min((dp.rank + 1) * c, rows)
            shard = p.data.reshape(rows, *p.shape[1:])[a:b].clone()
            self.entries[id(p)] = {
                "name": name,
                "param": p,
                "shape": tuple(p.shape),
                "numel": p.numel(),
                "chunk": c * per_row,
                "offset": a * per_row,
                "shard": shard,
            }
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.handles = []
        for m in model.modules():
            owned = [p for p in m._parameters.values() if p is not None and id(p) in self.entries]
            if owned:
                self.handles.append(
                    m.register_forward_pre_hook(lambda _m, _a, o=owned: self._gather(o))
                )
                self.handles.append(
                    m.register_forward_hook(lambda _m, _a, _out, o=owned: self._free(o))
                )

    def shards(self) -> list[torch.Tensor]:
        return [e["shard"] for e in self.entries.values()]

    def names(self) -> dict[torch.Tensor, tuple[str, int, tuple[int, ...]]]:
        return {e["shard"]: (e["name"], e["offset"], e["shape"]) for e in self.entries.values()}

    def _whole(self, e: dict) -> torch.Tensor:
        chunk, shard = e["chunk"], e["shard"].reshape(-1)
        padded = (
            shard
            if shard.numel() == chunk
            else torch.cat([shard, shard.new_zeros(chunk - shard.numel())])
        )
        full = shard.new_empty(chunk * self.dp.world)
        self.dp.all_gather(list(full.split(chunk)), padded, f"gather of {e['name']}")
        return full[: e["numel"]].view(e["shape"])

    def _gather(self, owned) -> None:
        for p in owned:
            p.data = self._whole(self.entries[id(p)])

    def _free(self, owned) -> None:
        for p in owned:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def full_state(self) -> dict[str, torch.Tensor]:
        return {e["name"]: self._whole(e).clone() for e in self.entries.values()}


def traffic_line(run) -> str:
    """Bytes per step this rank sent, beside what a first-order data-parallel step all-reduces."""
    from .loop import read_jsonl

    steps = [r["comm_bytes"] for r in read_jsonl(run.metrics_path) if "comm_bytes" in r]
    if not steps:
        return "communication: no step recorded"
    mean = sum(steps) / len(steps)
    grads = (
        sum(p.numel() * 4 for p in run.model.parameters() if p.requires_grad)
        if not run.sharded
        else sum(e["numel"] * 4 for e in run.parallel.sharded.entries.values())
    )
    return (
        f"communication: {mean:,.0f} bytes per training step per rank (mean of {len(steps)}); a "
        f"first-order data-parallel step all-reduces {grads:,} bytes of fp32 gradients "
        f"({grads / max(mean, 1):,.0f}x more)"
    )
