"""Properties of the estimators (docs/algorithms.md, Properties the tests check), in float64."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kerzoo
from kerzoo import engine
from kerzoo.estimators.kernel import KernelEstimator
from kerzoo.estimators.two_point import TwoPoint
from kerzoo.plugins import get
from kerzoo.seeds import direction_seeds

from quadratic import TwoTensors, mean_step_over_seeds

KEY = engine.param_key("x")


def z_of(seed: int, d: int) -> torch.Tensor:
    return engine.fill_z(torch.empty(d, dtype=torch.float64), seed, KEY)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31))
def test_two_point_mean_equals_gradient_on_random_quadratics(d, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a, b = m @ m.T, torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(d, generator=g, dtype=torch.float64)
    f = lambda v: float(0.5 * v @ a @ v + b @ v)
    est, eps, n = TwoPoint(), 1e-2, 3000
    samples = []
    for s in direction_seeds(seed, 0, n):
        z = z_of(s, d)
        plan = est.plan(0, [s], eps)
        losses = [f(x + sc * z) for p in plan.points for sc in p.values()]
        samples.append(est.coefficients(plan, losses, eps)[0] * z)
    samples = torch.stack(samples)
    mean, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    grad = a @ x + b
    assert torch.all((mean - grad).abs() <= 5 * stderr + 1e-12), (mean, grad, stderr)


def _bias_curve(estimate, epsilons):
    return [float(estimate(e).norm()) for e in epsilons]


def _slope(epsilons, biases):
    return float(np.polyfit(np.log(epsilons), np.log(biases), 1)[0])


@pytest.mark.parametrize("kernel,expected", [("legendre3", 4.0), ("legendre5", 6.0)])
def test_bias_falls_as_eps2_for_two_point_and_eps4_for_kerzoo(kernel, expected):
    """An order-beta kernel cancels the odd terms up to eps^(beta-1): legendre5's bias falls as
    eps^6. f(x) = sum exp(c_i x_i) + (sum x)^4 / 4. Common random numbers: the same z for every eps,
    and the expectation over r computed exactly by Gauss-Legendre, so the slopes are resolved. The
    bias is measured against the eps -> 0 limit on the same directions."""
    d = 5
    c = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    x = torch.linspace(-0.3, 0.3, d, dtype=torch.float64)
    f = lambda v: float(torch.exp(c * v).sum() + v.sum() ** 4 / 4)
    grad = c * torch.exp(c * x) + x.sum() ** 3
    zs = [z_of(s, d) for s in direction_seeds(3, 0, 64)]
    epsilons = [0.4, 0.2, 0.1, 0.05]

    def two_point(eps):
        return sum(
            ((f(x + eps * z) - f(x - eps * z)) / (2 * eps) - z @ grad) * z for z in zs
        ) / len(zs)

    est = KernelEstimator(kernel=kernel, r_max=1.0, r_min=1.0)
    nodes, weights = np.polynomial.legendre.leggauss(24)
    a = est.radius(0)

    def kerzoo_(eps):
        total = torch.zeros(d, dtype=torch.float64)
        for z in zs:
            e_r = sum(
                0.5
                * w
                * (f(x + eps * a * s * z) - f(x - eps * a * s * z))
                / (2 * eps)
                * est.weight(a * s, a)
                for s, w in zip(nodes, weights)
            )
            total += (e_r - est.C * (z @ grad)) * z
        return total / len(zs)

    s2 = _slope(epsilons, _bias_curve(two_point, epsilons))
    s4 = _slope(epsilons, _bias_curve(kerzoo_, epsilons))
    assert abs(s2 - 2.0) < 0.3, f"two-point bias slope {s2:.2f}, expected 2"
    assert abs(s4 - expected) < 0.5, f"kerzoo bias slope {s4:.2f}, expected {expected}"


@given(st.floats(0.05, 1.0), st.floats(0.5, 2.0))
def test_kernel_rescaled_with_radius_keeps_its_moments(a, C):
    """E_r[r K_a(r)] = C and E_r[r^3 K_a(r)] = 0 for r ~ U[-a, a], whatever a (exact quadrature)."""
    est = KernelEstimator(C=C, r_max=a, r_min=a)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    m1 = sum(0.5 * w * (a * s) * est.weight(a * s, a) for s, w in zip(nodes, weights))
    m3 = sum(0.5 * w * (a * s) ** 3 * est.weight(a * s, a) for s, w in zip(nodes, weights))
    assert m1 == pytest.approx(C, rel=1e-12)
    assert abs(m3) < 1e-12 * max(1.0, a**3 * C)


@given(st.floats(0.05, 1.0))
def test_without_rescaling_the_first_moment_is_the_hidden_decay(a):
    """The public code's weight 4 K(r) = 15 r (5 - 7 r^2): E_r[r 4K(r)] = 15 a^2 (5/3 - 7a^2/5),
    4 at a = 1 and falling as a^2; the third moment no longer vanishes once a < 1."""
    est = KernelEstimator(C=4.0, rescale=False, r_max=a, r_min=a)
    assert est.weight(0.3, a) == pytest.approx(15 * 0.3 * (5 - 7 * 0.09), rel=1e-12)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    m1 = sum(0.5 * w * (a * s) * est.weight(a * s, a) for s, w in zip(nodes, weights))
    m3 = sum(0.5 * w * (a * s) ** 3 * est.weight(a * s, a) for s, w in zip(nodes, weights))
    assert m1 == pytest.approx(15 * a**2 * (5 / 3 - 7 * a**2 / 5), rel=1e-10)
    if a < 0.99:
        assert abs(m3) > 1e-3 * a**4


def test_rescale_must_be_a_boolean():
    with pytest.raises(ValueError, match="rescale must be true"):
        KernelEstimator(rescale="no")


def test_radius_shrinks_linearly_then_stays():
    est = KernelEstimator(r_max=0.5, r_min=0.1, r_shrink_steps=100)
    assert est.radius(0) == 0.5
    assert est.radius(50) == pytest.approx(0.3)
    assert est.radius(100) == pytest.approx(0.1) and est.radius(1000) == pytest.approx(0.1)


def test_one_sided_is_exact_on_linear_functions():
    est = get("estimators", "one-sided")(directions=2)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    f = lambda v: float(b @ v)
    x = torch.zeros(3, dtype=torch.float64)
    seeds = direction_seeds(0, 0, 2)
    plan = est.plan(0, seeds, 1e-3)
    zs = [z_of(s, 3) for s in seeds]
    losses = [f(x + sum(sc * zs[i] for i, sc in p.items())) if p else f(x) for p in plan.points]
    coefs = est.coefficients(plan, losses, 1e-3)
    for ci, z in zip(coefs, zs):
        assert ci == pytest.approx(float(z @ b) / 2, rel=1e-9)


def test_kerzoo_with_one_r_per_tensor_is_unbiased_on_a_quadratic():
    model, lr = TwoTensors(), 1e-3
    mean, stderr, _ = mean_step_over_seeds(
        model,
        lambda s: kerzoo.optimizer(
            "kerzoo",
            model,
            lr=lr,
            eps=1e-3,
            seed=s,
            directions=1,
            r_scope="tensor",
            perturb="onthefly",
        ),
        lr,
        3000,
    )
    grad = model.grad()
    assert torch.all((mean - grad).abs() <= 5 * stderr), (mean, grad, stderr)


def test_one_r_per_tensor_perturbs_tensors_by_different_radii():
    est = KernelEstimator(r_scope="tensor")
    plan = est.plan(0, [11], 1e-3)
    a, b = (type("P", (), {"name": n})() for n in ("layer.0.w", "layer.1.w"))
    (ra, wa), (rb, _) = est.tensor_factors(plan, [a, b])
    assert ra[0] != rb[0]
    assert abs(ra[0]) <= est.radius(0)
    assert wa[0] == pytest.approx(est.weight(ra[0], est.radius(0)))
    assert KernelEstimator().tensor_factors(KernelEstimator().plan(0, [11], 1e-3), [a]) is None
    with pytest.raises(ValueError, match="r_scope"):
        KernelEstimator(r_scope="layer")
