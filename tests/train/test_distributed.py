"""Data parallel on torch.distributed: 2 processes on the CPU with gloo over loopback.

Each launch starts two ranks of tests/train/dist_worker.py (or `kerzoo train` under torchrun) and
compares what rank 0 wrote with a one-process run of the same config.
"""

import json
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

import kerzoo
from kerzoo.presets import resolve
from kerzoo.train import distributed
from kerzoo.train.config import ConfigError
from kerzoo.train.loop import CHECKPOINT, Run, TrainingError, load_checkpoint, read_jsonl

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
    """A run's checkpointed trained tensors, whole (a sharded one's read from its DCP files)."""
    return distributed.checkpoint_params(Path(cfg["train"]["out"]) / CHECKPOINT)


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


# presets whose projection shards, less those that clip by each tensor's norm (kerzoo-recipe),
# which a rank holding a shard does not know: a sharded model refuses clip > 0 when built
SHARDABLE = [
    name
    for name in kerzoo.list_optimizers()
    if resolve(name).arguments()["projection"].shardable and not resolve(name).options.get("clip")
]
SMALL2 = {"train": {"batch_size": 4, "steps": 2, "eval_every": 2, "checkpoint_every": 2}}


def exported(cfg) -> dict:
    """weights.pt, which a finished sharded run exports: loadable without torch.distributed."""
    return torch.load(Path(cfg["train"]["out"]) / "weights.pt", weights_only=True)


def run_files(cfg, params=ckpt_params) -> dict:
    """What a run wrote that must not depend on sharding: its logs (but the times and bytes sent)
    and its weights."""
    out = Path(cfg["train"]["out"])
    apart = ("time", "comm_bytes", "comm_bytes_eval")
    metrics = [
        {k: v for k, v in r.items() if k not in apart} for r in read_jsonl(out / "metrics.jsonl")
    ]
    traj = read_jsonl(out / "trajectory.jsonl")
    return {"metrics": metrics, "trajectory": traj[1:], "params": params(cfg)}


def assert_same_run(a, b, params=ckpt_params):
    fa, fb = run_files(a, params), run_files(b, params)
    assert fa["metrics"] == fb["metrics"] and fa["trajectory"] == fb["trajectory"]
    assert fa["params"].keys() == fb["params"].keys()
    for k in fa["params"]:
        assert torch.equal(fa["params"][k], fb["params"][k]), k


