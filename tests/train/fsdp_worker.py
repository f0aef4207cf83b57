"""One rank of tests/train/test_fsdp.py, started by torchrun (gloo, CPU).

argv[1]: a JSON file {"out": a folder, "jobs": [...]}. A job {"name", "model", "preset",
"options", "steps", "batch"} builds the model with seed 0, shards every layer and the root with
``fully_shard`` and trains it with ``kerzoo.optimizer(preset, model, **options)`` for ``steps``;
``batch`` "same": every rank evaluates the whole batch, "split": each rank its half. Rank 0 then
trains an unsharded copy on the whole batch in this process (same threads, same kernels) and
saves both runs' losses and weights to out/<name>.pt. A job {"refuse": case} builds an optimizer
that must be refused and saves the message to out/<name>.txt. ``peek``: a forward of the user's
after each step, whose loss is recorded too; ``dtype``: the model's ("bfloat16"); ``mp``: FSDP2's
MixedPrecisionPolicy with bf16 compute over the shards.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard

import kerzoo
from kerzoo.projections.dense import Dense


class WholeOnly(Dense):
    """A projection that says it cannot give a shard its slice of a direction."""

    name = "whole-only"
    shardable = False


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":  # 5 and 3 rows over 2 ranks: uneven shards; 1 row: rank 1 holds none
        return torch.nn.Sequential(
            torch.nn.Linear(6, 5),
            torch.nn.Tanh(),
            torch.nn.Linear(5, 3),
            torch.nn.Tanh(),
            torch.nn.Linear(3, 1),
        )
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=101,  # odd: the embedding's and the head's last shards are short
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=24,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def shard(model: torch.nn.Module, kind: str, **options) -> torch.nn.Module:
    layers = [m for m in model if isinstance(m, torch.nn.Linear)] if kind == "mlp" else None
    for layer in layers if layers is not None else model.model.layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def batches(kind: str, steps: int) -> list:
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return [
            (torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)) for _ in range(steps)
        ]
    return [torch.randint(0, 101, (4, 8), generator=g) for _ in range(steps)]


def loss_of(model, kind, batch):
    if kind == "mlp":
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)
    return model(input_ids=batch, labels=batch).loss


def part(batch, kind, rank, world):
    """This rank's half of the batch."""
    if kind == "mlp":
        return tuple(t[rank * len(t) // world : (rank + 1) * len(t) // world] for t in batch)
    return batch[rank * len(batch) // world : (rank + 1) * len(batch) // world]


def train(model, job, data, rank=0, world=1):
    opt = kerzoo.optimizer(job["preset"], model, **job["options"])
    losses, coefs = [], []
    for batch in data:
        mine = part(batch, job["model"], rank, world) if job["batch"] == "split" else batch
        losses.append(opt.step(lambda b=mine: loss_of(model, job["model"], b)))
        coefs += opt.last_record["coefs"]
        if job.get(
            "peek"
        ):  # a forward of the user's between steps (FSDP2 leaves the root gathered)
            with torch.no_grad():
                losses.append(float(loss_of(model, job["model"], batch)))
    state = opt.state_dict()  # the update rule's state is keyed by the parameters
    opt.load_state_dict(state)
    return losses, coefs


def refuse(case: str) -> str:
    kind = "mlp"
    model = build(kind)
    if case == "shard1":
        shard(model, kind, shard_placement_fn=lambda p: Shard(1) if p.shape == (5, 6) else None)
    else:
        shard(model, kind)
    options = {
        "clip": {"clip": 1.0},
        "outputs": {"perturb": "outputs"},
        "projection": {"projection": WholeOnly},
        "hessian": {"perturb": "onthefly"},
    }.get(case, {})
    try:
        if case == "params":
            kerzoo.optimizer("mezo", list(model.parameters()))
        kerzoo.optimizer("hizoo" if case == "hessian" else "mezo", model, **options)
    except ValueError as exc:
        return str(exc)
    return "NOT REFUSED"


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for job in spec["jobs"]:
        if "refuse" in job:
            message = refuse(job["refuse"])
            if rank == 0:
                (out / f"{job['name']}.txt").write_text(message)
            continue
        kind = job["model"]
        data = batches(kind, job["steps"])
        dtype = getattr(torch, job.get("dtype", "float32"))
        mp = (
            {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16)} if job.get("mp") else {}
        )
        model = shard(build(kind).to(dtype), kind, **mp)
        losses, coefs = train(model, job, data, rank, world)
        for m in model.modules():  # a forward of the user's leaves the root gathered
            if isinstance(m, FSDPModule):
                m.reshard()
        full = {n: p.full_tensor() for n, p in model.named_parameters()}
        if rank == 0:
            alone = build(kind).to(dtype)
            alone_losses, _ = train(alone, {**job, "batch": "same"}, data)
            torch.save(
                {
                    "losses": losses,
                    "coefs": coefs,
                    "params": full,
                    "alone_losses": alone_losses,
                    "alone": {n: p.detach() for n, p in alone.named_parameters()},
                    "start": {n: p.detach() for n, p in build(kind).to(dtype).named_parameters()},
                },
                out / f"{job['name']}.pt",
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
