"""Built-in plugin: the update rules of the ZO-SGD family and ZO-Adam.

The math: docs/algorithms.md, Update rules.
"""

from __future__ import annotations

import math

import torch

from ..hookspecs import hookimpl
from .base import Update

_LIMIT32 = float(torch.finfo(torch.float32).max) / 2  # the buffers are float32 (or float64)


class SGD(Update):
    """theta <- theta - lr g (decoupled weight decay is the optimizer's, skipping 1-D tensors)."""

    name = "sgd"

    def linear(self, coefs, lr):
        return [-lr * g for g in coefs]


class Sign(Update):
    """theta <- theta - lr sign(g_i) z_i, averaged over directions (ZO-SGD-Sign)."""

    name = "sign"

    def linear(self, coefs, lr):
        q = len(coefs)
        return [-lr * math.copysign(1.0, g) / q if g != 0 else 0.0 for g in coefs]


class Momentum(Update):
    """m <- beta m + g; theta <- theta - lr m. Holds one full-size buffer per tensor (fp32)."""

    name = "momentum"
    defaults = {"beta": 0.9}
    memory = "1 buffer per tensor"
    trial = True

    def safe(self, ctx, p, z, theta, state, limit):
        """|m'| <= beta |m| + |g|, |p'| <= |p| + lr |m'| (g's bound from the projection's)."""
        m = float(self.options["beta"]) * state.get("momentum", 0.0)
        m += z * sum(map(abs, ctx.for_tensor(p, ctx.coefs)))
        return m < _LIMIT32 and theta + ctx.lr(p) * m < limit

    def apply(self, ctx, replay=None):
        beta = float(self.options["beta"])
        for p in ctx.params:
            st = ctx.state(p)
            if "momentum" not in st:
                st["momentum"] = torch.zeros(
                    p.tensor.shape,
                    dtype=torch.float32 if p.tensor.dtype != torch.float64 else torch.float64,
                    device=p.tensor.device,
                )
            m = st["momentum"]
            m.mul_(beta)
            ctx.projection.add(p, m, ctx.for_tensor(p, ctx.coefs), ctx.seeds)
            p.tensor.add_((-ctx.lr(p) * m).to(p.tensor.dtype))


class MomentumReplay(Update):
    """Momentum with no buffer: m_t = sum_{k<h} beta^k g_{t-k}, rebuilt each step from the last h
    steps' (seed, coefficient) records; theta <- theta - lr m_t. Equals `momentum` while t < h."""

    name = "momentum-replay"
    defaults = {"beta": 0.9, "history": 32}
    memory = "h x q coefficients per tensor"
    replays_directions = True
    trial = True

    def safe(self, ctx, p, z, theta, state, limit):
        """|p'| <= |p| + lr z sum_k beta^k sum_i |c_{t-k,i}| over the history kept."""
        past = [ctx.for_tensor(p, ctx.coefs)]
        past += [c for c, _ in ctx.state(p).get("history", [])[: self.history - 1]]
        step = sum(self.beta**k * sum(map(abs, cs)) for k, cs in enumerate(past))
        return theta + ctx.lr(p) * z * step < limit

    def __init__(self, **options):
        super().__init__(**options)
        self.beta, self.history = float(self.options["beta"]), int(self.options["history"])
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"update 'momentum-replay': beta must be in [0, 1), got {self.beta}")
        if self.history < 1:
            raise ValueError(
                f"update 'momentum-replay': history must be >= 1 step, got {self.history}"
            )

    def apply(self, ctx, replay=None):
        passes: dict[tuple, tuple[list, list]] = {}  # seeds -> (items, their coefficients)
        for p in ctx.params:
            st = ctx.state(p)
            past = st.setdefault("history", [])  # newest first: (coefs for p, seeds)
            past.insert(0, (ctx.for_tensor(p, ctx.coefs), list(ctx.seeds)))
            del past[self.history :]
            lr, cs, ss = ctx.lr(p), [], []
            for k, (coefs, seeds) in enumerate(past):
                w = -lr * self.beta**k
                cs += [w * c for c in coefs]
                ss += seeds
            items, coefs = passes.setdefault(tuple(ss), ([], []))
            items.append((p, p.tensor))
            coefs.append(tuple(cs))
        for ss, (items, coefs) in passes.items():  # one call, a row per tensor
            rows: dict[tuple, int] = {}
            of = [rows.setdefault(cs, len(rows)) for cs in coefs]
            ctx.projection.add_table(items, list(rows), of, list(ss))