@pytest.mark.slow  # one launch of 2 ranks, 33 short runs
def test_fsdp2_sharded_runs_equal_replicated_bit_for_bit_for_every_shardable_preset(
    make_cfg, tmp_path
):
    """``distributed.shard = true`` (FSDP2) against the replicated run on the same 2 ranks (the same
    sums): every step's losses, trajectory records and the weights agree bit for bit, for every
    preset whose projection shards; the finished run exported weights.pt, loadable without
    torch.distributed; a replica that drifted is still caught (replicated)."""
    assert len(SHARDABLE) >= 15 and "sparse-mezo" not in SHARDABLE
    pairs = []
    for name in SHARDABLE:
        over = {"optimizer": {"preset": name, "lr": 1e-3}, **SMALL2}
        if name == "mezo":
            over["optimizer"]["weight_decay"] = 0.1
        pairs.append(
            (
                make_cfg(f"rep-{name}", **over),
                make_cfg(f"fsdp-{name}", distributed={"shard": True}, **over),
            )
        )
    over = {"optimizer": {"preset": "mezo", "lr": 1e-3}, **SMALL2}
    drift = make_cfg("drift", distributed={"check_every": 2}, **over)
    jobs = [{"cfg": c, "export": c is pairs[0][1]} for pair in pairs for c in pair]
    jobs.append({"cfg": drift, "diverge": True})
    for out in finish(start(jobs, tmp_path)):
        assert out.count("DONE 2") == 2 * len(pairs), out
        assert (
            "ERROR the replicas diverged: after step 2" in out and "parameter hashes differ" in out
        ), out
    start_state = None
    for rep, fsdp in pairs:
        assert_same_run(rep, fsdp)
        out = Path(fsdp["train"]["out"])
        ck = load_checkpoint(out / CHECKPOINT)
        assert ck["params"] is None and ck["shards"]["world"] == 2, ck.keys()
        assert sorted(ck["shards"]["files"]) == [
            ".metadata",
            "__0_0.distcp",
            "__1_0.distcp",
            "optimizer-0.pt",
            "optimizer-1.pt",
        ]
        weights, params = exported(fsdp), ckpt_params(rep)
        assert weights.keys() == params.keys()
        assert all(torch.equal(weights[k], params[k]) for k in params)
        if start_state is None:
            from kerzoo.train.model import load_model, trainable_state

            start_state = trainable_state(load_model(rep["model"])[0])
        assert any(not torch.equal(params[k], start_state[k]) for k in params), rep["optimizer"]
    # each rank's Hessian state (HiZOO) holds its rows of each tensor
    folder = Path(pairs[SHARDABLE.index("hizoo")][1]["train"]["out"]) / "shards-00000002"
    w0, w1 = (
        torch.load(folder / f"optimizer-{r}.pt", weights_only=False)["kerzoo"]["projection"]["w"]
        for r in (0, 1)
    )
    whole = ckpt_params(pairs[0][0])
    assert w0.keys() == whole.keys()
    for name in whole:
        assert w0[name].numel() + w1[name].numel() == whole[name].numel()
        assert w0[name].shape[0] == -(-whole[name].shape[0] // 2)
    # the model folder of a sharded run holds the trained tensors whole (gathered from the ranks)
    folder = Path(pairs[0][1]["train"]["out"]) / "model" / "model.safetensors"
    saved, params = load_file(folder), ckpt_params(pairs[0][0])
    assert params and all(torch.equal(saved[name], t) for name, t in params.items())


def test_a_sharded_run_resumes_bit_for_bit_and_a_flipped_byte_in_its_shards_is_refused(
    make_cfg, tmp_path
):
    """Interrupted at step 2 and resumed on 2 ranks (DCP), a sharded run equals the one that never
    stopped, logs and weights; keep_checkpoints keeps step 2's shards beside its checkpoint-*.pt.
    Resuming it replicated is refused, naming both layouts. A byte flipped in a shard file is
    refused on every rank (the manifest's sha256), and by checkpoint_params in one process."""
    over = {
        "optimizer": {"preset": "zo-adam", "lr": 1e-3},
        "train": {**SMALL2["train"], "steps": 4, "keep_checkpoints": 2},
        "distributed": {"shard": True},
    }
    whole, resumed = make_cfg("whole", **over), make_cfg("resumed", **over)
    shard1 = Path(whole["train"]["out"]) / "shards-00000004" / "__1_0.distcp"
    replicated = make_cfg("resumed", **{**over, "distributed": {"shard": False}})
    jobs = [{"cfg": whole}, {"cfg": resumed, "stop_at": 2}, {"cfg": replicated}]
    jobs.append({"cfg": whole, "flip": str(shard1)})
    for out in finish(start(jobs, tmp_path)):
        assert out.count("DONE 4") == 2, out
        assert (
            "was written by a run with 2 ranks with sharded parameters; this run has replicated "
            "parameters" in out
        ), out
        assert f"ERROR checkpoint file {shard1} is corrupt: its content hash does not match" in out
    assert_same_run(whole, resumed, params=exported)  # whole's checkpoint has the flipped byte
    params = ckpt_params(resumed)
    assert all(torch.equal(v, exported(resumed)[k]) for k, v in params.items())
    out = Path(resumed["train"]["out"])
    assert sorted(p.name for p in out.glob("shards-*")) == ["shards-00000002", "shards-00000004"]
    assert (out / "checkpoint-00000002.pt").exists()
    with pytest.raises(TrainingError, match=r"__1_0.distcp is corrupt: its content hash"):
        distributed.checkpoint_params(Path(whole["train"]["out"]) / CHECKPOINT)


def test_one_rank_with_fsdp2_cpu_offload_follows_the_plain_run_bit_for_bit(make_cfg, tmp_path):
    """torchrun --nproc_per_node 1 with distributed.shard and offload (FSDP2's CPUOffloadPolicy; on
    the CPU without pinned memory) trains exactly as one plain process; so does a LoRA model
    (peft's adapters and the frozen base in the same fully_shard units)."""
    over = {"optimizer": {"preset": "mezo", "lr": 1e-3}, **SMALL2}
    lora = {"trainable": [], "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query"]}}
    pairs = [
        (make_cfg(f"plain{i}", **over, **extra), make_cfg(f"offload{i}", **over, **extra, **on))
        for i, extra in enumerate(({}, {"model": lora}))
        for on in [{"distributed": {"shard": True, "offload": True}}]
    ]
    out = finish(start([{"cfg": b, "seed": 5} for _, b in pairs], tmp_path, world=1))[0]
    assert out.count("DONE 2") == 2, out
    for plain, offload in pairs:
        torch.manual_seed(5)  # LoRA's initial adapters
        Run(plain, progress=False).train()
        assert_same_run(plain, offload)
    assert all("lora_" in name for name in exported(pairs[1][1]))


