"""Data parallel on torch.distributed: 2 processes on the CPU with gloo over loopback.

Each launch starts two ranks of tests/train/dist_worker.py (or `kerzoo train` under torchrun) and
compares what rank 0 wrote with a one-process run of the same config.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kerzoo.train import distributed
from kerzoo.train.config import ConfigError
from kerzoo.train.loop import CHECKPOINT, Run, load_checkpoint, read_jsonl

WORKER = Path(__file__).with_name("dist_worker.py")
BATCH16 = {"train": {"batch_size": 16, "steps": 4, "eval_every": 2, "checkpoint_every": 2}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "KERZOO_TEST_RANK": str(rank),
    }


def start(jobs: list, tmp_path: Path, world: int = 2) -> list[subprocess.Popen]:
    spec = tmp_path / f"jobs-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(jobs))
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(spec)],
            env=rank_env(r, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]


def finish(procs, timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"rank exited with {p.returncode}:\n{out}\n{err}"
        outs.append(out)
    return outs


def ckpt_params(cfg) -> dict:
    return load_checkpoint(Path(cfg["train"]["out"]) / CHECKPOINT)["params"]


def losses(cfg) -> list:
    return [
        r["loss"] for r in read_jsonl(Path(cfg["train"]["out"]) / "metrics.jsonl") if "loss" in r
    ]


def assert_close_runs(a, b):
    """Same trajectory up to the order of a float sum: each rank's partial loss sums add in another
    order, and (L+ - L-) / 2 eps amplifies that rounding; so parameters agree to 1 % of how far
    training moved them."""
    from kerzoo.train.model import load_model, trainable_state

    start = {
        k: v.cpu() for k, v in trainable_state(load_model(a["model"])[0]).items()
    }  # the model's device
    pa, pb = ({k: v.cpu() for k, v in ckpt_params(c).items()} for c in (a, b))
    assert pa.keys() == pb.keys() == start.keys()
    moved = max(float((pa[k] - start[k]).abs().max()) for k in pa)
    assert moved > 1e-4, (
        f"training barely moved the parameters ({moved}): the comparison would show nothing"
    )
    for k in pa:
        torch.testing.assert_close(
            pa[k], pb[k], atol=1e-2 * moved, rtol=0, msg=lambda m, k=k: f"{k}: {m}"
        )
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) and la, (la, lb)
    assert all(abs(x - y) < 1e-5 for x, y in zip(la, lb)), (la, lb)


PRESETS = [
    ({"preset": "mezo", "lr": 1e-3}, {}),
    ({"preset": "mezo", "lr": 1e-3}, {"grad_accum": 2}),
    ({"preset": "kerzoo", "lr": 1e-3}, {}),  # q = 3 directions, 6 forwards a step
    ({"preset": "subzero", "lr": 1e-3, "refresh": 2}, {}),
    ({"preset": "lozo", "lr": 1e-3}, {}),
    ({"preset": "pgap", "lr": 1e-3, "probe_steps": 2}, {}),
    ({"preset": "hizoo", "lr": 1e-3}, {}),
    ({"preset": "zo-adam", "lr": 1e-3}, {}),
]


def test_two_ranks_of_batch_8_follow_one_rank_of_batch_16_for_every_kind_of_optimizer(
    make_cfg, tmp_path
):
    cases = []
    for i, (opt, train) in enumerate(PRESETS):
        over = {"optimizer": opt, "train": {**BATCH16["train"], **train}}
        cases.append((make_cfg(f"one-{i}", **over), make_cfg(f"two-{i}", **over)))
    outs = finish(start([{"cfg": two} for _, two in cases], tmp_path))
    assert outs[0].count("DONE 4") == len(cases), outs
    for one, two in cases:
        Run(one, progress=False).train()
        assert_close_runs(one, two)
        metrics = read_jsonl(Path(two["train"]["out"]) / "metrics.jsonl")
        steps = [m for m in metrics if "loss" in m]
        forwards = (
            2 * (3 if two["optimizer"]["preset"] == "kerzoo" else 1) * two["train"]["grad_accum"]
        )
        if two["optimizer"]["preset"] == "hizoo":
            forwards = 3 * two["train"]["grad_accum"]
        # 16 bytes (a float64 sum and weight) per forward, nothing proportional to the model
        assert all(m["comm_bytes"] == 16 * forwards for m in steps), (two["optimizer"], steps)


def test_sharded_parameters_follow_the_unsharded_run_for_dense_hessian_low_rank_and_drift_is_caught(
    make_cfg, tmp_path
):
    over = {"optimizer": {"preset": "mezo", "lr": 1e-3, "weight_decay": 0.1}, **BATCH16}
    shard_h = {"optimizer": {"preset": "hizoo", "lr": 1e-3}, **BATCH16}
    pairs = [(make_cfg("one", **over), make_cfg("sharded", distributed={"shard": True}, **over))]
    one_h, sharded_h = (
        make_cfg("one-h", **shard_h),
        make_cfg("sharded-h", distributed={"shard": True}, **shard_h),
    )
    pairs.append((one_h, sharded_h))
    for i, opt in enumerate(
        (
            {"preset": "subzero", "lr": 1e-3, "refresh": 2},
            {"preset": "pgap", "lr": 1e-3, "probe_steps": 1, "refresh": 3},
        )
    ):
        pairs.append(
            (
                make_cfg(f"one-lr{i}", optimizer=opt, train=BATCH16["train"]),
                make_cfg(
                    f"sharded-lr{i}",
                    optimizer=opt,
                    train=BATCH16["train"],
                    distributed={"shard": True},
                ),
            )
        )
    drift = make_cfg("drift", distributed={"check_every": 2}, **over)
    jobs = [{"cfg": b, "export": i == 0} for i, (_, b) in enumerate(pairs)]
    outs = finish(start([*jobs, {"cfg": drift, "diverge": True}], tmp_path))
    for out in outs:
        assert out.count("DONE 4") == len(pairs), out
        assert (
            "ERROR the replicas diverged: after step 2" in out and "parameter hashes differ" in out
        ), out
    for a, b in pairs:
        Run(a, progress=False).train()
        assert_close_runs(a, b)
    ck = load_checkpoint(Path(sharded_h["train"]["out"]) / CHECKPOINT)
    assert ck["world"] == 2 and len(ck["optimizer_ranks"]) == 2
    # each rank's Hessian state holds its rows of each tensor
    w0 = ck["optimizer_ranks"][0]["kerzoo"]["projection"]["w"]
    w1 = ck["optimizer_ranks"][1]["kerzoo"]["projection"]["w"]
    full = ck["params"]
    for name in full:
        assert w0[name].numel() + w1[name].numel() == full[name].numel()
    # the export of a sharded run holds the trained tensors whole (gathered from the ranks)
    sharded = Path(pairs[0][1]["train"]["out"])
    exported = load_file(sharded / "model" / "model.safetensors")
    trained = load_checkpoint(sharded / CHECKPOINT)["params"]
    assert trained and all(torch.equal(exported[name], t) for name, t in trained.items())


def test_a_rank_that_dies_ends_the_run_with_a_clear_error_and_the_last_checkpoint_intact(
    make_cfg, tmp_path
):
    cfg = make_cfg(
        "dies",
        optimizer={"preset": "mezo", "lr": 1e-3},
        train={"steps": 100000, "checkpoint_every": 5, "eval_every": 100000},
        distributed={"timeout": 60},
    )
    procs = start([{"cfg": cfg}], tmp_path)
    ck = Path(cfg["train"]["out"]) / CHECKPOINT
    deadline = time.monotonic() + 240
    while not ck.exists() and time.monotonic() < deadline and procs[1].poll() is None:
        time.sleep(0.2)
    assert ck.exists(), procs[0].communicate(timeout=5)
    procs[1].send_signal(signal.SIGKILL)
    out, err = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=10)
    assert "ERROR rank 0 of 2:" in out and "another rank has died" in out, (out, err)
    assert "is intact" in out and "Run the same torchrun command again to resume" in out, out
    kept = load_checkpoint(ck)  # loads: written atomically, never half-written
    assert kept["step"] % 5 == 0 and kept["step"] >= 5


def test_kerzoo_train_under_torchrun_matches_one_process_and_reports_bytes(make_cfg, tmp_path):
    over = {"optimizer": {"preset": "mezo", "lr": 1e-3}, **BATCH16}
    one, two = make_cfg("one", **over), make_cfg("torchrun", **over)
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps(two))  # JSON is YAML
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "kerzoo",
        "train",
        str(path),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data parallel: 2 ranks (gloo), global batch 16, parameters replicated" in done.stdout, (
        done.stdout
    )
    assert "communication: 32 bytes per training step per rank" in done.stdout, done.stdout
    assert done.stdout.count("eval accuracy:") == 1, done.stdout  # rank 0 speaks for the run
    assert (Path(two["train"]["out"]) / "model" / "model.safetensors").exists()  # rank 0 wrote it
    Run(one, progress=False).train()
    assert_close_runs(one, two)


def test_sharding_refuses_what_a_shard_cannot_do(make_cfg):
    from kerzoo import optimizer

    flat = torch.nn.Parameter(torch.zeros(6))
    with pytest.raises(ValueError, match=r"must be a block of whole rows, got shape \(6,\)"):
        optimizer("subzero", [flat], shards={flat: ("w", 0, (2, 3))})
    rows = torch.nn.Parameter(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="must be a block of whole rows"):
        optimizer("lozo", [rows], shards={rows: ("w", 2, (2, 3))})  # offset 2 is inside row 0
    with pytest.raises(ValueError, match=r"clip = 1.0 clips by each tensor's norm"):
        optimizer("mezo", [flat], clip=1.0, shards={flat: ("w", 0)})
    with pytest.raises(ConfigError, match=r"distributed.backend = 'mpi'"):
        make_cfg(distributed={"backend": "mpi"})
    assert distributed.world_from_env() == 1 and distributed.from_env(make_cfg()) is None


@pytest.mark.parametrize(
    "name,options",
    [
        ("mezo", {"weight_decay": 0.1}),
        ("hizoo", {}),
        ("kerzoo", {}),
        ("zo-adam", {}),
        ("subzero", {"refresh": 2}),
        ("lozo", {"nu": 2}),
        ("pgap", {"probe_steps": 1, "refresh": 3}),
    ],
)
def test_blocks_of_rows_step_exactly_as_their_rows_of_the_whole_matrix(name, options):
    """Three optimizers fed the same losses: one over a 10 x 7 matrix, two over its rows 0-4 and 5-9
    as shards. Every step's directions, updates and learned state (Hessian, subspaces, P-GAP's
    estimate) agree."""
    from kerzoo import optimizer

    torch.manual_seed(0)
    start = torch.randn(10, 7)
    whole = torch.nn.Parameter(start.clone())
    blocks = [torch.nn.Parameter(start[:5].clone()), torch.nn.Parameter(start[5:].clone())]
    opts = [optimizer(name, [whole], lr=1e-2, seed=3, shards={whole: ("w", 0, (10, 7))}, **options)]
    opts += [
        optimizer(name, [t], lr=1e-2, seed=3, shards={t: ("w", a, (10, 7))}, **options)
        for t, a in zip(blocks, (0, 35))
    ]
    for o in opts:
        calls = iter(range(10**6))
        for _ in range(6):  # through P-GAP's probe step into its aligned phase, past refreshes
            o.step(lambda: 1.0 + 0.1 * math.sin(next(calls)))
    torch.testing.assert_close(
        torch.cat([b.detach() for b in blocks]), whole.detach(), rtol=0, atol=1e-6
    )
    assert not torch.equal(whole.detach(), start)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("shard", [False, True])
def test_one_nccl_rank_on_the_gpu_follows_a_plain_gpu_run(make_cfg, tmp_path, shard):
    """NCCL allows one rank per GPU, so on a one-GPU machine this is the check of the NCCL path: the
    all-reduces of the losses (float64), the replica hash and, sharded, the all-gathers of rows."""
    over = {"optimizer": {"preset": "mezo", "lr": 1e-3}, "model": {"device": "cuda"}, **BATCH16}
    one = make_cfg("one", **over)
    nccl = make_cfg(
        "nccl", **over, distributed={"backend": "nccl", "shard": shard, "check_every": 2}
    )
    out = finish(start([{"cfg": nccl}], tmp_path, world=1))[0]
    assert "DONE 4" in out, out
    Run(one, progress=False).train()
    assert_close_runs(one, nccl)
    steps = [m for m in read_jsonl(Path(nccl["train"]["out"]) / "metrics.jsonl") if "loss" in m]
    # 16 bytes per forward; a gather receives what other ranks hold, and one rank has no others
    assert steps and all(m["comm_bytes"] == 32 for m in steps), steps


def test_two_ranks_report_the_eval_loss_and_perplexity_of_one_rank(make_cfg, tmp_path):
    """An LM task's token-weighted eval loss: each rank's (sum, tokens) pairs are all-reduced."""
    rows = [
        {"prompt": f"Q: {w}? A:", "completion": f" {w}" + " indeed" * (i % 3)}
        for i, w in enumerate(["good", "bad", "happy", "sad", "great", "awful"] * 5)
    ]
    source = tmp_path / "sft.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {
        "data": {"source": str(source), "eval_size": 10},
        "task": {"type": "sft"},
        "optimizer": {"preset": "mezo", "lr": 1e-3},
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "eval_batch_size": 4},
    }
    one, two = make_cfg("one", family="opt", **over), make_cfg("two", family="opt", **over)
    outs = finish(start([{"cfg": two}], tmp_path))
    assert "DONE 2" in outs[0], outs
    Run(one, progress=False).train()
    evals = [
        [m for m in read_jsonl(Path(c["train"]["out"]) / "metrics.jsonl") if "eval_loss" in m]
        for c in (one, two)
    ]
    assert [m["step"] for m in evals[0]] == [m["step"] for m in evals[1]] == [0, 2]
    assert evals[1][0]["eval_acc"] == evals[0][0]["eval_acc"]  # step 0: the same parameters
    for a, b in zip(*evals):  # step 2: the same up to the order of the float sums
        for key in ("eval_loss", "eval_ppl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)
