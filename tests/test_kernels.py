from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kerzoo
from kerzoo.kernels import PolynomialKernel, kernel_moments, validate_kernel
from kerzoo.kernels.moments import exact_variance_factor, variance_factor
from kerzoo.plugins import get_registry, register_plugin, unregister_plugin
from kerzoo.registry import RegistrationError
from kerzoo.testing import check_kernel, exact_odd_moments, odd_polynomial_kernels


@pytest.mark.parametrize("name,order", [("legendre1", 1), ("legendre3", 3), ("legendre5", 5)])
def test_builtin_legendre_kernels_meet_their_moments(name, order):
    k = get_registry("kernels")[name]
    assert k.order == order
    moments = check_kernel(k)
    assert [row[0] for row in moments.rows] == list(range(1, order + 1, 2))
    # exact rational arithmetic agrees
    exact = exact_odd_moments(k.coefficients, order)
    assert exact[0] == 1 and all(m == 0 for m in exact[1:])


def test_legendre3_matches_its_formula():
    k = get_registry("kernels")["legendre3"]
    s = torch.linspace(-1, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(k(s), 15 / 4 * s * (5 - 7 * s**2))


def test_default_kernels_are_listed():
    assert {"legendre1", "legendre3", "legendre5"} <= set(kerzoo.list_kernels())


@settings(max_examples=150, deadline=None)
@given(odd_polynomial_kernels())
def test_quadrature_verdict_equals_exact_rational_verdict(kernel):
    assert kernel_moments(kernel).ok is kernel.exact_ok


@settings(max_examples=40, deadline=None)
@given(odd_polynomial_kernels(valid=False))
def test_registration_refuses_kernels_that_break_moments_and_prints_them(kernel):
    with pytest.raises(RegistrationError) as info:
        validate_kernel(kernel)
    msg = str(info.value)
    assert "FAIL" in msg and "E[s^k K(s)]" in msg and "required" in msg


def test_plugin_with_bad_kernel_is_refused_and_registers_nothing():
    bad = PolynomialKernel("bad-two", [0, 2], order=1)  # E[s K] = 2/3

    class Plugin:
        @kerzoo.hookspecs.hookimpl
        def kerzoo_register_kernels(self, register):
            register(PolynomialKernel("good-one", [0, 3], order=1))
            register(bad)

    with pytest.raises(RegistrationError, match=r"6.666666666667e-01"):
        register_plugin(Plugin(), "bad-kernel-plugin")
    names = set(kerzoo.list_kernels())
    assert "bad-two" not in names and "good-one" not in names  # rolled back whole


def test_even_order_is_refused():
    with pytest.raises(RegistrationError, match="odd integer"):
        validate_kernel(PolynomialKernel("even", [0, 3], order=2))


def test_non_kernel_objects_are_refused_with_reason():
    with pytest.raises(RegistrationError, match="no `order`"):
        validate_kernel(type("K", (), {"name": "x", "__call__": lambda self, s: s})())

    class Raises:
        name, order = "raises", 1

        def __call__(self, s):
            raise RuntimeError("boom")

    with pytest.raises(RegistrationError, match="boom"):
        validate_kernel(Raises())


def test_runtime_plugin_kernel_is_usable_then_unregistered():
    class Plugin:
        @kerzoo.hookspecs.hookimpl
        def kerzoo_register_kernels(self, register):
            register(
                PolynomialKernel(
                    "cubic-runtime", [0, Fraction(75, 4), 0, Fraction(-105, 4)], order=3
                )
            )

    name = register_plugin(Plugin(), "runtime-plugin")
    try:
        assert get_registry("kernels").entry("cubic-runtime").plugin == "runtime-plugin"
    finally:
        unregister_plugin(name)
    assert "cubic-runtime" not in kerzoo.list_kernels()


# -- variance factors and the least-variance kernels (docs/algorithms.md, KerZOO) --------------

VARIANCE = {
    "legendre1": Fraction(9, 5),
    "legendre3": Fraction(25, 4),
    "legendre5": Fraction(11025, 832),
    "minvar5": Fraction(11025, 2596),
    "minvar7": Fraction(99225, 27716),
}


@pytest.mark.parametrize("name", sorted(VARIANCE))
def test_variance_factor_of_each_builtin_kernel(name):
    kernel = get_registry("kernels")[name]
    assert exact_variance_factor(kernel) == VARIANCE[name]
    assert variance_factor(kernel) == pytest.approx(float(VARIANCE[name]), rel=1e-12)


@pytest.mark.parametrize("name", ["minvar5", "minvar7"])
def test_least_variance_kernels_are_order_3_and_exact(name):
    kernel = get_registry("kernels")[name]
    assert kernel.order == 3 and validate_kernel(kernel).ok
    assert exact_odd_moments(kernel.coefficients, 3) == [Fraction(1), Fraction(0)]
    assert VARIANCE[name] < VARIANCE["legendre3"]


def _null_direction(degree: int, t: list[int]) -> list[Fraction]:
    """An odd polynomial of the given degree with E[s K] = E[s^3 K] = 0, from free integers t."""
    m = (degree + 1) // 2
    free = [Fraction(v) for v in t[: m - 2]]
    # unknowns a_1, a_2 (coefficients of s, s^3) solve the two homogeneous moment equations
    r1 = -sum(f / (2 * (j + 3) + 1) for j, f in enumerate(free))
    r2 = -sum(f / (2 * (j + 3) + 3) for j, f in enumerate(free))
    # [1/3 1/5; 1/5 1/7] (a1, a2) = (r1, r2)
    det = Fraction(1, 21) - Fraction(1, 25)
    a1 = (r1 * Fraction(1, 7) - r2 * Fraction(1, 5)) / det
    a2 = (Fraction(1, 3) * r2 - Fraction(1, 5) * r1) / det
    coefs = [Fraction(0)] * (degree + 1)
    for j, a in enumerate([a1, a2, *free]):
        coefs[2 * j + 1] = a
    return coefs


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["minvar5", "minvar7"]),
    t=st.lists(st.integers(-50, 50), min_size=2, max_size=2).filter(any),
    step=st.fractions(min_value=Fraction(-1, 1), max_value=Fraction(1, 1)).filter(bool),
)
def test_no_kernel_of_the_same_degree_and_order_has_less_variance(name, t, step):
    kernel = get_registry("kernels")[name]
    degree = kernel.degree
    t = t[: (degree + 1) // 2 - 2]
    if not any(t):
        return
    null = _null_direction(degree, t)
    moved = PolynomialKernel(
        "moved", [a + step * b for a, b in zip(kernel.coefficients, null)], order=3
    )
    assert exact_odd_moments(moved.coefficients, 3) == [Fraction(1), Fraction(0)]  # order 3
    assert exact_variance_factor(moved) > exact_variance_factor(kernel)
