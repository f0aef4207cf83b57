"""The presets of this package pass the optimizer conformance suite, also with options that make
their learnt state change within the suite's few steps (P-GAP's subspace is built after 2 probe
steps and refreshed every 5; HiZOO's Hessian moves fast), so resume and replay cover that state."""

import pytest

import kerzoo
import kerzoo.testing as kt
from kerzoo.testing import CHECKS

# (the presets with their defaults: tests/optim/test_conformance.py, over every registered name)
FAST_STATE = [
    {"preset": "subzero", "refresh": 2, "rank": 2},
    {"preset": "lozo", "nu": 2, "rank": 2},
    {"preset": "pgap", "refresh": 5, "probe_steps": 2, "rank": 2, "delta": 4.0},
    {"preset": "hizoo", "alpha": 0.2, "directions": 2},
    {"preset": "kerzoo-pgap", "refresh": 4, "probe_steps": 1, "rank": 2},
]


@pytest.mark.parametrize("check", [c for c in CHECKS if c != "decreases_quadratic"])
@pytest.mark.parametrize("spec", FAST_STATE, ids=str)
def test_preset_passes_conformance_with_state_that_changes_within_the_check(spec, check):
    getattr(kt, f"check_{check}")(spec)


@pytest.mark.parametrize("spec", FAST_STATE, ids=str)
def test_preset_with_fast_state_still_decreases_a_quadratic(spec):
    # HiZOO's D settles near (N + 2)/2 times the Hessian (test_hessian.py), which divides the
    # step by ~10 on this 18-parameter quadratic once alpha lets it settle: a larger lr for it
    kt.check_decreases_quadratic(spec, **({"lr": 0.05} if spec.get("preset") == "hizoo" else {}))


def test_presets_compose_by_name_in_a_config_dict():
    opt = kerzoo.optimizer(
        {
            "estimator": "kernel",
            "projection": "aligned",
            "update": "momentum",
            "rank": 4,
            "probe_steps": 3,
        },
        [__import__("torch").nn.Parameter(__import__("torch").zeros(5, 4))],
    )
    assert opt.projection.name == "aligned" and opt.projection.options["rank"] == 4
    assert opt.estimator.name == "kernel" and opt.update_rule.name == "momentum"
