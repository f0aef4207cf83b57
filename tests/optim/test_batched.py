"""perturb='batched': a step's points in one forward over a replicated batch, and FZOO."""

import math

import pytest
import torch
from tiny_llama import llama

import kerzoo
from kerzoo.estimators.two_point import FZOO

IDS = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))


def batched_closure(model, ids=IDS):
    def closure(n):
        rep = kerzoo.replicate(ids, n)
        return kerzoo.replica_losses(model(input_ids=rep).logits, rep, n)

    return closure


def run(perturb, dtype=torch.float32, steps=3, preset="fzoo", **options):
    model = llama(dtype)
    opt = kerzoo.optimizer(preset, model, perturb=perturb, seed=5, **options)
    records = []
    for _ in range(steps):
        if perturb == "batched":
            opt.step(batched_closure(model))
        else:
            opt.step(lambda: model(input_ids=IDS, labels=IDS).loss)
        records.append(dict(opt.last_record))
    return records, [p.detach().clone() for p in model.parameters()]


def test_replica_losses_equal_the_models_own_loss():
    model = llama()
    with torch.no_grad():
        own = model(input_ids=IDS, labels=IDS).loss
        rep = kerzoo.replicate(IDS, 3)
        per = kerzoo.replica_losses(model(input_ids=rep).logits, rep, 3)
    assert per.shape == (3,)
    torch.testing.assert_close(per, own.expand(3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("preset", ["fzoo", "mezo"])
def test_batched_losses_equal_separate_forwards_fp32(preset):
    separate, w_sep = run("onthefly", preset=preset, lr=1e-4)
    together, w_bat = run("batched", preset=preset, lr=1e-4)
    for a, b in zip(separate, together):
        assert len(a["losses"]) == len(b["losses"]) == (9 if preset == "fzoo" else 2)
    # the first step starts from the same weights: the losses agree to float32's rounding
    for x, y in zip(separate[0]["losses"], together[0]["losses"]):
        assert y == pytest.approx(x, rel=5e-7)
    # later steps inherit the rounding, which FZOO's 1 / sigma amplifies: the trained weights
    # agree to 1 % of how far they moved (MeZO's to float rounding)
    start = [p.detach() for p in llama().parameters()]
    moved = max(float((q - p).abs().max()) for p, q in zip(start, w_sep))
    apart = max(float((q - p).abs().max()) for p, q in zip(w_sep, w_bat))
    assert moved > 1e-4
    assert apart < (1e-2 * moved if preset == "fzoo" else 1e-6)


def test_batched_bf16_restores_exactly_and_matches_to_bf16_rounding():
    separate, _ = run("onthefly", torch.bfloat16, lr=0.0)
    together, weights = run("batched", torch.bfloat16, lr=0.0)
    for a, b in zip(separate, together):
        for x, y in zip(a["losses"], b["losses"]):
            assert y == pytest.approx(x, rel=1e-2)
    assert all(torch.equal(p, q) for p, q in zip(weights, llama(torch.bfloat16).parameters()))
    # the points differ from theta: each replica saw its own perturbation
    assert len(set(together[0]["losses"])) > 1


def test_update_rules_that_evaluate_get_one_replica():
    records, _ = run("batched", preset="zo-sgd-cons", steps=2, lr=1e-4)
    assert all(len(r["losses"]) == 2 for r in records)


def test_fzoo_coefficients_follow_the_papers_rule():
    est = FZOO(directions=4)
    plan = est.plan(0, [1, 2, 3, 4], 1e-3)
    assert plan.points == [{}, {0: 1e-3}, {1: 1e-3}, {2: 1e-3}, {3: 1e-3}]
    losses = [1.0, 1.2, 0.9, 1.1, 1.0]
    sigma = float(torch.tensor(losses[1:], dtype=torch.float64).std())
    got = est.coefficients(plan, losses, 1e-3)
    want = [(x - 1.0) / (1e-3 * 4 * sigma) for x in losses[1:]]
    assert got == pytest.approx(want, rel=1e-12)
    assert plan.extra["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert est.coefficients(plan, [1.0, 2.0, 2.0, 2.0, 2.0], 1e-3) == [0.0] * 4
    plain = FZOO(directions=4, normalize=False).coefficients(plan, losses, 1e-3)
    assert plain == pytest.approx([(x - 1.0) / (1e-3 * 4) for x in losses[1:]], rel=1e-12)


def test_fzoo_needs_two_directions_to_normalise():
    with pytest.raises(ValueError, match="directions >= 2"):
        FZOO(directions=1)


def test_fzoo_preset_uses_rademacher_directions():
    model = llama()
    opt = kerzoo.optimizer("fzoo", model)
    assert opt.estimator.directions == 8 and opt.projection.options["dist"] == "rademacher"
    assert math.isclose(opt.eps, 1e-3)


def test_a_closure_that_returns_one_loss_is_refused():
    model = llama()
    opt = kerzoo.optimizer("fzoo", model, perturb="batched")
    with pytest.raises(TypeError, match=r"called with n = 9 .*kerzoo.replica_losses"):
        opt.step(
            lambda n: (
                model(input_ids=kerzoo.replicate(IDS, n), labels=kerzoo.replicate(IDS, n)).loss
            )
        )
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), llama().parameters()))


