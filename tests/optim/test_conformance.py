import pytest

from kerzoo.testing import CHECKS, check_optimizer, optimizer_names
import kerzoo.testing as kt


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", optimizer_names())
def test_every_registered_optimizer_passes_conformance(name, check):
    getattr(kt, f"check_{check}")(name)


def test_conformance_catches_an_optimizer_that_does_not_descend():
    # lr = 0: nothing moves, so "decreases a convex quadratic" must fail
    with pytest.raises(AssertionError, match="convex quadratic"):
        check_optimizer("mezo", lr=0.0)


@pytest.mark.parametrize("check", CHECKS)
def test_kerzoo_with_one_r_per_tensor_passes_conformance(check):
    getattr(kt, f"check_{check}")({"preset": "kerzoo", "r_scope": "tensor"})
