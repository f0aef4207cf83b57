"""An example kerzoo plugin: what a third-party package looks like.

It registers a kernel, an estimator and a projection through the same hooks as kerzoo's
built-ins. Install it with ``pip install -e plugins/kerzoo-example-plugin``:
``kerzoo list kernels`` shows ``quintic3``, ``kerzoo list estimators`` ``richardson`` and
``kerzoo list projections`` ``sparse``.
"""

import math
from fractions import Fraction

import torch

from kerzoo import engine
from kerzoo.estimators import Estimator, Plan
from kerzoo.hookspecs import hookimpl
from kerzoo.kernels import PolynomialKernel
from kerzoo.projections import Projection
from kerzoo.seeds import derive

# K(s) = a s + b s^5 with E[s K] = a/3 + b/7 = 1 and E[s^3 K] = a/5 + b/9 = 0:
# a = 105/8, b = -189/8. Same order as legendre3, a different shape.
QUINTIC3 = PolynomialKernel(
    "quintic3",
    [0, Fraction(105, 8), 0, 0, 0, Fraction(-189, 8)],
    order=3,
    doc="K(s) = (105/8) s - (189/8) s^5; order 3 (example plugin)",
)


@hookimpl
def kerzoo_register_kernels(register):
    register(QUINTIC3)


class Richardson(Estimator):
    """Richardson-extrapolated central difference [4 D(eps/2) - D(eps)] / 3: bias O(eps^4).

    With D(h) = [L(theta + h z) - L(theta - h z)] / (2h) = z.grad + (h^2/6) L'''[z,z,z] + O(h^4),
    the combination cancels the h^2 term: another route to KerZOO's bias order, without a kernel
    (4 forwards per direction).
    """

    name = "richardson"
    defaults = {"directions": 1}

    def plan(self, step, seeds, eps):
        points = []
        for i in range(len(seeds)):
            points += [{i: eps}, {i: -eps}, {i: eps / 2}, {i: -eps / 2}]
        return Plan(seeds, points)

    def coefficients(self, plan, losses, eps):
        q = len(plan.seeds)
        out = []
        for i in range(q):
            lp, lm, hp, hm = losses[4 * i : 4 * i + 4]
            d_full, d_half = (lp - lm) / (2 * eps), (hp - hm) / eps
            out.append((4 * d_half - d_full) / 3 / q)
        return out


@hookimpl
def kerzoo_register_estimators(register):
    register(Richardson)


class Sparse(Projection):
    """Sparse directions Z_i = m_i * z_i / sqrt(density), a fresh random mask m_i per direction.

    m_i keeps each element with probability ``density`` (|u| < t for a Gaussian u, seeded by the
    direction), so E[Z * Z] = 1 per element, as for MeZO's dense z. Nothing is held between steps:
    z_i and m_i are regenerated from the direction's seed by the engine. Rounds to nearest.
    """

    name = "sparse"
    defaults = {"density": 0.25}
    shardable = (
        True  # z and the mask are elementwise functions of (seed, key, global index): shards work
    )

    def __init__(self, **options):
        super().__init__(**options)
        density = float(self.options["density"])
        if not 0.0 < density <= 1.0:
            raise ValueError(f"projection 'sparse': density must be in (0, 1], got {density}")
        self.scale = 1.0 / math.sqrt(density)
        # P(|u| < t) = erf(t / sqrt 2) = density for u ~ N(0, 1)
        self.threshold = math.sqrt(2.0) * float(
            torch.special.erfinv(torch.tensor(density, dtype=torch.float64))
        )

    def direction(self, p, seed, dtype):
        """Z(seed) for the tensor p, in dtype."""
        z = torch.empty(p.tensor.shape, dtype=dtype, device=p.tensor.device)
        engine.fill_z(z, seed, p.key, p.offset)
        u = engine.fill_z(torch.empty_like(z), derive(seed, "sparse-mask"), p.key, p.offset)
        return z.mul_(u.abs_() < self.threshold).mul_(self.scale)

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
        total = torch.zeros(target.shape, dtype=dtype, device=target.device)
        for c, seed in zip(coefs, seeds):
            total.add_(self.direction(p, seed, dtype), alpha=c)
        target.add_(total.to(target.dtype))


@hookimpl
def kerzoo_register_projections(register):
    register(Sparse)