def test_a_closure_that_does_not_replicate_is_refused():
    model = llama()
    opt = kerzoo.optimizer("fzoo", model, perturb="batched")
    with pytest.raises(ValueError, match=r"a batch of 3 rows for 9 points.*kerzoo.replicate"):
        opt.step(lambda n: model(input_ids=IDS, labels=IDS).loss.expand(n))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), llama().parameters()))
    assert "forward" not in model.model.embed_tokens.__dict__  # the wrappers are gone


def test_a_trainable_tensor_of_a_module_with_submodules_is_refused():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(4))
            self.inner = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.inner(x) * self.scale

    with pytest.raises(
        ValueError, match=r"'the root module' \(Scaled\) owns scale .*submodules \(inner\)"
    ):
        kerzoo.optimizer("fzoo", Scaled(), perturb="batched")


def test_a_compiled_model_is_refused():
    model = llama()
    with pytest.raises(ValueError, match="compiled graph cannot follow"):
        kerzoo.optimizer("fzoo", torch.compile(model), perturb="batched")


def test_batched_needs_the_module():
    with pytest.raises(ValueError, match="needs the module itself"):
        kerzoo.optimizer("fzoo", list(llama().parameters()), perturb="batched")


def mlp(freeze_last_weight=False):
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4, bias=True)
    )
    model[2].weight.requires_grad_(not freeze_last_weight)
    return model


X = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("freeze_last_weight", [False, True])
def test_batched_linears_with_bias_equal_separate_forwards(freeze_last_weight):
    """A trained Linear runs as one baddbmm over the replicas (its bias too); a Linear whose
    weight is frozen but bias trained runs per replica. Either way each replica's loss is its
    separate forward's."""
    losses = {}
    for perturb in ("onthefly", "batched"):
        model = mlp(freeze_last_weight)
        opt = kerzoo.optimizer("fzoo", model, perturb=perturb, seed=7, lr=0.0)
        if perturb == "batched":
            opt.step(lambda n: model(kerzoo.replicate(X, n)).square().view(n, -1).mean(1))
            # the stack: 9 replicas of the largest trained Linear's weight and bias
            stacked = 9 * (16 * 8 + 16 if freeze_last_weight else max(16 * 8 + 16, 4 * 16 + 4))
            assert opt.perturber.memory_bytes() >= stacked * 4
        else:
            opt.step(lambda: model(X).square().mean())
        losses[perturb] = opt.last_record["losses"]
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), mlp().parameters()))
    assert len(set(losses["batched"])) == 9
    for x, y in zip(losses["onthefly"], losses["batched"]):
        assert y == pytest.approx(x, rel=1e-6)
