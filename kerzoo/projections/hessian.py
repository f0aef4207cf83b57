"""Built-in plugin: HiZOO's diagonal-Hessian preconditioned directions ("hessian"), and the
"three-point" estimator that evaluates L(theta) beside the two-point pair.

docs/algorithms.md (HiZOO), as in HiZOO's paper (Zhao et al., ICLR 2025) and its code: a diagonal
Hessian estimate D (one full-size buffer per tensor, initialised to ``init``), directions
Z_i = D^{-1/2} (.) z_i, and after each step, for every direction i with points theta +- s z_i
and the centre L0 = L(theta):

    D <- (1 - alpha) D + alpha * |L+ + L- - 2 L0| / (2 s^2) * D (.) z_i^2.

Because D multiplies itself, the buffer kept is w = D^{-1/2} and the update is multiplicative:
w <- w / sqrt(1 - alpha + alpha h_i z_i^2), with h_i = |L+ + L- - 2 L0| / (2 s^2): D stays > 0
and no division by a small D happens. The update theta -= lr g_i w (.) z_i uses the same w as
the perturbation (needed for an exact fused restore), and w changes after the update.
Memory: one float32 buffer per trainable tensor (float64 for float64 parameters), plus a
transient of one tensor while a direction is applied. Defaults: alpha = 1e-8 (HiZOO's full
fine-tuning setting; its LoRA runs use 1e-6), init = 1.
"""

from __future__ import annotations

import torch

from .. import engine
from ..estimators.base import Plan
from ..estimators.two_point import TwoPoint
from ..hookspecs import hookimpl
from .base import Projection
from .dense import Z_MAX


class ThreePoint(TwoPoint):
    """Central difference over theta +- eps z_i, and L(theta) as well (first): 2q + 1 forwards."""

    name = "three-point"
    defaults = {"directions": 1}

    def plan(self, step, seeds, eps):
        return Plan(seeds, [{}, *super().plan(step, seeds, eps).points])

    def coefficients(self, plan, losses, eps):
        return super().coefficients(plan, losses[1:], eps)


def curvatures(points, losses) -> dict[int, tuple[float, float]]:
    """Each direction i evaluated at +-s beside the centre: (s, |L+ + L- - 2 L0| / (2 s^2))."""
    center = [loss for pt, loss in zip(points, losses) if not pt]
    if not center:
        raise ValueError(
            "projection 'hessian' needs L(theta) at every step, and the estimator did not "
            "evaluate it: use estimator 'three-point' (the hizoo preset does)"
        )
    l0 = center[0]
    plus, minus = {}, {}
    for pt, loss in zip(points, losses):
        if len(pt) == 1:
            ((i, s),) = pt.items()
            (plus if s > 0 else minus)[i] = (s, loss)
    out = {}
    for i, (s, lp) in plus.items():
        if i in minus and abs(minus[i][0] + s) <= 1e-12 * abs(s):
            out[i] = (s, abs(lp + minus[i][1] - 2.0 * l0) / (2.0 * s * s))
    return out


class Hessian(Projection):
    """HiZOO: z preconditioned by the inverse square root of a diagonal Hessian estimate."""

    name = "hessian"
    defaults = {"alpha": 1e-8, "init": 1.0, "dist": "gaussian"}
    shardable = True
    needs_center = True  # learns from L(theta): checked against the estimator at build

    def __init__(self, **options):
        super().__init__(**options)
        if not 0 <= float(self.options["alpha"]) < 1 or not float(self.options["init"]) > 0:
            raise ValueError(
                f"projection 'hessian': need 0 <= alpha < 1 and init > 0, got alpha="
                f"{self.options['alpha']}, init={self.options['init']}"
            )

    def setup(self, params, base_seed):
        self.params = list(params)
        w0 = float(self.options["init"]) ** -0.5
        self.w = {
            p.name: torch.full(
                p.tensor.shape,
                w0,
                device=p.tensor.device,
                dtype=torch.float64 if p.tensor.dtype == torch.float64 else torch.float32,
            )
            for p in self.params
        }

    def _z(self, p, coefs, seeds) -> torch.Tensor:
        w = self.w[p.name]
        z = torch.zeros_like(w)
        engine.add_z_multi(z, list(coefs), list(seeds), p.key, p.offset, self.options["dist"])
        return z.mul_(w)

    def add(self, p, target, coefs, seeds, rounding="nearest", rounding_seed=0):
        """target += w (.) sum_i c_i z_i, one rounding (to nearest) per element."""
        step = self._z(p, coefs, seeds)
        if target.dtype == step.dtype:
            target.add_(step)
        else:
            target.copy_(target.to(step.dtype).add_(step))

    def move(self, p, target, restore, new):
        """Restore and perturb: w is fixed within a step, so w (.) (c1 z1 + c2 z2) is one pass."""
        self.add(p, target, [restore[0], new[0]], [restore[1], new[1]])

    def end_step(self, step, seeds, plan, losses, coefs):
        alpha = float(self.options["alpha"])
        if alpha == 0.0:
            return
        for i, (_s, h) in sorted(curvatures(plan.points, losses).items()):
            for p in self.params:
                w = self.w[p.name]
                z = engine.fill_z(
                    torch.empty_like(w), seeds[i], p.key, p.offset, self.options["dist"]
                )
                w.div_(z.square_().mul_(alpha * h).add_(1.0 - alpha).sqrt_())

    def bounds(self, params):
        """|w (.) z| <= max|w| Z_MAX; a non-finite w gives a non-finite bound."""
        from ..perturb.guard import peaks

        z = Z_MAX[self.options["dist"]]
        return [z * peak for peak in peaks([self.w[p.name] for p in params])]

    def hessian(self, p) -> torch.Tensor:
        """The current diagonal Hessian estimate D = w^{-2} of tensor ``p``."""
        return self.w[p.name].pow(-2)

    def state_dict(self):
        return {"w": {k: v.clone() for k, v in self.w.items()}}

    def load_state_dict(self, state):
        for k, v in state["w"].items():
            self.w[k].copy_(v)

    def memory_bytes(self):
        return sum(v.numel() * v.element_size() for v in self.w.values())


@hookimpl
def kerzoo_register_estimators(register):
    register(ThreePoint)


@hookimpl
def kerzoo_register_projections(register):
    register(Hessian)