class Adam(Update):
    """Adam on the estimate g: two full-size buffers per tensor (fp32)."""

    name = "adam"
    defaults = {"beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8}
    memory = "2 buffers per tensor"
    trial = True

    def safe(self, ctx, p, z, theta, state, limit):
        """With G >= |g|: |m'| <= b1 |m| + (1 - b1) G, v' <= b2 v + (1 - b2) G^2, and per
        element |m'| / (sqrt(v' / (1 - b2^t)) + e) <= b1 |m| / e + (1 - b1) sqrt((1 - b2^t) /
        (1 - b2)) (as v' >= (1 - b2) g^2): the step is lr / (1 - b1^t) times that at most."""
        b1, b2, e = (
            float(self.options["beta1"]),
            float(self.options["beta2"]),
            float(self.options["adam_eps"]),
        )
        t = ctx.state(p).get("t", 0) + 1
        g = z * sum(map(abs, ctx.for_tensor(p, ctx.coefs)))
        m0, v0 = state.get("exp_avg", 0.0), state.get("exp_avg_sq", 0.0)
        m, v = b1 * m0 + (1 - b1) * g, b2 * v0 + (1 - b2) * g * g
        ratio = b1 * m0 / e + (1 - b1) * math.sqrt((1 - b2**t) / (1 - b2))
        step = ctx.lr(p) / (1 - b1**t) * ratio
        return (
            g * g < _LIMIT32
            and v / (1 - b2**t) < _LIMIT32
            and m / e < _LIMIT32
            and theta + step < limit
        )

    def apply(self, ctx, replay=None):
        b1, b2, e = (
            float(self.options["beta1"]),
            float(self.options["beta2"]),
            float(self.options["adam_eps"]),
        )
        for p in ctx.params:
            st = ctx.state(p)
            if "exp_avg" not in st:
                dt = torch.float64 if p.tensor.dtype == torch.float64 else torch.float32
                st["exp_avg"] = torch.zeros(p.tensor.shape, dtype=dt, device=p.tensor.device)
                st["exp_avg_sq"] = torch.zeros_like(st["exp_avg"])
                st["t"] = 0
            st["t"] += 1
            g = ctx.estimate(p)  # the one temporary: reused below for the step itself
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            # step = -lr m_hat / (sqrt(v_hat) + e), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
            step = torch.div(v, 1 - b2 ** st["t"], out=g).sqrt_().add_(e).reciprocal_().mul_(m)
            step.mul_(-ctx.lr(p) / (1 - b1 ** st["t"]))
            p.tensor.add_(step if step.dtype == p.tensor.dtype else step.to(p.tensor.dtype))


class AdamReplay(Update):
    """Adam with no buffers (after AdaMeZO, arXiv 2605.00650): both moments rebuilt each step
    from the last h steps' (seed, coefficient) records,

        m_t = (1 - b1) sum_{k<h} b1^k g_{t-k},   v_t = (1 - b2) sum_{k<h} b2^k g_{t-k}^2,

    normalised by the weights' sum 1 - b^min(t, h) (Adam's bias correction while t <= h, where it
    equals ``adam``; beyond, a window of the last h estimates). Work: h estimates materialised
    per tensor per step (three temporaries the tensor's size, one tensor at a time)."""

    name = "adam-replay"
    defaults = {"beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8, "history": 32}
    memory = "h x q coefficients per tensor"
    replays_directions = True
    trial = True

    def safe(self, ctx, p, z, theta, state, limit):
        """m^ = sum_k a_k g_k and v^ = sum_k b_k g_k^2 with weights summing to 1, so by Cauchy-
        Schwarz |m^| / sqrt(v^) <= sqrt(sum_k a_k^2 / b_k): |p'| <= |p| + lr times that, and
        v^ <= G^2 with G >= |g_k| from the projection's bound."""
        past = [ctx.for_tensor(p, ctx.coefs)]
        past += [c for c, _ in ctx.state(p).get("history", [])[: self.history - 1]]
        big = max(z * sum(map(abs, cs)) for cs in past)
        kept = min(ctx.state(p).get("t", 0) + 1, self.history, len(past))
        a = [(1 - self.b1) * self.b1**k / (1 - self.b1**kept) for k in range(kept)]
        b = [(1 - self.b2) * self.b2**k / (1 - self.b2**kept) for k in range(kept)]
        ratio = math.sqrt(sum(x * x / y for x, y in zip(a, b)))
        return big * big < _LIMIT32 and theta + ctx.lr(p) * ratio < limit

    def __init__(self, **options):
        super().__init__(**options)
        self.b1, self.b2 = float(self.options["beta1"]), float(self.options["beta2"])
        self.history = int(self.options["history"])
        for key, b in (("beta1", self.b1), ("beta2", self.b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"update 'adam-replay': {key} must be in [0, 1), got {b}")
        if self.history < 1:
            raise ValueError(f"update 'adam-replay': history must be >= 1 step, got {self.history}")

    def apply(self, ctx, replay=None):
        b1, b2, e = self.b1, self.b2, float(self.options["adam_eps"])
        for p in ctx.params:
            st = ctx.state(p)
            past = st.setdefault("history", [])  # newest first: (coefs for p, seeds)
            past.insert(0, (ctx.for_tensor(p, ctx.coefs), list(ctx.seeds)))
            del past[self.history :]
            st["t"] = st.get("t", 0) + 1
            m = v = None
            for k, (coefs, seeds) in enumerate(past):
                g = ctx.projection.materialize(p, coefs, seeds)
                if m is None:
                    m, v = torch.zeros_like(g), torch.zeros_like(g)
                m.add_(g, alpha=(1 - b1) * b1**k)
                v.addcmul_(g, g, value=(1 - b2) * b2**k)
            kept = min(st["t"], self.history)
            step = v.div_(1 - b2**kept).sqrt_().add_(e).reciprocal_().mul_(m)
            step.mul_(-ctx.lr(p) / (1 - b1**kept))
            p.tensor.add_(step if step.dtype == p.tensor.dtype else step.to(p.tensor.dtype))


class PrimalAveraging(Update):
    """Primal averaging (the public KerZOO code's update): an SGD sequence c and the averaged
    iterate theta, at which the estimates are taken,

        c <- c - lr g(theta),   theta <- c / beta_t + (1 - 1 / beta_t) theta,   beta_t = 1 + t rate

    (t = 0, 1, ...: the first step is SGD's),

    with c = theta at the start. Holds c, one full-size fp32 buffer per tensor (fp64 for fp64),
    and builds the estimate once per tensor per step (a temporary): about 3x the model's memory
    during the update, 2x between steps."""

    name = "primal-averaging"
    defaults = {"rate": 1.0 / 6.0}
    memory = "1 buffer per tensor (the SGD sequence c)"
    trial = True

    def safe(self, ctx, p, z, theta, state, limit):
        """|c'| <= |c| + lr G (c starts as p), and p' averages p and c': |p'| <= max(|p|, |c'|)."""
        c = state.get("sequence", theta) + ctx.lr(p) * z * sum(
            map(abs, ctx.for_tensor(p, ctx.coefs))
        )
        return c < min(limit, _LIMIT32) and theta < limit

    def __init__(self, **options):
        super().__init__(**options)
        self.rate = float(self.options["rate"])
        if not self.rate >= 0.0:
            raise ValueError(
                f"update 'primal-averaging': rate must be >= 0 (beta_t = 1 + t rate), got "
                f"{self.rate}"
            )

    def apply(self, ctx, replay=None):
        for p in ctx.params:
            st = ctx.state(p)
            if "sequence" not in st:
                dt = torch.float64 if p.tensor.dtype == torch.float64 else torch.float32
                st["sequence"] = p.tensor.detach().to(dt, copy=True)
                st["t"] = 0
            c = st["sequence"]
            c.add_(ctx.estimate(p), alpha=-ctx.lr(p))
            w = 1.0 / (1.0 + st["t"] * self.rate)  # t: this tensor's steps before this one
            st["t"] += 1
            avg = p.tensor.to(c.dtype).mul_(1.0 - w).add_(c, alpha=w)
            p.tensor.copy_(avg)


class Conservative(Update):
    """Keep the best of theta, theta - lr g, theta + lr g by loss (3 more forwards; ZO-SGD-Cons)."""

    name = "conservative"

    def apply(self, ctx, replay=None):
        # losses at theta, theta - lr g, theta + lr g, each tensor with its group's lr; when
        # replaying, evaluate_at makes the same moves (same rounding in place) and returns None
        neg = [-g for g in ctx.coefs]
        losses = [
            ctx.evaluate_at([0.0] * len(neg)),
            ctx.evaluate_at(neg, ctx.lr),
            ctx.evaluate_at(ctx.coefs, ctx.lr),
        ]
        if replay is not None:
            sign = replay["sign"]
        else:
            sign = min(zip(losses, (0, -1, 1)), key=lambda t: t[0])[1]
            ctx.record["losses"] = losses
        ctx.record["sign"] = sign
        if sign:
            moves = [(p, [sign * ctx.lr(p) * g for g in ctx.coefs]) for p in ctx.params]
            ctx.check(moves)  # nothing written if one would make a tensor non-finite
            for p, cs in moves:
                ctx.add(p, cs)


@hookimpl
def kerzoo_register_updates(register):
    for rule in (
        SGD,
        Sign,
        Momentum,
        MomentumReplay,
        Adam,
        AdamReplay,
        PrimalAveraging,
        Conservative,
    ):
        register(rule)
