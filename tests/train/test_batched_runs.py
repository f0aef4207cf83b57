"""kerzoo train with perturb = "batched": each micro-batch runs once per step, repeated for the
step's points, and the run follows the same run with perturb = "onthefly" to float rounding."""

import pytest
import torch
from conftest import params, write_jsonl

from kerzoo.train.loop import Run, read_jsonl
from kerzoo.train.replay import replay

WORDS = ["good", "bad", "happy", "sad", "great", "awful", "nice", "poor"]
MC = [
    {"question": f"{w} means", "choices": ["yes", "no", "maybe"][: 2 + i % 2], "gold": i % 2}
    for i, w in enumerate(WORDS * 4)
]
TEXT = [
    {"text": f"the word is {w}" + " again" * (i % 3), "target": w} for i, w in enumerate(WORDS * 4)
]
SFT = [
    {"prompt": f"Q: {w}? A:", "completion": f" {w}" + " yes" * (i % 3)}
    for i, w in enumerate(WORDS * 4)
]


def task_cfg(tmp_path, task):
    """(family, config sections) of a small run of ``task`` (classification: the default data)."""
    if task == "classification":
        return "bert", {}
    if task == "causal_classification":
        return "opt", {"task": {"template": "{text} it was"}}
    rows, data = {
        "multiple_choice": (
            MC,
            {"text_key": "question", "options_key": "choices", "label_key": "gold"},
        ),
        "lm": (TEXT, {"answer_key": "target"}),
        "causal_lm": (TEXT, {}),
        "sft": (SFT, {}),
    }[task]
    source = write_jsonl(tmp_path / f"{task}.jsonl", rows)
    return "llama", {"data": {"source": source, "eval_size": 8, **data}, "task": {"type": task}}


TASKS = ["classification", "causal_classification", "multiple_choice", "lm", "causal_lm", "sft"]


@pytest.mark.parametrize("task", TASKS)
def test_each_replicas_loss_sum_is_the_batches_own(make_cfg, tmp_path, task):
    family, over = task_cfg(tmp_path, task)
    run = Run(make_cfg(task, family=family, **over), progress=False)
    batch = run.batch(0)[0]
    with torch.no_grad():
        total, weight = run.task.loss_sum(run.model, batch)
        totals, weights = run.task.loss_sum(run.model, batch, 3)
    assert totals.shape == (3,) and weights == weight
    torch.testing.assert_close(totals, total.expand(3), rtol=1e-6, atol=0)


FP32_DOT = 64 * 2.0**-24  # worst-case relative rounding of a width-64 fp32 dot product


def fzoo(make_cfg, name, perturb, family="bert", train=(), lr=1e-4, eps=1e-3, **over):
    cfg = make_cfg(
        name,
        family=family,
        optimizer={"preset": "fzoo", "directions": 3, "lr": lr, "eps": eps, "perturb": perturb},
        train={"steps": 4, "eval_every": 2, "checkpoint_every": 2, **dict(train)},
        **over,
    )
    return Run(cfg, progress=False)


def step_losses(run):
    return [r["losses"] for r in read_jsonl(run.traj_path)[1:]]


@pytest.mark.parametrize(
    "task,train",
    [("classification", {}), ("classification", {"grad_accum": 2}), ("sft", {})],
)
def test_a_batched_run_follows_the_onthefly_run(make_cfg, tmp_path, task, train):
    family, over = task_cfg(tmp_path, task)
    # eps 1e-2: FZOO divides its step by sigma, the spread of the perturbed losses, which grows
    # with eps, so a loss's rounding moves the step by about rounding / sigma; at eps 1e-3 that
    # is near 1 % on some CPUs (1.2 % on an AMD EPYC), the weights' bound below
    runs = [
        fzoo(make_cfg, p, p, family, train, 1e-6, 1e-2, **over) for p in ("onthefly", "batched")
    ]
    seen = []
    real = runs[1].batch_loss
    runs[1].batch_loss = lambda b, n=None: seen.append(n) or real(b, n)
    for run in runs:
        run.train()
    # one forward per micro-batch and step, over the 4 points (FZOO: theta and 3 directions)
    assert seen == [4] * (4 * train.get("grad_accum", 1))
    a, b = (step_losses(r) for r in runs)
    assert len(a) == len(b) == 4 and all(len(x) == 4 for x in a + b)
    # the same weights: float rounding only, of sums the BLAS kernel orders (one bmm over the
    # replicas against one matmul each), bounded by a width-64 dot product's 64 u in fp32;
    # measured: below 1e-6 on an Intel CPU, 1.2e-6 on an AMD EPYC
    assert b[0] == pytest.approx(a[0], rel=FP32_DOT)
    # later steps inherit that rounding, which FZOO's 1 / sigma amplifies (as in
    # tests/optim/test_batched.py); at lr 1e-6 the steps are small enough that the losses
    # still agree to 1e-5, and the weights to 1 % of how far they moved
    for x, y in zip(a[1:], b[1:]):
        assert y == pytest.approx(x, rel=1e-5)
    metrics = [[m["loss"] for m in read_jsonl(r.metrics_path) if "loss" in m] for r in runs]
    assert metrics[1][0] == pytest.approx(metrics[0][0], rel=FP32_DOT)
    assert metrics[1] == pytest.approx(metrics[0], rel=1e-5)
    start = params(fzoo(make_cfg, "start", "onthefly", family, train, 1e-6, 1e-2, **over))
    pa, pb = params(runs[0]), params(runs[1])
    moved = max(float((pa[k] - start[k]).abs().max()) for k in pa)
    assert moved > 0
    assert all(float((pa[k] - pb[k]).abs().max()) < 1e-2 * moved for k in pa)


def test_a_batched_run_resumes_bit_for_bit_and_replays(make_cfg):
    straight = fzoo(make_cfg, "a", "batched")
    straight.train()
    fzoo(make_cfg, "b", "batched").train(stop_at=2)
    resumed = fzoo(make_cfg, "b", "batched")
    assert resumed.step == 2
    resumed.train()
    a, b = params(straight), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert step_losses(straight) == step_losses(resumed)
    model, n = replay(None, resumed.traj_path)
    assert n == 4
    rebuilt = dict(model.named_parameters())
    assert all(torch.equal(rebuilt[k], a[k]) for k in a)
