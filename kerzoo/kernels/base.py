"""A kernel given by the coefficients of a polynomial in s."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch


class PolynomialKernel:
    """K(s) = sum_k coefficients[k] * s**k on s in [-1, 1].

    Any object with ``name``, ``order`` and ``__call__(s) -> Tensor`` is a kernel; this class
    is the convenient form for polynomials, and keeps its coefficients exact (Fractions) so
    that moments can be computed in rational arithmetic too.
    """

    def __init__(self, name: str, coefficients: Sequence, order: int, doc: str = ""):
        self.name = name
        self.order = int(order)
        self.coefficients = tuple(Fraction(c) for c in coefficients)
        self.doc = doc or f"polynomial kernel of order {order}"
        self._floats = [float(c) for c in self.coefficients]

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(s)
        for c in reversed(self._floats):  # Horner
            out = out * s + c
        return out

    def __repr__(self) -> str:
        terms = " + ".join(f"{c}*s^{k}" for k, c in enumerate(self.coefficients) if c)
        return f"PolynomialKernel({self.name!r}, order={self.order}, K(s) = {terms or '0'})"
