"""accelerate: the loss comes back, and accumulation evaluates every micro-batch at the same
perturbation (kerzoo.integrations.ZOAccumulate)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import TokenDataset, tiny_gpt2

import kerzoo
from kerzoo.integrations import ZOAccumulate, unwrap_optimizer


def batches(n=8, size=2):
    ids = TokenDataset(n * size).ids
    return [
        {"input_ids": ids[i : i + size], "labels": ids[i : i + size]}
        for i in range(0, n * size, size)
    ]


def test_accumulate_under_accelerate_is_kerzoos_list_of_closures():
    """Eight micro-batches, accumulation 2, a prepared optimizer and scheduler: four steps, each
    evaluating both micro-batches at each point, the loss back at each window's end, and the
    same parameters bit for bit as kerzoo's own loop over the same windows."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = tiny_gpt2()
    opt = kerzoo.optimizer("mezo", model, lr=1e-3, seed=0)
    sched = kerzoo.schedule("linear", opt, total_steps=4, warmup=1)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    zo = ZOAccumulate(opt)
    assert zo.optimizer is unwrap_optimizer(opt)
    calls, losses = [], []

    def loss_of(i, b):
        calls.append(i)
        return model(**b).loss

    for i, b in enumerate(batches()):
        with accelerator.accumulate(model):
            losses.append(zo.step(lambda i=i, b=b: loss_of(i, b)))
            sched.step()
    assert [loss is None for loss in losses] == [True, False] * 4
    assert calls == [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7]  # two points per window

    ref = tiny_gpt2()
    ref_opt = kerzoo.optimizer("mezo", ref, lr=1e-3, seed=0)
    ref_sched = kerzoo.schedule("linear", ref_opt, total_steps=4, warmup=1)
    data = batches()
    for w in range(4):
        pair = data[2 * w : 2 * w + 2]
        loss = ref_opt.step([lambda b=b: ref(**b).loss for b in pair])
        ref_sched.step()
        assert losses[2 * w + 1] == loss
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
        assert p.grad is None


def test_every_without_accelerate_and_refusals():
    """Without accelerate, every= sets the window; a wrong optimizer or window is refused."""
    model = torch.nn.Linear(4, 1)
    opt = kerzoo.optimizer("mezo", model, lr=1e-2)
    zo = ZOAccumulate(opt, every=3)
    x = torch.ones(4)
    out = [zo.step(lambda: model(x).sum()) for _ in range(6)]
    assert [o is None for o in out] == [True, True, False] * 2
    assert opt.steps_done == 2
    with pytest.raises(TypeError, match="not a kerzoo optimizer"):
        ZOAccumulate(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        ZOAccumulate(opt, every=0)
    with pytest.raises(TypeError, match="closure"):
        ZOAccumulate(opt).step(3.0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    prepared = accelerator.prepare(kerzoo.optimizer("mezo", model, lr=1e-2))
    with pytest.raises(ValueError, match="leave every unset"):
        ZOAccumulate(prepared, every=2)
