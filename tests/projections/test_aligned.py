import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kerzoo
from kerzoo import engine
from kerzoo.plugins import get
from kerzoo.projections import ParamInfo
from kerzoo.projections.aligned import align, debias, sketch_svd


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 10),
    seed=st.integers(0, 2**31),
    delta=st.floats(0.01, 100.0),
    xi=st.sampled_from([-1.0, 1.0]),
)
def test_aligned_core_satisfies_the_alignment_identity(r, seed, delta, xi):
    g = torch.Generator().manual_seed(seed)
    h, c0 = (
        torch.randn(r, r, generator=g, dtype=torch.float64),
        torch.randn(r, r, generator=g, dtype=torch.float64),
    )
    c = align(c0, h, xi, delta)
    assert math.isclose(
        float((h * c).sum()), xi * math.sqrt(delta) * float(h.norm()), rel_tol=1e-9, abs_tol=1e-9
    )
    # only the component along H changes
    unit = h / h.norm()
    torch.testing.assert_close(c - (c * unit).sum() * unit, c0 - (c0 * unit).sum() * unit)


def test_alignment_with_a_zero_estimate_leaves_the_direction_gaussian():
    c0 = torch.randn(3, 3)
    assert torch.equal(align(c0, torch.zeros(3, 3), 1.0, 2.0), c0)


@pytest.mark.parametrize("delta", [1.0, 4.0])
def test_debiased_product_is_unbiased_for_the_projected_gradient(delta):
    """E[<X, C> C'] = X: the running estimate of U^T G V is unbiased whatever delta is."""
    g = torch.Generator().manual_seed(0)
    r, n = 3, 40000
    h, x = (
        torch.randn(r, r, generator=g, dtype=torch.float64),
        torch.randn(r, r, generator=g, dtype=torch.float64),
    )
    c0 = torch.randn(n, r, r, generator=g, dtype=torch.float64)
    xi = torch.randint(0, 2, (n, 1, 1), generator=g).double() * 2 - 1
    unit = h / h.norm()
    along = (c0 * unit).sum((1, 2), keepdim=True)
    c = c0 - along * unit + xi * math.sqrt(delta) * unit  # align() for every sample at once
    cp = torch.stack([debias(ci, h, delta) for ci in c[:200]])
    torch.testing.assert_close(cp[0], debias(c[0], h, delta))
    cprime = c + (1 / delta - 1) * (c * unit).sum((1, 2), keepdim=True) * unit
    torch.testing.assert_close(cp, cprime[:200])
    prod = (x * c).sum((1, 2), keepdim=True) * cprime
    mean, se = prod.mean(0), prod.std(0) / math.sqrt(n)
    assert bool(((mean - x).abs() < 5 * se).all()), (mean - x) / se


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 20),
    n=st.integers(1, 20),
    p=st.integers(1, 12),
    r=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_sketch_svd_equals_the_svd_of_the_formed_sketch(m, n, p, r, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(m, p, generator=g, dtype=torch.float64),
        torch.randn(n, p, generator=g, dtype=torch.float64),
    )
    w = torch.randn(p, generator=g, dtype=torch.float64)
    u, s, v = sketch_svd(a, b, w, r)
    k = s.shape[0]
    full = a @ torch.diag(w) @ b.T
    torch.testing.assert_close(s, torch.linalg.svdvals(full)[:k], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(u.T @ full @ v, torch.diag(s), rtol=1e-7, atol=1e-7)


class Linear(torch.nn.Module):
    """L(W) = <G, W>, G of rank 1: the gradient subspace is known."""

    def __init__(self, m=10, n=8):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.u, self.v = (
            torch.randn(m, generator=g, dtype=torch.float64),
            torch.randn(n, generator=g, dtype=torch.float64),
        )
        self.W = torch.nn.Parameter(torch.zeros(m, n, dtype=torch.float64))

    def forward(self):
        return self.u @ self.W @ self.v


def test_probes_find_the_gradient_subspace_and_the_estimate_tracks_the_projected_gradient():
    model = Linear()
    opt = kerzoo.optimizer(
        "pgap", model, lr=0.0, rank=2, probe_steps=300, refresh=10**6, ema=0.99, seed=0
    )
    for _ in range(300):
        opt.step(model)
    opt.step(model)  # the subspace is built at the first step after the probes
    u, v, h = opt.projection.bases["W"]
    cos_u = float((u[:, 0].double() @ model.u).abs() / model.u.norm())
    cos_v = float((v[:, 0].double() @ model.v).abs() / model.v.norm())
    assert cos_u > 0.9 and cos_v > 0.9, (cos_u, cos_v)
    for _ in range(600):
        opt.step(model)
    u, v, h = (t.double() for t in opt.projection.bases["W"])
    target = u.T @ torch.outer(model.u, model.v) @ v
    cos = float((h * target).sum() / (h.norm() * target.norm()))
    assert cos > 0.9, cos


def info(shape, name="w"):
    return ParamInfo(name, engine.param_key(name), torch.zeros(shape, dtype=torch.float64), 0)


def test_second_moment_of_aligned_z_equals_a_dense_gaussians_with_delta_one():
    p = info((12, 10))
    proj = get("projections", "aligned")(rank=3, refresh=2, probe_steps=1)
    proj.setup([p], 0)
    proj.begin_step(0)
    proj.end_step(0, [5, 6, 7], type("P", (), {"update_factor": None})(), [], [0.7, -0.2, 0.1])
    proj.begin_step(1)
    assert not proj.probing and proj.bases["w"][0].shape == (12, 3)
    proj.bases["w"] = (*proj.bases["w"][:2], torch.randn(3, 3))  # any estimate H
    second = torch.stack([proj.materialize(p, [1.0], [s]) for s in range(3000)]).pow(2).mean()
    assert abs(float(second) - 1.0) < 0.05, float(second)


def test_memory_held_is_bases_and_the_r_by_r_estimate_per_matrix():
    params = [info((30, 20), "a"), info((8, 50), "b"), info((7,), "c")]
    proj = get("projections", "aligned")(rank=4, refresh=3, probe_steps=1)
    proj.setup(params, 0)
    proj.begin_step(0)
    plan = type("P", (), {"update_factor": None})()
    proj.end_step(0, [1, 2, 3, 4, 5], plan, [], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert proj.memory_bytes() == 8 * (
        5 + 2 * 5
    )  # during probing: p seeds and p coefficients per matrix
    proj.begin_step(1)
    held = sum(t.numel() * t.element_size() for b in proj.bases.values() for t in b)
    assert held == proj.memory_bytes() == 4 * ((30 + 20) * 4 + 16 + (8 + 50) * 4 + 16)


def test_refresh_must_leave_room_after_the_probes():
    with pytest.raises(ValueError, match="probe_steps < refresh"):
        kerzoo.optimizer(
            "pgap", [torch.nn.Parameter(torch.zeros(3, 3))], probe_steps=10, refresh=10
        )
