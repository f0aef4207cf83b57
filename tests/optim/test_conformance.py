import pytest

import kerzoo.testing as kt
from kerzoo.testing import CHECKS, check_optimizer, parametrize_conformance, run_check


@parametrize_conformance()
def test_every_registered_optimizer_passes_conformance(spec, check):
    run_check(check, spec)


@parametrize_conformance(
    [
        {"estimator": "one-sided", "update": "sgd", "directions": 2},
        {"estimator": "two-point", "update": "sgd", "directions": 3},
    ]
)
def test_compositions_with_several_directions_pass_conformance(spec, check):
    run_check(check, spec)


def test_run_check_names_an_unknown_check():
    with pytest.raises(ValueError, match=r"'decrease'.*decreases_quadratic"):
        run_check("decrease", "mezo")


def test_conformance_catches_an_optimizer_that_does_not_descend():
    # lr = 0: nothing moves, so "decreases a convex quadratic" must fail
    with pytest.raises(AssertionError, match="convex quadratic"):
        check_optimizer("mezo", lr=0.0)


@pytest.mark.parametrize("check", CHECKS)
def test_kerzoo_with_one_r_per_tensor_passes_conformance(check):
    getattr(kt, f"check_{check}")({"preset": "kerzoo", "r_scope": "tensor"})
