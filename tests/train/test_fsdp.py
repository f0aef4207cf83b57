"""A model the user sharded with torch's FSDP2 (``fully_shard``) trains with
``kerzoo.optimizer(name, model)``: 2 CPU ranks on gloo under torchrun (tests/train/fsdp_worker.py),
each layer and the root sharded, against an unsharded run of the same model in one process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="torch without torch.distributed")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("torch without FSDP2 (fully_shard)", allow_module_level=True)

WORKER = Path(__file__).with_name("fsdp_worker.py")

# every rank evaluates the same batch: the sharded run's sums are the unsharded run's, bit for bit
SAME = [
    ("mezo-mlp", "mlp", "mezo", {"lr": 1e-2, "weight_decay": 0.1}, {}),
    ("mezo-llama", "llama", "mezo", {"lr": 1e-3}, {"peek": True}),
    ("subzero-llama", "llama", "subzero", {"lr": 1e-3, "refresh": 2}, {}),
    ("hizoo-mlp", "mlp", "hizoo", {"lr": 1e-2}, {}),
    ("adam-mlp", "mlp", "zo-adam", {"lr": 1e-3}, {}),
    ("onthefly-mlp", "mlp", "mezo", {"lr": 1e-2, "perturb": "onthefly"}, {}),
    ("onthefly-llama", "llama", "mezo", {"lr": 1e-3, "perturb": "onthefly"}, {"peek": True}),
    ("onthefly-subzero", "llama", "subzero", {"lr": 1e-3, "perturb": "onthefly"}, {}),
]
# lr = 0 on the fly: the shards are never written, so they stay bit-identical
EXACT = [
    ("bf16-shards", "llama", "mezo", {"lr": 0.0, "eps": 1e-2}, {"dtype": "bfloat16"}),
    ("mixed-precision", "llama", "mezo", {"lr": 0.0, "perturb": "onthefly"}, {"mp": True}),
]
REFUSED = {
    "clip": r"clip = 1.0 clips by each tensor's norm, which a rank holding only its shard of "
    r"0.weight \(a DTensor, FSDP2\) does not know; use clip = 0",
    "outputs": r"perturb='outputs' is not supported yet for DTensor parameters such as 0.weight",
    "hessian": r"projection 'hessian' keeps per-tensor state shaped like each rank's shard \(of "
    r"0.weight, a DTensor\).*use perturb='inplace'",
    "projection": r"projection 'whole-only' builds each direction from the whole tensor, so it "
    r"cannot perturb 0.weight",
    "shard1": r"parameter 0.weight is a DTensor placed as \(Shard\(dim=1\),\) on a 1-D mesh; .*"
    r"Shard\(0\)",
    "params": r"parameter group0.param0 is a DTensor .* no module was given: pass the model itself",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One torchrun launch of 2 ranks for every case: {name: what rank 0 saved}."""
    out = tmp_path_factory.mktemp("fsdp")
    jobs = [
        {"name": n, "model": m, "preset": p, "options": o, "steps": 4, "batch": "same", **extra}
        for n, m, p, o, extra in SAME + EXACT
    ]
    jobs.append(
        {"name": "split", "model": "mlp", "preset": "mezo", "options": {"lr": 1e-2}, "steps": 4}
        | {"batch": "split"}
    )
    jobs += [{"name": f"refuse-{case}", "refuse": case} for case in REFUSED]
    spec = out / "jobs.json"
    spec.write_text(json.dumps({"out": str(out), "jobs": jobs}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), str(spec)]  # --standalone: a local rendezvous on a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    rank0 = "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank0]"))
    assert done.returncode == 0, done.stdout[-3000:] + (rank0 or done.stderr)[-5000:]
    saved = {j["name"]: out / f"{j['name']}.pt" for j in jobs if "refuse" not in j}
    return {
        **{n: torch.load(f) for n, f in saved.items()},
        **{j["name"]: (out / f"{j['name']}.txt").read_text() for j in jobs if "refuse" in j},
    }


def moved(run) -> float:
    return max(float((run["alone"][n] - run["start"][n]).abs().max()) for n in run["alone"])


@pytest.mark.parametrize("name", [c[0] for c in SAME])
def test_a_fully_sharded_model_follows_the_unsharded_run_bit_for_bit(runs, name):
    """Uneven shards (5 and 3 rows over 2 ranks, a 101-row embedding), a rank holding no rows of a
    1-row tensor, a LLaMA whose root keeps its parameters gathered after a forward (and a forward
    of the user's between steps): the gathered weights and the losses equal the unsharded run's."""
    run = runs[name]
    assert moved(run) > 1e-3, "training barely moved the weights: the comparison shows nothing"
    assert run["params"].keys() == run["alone"].keys()
    for n, w in run["params"].items():
        assert torch.equal(w, run["alone"][n]), n
    assert run["losses"] == run["alone_losses"]


@pytest.mark.parametrize("name", [c[0] for c in EXACT])
def test_on_the_fly_never_writes_the_shards_bf16_and_mixed_precision(runs, name):
    """bf16 shards (on the fly by default) and fp32 shards gathered to bf16 (MixedPrecisionPolicy):
    at lr = 0 every shard stays bit-identical through the perturbed forwards."""
    run = runs[name]
    for n, w in run["params"].items():
        assert torch.equal(w, run["start"][n]), n
    assert all(c != 0 for c in run["coefs"])  # L+ != L-: the forwards saw the perturbations


def test_ranks_evaluating_their_halves_of_the_batch_follow_the_whole_batch(runs):
    """Each rank's loss is the mean over its half; the optimizer averages them over the ranks, so
    the run follows the whole batch up to the order of the float sums."""
    run = runs["split"]
    for n, w in run["params"].items():
        torch.testing.assert_close(w, run["alone"][n], rtol=0, atol=1e-4 * moved(run))
    torch.testing.assert_close(
        torch.tensor(run["losses"]), torch.tensor(run["alone_losses"]), rtol=1e-6, atol=0
    )
    assert any(not torch.equal(w, run["alone"][n]) for n, w in run["params"].items())


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_a_shard_cannot_do_is_refused_naming_the_parameter_and_the_fix(runs, case):
    assert runs[f"refuse-{case}"] != "NOT REFUSED"
    message = runs[f"refuse-{case}"]
    assert re.search(REFUSED[case], message), message
