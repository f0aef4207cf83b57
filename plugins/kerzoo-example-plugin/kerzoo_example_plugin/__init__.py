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
