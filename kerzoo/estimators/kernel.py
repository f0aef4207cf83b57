"""Built-in plugin: KerZOO's kernel-weighted two-point estimator (docs/algorithms.md, KerZOO).

For direction i, r_i ~ U[-a, a] (from the direction's seed) and

    g_i = [L(theta + eps r_i z_i) - L(theta - eps r_i z_i)] / (2 eps) * K_a(r_i),
    K_a(r) = (C / a) K(r / a),

averaged over the n directions. With E[s K(s)] = 1 and E[s^3 K(s)] = 0 (order 3), the
expansion of the difference in r gives E_r[r K_a(r)] = C and E_r[r^3 K_a(r)] = 0 for every a,
so the eps^2 bias term cancels: the bias is O(eps^4). K is rescaled with a at every step, so
the conditions hold while a shrinks from r_max to r_min over r_shrink_steps.

rescale=False weights by C K(r) instead (the public KerZOO code, with C = 4: 15 r (5 - 7 r^2)):
for legendre3, E_r[r C K(r)] = (15 C / 4) a^2 (5/3 - 7 a^2 / 5), which is C at a = 1, peaks at
1.86 C near a = 0.77 and then falls as a^2 while a shrinks (a learning-rate schedule in
disguise), and the eps^2 term no longer cancels once a < 1.

r_scope="tensor" draws one r per direction and tensor: tensor t moves by eps r_{i,t} z_{i,t} and
its estimate is sum_i [L+ - L-]/(2 eps n) K_a(r_{i,t}) z_{i,t}.
"""

from __future__ import annotations

import torch

from ..hookspecs import hookimpl
from ..seeds import uniform
from .base import Estimator, Plan


class KernelEstimator(Estimator):
    """KerZOO: two-point differences at eps*r_i weighted by a kernel K_a(r_i); bias O(eps^4)."""

    name = "kernel"
    defaults = {
        "directions": 3,
        "kernel": "legendre3",
        "C": 1.0,
        "r_max": 0.5,
        "r_min": 0.5,
        "r_shrink_steps": 0,
        "r_scope": "direction",
        "rescale": True,
    }

    def __init__(self, **options):
        super().__init__(**options)
        from ..plugins import get_registry

        k = self.options["kernel"]
        self.kernel = get_registry("kernels")[k] if isinstance(k, str) else k
        self.C = float(self.options["C"])
        self.r_max, self.r_min = float(self.options["r_max"]), float(self.options["r_min"])
        self.r_shrink_steps = int(self.options["r_shrink_steps"])
        self.r_scope = self.options["r_scope"]
        self.rescale = self.options["rescale"]
        if not isinstance(self.rescale, bool):
            raise ValueError(
                f"kernel estimator: rescale must be true (K_a(r) = (C/a) K(r/a), the theory) or "
                f"false (C K(r), the public code), got {self.rescale!r}"
            )
        if self.r_scope not in ("direction", "tensor"):
            raise ValueError(
                f"kernel estimator: r_scope must be 'direction' (the paper's theory) or 'tensor' "
                f"(one r per tensor, as a public implementation does), got {self.r_scope!r}"
            )
        if not 0 < self.r_min <= self.r_max:
            raise ValueError(
                f"kernel estimator: need 0 < r_min <= r_max, got r_min={self.r_min}, "
                f"r_max={self.r_max}"
            )

    def radius(self, step: int) -> float:
        """a(step): r_max, shrinking linearly to r_min over r_shrink_steps (0 keeps r_max)."""
        if self.r_shrink_steps <= 0:
            return self.r_max
        t = min(1.0, step / self.r_shrink_steps)
        return self.r_max - (self.r_max - self.r_min) * t

    def plan(self, step, seeds, eps):
        a = self.radius(step)
        if self.r_scope == "tensor":  # the r_{i,t} are the tensors' factors (tensor_factors)
            points = []
            for i in range(len(seeds)):
                points += [{i: eps}, {i: -eps}]
            return Plan(seeds, points, {"a": a})
        r = [a * (2.0 * uniform(s, "kernel-r") - 1.0) for s in seeds]
        points = []
        for i, ri in enumerate(r):
            points += [{i: eps * ri}, {i: -eps * ri}]
        return Plan(seeds, points, {"r": r, "a": a})

    def tensor_factors(self, plan, params):
        """r_scope="tensor": tensor t moves by eps r_{i,t} z_{i,t}, and its estimate is weighted
        by K_a(r_{i,t}); r_{i,t} ~ U[-a, a] from direction i's seed and t's name."""
        if self.r_scope != "tensor":
            return None
        a, q = plan.extra["a"], len(plan.seeds)
        r = [
            [a * (2.0 * uniform(s, f"kernel-r:{p.name}") - 1.0) for s in plan.seeds] for p in params
        ]
        w = self.weights([ri for row in r for ri in row], a)
        return [(row, w[t * q : (t + 1) * q]) for t, row in enumerate(r)]

    def weights(self, rs: list[float], a: float) -> list[float]:
        """K_a(r) = (C / a) K(r / a) for each r (without rescaling, C K(r)), K evaluated once
        over all of them."""
        from ..perturb.base import named

        scale = 1.0 if not self.rescale else a
        s = torch.tensor([r / scale for r in rs], dtype=torch.float64)
        with named("kernel", self.kernel):
            return [self.C / scale * k for k in self.kernel(s).tolist()]

    def weight(self, r: float, a: float) -> float:
        """K_a(r) = (C / a) K(r / a); without rescaling, C K(r)."""
        return self.weights([r], a)[0]

    def coefficients(self, plan, losses, eps):
        n, a = len(plan.seeds), plan.extra["a"]
        if self.r_scope == "tensor":  # K_a(r_{i,t}) is the update factor of each tensor
            return [(losses[2 * i] - losses[2 * i + 1]) / (2 * eps) / n for i in range(n)]
        return [
            (losses[2 * i] - losses[2 * i + 1]) / (2 * eps) * self.weight(r, a) / n
            for i, r in enumerate(plan.extra["r"])
        ]


@hookimpl
def kerzoo_register_estimators(register):
    register(KernelEstimator)
