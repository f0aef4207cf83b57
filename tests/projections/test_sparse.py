"""Sparse directions: Sparse MeZO's magnitude mask and LeZO's block subsets."""

import pytest
import torch

import kerzoo
from kerzoo.projections.sparse import block_of


class Blocks(torch.nn.Module):
    def __init__(self, dtype=torch.float32, n=4):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8, dtype=dtype) for _ in range(n))
        self.head = torch.nn.Linear(8, 1, dtype=dtype)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).pow(2).mean()


X = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))


def test_sparse_mezo_moves_only_the_small_weights():
    model = Blocks()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = kerzoo.optimizer("sparse-mezo", model, lr=1e-2, eps=1e-3, sparsity=0.75)
    assert opt.mode == "onthefly"  # the mask is read from the unperturbed weights
    opt.step(lambda: model(X))
    moved = total = 0
    for n, p in model.named_parameters():
        a = before[n].abs().flatten()
        h = a.kthvalue(max(1, round(0.25 * a.numel()))).values
        changed = p.detach() != before[n]
        assert not changed[before[n].abs() > h].any(), n  # large weights untouched
        moved += int(changed.sum())
        total += p.numel()
    assert 0.15 * total < moved <= 0.26 * total


def test_sparse_mezo_restores_exactly_at_lr_zero_in_bf16():
    model = Blocks(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = kerzoo.optimizer("sparse-mezo", model, lr=0.0, eps=1e-2)
    for _ in range(3):
        opt.step(lambda: model(X.bfloat16()).float())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.last_record["coefs"][0] != 0.0


def test_sparse_mezo_in_bf16_trains_with_stochastic_rounding_reproducibly():
    def run():
        model = Blocks(torch.bfloat16)
        opt = kerzoo.optimizer("sparse-mezo", model, lr=1e-2, eps=1e-2, seed=1)
        for _ in range(3):
            opt.step(lambda: model(X.bfloat16()).float())
        return [p.detach().clone() for p in model.parameters()], opt

    (a, opt), (b, _) = run(), run()
    assert opt.stochastic_rounding
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, Blocks(torch.bfloat16).parameters()))


def test_sparse_mezo_refuses_in_place_with_the_fix():
    with pytest.raises(ValueError, match=r"sparse-mezo.*kerzoo.optimizer\(name, model\)"):
        kerzoo.optimizer("sparse-mezo", Blocks(), perturb="inplace")
    with pytest.raises(ValueError, match="sparse-mezo"):
        kerzoo.optimizer("sparse-mezo", list(Blocks().parameters()))
    with pytest.raises(ValueError, match="sparsity"):
        kerzoo.optimizer("sparse-mezo", Blocks(), sparsity=1.0)


def test_block_names():
    assert block_of("layers.3.weight") == "layers.3"
    assert block_of("model.layers.12.mlp.up.weight") == "model.layers.12"
    assert block_of("head.weight") == ""


def test_lezo_moves_a_quarter_of_the_blocks_each_step_and_a_new_quarter_next():
    model = Blocks(n=7)  # blocks: layers.0 .. layers.6 and '' (the head): 8, a quarter is 2
    opt = kerzoo.optimizer("lezo", model, lr=1e-2, eps=1e-3, fraction=0.25)
    chosen = []
    for _ in range(4):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step(lambda: model(X))
        moved = {block_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == opt.projection.active and len(moved) == 2
        chosen.append(frozenset(moved))
    assert len(set(chosen)) > 1


def test_lezo_fraction_is_checked():
    with pytest.raises(ValueError, match="fraction"):
        kerzoo.optimizer("lezo", Blocks(), fraction=0.0)


def test_sparse_mezo_decreases_the_conformance_quadratic():
    from kerzoo.testing_optim import _Quadratic

    model = _Quadratic()
    opt = kerzoo.optimizer("sparse-mezo", model, lr=0.005, eps=1e-3, seed=7)
    with torch.no_grad():
        start = float(model())
        losses = []
        for _ in range(4):
            for _ in range(100):
                opt.step(model)
            losses.append(float(model()))
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * start
