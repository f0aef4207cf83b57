import pytest

import kerzoo.testing as kt
from kerzoo.testing import CHECKS, check_optimizer, parametrize_conformance, run_check

# Sparse MeZO perturbs only the weights below each tensor's magnitude quantile, so on the
# quadratic (targets ~ N(0, 1) from 0) the coordinates that grow past the quantile stop moving:
# it decreases the loss (tests/projections/test_sparse.py) but not by half in 400 steps. A known
# property of the method, kept visible: strict, so a change that makes it pass is noticed.
KNOWN = {
    ("sparse-mezo", "decreases_quadratic"): "masked to the small weights: slower on the quadratic"
}

# The checks' lr (0.005) is a step of lr |g|; FZOO divides its step by the spread of the losses,
# so its step is about lr sqrt(N) / (N eps) per coordinate whatever the loss's scale: 1.8 at lr
# 0.005, which overshoots the quadratic's minimum (distance ~1). Its own preset's lr (1e-5) is
# the scale it is checked at.
OVERRIDES = {"fzoo": {"lr": 2e-5}}


@parametrize_conformance()
def test_every_registered_optimizer_passes_conformance(spec, check, request):
    if (spec, check) in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[spec, check]))
    run_check(check, spec, **OVERRIDES.get(spec, {}))


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
