"""Bias and variance of the estimators against eps and the number of directions.

On a smooth function with a known gradient, f(x) = sum_i exp(c_i x_i) + (sum_i x_i)^4 / 4 in d
dimensions, each estimator is driven through its own plan/coefficients interface (what the
optimizer calls), with z from kerzoo's engine:

- bias(eps) = || E[g(eps)] - grad ||. E over z by common random numbers (the same N directions
  for every eps, compared with the eps -> 0 limit on those directions, so the sampling noise of z
  cancels); for KerZOO, E over r is taken exactly by Gauss-Legendre quadrature over the
  implementation's own weight K_a(r). The slope of log bias against log eps is the order.
- variance(eps, q) = E || g - E g ||^2 / ||grad||^2, sampled (z and r both random) with q
  directions per estimate.

    python benchmarks/estimator_quality.py --out docs/benchmarks/estimator-quality

writes estimator-quality.json, .md (slopes and tables) and .png (three log-log panels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kerzoo import engine
from kerzoo.estimators.kernel import KernelEstimator
from kerzoo.estimators.two_point import OneSided, TwoPoint
from kerzoo.seeds import derive

KEY = engine.param_key("estimator-quality")


def problem(d: int):
    c = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    x = torch.linspace(-0.3, 0.3, d, dtype=torch.float64)

    def f(v):
        return float(torch.exp(c * v).sum() + v.sum() ** 4 / 4)

    grad = c * torch.exp(c * x) + x.sum() ** 3
    return f, x, grad


def z_of(seed: int, d: int) -> torch.Tensor:
    return engine.fill_z(torch.empty(d, dtype=torch.float64), seed, KEY)


ESTIMATORS = {
    "two-point (mezo)": lambda: TwoPoint(),
    "one-sided": lambda: OneSided(),
    "kerzoo legendre3": lambda: KernelEstimator(kernel="legendre3", r_max=0.5, r_min=0.5),
    "kerzoo legendre5": lambda: KernelEstimator(kernel="legendre5", r_max=0.5, r_min=0.5),
    "kerzoo minvar5": lambda: KernelEstimator(kernel="minvar5", r_max=0.5, r_min=0.5),
    "kerzoo minvar7": lambda: KernelEstimator(kernel="minvar7", r_max=0.5, r_min=0.5),
}


def estimate(est, f, x, seeds, eps, zs) -> torch.Tensor:
    """One estimate through the estimator's interface: evaluate its plan's points, combine."""
    plan = est.plan(0, seeds, eps)
    losses = []
    for point in plan.points:
        v = x.clone()
        for i, scale in point.items():
            v += scale * zs[i]
        losses.append(f(v))
    coefs = est.coefficients(plan, losses, eps)
    return sum(cf * z for cf, z in zip(coefs, zs))


def bias(name: str, f, x, grad, eps: float, zs: list[torch.Tensor]) -> float:
    """|| E[g(eps)] - grad ||, with common random directions and, for KerZOO, exact E over r."""
    total = torch.zeros_like(x)
    if name.startswith("kerzoo"):
        est = ESTIMATORS[name]()
        a = est.radius(0)
        nodes, weights = np.polynomial.legendre.leggauss(32)
        for z in zs:  # E_r over U[-a, a]: (1/2) sum_k w_k h(a s_k)
            e_r = sum(
                0.5
                * w
                * (f(x + eps * a * s * z) - f(x - eps * a * s * z))
                / (2 * eps)
                * est.weight(a * s, a)
                for s, w in zip(nodes, weights)
            )
            total += (e_r - est.C * float(z @ grad)) * z
    else:
        est = ESTIMATORS[name]()
        for i, z in enumerate(zs):
            total += estimate(est, f, x, [i], eps, [z]) - float(z @ grad) * z
    return float((total / len(zs)).norm())


def variance(name: str, f, x, grad, eps: float, q: int, repeats: int, d: int) -> float:
    est = ESTIMATORS[name]()
    samples = []
    for k in range(repeats):
        seeds = [derive(1234, name, q, k, i) for i in range(q)]
        zs = [z_of(s, d) for s in seeds]
        samples.append(estimate(est, f, x, seeds, eps, zs))
    s = torch.stack(samples)
    return float((s - s.mean(0)).pow(2).sum(1).mean() / grad.pow(2).sum())


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=20)
    p.add_argument(
        "--directions", type=int, default=256, help="common random directions for the bias"
    )
    p.add_argument("--repeats", type=int, default=2000, help="estimates per variance figure")
    p.add_argument("--out", default="docs/benchmarks/estimator-quality")
    args = p.parse_args(argv)
    d = args.dim
    f, x, grad = problem(d)
    epsilons = [0.4, 0.2, 0.1, 0.05, 0.025]
    qs = [1, 2, 4, 8, 16, 32]
    zs = [z_of(derive(7, "bias", i), d) for i in range(args.directions)]
    result = {
        "dim": d,
        "epsilons": epsilons,
        "qs": qs,
        "grad_norm": float(grad.norm()),
        "estimators": {},
    }
    for name in ESTIMATORS:
        b = [bias(name, f, x, grad, e, zs) for e in epsilons]
        v_eps = [variance(name, f, x, grad, e, 1, args.repeats // 4, d) for e in epsilons]
        v_q = [variance(name, f, x, grad, 1e-2, q, max(200, args.repeats // q), d) for q in qs]
        result["estimators"][name] = {
            "bias": b,
            "bias_slope": slope(epsilons, b),
            "variance_eps": v_eps,
            "variance_q": v_q,
            "variance_q_slope": slope(qs, v_q),
        }
        print(
            f"{name:18s} bias slope {slope(epsilons, b):5.2f}  variance ~ q^{slope(qs, v_q):.2f}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write_markdown(out.with_suffix(".md"), result, args)
    plot(out.with_suffix(".png"), result)


def write_markdown(path: Path, r: dict, args) -> None:
    import os
    import platform

    lines = [
        "# Estimator quality: bias and variance",
        "",
        f"Command: `python benchmarks/estimator_quality.py --dim {args.dim} --directions "
        f"{args.directions} --repeats {args.repeats}`  ",
        f"Machine: {platform.machine()} {os.cpu_count()}-core VM, torch {torch.__version__} "
        "(float64 throughout).",
        "",
        f"Function: f(x) = Σ exp(c_i x_i) + (Σ x_i)⁴/4 in d = {r['dim']}, c from 0.5 to 1.5, x "
        f"from −0.3 to 0.3; ‖∇f‖ = {r['grad_norm']:.3f}. Each estimator runs through its own "
        "`plan` / `coefficients` (the optimizer's path), z from kerzoo's engine. Bias: common "
        f"random directions ({args.directions}) against the ε → 0 limit on the same directions, "
        "and for KerZOO the exact expectation over r (32-point Gauss–Legendre on the "
        "implementation's K_a); a = r_max = 0.5. Variance: E‖g − E g‖² / ‖∇f‖², sampled over z "
        "and r.",
        "",
        "| estimator | forwards per direction | bias slope (log-log in ε) | bias at ε = 0.4 / 0.1 "
        "/ 0.025 | variance at q = 1 (ε = 0.01) | ratio to two-point | V(K) = E[(sK)²] | "
        "variance ∝ q^k, k = |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fwd = {
        "two-point (mezo)": "2",
        "one-sided": "1 (+1 per step)",
        "kerzoo legendre3": "2",
        "kerzoo legendre5": "2",
        "kerzoo minvar5": "2",
        "kerzoo minvar7": "2",
    }
    from kerzoo.kernels.moments import variance_factor
    from kerzoo.plugins import get_registry

    base = r["estimators"]["two-point (mezo)"]["variance_q"][0]
    for name, e in r["estimators"].items():
        b = e["bias"]
        kernel = name.split()[-1] if name.startswith("kerzoo") else None
        vk = f"{variance_factor(get_registry('kernels')[kernel]):.2f}" if kernel else "1"
        lines.append(
            f"| {name} | {fwd[name]} | **{e['bias_slope']:.2f}** | {b[0]:.2e} / {b[2]:.2e} / "
            f"{b[4]:.2e} | {e['variance_q'][0]:.1f} | {e['variance_q'][0] / base:.2f} | {vk} | "
            f"{e['variance_q_slope']:.2f} |"
        )
    lines += [
        "",
        "Reading: the two-point estimator's bias falls as ε², KerZOO's (legendre3) as ε⁴ and "
        "legendre5's as ε⁶, as docs/algorithms.md (KerZOO) states. The one-sided estimator's bias "
        "also falls as ε² here: its ε term, (ε/2) z zᵀHz, is odd in z and vanishes in expectation "
        "for Gaussian z, though not per sample, so its variance grows with ε (middle panel) while "
        "the two-point's stays flat. KerZOO pays for its lower bias in variance: the kernel "
        "weight multiplies each difference, so at the same ε and q its variance is larger than "
        "the two-point estimator's by about V(K) = E[(s K(s))²] for s ~ U[-1, 1] (the two "
        "columns). minvar5 and minvar7, the least-variance odd polynomials of degree 5 and 7 "
        "with the order-3 conditions (docs/algorithms.md, KerZOO), keep the ε⁴ bias (here "
        "with a smaller constant than legendre3's) and cut legendre3's variance by the ratio of "
        "their V(K). Variance falls as 1/q for every estimator. Whether the lower bias pays in "
        "fine-tuning, where ε = 1e-3, is what the convergence race measures (race-cpu.md).",
        "",
        "![bias and variance](estimator-quality.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, e in r["estimators"].items():
        axes[0].loglog(
            r["epsilons"], e["bias"], "o-", label=f"{name} (slope {e['bias_slope']:.2f})"
        )
        axes[1].loglog(r["epsilons"], e["variance_eps"], "o-", label=name)
        axes[2].loglog(r["qs"], e["variance_q"], "o-", label=name)
    axes[0].set(xlabel="eps", ylabel="|| E g - grad ||", title="bias")
    axes[1].set(xlabel="eps", ylabel="E||g - Eg||² / ||grad||²", title="variance, q = 1")
    axes[2].set(
        xlabel="directions q", ylabel="E||g - Eg||² / ||grad||²", title="variance, eps = 0.01"
    )
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
