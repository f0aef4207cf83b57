"""The optimizer conformance suite: every registered optimizer, and a plugin's, must pass it.

    from kerzoo.testing import check_optimizer
    check_optimizer("my-preset")              # or a dict spec, with option overrides

Or parametrise a pytest test over every registered optimizer with ``optimizer_names()``.
Each check uses float64 parameters so that it measures the method, not rounding.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch

CHECKS = (
    "decreases_quadratic",
    "same_seed_same_trajectory",
    "resume_same_trajectory",
    "unchanged_on_nan",
    "replay_rebuilds_weights",
)


class _Quadratic(torch.nn.Module):
    """f(x, W) = 1/2 x^T A x + 1/2 ||W - B||^2 / 4: a vector and a matrix parameter."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
        self.register_buffer(
            "A", q @ torch.diag(torch.linspace(1.0, 2.0, 6, dtype=torch.float64)) @ q.T
        )
        self.register_buffer("B", torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.x = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
        self.W = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.x @ self.A @ self.x + 0.125 * ((self.W - self.B) ** 2).sum()


def optimizer_names() -> list[str]:
    import kerzoo

    return kerzoo.list_optimizers()


def parametrize_conformance(specs: Any = None):
    """A pytest parametrisation over (spec, check) for ``specs`` (default: every registered
    optimizer):

        from kerzoo.testing import parametrize_conformance, run_check

        @parametrize_conformance([{"estimator": "my-estimator"}])
        def test_conformance(spec, check):
            run_check(check, spec)

    Each check is its own test case, so a failure names the spec and the check.
    """
    import pytest

    specs = optimizer_names() if specs is None else list(specs)
    cases = [
        pytest.param(s, c, id=f"{s if isinstance(s, str) else 'spec' + str(i)}-{c}")
        for i, s in enumerate(specs)
        for c in CHECKS
    ]
    return pytest.mark.parametrize("spec,check", cases)


def run_check(check: str, spec: Any, **overrides: Any) -> None:
    """Run one conformance check by name (one of CHECKS)."""
    if check not in CHECKS:
        raise ValueError(f"unknown conformance check {check!r}: use one of {', '.join(CHECKS)}")
    globals()[f"check_{check}"](spec, **overrides)


def _make(spec: Any, model: torch.nn.Module, overrides: dict[str, Any]):
    import kerzoo

    options = {"lr": 0.005, "eps": 1e-3, "seed": 7, **overrides}
    return kerzoo.optimizer(spec, model, **options)


def _modes(spec: Any, overrides: dict[str, Any]) -> tuple[str, ...]:
    """The perturbation modes to check: both, or on the fly alone for a projection that reads
    the weights (it refuses in place when built, by design)."""
    opt = _make(spec, _Quadratic(), {**overrides, "perturb": "onthefly"})
    return ("onthefly",) if opt.projection.reads_weights else ("onthefly", "inplace")


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _run(opt, model, steps: int) -> list[float]:
    return [opt.step(model) for _ in range(steps)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def check_decreases_quadratic(spec: Any, steps: int = 400, **overrides: Any) -> None:
    model = _Quadratic()
    opt = _make(spec, model, overrides)
    with torch.no_grad():
        start = float(model())
    _run(opt, model, steps)
    with torch.no_grad():
        end = float(model())
    assert end < 0.5 * start, (
        f"{spec!r}: loss {start:.4g} -> {end:.4g} after {steps} steps on a convex quadratic"
    )


def check_same_seed_same_trajectory(spec: Any, steps: int = 5, **overrides: Any) -> None:
    runs = []
    for _ in range(2):
        model = _Quadratic()
        _run(_make(spec, model, overrides), model, steps)
        runs.append(_params(model))
    assert _same(*runs), f"{spec!r}: two runs with the same seed differ"
    model = _Quadratic()
    _run(_make(spec, model, {**overrides, "seed": 8}), model, steps)
    assert not _same(runs[0], _params(model)), (
        f"{spec!r}: a different seed gave the same trajectory"
    )


def check_resume_same_trajectory(spec: Any, steps: int = 4, **overrides: Any) -> None:
    model = _Quadratic()
    opt = _make(spec, model, overrides)
    _run(opt, model, steps)
    saved_params, saved_state = (
        _params(model),
        copy.deepcopy(opt.state_dict()),
    )  # as a checkpoint would
    _run(opt, model, steps)
    straight = _params(model)

    resumed = _Quadratic()
    with torch.no_grad():
        for p, v in zip(resumed.parameters(), saved_params):
            p.copy_(v)
    opt2 = _make(spec, resumed, {**overrides, "seed": 12345})  # the state's seed must win
    opt2.load_state_dict(saved_state)
    _run(opt2, resumed, steps)
    assert _same(straight, _params(resumed)), (
        f"{spec!r}: resuming from state_dict changed the trajectory"
    )


def check_unchanged_on_nan(spec: Any, **overrides: Any) -> None:
    for perturb in _modes(spec, overrides):
        model = _Quadratic()
        opt = _make(spec, model, {**overrides, "perturb": perturb})
        _run(opt, model, 2)
        before = _params(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = opt.step(lambda: torch.tensor(float("nan")))
        assert math.isnan(loss), f"{spec!r}: a NaN loss should return NaN, got {loss}"
        assert opt.skipped_steps == 1, f"{spec!r}: the skipped step was not counted"
        assert any("non-finite" in str(w.message) for w in caught), (
            f"{spec!r}: no warning for a NaN loss"
        )
        after = _params(model)
        if perturb == "onthefly":
            assert _same(before, after), f"{spec!r} (on the fly): parameters changed on a NaN loss"
        else:  # restored by subtracting the perturbation: exact up to the rounding of theta + eps z
            for a, b in zip(before, after):
                assert torch.allclose(a, b, rtol=0, atol=1e-14), (
                    f"{spec!r} (in place): not restored on a NaN loss"
                )


def check_replay_rebuilds_weights(spec: Any, steps: int = 5, **overrides: Any) -> None:
    for perturb in _modes(spec, overrides):
        model = _Quadratic()
        opt = _make(spec, model, {**overrides, "perturb": perturb})
        records = []
        for _ in range(steps):
            opt.step(model)
            records.append(opt.last_record)
        rebuilt = _Quadratic()
        opt2 = _make(spec, rebuilt, {**overrides, "perturb": perturb})
        for r in records:
            opt2.replay(r)
        assert _same(_params(model), _params(rebuilt)), (
            f"{spec!r} ({perturb}): replay did not rebuild the weights"
        )


def check_optimizer(spec: Any, **overrides: Any) -> None:
    """Run every conformance check on ``spec`` (a preset name or a dict); raise AssertionError
    on failure."""
    for name in CHECKS:
        globals()[f"check_{name}"](spec, **overrides)


# One check_<name> per entry of CHECKS; ruff cannot read a computed __all__.
__all__ = [  # noqa: PLE0604
    "check_optimizer",
    "optimizer_names",
    "parametrize_conformance",
    "run_check",
    "CHECKS",
    *(f"check_{c}" for c in CHECKS),
]
