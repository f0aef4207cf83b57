"""Momentum and Adam with no buffer: rebuilt from the last h steps' seeds (docs/algorithms.md)."""

import pytest
import torch

import kerzoo


def model64():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8, dtype=torch.float64),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1, dtype=torch.float64),
    )


X = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def train(spec, steps, **kw):
    model = model64()
    opt = kerzoo.optimizer(spec, model, lr=1e-2, eps=1e-3, seed=5, **kw)
    records = []
    for _ in range(steps):
        opt.step(lambda: model(X).pow(2).mean())
        records.append(opt.last_record)
    return model, opt, records


def test_equals_buffer_momentum_while_the_history_holds_every_step():
    replayed, _, _ = train("zo-sgd-mmt-replay", 8, history=8)
    buffered, _, _ = train("zo-sgd-mmt", 8)
    for a, b in zip(replayed.parameters(), buffered.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_truncated_history_is_the_last_h_steps_with_their_weights():
    h, beta, lr, steps = 3, 0.9, 1e-2, 7
    model, opt, records = train("zo-sgd-mmt-replay", steps, history=h)
    start = model64()
    for info, p0, p in zip(opt.infos, start.parameters(), model.parameters()):
        expected = p0.detach().clone()
        estimates = []
        for rec in records:  # theta_{t+1} = theta_t - lr sum_{k<h} beta^k g_{t-k}
            estimates.insert(0, opt.projection.materialize(info, rec["coefs"], rec["seeds"]))
            expected -= lr * sum(beta**k * g for k, g in enumerate(estimates[:h]))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    # and it differs from the untruncated momentum once t >= h
    buffered, _, _ = train("zo-sgd-mmt", steps)
    assert not torch.allclose(model[0].weight, buffered[0].weight, rtol=1e-9, atol=0)


def test_holds_no_tensor_where_momentum_holds_one_per_parameter():
    _, replay, _ = train("zo-sgd-mmt-replay", 3)
    _, buffer, _ = train("zo-sgd-mmt", 3)

    def held(opt):
        return sum(
            v.numel() * v.element_size()
            for st in opt.state.values()
            for v in st.values()
            if isinstance(v, torch.Tensor)
        )

    params = sum(p.numel() for p in model64().parameters())
    assert held(buffer) == 8 * params  # one buffer per tensor, fp64 for an fp64 model
    assert held(replay) == 0


def test_a_projection_whose_directions_change_is_refused_when_built():
    with pytest.raises(ValueError, match=r"projection 'subspace' changes its directions.*dense"):
        kerzoo.optimizer({**{"projection": "subspace"}, "update": "momentum-replay"}, model64())


@pytest.mark.parametrize("option,value", [("beta", 1.0), ("history", 0)])
def test_bad_options_are_named(option, value):
    with pytest.raises(ValueError, match=option):
        kerzoo.optimizer("zo-sgd-mmt-replay", model64(), **{option: value})


def test_adam_replay_equals_adam_while_the_history_holds_every_step():
    replayed, _, _ = train("zo-adam-replay", 8, history=8)
    buffered, _, _ = train("zo-adam", 8)
    for a, b in zip(replayed.parameters(), buffered.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adam_replay_truncated_is_a_window_of_the_last_h_estimates():
    h, b1, b2, lr, steps = 3, 0.9, 0.999, 1e-2, 7
    model, opt, records = train("zo-adam-replay", steps, history=h)
    start = model64()
    for info, p0, p in zip(opt.infos, start.parameters(), model.parameters()):
        expected = p0.detach().clone()
        estimates = []
        for rec in records:
            estimates.insert(0, opt.projection.materialize(info, rec["coefs"], rec["seeds"]))
            kept = estimates[:h]
            m = sum((1 - b1) * b1**k * g for k, g in enumerate(kept)) / (1 - b1 ** len(kept))
            v = sum((1 - b2) * b2**k * g * g for k, g in enumerate(kept)) / (1 - b2 ** len(kept))
            expected -= lr * m / (v.sqrt() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
    buffered, _, _ = train("zo-adam", steps)
    assert not torch.allclose(model[0].weight, buffered[0].weight, rtol=1e-6, atol=0)
    held = sum(
        v.numel() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    assert held == 0


@pytest.mark.parametrize("option,value", [("beta1", 1.0), ("beta2", -0.1), ("history", 0)])
def test_adam_replay_bad_options_are_named(option, value):
    with pytest.raises(ValueError, match=option):
        kerzoo.optimizer("zo-adam-replay", model64(), **{option: value})


def test_primal_averaging_follows_its_recursion():
    rate, lr, steps = 1 / 6, 1e-2, 5
    model, opt, records = train({"preset": "mezo", "update": "primal-averaging"}, steps)
    start = model64()
    for info, p0, p in zip(opt.infos, start.parameters(), model.parameters()):
        theta, c = p0.detach().clone(), p0.detach().clone()
        for t, rec in enumerate(records):  # the estimates were taken at theta
            c -= lr * opt.projection.materialize(info, rec["coefs"], rec["seeds"])
            w = 1 / (1 + t * rate)
            theta = (1 - w) * theta + w * c
        torch.testing.assert_close(p.detach(), theta, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["sequence"], c, rtol=1e-12, atol=1e-14)
    # the first step is SGD's (to rounding: SGD fuses its restore and update in one pass)
    sgd, _, _ = train("mezo", 1)
    avg, _, _ = train({"preset": "mezo", "update": "primal-averaging"}, 1)
    for a, b in zip(sgd.parameters(), avg.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_primal_averaging_rate_is_checked():
    with pytest.raises(ValueError, match="rate must be >= 0"):
        kerzoo.optimizer({"preset": "mezo", "update": "primal-averaging", "rate": -1}, model64())
