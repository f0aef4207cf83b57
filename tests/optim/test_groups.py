"""Param groups: per-group lr, eps and weight decay, and groups over a module (on the fly)."""

import pytest
import torch

import kerzoo

from quadratic import TwoTensors, mean_step_over_seeds


def test_per_group_eps_keeps_the_estimate_unbiased_on_a_quadratic():
    """Group b perturbed 20x wider than group a: the mean update over seeds is still -lr * grad."""
    model, lr = TwoTensors(), 1e-3
    mean, stderr, opt = mean_step_over_seeds(
        model,
        lambda s: kerzoo.optimizer(
            "mezo",
            [{"params": [model.a], "eps": 1e-3}, {"params": [model.b], "eps": 2e-2}],
            lr=lr,
            seed=s,
            module=model,
        ),
        lr,
        3000,
    )
    assert torch.all((mean - model.grad()).abs() <= 5 * stderr), (mean, model.grad(), stderr)
    assert opt.last_record["eps"] == [1e-3, 2e-2]


def test_per_group_eps_moves_each_group_by_its_own_scale():
    model = TwoTensors()
    start = [p.detach().clone() for p in model.parameters()]
    seen = []

    def closure():
        seen.append(
            [(p.detach() - s).abs().max().item() for p, s in zip(model.parameters(), start)]
        )
        return model()

    opt = kerzoo.optimizer(
        "mezo",
        [{"params": [model.a], "eps": 1e-3}, {"params": [model.b], "eps": 1e-1}],
        lr=0.0,
        perturb="inplace",
    )
    opt.step(closure)
    (da, db), _ = seen
    assert 0 < da < 1e-2 and db > 10 * da  # b moved by ~100x a's scale


def test_groups_over_a_module_perturb_on_the_fly_with_stable_names():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)).to(torch.bfloat16)
    x = torch.randn(16, 4, dtype=torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = kerzoo.optimizer(
        "mezo",
        [
            {"params": model[0].parameters(), "lr": 0.0},
            {"params": model[1].parameters(), "lr": 0.0, "weight_decay": 0.1},
        ],
        module=model,
        eps=1e-2,
    )
    assert opt.mode == "onthefly"
    assert [i.name for i in opt.infos] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    for _ in range(20):
        opt.step(lambda: model(x).float().pow(2).mean())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "module" not in opt.state_dict()["kerzoo"]["spec"]


def test_a_group_tensor_outside_the_module_is_an_error():
    model = torch.nn.Linear(2, 1)
    stray = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="not a parameter of the module"):
        kerzoo.optimizer("mezo", [{"params": [model.weight, stray]}], module=model)
