import pytest
import torch

import kerzoo
from kerzoo import engine
from kerzoo.estimators.base import Plan
from kerzoo.projections import ParamInfo
from kerzoo.projections.hessian import curvatures


class Separable(torch.nn.Module):
    """L(w) = 1/2 sum_k d_k w_k^2: the Hessian is diag(d)."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("d", torch.tensor(d, dtype=torch.float64))
        self.w = torch.nn.Parameter(torch.zeros(len(d), dtype=torch.float64))

    def forward(self):
        return 0.5 * (self.d * self.w**2).sum()


def test_diagonal_estimate_becomes_proportional_to_the_hessian():
    """Fixed point of D <- (1-a) D + a h D z^2 on a separable quadratic: E[h z_k^2] = 1, i.e.
    D_k = (N + 2)/2 * d_k (h = sum_j d_j z_j^2 / (2 D_j)). The losses at theta = 0 are exact."""
    d = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    proj = kerzoo.plugins.get("projections", "hessian")(alpha=0.002)
    p = ParamInfo("w", engine.param_key("w"), torch.zeros(4, dtype=torch.float64), 0)
    proj.setup([p], 0)
    eps, plan = 1e-3, Plan([0], [{}, {0: 1e-3}, {0: -1e-3}])
    tail = []
    for s in range(10000):
        z = proj.materialize(p, [eps], [s])  # eps D^{-1/2} z
        loss = float(0.5 * (d * z * z).sum())
        proj.end_step(s, [s], plan, [0.0, loss, loss], [0.0])
        if s >= 3000:
            tail.append(proj.hessian(p).log())
    ratio = torch.stack(tail).mean(0).exp() / d
    assert float(ratio.max() / ratio.min()) < 1.3, ratio
    assert 2.4 < float(ratio.mean()) < 3.6, ratio  # (N + 2)/2 = 3


def test_direction_is_the_inverse_square_root_of_the_estimate_times_z():
    model = Separable([1.0, 3.0, 5.0])
    opt = kerzoo.optimizer("hizoo", model, lr=0.0, alpha=0.3, seed=2)
    for _ in range(5):
        opt.step(model)
    p = opt.infos[0]
    z = engine.fill_z(torch.empty(3, dtype=torch.float64), 11, p.key)
    d = opt.projection.hessian(p)
    assert not torch.allclose(d, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(opt.projection.materialize(p, [2.0], [11]), 2.0 * z / d.sqrt())


def test_curvature_is_the_second_difference_over_two_s_squared():
    points = [{}, {0: 0.1}, {0: -0.1}, {1: 0.2}, {1: -0.2}]
    out = curvatures(points, [1.0, 1.5, 0.7, 1.0, 1.2])
    assert out[0][0] == 0.1 and abs(out[0][1] - 0.2 / 0.02) < 1e-9
    assert abs(out[1][1] - 0.2 / 0.08) < 1e-9


def test_hessian_without_the_centre_point_says_which_estimator_to_use():
    model = Separable([1.0, 2.0])
    before = [p.detach().clone() for p in model.parameters()]
    # refused when the optimizer is built, before any weight moves
    with pytest.raises(
        ValueError, match=r"estimator .two-point. does not evaluate it.*three-point"
    ):
        kerzoo.optimizer({"projection": "hessian", "alpha": 0.1}, model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_memory_held_is_one_float32_buffer_per_tensor():
    lin = torch.nn.Linear(30, 20)
    opt = kerzoo.optimizer("hizoo", lin)
    assert opt.projection.memory_bytes() == 4 * (30 * 20 + 20)
    assert opt.projection.memory_bytes() == sum(
        t.numel() * t.element_size() for t in opt.projection.state_dict()["w"].values()
    )
