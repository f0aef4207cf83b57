"""perturb="outputs": a linear layer's output gets + c (x V) S^T U^T; its weight, no transient."""

import pytest
import torch

import kerzoo


class MLP(torch.nn.Module):
    def __init__(self, dtype=torch.float64):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.a = torch.nn.Linear(6, 5).to(dtype)
            self.b = torch.nn.Linear(5, 3, bias=False).to(dtype)
            self.register_buffer("x", torch.randn(4, 2, 6).to(dtype))

    def forward(self):
        return (self.b(torch.tanh(self.a(self.x))) ** 2).float().mean()


def run(spec, perturb, steps=4, dtype=torch.float64, **options):
    model = MLP(dtype)
    opt = kerzoo.optimizer(spec, model, lr=0.05, eps=1e-2, seed=3, perturb=perturb, **options)
    losses = []
    for _ in range(steps):
        opt.step(model)
        losses.append(opt.last_record["losses"])
    return model, losses


SPECS = [
    ("subzero", {"rank": 2}),
    ("lozo", {"rank": 2}),
    ("pgap", {"rank": 2, "refresh": 4, "probe_steps": 2}),
    ("mezo", {}),
    ("kerzoo-subspace", {"rank": 2}),
]


@pytest.mark.parametrize("spec,options", SPECS, ids=[s for s, _ in SPECS])
def test_perturbing_outputs_gives_the_losses_and_trajectory_of_perturbing_weights(spec, options):
    m1, l1 = run(spec, "onthefly", **options)
    m2, l2 = run(spec, "outputs", **options)
    torch.testing.assert_close(
        torch.tensor(l1, dtype=torch.float64),
        torch.tensor(l2, dtype=torch.float64),
        rtol=1e-6,
        atol=1e-7,
    )
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_weights_are_never_written_while_perturbed_and_restore_exactly_in_bf16():
    model = MLP(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    model.b.register_forward_pre_hook(
        lambda mod, args: seen.append(torch.equal(mod.weight, before[2]))
    )
    opt = kerzoo.optimizer("subzero", model, lr=0.0, eps=1e-2, rank=2, perturb="outputs")
    for _ in range(3):
        opt.step(model)
    assert seen and all(seen)  # the Linear weight of b is never the perturbed one: its output is
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.last_record["losses"][0] != opt.last_record["losses"][1]  # yet the points differ


def test_outputs_mode_needs_the_module():
    with pytest.raises(ValueError, match="needs the module"):
        kerzoo.optimizer("subzero", list(MLP().parameters()), perturb="outputs")


def test_a_linear_weight_without_low_rank_factors_gets_the_transient():
    _, l1 = run("mezo", "onthefly")
    _, l2 = run("mezo", "outputs")
    assert l1 == l2  # the same transients, bit for bit


def test_no_workspace_is_made_for_low_rank_linear_weights():
    model = MLP()
    opt = kerzoo.optimizer("subzero", model, lr=0.0, rank=2, perturb="outputs")
    opt.step(model)
    workspace = sum(t.numel() for t in opt.perturber._ws.values())
    assert workspace == 5  # a's bias only: neither 5 x 6 nor 3 x 5 weight is ever copied
    dense = kerzoo.optimizer("mezo", model, lr=0.0, perturb="outputs")
    dense.step(model)
    assert (
        sum(t.numel() for t in dense.perturber._ws.values()) == 5 * 6 + 5
    )  # dense z: the transient is needed
