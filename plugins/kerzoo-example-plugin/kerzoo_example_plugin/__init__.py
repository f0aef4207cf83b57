"""An example kerzoo plugin: what a third-party package looks like.

It registers through the same hooks as kerzoo's built-ins. Install it with
``pip install -e plugins/kerzoo-example-plugin`` and ``kerzoo list kernels`` shows ``quintic3``.
"""

from fractions import Fraction

from kerzoo.hookspecs import hookimpl
from kerzoo.kernels import PolynomialKernel

# K(s) = a s + b s^5 with E[s K] = a/3 + b/7 = 1 and E[s^3 K] = a/5 + b/9 = 0:
# a = 105/8, b = -189/8. Same order as legendre3, a different shape.
QUINTIC3 = PolynomialKernel(
    "quintic3", [0, Fraction(105, 8), 0, 0, 0, Fraction(-189, 8)], order=3,
    doc="K(s) = (105/8) s - (189/8) s^5; order 3 (example plugin)",
)


@hookimpl
def kerzoo_register_kernels(register):
    register(QUINTIC3)


from kerzoo.estimators import Estimator, Plan  # noqa: E402


class Richardson(Estimator):
    """Richardson-extrapolated central difference: [4 D(eps/2) - D(eps)] / 3; bias O(eps^4), 4 forwards.

    With D(h) = [L(theta + h z) - L(theta - h z)] / (2h) = z.grad + (h^2/6) L'''[z,z,z] + O(h^4),
    the combination cancels the h^2 term: another route to KerZOO's bias order, without a kernel.
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
            lp, lm, hp, hm = losses[4 * i: 4 * i + 4]
            d_full, d_half = (lp - lm) / (2 * eps), (hp - hm) / eps
            out.append((4 * d_half - d_full) / 3 / q)
        return out


@hookimpl
def kerzoo_register_estimators(register):
    register(Richardson)
