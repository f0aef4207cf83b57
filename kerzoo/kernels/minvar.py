"""Built-in plugin: order-3 kernels of least variance among odd polynomials of degree 5 and 7
(docs/algorithms.md, KerZOO).

An estimate's variance per direction is multiplied by V(K) = E[(s K(s))²], s ~ U[-1, 1]. Among
odd polynomials K(s) = sum_j a_j s^(2j-1) of degree 2m - 1 that satisfy the order-3 conditions
E[s K] = 1 and E[s³ K] = 0, V is a positive quadratic form a^T G a (G_jk = 1/(2j + 2k + 1)) under
two linear constraints, so its minimiser is unique and rational:

    a = G⁻¹ Aᵀ (A G⁻¹ Aᵀ)⁻¹ (1, 0)ᵀ,   V_min = (1, 0) (A G⁻¹ Aᵀ)⁻¹ (1, 0)ᵀ,

with A's rows (1/(2j + 1))_j and (1/(2j + 3))_j. Degree 3 gives legendre3 (V = 25/4); degree 5
gives V = 11025/2596 ≈ 4.25 and degree 7 V = 99225/27716 ≈ 3.58, against the infimum 9/4 over
all odd kernels (reached only with a 1/s term). The bias stays O(eps⁴)
(docs/benchmarks/estimator-quality.md measures both).
"""

from fractions import Fraction as F

from ..hookspecs import hookimpl
from .base import PolynomialKernel

MINVAR5 = PolynomialKernel(
    "minvar5",
    [0, F(3675, 118), 0, F(-19845, 236), 0, F(12285, 236)],
    order=3,
    doc="least-variance order-3 odd quintic: E[(sK)^2] = 11025/2596 (legendre3: 25/4)",
)
MINVAR7 = PolynomialKernel(
    "minvar7",
    [0, F(99225, 2132), 0, F(-218295, 1066), 0, F(155925, 533), 0, F(-294525, 2132)],
    order=3,
    doc="least-variance order-3 odd septic: E[(sK)^2] = 99225/27716 (legendre3: 25/4)",
)


@hookimpl
def kerzoo_register_kernels(register):
    for kernel in (MINVAR5, MINVAR7):
        register(kernel)
