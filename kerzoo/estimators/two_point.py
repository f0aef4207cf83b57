"""Built-in plugin: the two-point (central) and one-sided estimators.

The math: docs/algorithms.md, Two-point estimator.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from .base import Estimator, Plan


class TwoPoint(Estimator):
    """Central difference g_i = [L(theta + eps z_i) - L(theta - eps z_i)] / (2 eps), mean over q."""

    name = "two-point"
    defaults = {"directions": 1}

    def plan(self, step, seeds, eps):
        points = []
        for i in range(len(seeds)):
            points += [{i: eps}, {i: -eps}]
        return Plan(seeds, points)

    def coefficients(self, plan, losses, eps):
        q = len(plan.seeds)
        return [(losses[2 * i] - losses[2 * i + 1]) / (2 * eps) / q for i in range(q)]


class OneSided(Estimator):
    """Forward difference g_i = [L(theta + eps z_i) - L(theta)] / eps: q + 1 forwards."""

    name = "one-sided"
    defaults = {"directions": 1}

    def plan(self, step, seeds, eps):
        return Plan(seeds, [{}] + [{i: eps} for i in range(len(seeds))])

    def coefficients(self, plan, losses, eps):
        q = len(plan.seeds)
        return [(losses[1 + i] - losses[0]) / eps / q for i in range(q)]


@hookimpl
def kerzoo_register_estimators(register):
    register(TwoPoint)
    register(OneSided)
