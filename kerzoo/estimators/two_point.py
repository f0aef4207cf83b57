"""Built-in plugin: the two-point (central), one-sided and FZOO estimators.

The math: docs/algorithms.md, Two-point estimator and FZOO.
"""

from __future__ import annotations

import math

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


class FZOO(Estimator):
    """FZOO (Dang et al., arXiv 2506.09034): N one-sided differences around L(theta), the step
    normalised by the spread of the perturbed losses.

    g_i = (l_i - l_0) / (eps N sigma), sigma the standard deviation of l_1 .. l_N (N - 1 in the
    denominator): theta <- theta - lr sum_i g_i z_i is the paper's theta - lr g / sigma. With
    Rademacher z (the ``fzoo`` preset) this is normalised ZO-SGD: the step's size does not scale
    with the loss. When the N losses are equal (sigma = 0) every coefficient is 0 (no step).
    """

    name = "fzoo"
    defaults = {"directions": 8, "normalize": True}

    def __init__(self, **options):
        super().__init__(**options)
        self.normalize = bool(self.options["normalize"])
        if self.normalize and self.directions < 2:
            raise ValueError(
                f"estimator 'fzoo': normalize = true divides by the standard deviation of the "
                f"perturbed losses, which needs directions >= 2, got {self.directions}; raise "
                "directions, or set normalize = false (then it is the one-sided estimator)"
            )

    def plan(self, step, seeds, eps):
        return Plan(seeds, [{}] + [{i: eps} for i in range(len(seeds))])

    def coefficients(self, plan, losses, eps):
        n = len(plan.seeds)
        base, perturbed = losses[0], losses[1 : 1 + n]
        scale = eps * n
        if self.normalize:
            mean = sum(perturbed) / n
            sigma = math.sqrt(sum((x - mean) ** 2 for x in perturbed) / (n - 1))
            plan.extra["sigma"] = sigma
            if sigma == 0.0:
                return [0.0] * n
            scale *= sigma
        return [(x - base) / scale for x in perturbed]


@hookimpl
def kerzoo_register_estimators(register):
    register(TwoPoint)
    register(OneSided)
    register(FZOO)
