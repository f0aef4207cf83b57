"""Moment conditions of a kernel, checked by Gauss-Legendre quadrature.

With s ~ U[-1, 1], a kernel of order beta must satisfy (docs/algorithms.md, KerZOO)

    E[s K(s)] = 1,   E[s^k K(s)] = 0 for odd k = 3, 5, ..., beta,

so that E_r[r K_a(r)] = C and the odd Taylor terms of the two-point difference up to
order beta cancel. E[g(s)] = 1/2 * int_{-1}^{1} g(s) ds is computed with an n-point
Gauss-Legendre rule, exact for polynomials of degree <= 2n - 1: a polynomial kernel of
degree d needs n > (d + beta) / 2, which `_points` guarantees; other kernels get 128 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..registry import RegistrationError

TOLERANCE = 1e-9


@dataclass(frozen=True)
class KernelMoments:
    name: str
    order: int
    rows: tuple[tuple[int, float, float], ...]  # (k, measured E[s^k K], required)
    scales: tuple[float, ...] = ()  # E[|s^k K(s)|] per row: float error is relative to it
    tolerance: float = TOLERANCE

    def _bad(self, i: int) -> bool:
        _, got, want = self.rows[i]
        scale = self.scales[i] if self.scales else 1.0
        return abs(got - want) > self.tolerance * max(1.0, scale)

    @property
    def failures(self) -> list[tuple[int, float, float]]:
        return [r for i, r in enumerate(self.rows) if self._bad(i)]

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        lines = [
            f"kernel {self.name!r}, order {self.order}",
            "   k   E[s^k K(s)]          required   status",
        ]
        for i, (k, got, want) in enumerate(self.rows):
            bad = self._bad(i)
            lines.append(f"  {k:2d}   {got: .12e}   {want: 8.1f}   {'FAIL' if bad else 'ok'}")
        return "\n".join(lines)


def _points(kernel) -> int:
    degree = getattr(kernel, "degree", None)
    if isinstance(degree, int) and degree >= 0:
        return max(8, (degree + kernel.order) // 2 + 2)
    return 128


def kernel_moments(kernel) -> KernelMoments:
    """Measure E[s^k K(s)] for odd k = 1 .. order, with s ~ U[-1, 1]."""
    name = getattr(kernel, "name", repr(kernel))
    order = getattr(kernel, "order", None)
    if not isinstance(order, int) or isinstance(order, bool) or order < 1 or order % 2 == 0:
        raise RegistrationError(
            f"kernel {name!r} has order {order!r}: the order beta must be an odd integer >= 1 "
            "(1, 3, 5, ...), the highest odd moment k with E[s^k K(s)] = 0 required (k >= 3)"
        )
    nodes, weights = np.polynomial.legendre.leggauss(_points(kernel))
    s = torch.from_numpy(nodes)
    try:
        values = kernel(s)
    except Exception as exc:
        raise RegistrationError(
            f"kernel {name!r} failed when called on a float64 tensor: {exc}"
        ) from exc
    if not isinstance(values, torch.Tensor) or values.shape != s.shape:
        raise RegistrationError(
            f"kernel {name!r} must return a tensor shaped like its input {tuple(s.shape)}, "
            f"got {type(values).__name__} {getattr(values, 'shape', '')}"
        )
    k_values = values.detach().to(torch.float64).numpy()
    if not np.all(np.isfinite(k_values)):
        raise RegistrationError(f"kernel {name!r} returned non-finite values on [-1, 1]")
    rows, scales = [], []
    for k in range(1, order + 1, 2):
        terms = weights * nodes**k * k_values
        rows.append((k, 0.5 * float(np.sum(terms)), 1.0 if k == 1 else 0.0))
        scales.append(0.5 * float(np.sum(np.abs(terms))))
    return KernelMoments(name, order, tuple(rows), tuple(scales))


def variance_factor(kernel) -> float:
    """V(K) = E[(s K(s))²] for s ~ U[-1, 1]: the factor by which the kernel multiplies a
    direction's variance against the two-point estimator's (docs/algorithms.md, KerZOO)."""
    nodes, weights = np.polynomial.legendre.leggauss(_points(kernel) + 64)
    s = torch.from_numpy(nodes)
    values = kernel(s).detach().to(torch.float64).numpy()
    return 0.5 * float(np.sum(weights * (nodes * values) ** 2))


def exact_variance_factor(kernel) -> Fraction | None:
    """V(K) in rational arithmetic for a PolynomialKernel (None for other kernels)."""
    coefs = getattr(kernel, "coefficients", None)
    if coefs is None:
        return None
    # (s K)^2 = sum_{j,k} c_j c_k s^(j+k+2); E[s^n] = 1/(n + 1) for even n, 0 for odd n
    total = Fraction(0)
    for j, cj in enumerate(coefs):
        for k, ck in enumerate(coefs):
            n = j + k + 2
            if cj and ck and n % 2 == 0:
                total += Fraction(cj) * Fraction(ck) / (n + 1)
    return total


def validate_kernel(kernel) -> KernelMoments:
    """Raise RegistrationError, with the table of moments, unless the kernel satisfies them."""
    for attr in ("name", "order"):
        if not hasattr(kernel, attr):
            raise RegistrationError(
                f"{kernel!r} is not a kernel: it has no `{attr}` attribute "
                "(a kernel has `name`, `order` and `__call__(s) -> Tensor`)"
            )
    if not callable(kernel):
        raise RegistrationError(
            f"kernel {kernel.name!r} is not callable: define __call__(s) -> Tensor"
        )
    moments = kernel_moments(kernel)
    if not moments.ok:
        raise RegistrationError(
            f"kernel {moments.name!r} fails its moment conditions:\n{moments.table()}\n"
            "Scale K so that E[s K(s)] = 1 and make the odd moments 3..order vanish."
        )
    return moments
