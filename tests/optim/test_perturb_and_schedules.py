"""On-the-fly perturbation's guarantees, the conservative rule with param groups, named schedules,
and the step record's form."""

import json
import math
import warnings

import pytest
import torch

import kerzoo
from kerzoo.schedules import factor


class Two(torch.nn.Module):
    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 4, dtype=dtype)
        self.b = torch.nn.Linear(4, 1, dtype=dtype)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


X = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def test_on_the_fly_restores_weights_when_the_forward_raises():
    model = Two()
    before, ptrs = snapshot(model), [p.data_ptr() for p in model.parameters()]
    opt = kerzoo.optimizer("mezo", model, lr=1e-2, perturb="onthefly")
    calls = []

    def closure():
        calls.append(1)
        model.a(X)  # runs with the perturbed weight, then the loss fails mid-forward
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert calls and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [
        p.data_ptr() for p in model.parameters()
    ] == ptrs  # the real storage is back, not a transient
    opt.step(lambda: model(X).pow(2).mean())  # and the optimizer still works
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_on_the_fly_warns_once_about_a_tensor_no_forward_perturbed():
    model = Two()
    opt = kerzoo.optimizer("mezo", model, lr=1e-3, perturb="onthefly")
    with pytest.warns(RuntimeWarning, match=r"b\.weight, b\.bias were not perturbed"):
        opt.step(lambda: model.a(X).pow(2).mean())  # model.b unused by this loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(lambda: model.a(X).pow(2).mean())


def test_on_the_fly_perturbs_a_tied_weight_in_every_module_that_reads_it():
    """Tied weights (one Parameter in two modules) are one trainable tensor: both reads see
    W + eps z, so on the fly and in place see the same losses."""
    ids = torch.tensor([0, 1, 2, 3])
    losses = []
    for mode in ("onthefly", "inplace"):
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Embedding(5, 3, dtype=torch.float64),
            torch.nn.Linear(3, 5, bias=False, dtype=torch.float64),
        )
        m[1].weight = m[0].weight
        assert len(list(m.parameters())) == 1
        opt = kerzoo.optimizer("mezo", m, lr=1e-2, perturb=mode, seed=1)
        opt.step(lambda: m(ids).pow(2).mean())
        losses.append(opt.last_record["losses"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_conservative_evaluates_each_group_at_its_own_lr():
    """The candidates theta -/+ lr_group g z are the points the update can land on: with a second
    group at lr 0, the best candidate's loss is the loss after the step, and group 2 never moves."""
    model = Two()
    opt = kerzoo.optimizer(
        "zo-sgd-cons",
        [{"params": model.a.parameters(), "lr": 0.5}, {"params": model.b.parameters(), "lr": 0.0}],
        eps=1e-3,
        seed=2,
    )
    b_before = snapshot(model.b)
    for _ in range(4):
        opt.step(lambda: model(X).pow(2).mean())
        with torch.no_grad():
            after = float(model(X).pow(2).mean())
        assert min(opt.last_record["update"]["losses"]) == pytest.approx(
            after, rel=1e-12, abs=1e-15
        )
    assert all(
        torch.allclose(a, b, rtol=0, atol=1e-15) for a, b in zip(b_before, model.b.parameters())
    )


def test_step_record_is_json_and_replays_identically_after_a_round_trip():
    for name in ("mezo", "kerzoo", "zo-sgd-cons", "zo-adam"):
        model = Two()
        opt = kerzoo.optimizer(name, model, lr=1e-2, perturb="onthefly", seed=4)
        texts = []
        for _ in range(3):
            opt.step(lambda: model(X).pow(2).mean())
            texts.append(json.dumps(opt.last_record, allow_nan=False))
        rebuilt = Two()
        opt2 = kerzoo.optimizer(name, rebuilt, lr=1e-2, perturb="onthefly", seed=4)
        for t in texts:
            opt2.replay(json.loads(t))
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rebuilt.parameters())), (
            name
        )


def test_replay_out_of_order_is_an_error():
    model = Two()
    opt = kerzoo.optimizer("mezo", model, lr=1e-2)
    opt.step(lambda: model(X).pow(2).mean())
    opt.step(lambda: model(X).pow(2).mean())
    fresh = kerzoo.optimizer("mezo", Two(), lr=1e-2)
    with pytest.raises(ValueError, match="record is for step 1 but the optimizer is at step 0"):
        fresh.replay(opt.last_record)


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
def test_named_schedules_warm_up_then_follow_their_shape(name):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = kerzoo.optimizer("mezo", [p], lr=1.0)
    sched = kerzoo.schedule(name, opt, total_steps=10, warmup=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(lambda: (p**2).sum())
        sched.step()
    assert lrs[:2] == [0.5, 1.0] and opt.last_record["lr"] == [lrs[-1]]
    expected = {
        "constant": [1.0] * 8,
        "linear": [1 - u / 8 for u in range(8)],
        "cosine": [0.5 * (1 + math.cos(math.pi * u / 8)) for u in range(8)],
    }[name]
    assert lrs[2:] == pytest.approx(expected)


def test_schedule_errors_name_the_bad_value():
    opt = kerzoo.optimizer("mezo", [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="'cosin' \\(did you mean 'cosine'\\?\\)"):
        kerzoo.schedule("cosin", opt, total_steps=10)
    with pytest.raises(ValueError, match="warmup"):
        kerzoo.schedule("linear", opt, total_steps=10, warmup=11)
    assert factor("cosine", 100, 10, 0, min_factor=0.1) == pytest.approx(0.1)


class Returns(torch.nn.Module):
    """A module whose output is a view of its own weight (as a learned prompt or cls token is)."""

    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, n, dtype=torch.float64))

    def forward(self):
        return self.w[:]


def test_on_the_fly_output_that_views_the_transient_is_not_overwritten_by_the_next_module():
    losses = []
    for mode in ("onthefly", "inplace"):
        torch.manual_seed(0)
        model = torch.nn.ModuleList([Returns(6), Returns(6)])
        opt = kerzoo.optimizer("kerzoo", model, lr=1e-2, perturb=mode, seed=3)

        def closure():
            a, b = model[0](), model[1]()  # a is held while b's forward runs
            return (a * torch.arange(6.0, dtype=torch.float64) + b**2).sum()

        for _ in range(3):
            opt.step(closure)
            losses.append(opt.last_record["losses"])
    assert losses[:3] == [pytest.approx(x, rel=1e-12) for x in losses[3:]]


def test_on_the_fly_workspace_is_reused_and_bounded_by_the_largest_module():
    model = Two()
    opt = kerzoo.optimizer("mezo", model, lr=1e-3, perturb="onthefly")
    for _ in range(3):
        opt.step(lambda: model(X).pow(2).mean())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert opt.perturber.memory_bytes() == largest * 8
    opt.close()
    assert opt.mode == "inplace" and opt.perturber.memory_bytes() == 0
    assert all(not m._forward_pre_hooks for m in model.modules())