@pytest.mark.parametrize("shard", [False, True])
def test_a_rank_that_dies_ends_the_run_with_a_clear_error_and_the_last_checkpoint_intact(
    make_cfg, tmp_path, shard
):
    cfg = make_cfg(
        "dies",
        optimizer={"preset": "mezo", "lr": 1e-3},
        train={"steps": 100000, "checkpoint_every": 5, "eval_every": 100000},
        distributed={"timeout": 60, "shard": shard},
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
    assert "ERROR rank 0 of 2:" in out and "another rank has died" in out, (out, err[-6000:])
    assert "is intact" in out and "Run the same torchrun command again to resume" in out, out
    kept = load_checkpoint(ck)  # loads: written atomically, never half-written
    assert kept["step"] % 5 == 0 and kept["step"] >= 5


@pytest.mark.parametrize("shard", [False, True])
def test_kerzoo_train_under_torchrun_matches_one_process_and_reports_bytes(
    make_cfg, tmp_path, capsys, shard
):
    """Replicated and sharded (FSDP2): the run follows one process; the sharded one's weights are
    rebuilt from its trajectory log by `kerzoo replay`, bit for bit against its DCP checkpoint."""
    from kerzoo.cli import main

    over = {"optimizer": {"preset": "mezo", "lr": 1e-3}, **BATCH16}
    one, two = make_cfg("one", **over), make_cfg("torchrun", distributed={"shard": shard}, **over)
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
    how = "sharded with FSDP2 (4 fully_shard units)" if shard else "replicated"
    assert f"data parallel: 2 ranks (gloo), global batch 16, parameters {how}" in done.stdout, (
        done.stdout
    )
    assert "communication: 32 bytes per training step per rank" in done.stdout, done.stdout
    assert done.stdout.count("eval accuracy:") == 1, done.stdout  # rank 0 speaks for the run
    assert (Path(two["train"]["out"]) / "model" / "model.safetensors").exists()  # rank 0 wrote it
    assert ("weights:     " in done.stdout) == shard, done.stdout
    Run(one, progress=False).train()
    assert_close_runs(one, two)
    if shard:
        out = Path(two["train"]["out"])
        log, ck = str(out / "trajectory.jsonl"), str(out / CHECKPOINT)
        rebuilt = str(tmp_path / "replayed.pt")
        assert main(["replay", "header", log, "--out", rebuilt, "--check", ck]) == 0
        assert "identical to" in capsys.readouterr().out


def test_bad_distributed_settings_and_an_old_torch_are_refused(make_cfg, monkeypatch):
    from kerzoo.perturb import dtensor

    with pytest.raises(ConfigError, match=r"distributed.backend = 'mpi'"):
        make_cfg(distributed={"backend": "mpi"})
    with pytest.raises(ConfigError, match=r"distributed.offload = true .* needs distributed.shard"):
        make_cfg(distributed={"offload": True})
    assert distributed.world_from_env() == 1 and distributed.from_env(make_cfg()) is None
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(
        RuntimeError,
        match=r"x: this needs torch's FSDP2 .* torch is 2.5.1\+cpu; "
        r"install torch >= 2.6",
    ):
        dtensor.fsdp2("x")


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


def test_two_ranks_of_a_batched_fzoo_run_follow_one_onthefly_process(make_cfg, tmp_path):
    """perturb = "batched" on 2 ranks: each rank's n replica sums and its weight, one all-reduce of
    n + 1 float64 a forward; the losses are the one-process onthefly run's to float rounding."""
    over = {
        "train": {"batch_size": 16, "steps": 2, "eval_every": 2, "checkpoint_every": 2},
    }
    fzoo = {"preset": "fzoo", "directions": 3, "lr": 1e-6}
    one = make_cfg("one", optimizer={**fzoo, "perturb": "onthefly"}, **over)
    two = make_cfg("two", optimizer={**fzoo, "perturb": "batched"}, **over)
    outs = finish(start([{"cfg": two}], tmp_path))
    assert "DONE 2" in outs[0], outs
    Run(one, progress=False).train()
    a, b = (read_jsonl(Path(c["train"]["out"]) / "trajectory.jsonl")[1:] for c in (one, two))
    assert len(a) == len(b) == 2
    assert b[0]["losses"] == pytest.approx(a[0]["losses"], rel=1e-6)
    assert b[1]["losses"] == pytest.approx(a[1]["losses"], rel=1e-5)
    steps = [m for m in read_jsonl(Path(two["train"]["out"]) / "metrics.jsonl") if "loss" in m]
    assert steps and all(m["comm_bytes"] == 8 * (4 + 1) for m in steps), steps
