"""Built-in plugin: the Legendre kernels of orders 1, 3 and 5 (docs/algorithms.md, KerZOO)."""

from fractions import Fraction as F

from ..hookspecs import hookimpl
from .base import PolynomialKernel

LEGENDRE1 = PolynomialKernel(
    "legendre1", [0, 3], order=1, doc="K(s) = 3 s; order 1 (no bias cancellation)"
)
LEGENDRE3 = PolynomialKernel(
    "legendre3",
    [0, F(75, 4), 0, F(-105, 4)],
    order=3,
    doc="K(s) = (15/4) s (5 - 7 s^2); order 3, cancels the eps^2 bias (default)",
)
LEGENDRE5 = PolynomialKernel(
    "legendre5",
    [0, F(105 * 35, 64), 0, F(-105 * 126, 64), 0, F(105 * 99, 64)],
    order=5,
    doc="K(s) = (105/64) s (99 s^4 - 126 s^2 + 35); order 5",
)


@hookimpl
def kerzoo_register_kernels(register):
    for kernel in (LEGENDRE1, LEGENDRE3, LEGENDRE5):
        register(kernel)
