"""Kernels K(s) on s in [-1, 1] for KerZOO's kernel-weighted estimator.

The math: docs/algorithms.md, KerZOO.
"""

from .base import PolynomialKernel
from .moments import KernelMoments, kernel_moments, validate_kernel

__all__ = ["PolynomialKernel", "KernelMoments", "kernel_moments", "validate_kernel"]
