"""Built-in plugin: P-GAP's projected gradient-aligned perturbations ("aligned"); 1-D tensors dense.

docs/algorithms.md (P-GAP). Per 2-D weight W (m x n) with gradient G, a rank-r subspace U (m x r),
V (n x r) from an estimated gradient, and directions Z = sqrt(mn)/r U C V^T whose r x r core is
aligned with the projected gradient estimate H ~ U^T G V:

    C = C_init - [(<H, C_init> - xi sqrt(delta) ||H||) / ||H||^2] H,    C_init ~ N(0, I_{r x r}),

so <H, C> = xi sqrt(delta) ||H|| exactly, with xi = +-1 per direction (shared by all tensors, so
the aligned parts add up coherently in the model-wide directional derivative).

What is implemented (the paper's refresh rule was not available; docs/projections.md says why):
- Cycles of ``refresh`` steps. The first ``probe_steps`` steps of a cycle are ordinary steps along
  rank-1 probes Z = a b^T, a ~ N(0, I_m), b ~ N(0, I_n) (E[Z (.) Z] = 1, LOZO-like). No extra
  forward: the probe's estimate g_j is the step's own coefficient, and the step updates W.
- After them, S = sum_j g_j a_j b_j^T (E[S] = probe_steps * G) has rank <= p (p probes); its SVD
  comes from QRs, A = Qa Ra, B = Qb Rb, and the SVD of the p x p core Ra diag(g) Rb^T = W s Y^T:
  U = Qa W[:, :r], V = Qb Y[:, :r], H = diag(s[:r]) / probe_steps. A and B are regenerated from
  the probes' seeds, so the sketch holds p scalars per matrix between steps, not A and B.
- Every later step of the cycle refines H by an exponential average of the step's estimate of
  the projected gradient, corrected for the alignment: with h = H / ||H||, E[<H_true, C> C] =
  delta <H_true, h> h + (I - h h^T) H_true, so C' = C + (1/delta - 1) <C, h> h makes
  sum_i g_i C'_i / (sqrt(mn)/r) unbiased for U^T G V. H <- ema H + (1 - ema) that.
With delta = 1 (the default) the step's estimate stays unbiased within the subspace and
E[Z (.) Z] matches a dense Gaussian's; delta > 1 leans every direction towards H.
Memory: U, V, H: (m + n) r + r^2 floats per matrix, and p coefficients during a probe phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..hookspecs import hookimpl
from ..seeds import derive
from .dense import Z_MAX
from .lowrank import LowRankDirections, gaussian


def align(c_init: torch.Tensor, h: torch.Tensor, xi: float, delta: float) -> torch.Tensor:
    """C = C_init - [(<H, C_init> - xi sqrt(delta) ||H||) / ||H||^2] H; C_init itself when H = 0."""
    hh = float((h * h).sum())
    if not hh > 0.0:
        return c_init
    return c_init - ((float((h * c_init).sum()) - xi * math.sqrt(delta) * math.sqrt(hh)) / hh) * h


def debias(c: torch.Tensor, h: torch.Tensor, delta: float) -> torch.Tensor:
    """C' = C + (1/delta - 1) <C, h> h with h = H/||H||: E[<X, C> C'] = X for every X."""
    norm = float(h.norm())
    if not norm > 0.0:
        return c
    unit = h / norm
    return c + (1.0 / delta - 1.0) * float((c * unit).sum()) * unit


def sketch_svd(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, r: int):
    """Top-r SVD of S = A diag(g) B^T (A: m x p, B: n x p) without forming S: returns U, s, V."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b)
    w, s, yt = torch.linalg.svd(ra @ torch.diag(g) @ rb.T)
    r = min(r, s.shape[0])
    return qa @ w[:, :r], s[:r], qb @ yt.T[:, :r]


def xi_of(seed: int) -> float:
    return 1.0 if derive(seed, "xi") & 1 else -1.0


class Aligned(LowRankDirections):
    """P-GAP: gradient-aligned directions in a rank-r subspace estimated from rank-1 probe steps."""

    name = "aligned"
    defaults = {"rank": 8, "refresh": 200, "probe_steps": 16, "delta": 1.0, "ema": 0.9}
    shardable = (
        True  # bases and estimates span the whole matrix; a shard of rows takes its rows of U
    )

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        if int(o["probe_steps"]) < 1 or int(o["refresh"]) <= int(o["probe_steps"]):
            raise ValueError(
                f"projection 'aligned': need 1 <= probe_steps < refresh, got probe_steps="
                f"{o['probe_steps']}, refresh={o['refresh']}"
            )
        if not float(o["delta"]) > 0 or not 0 <= float(o["ema"]) < 1:
            raise ValueError(
                f"projection 'aligned': need delta > 0 and 0 <= ema < 1, got delta={o['delta']}, "
                f"ema={o['ema']}"
            )

    def setup(self, params, base_seed):
        self.matrices = [p for p in params if len(p.whole_shape) == 2]
        for p in self.matrices:
            p.rows()  # a shard must be a block of rows: refused here, not mid-step
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.built = -1  # cycle whose subspace is in self.bases
        self.sketch_cycle = -1  # cycle the probes below belong to
        self.sketch_seeds: list[int] = []
        self.sketch_coefs: dict[str, list[float]] = {}
        self.sketch_steps = 0
        self.probing = True

    # -- schedule -------------------------------------------------------------------------
    def begin_step(self, step):
        cycle, phase = divmod(step, int(self.options["refresh"]))
        self.probing = phase < int(self.options["probe_steps"])
        if self.probing and self.sketch_cycle != cycle:
            self.sketch_cycle, self.sketch_seeds, self.sketch_steps = cycle, [], 0
            self.sketch_coefs = {p.name: [] for p in self.matrices}
        if not self.probing and self.built != cycle:
            self._build()
            self.built = cycle

    def _probe(self, p, seed):
        m, n = p.whole_shape
        ab = gaussian((m + n,), seed, p.key, torch.float64, p.tensor.device)
        return ab[:m], ab[m:]

    def _build(self):
        steps = max(1, self.sketch_steps)
        self.bases = {}
        for p in self.matrices:
            r = max(1, min(int(self.options["rank"]), *p.whole_shape))
            coefs = self.sketch_coefs.get(p.name, [])
            if not coefs:  # no probe finished (all skipped): a random subspace, no alignment yet
                a = gaussian(
                    (p.whole_shape[0], r), derive(self.sketch_cycle, "U"), p.key, torch.float64
                )
                b = gaussian(
                    (p.whole_shape[1], r), derive(self.sketch_cycle, "V"), p.key, torch.float64
                )
                g = torch.zeros(r, dtype=torch.float64)
            else:
                pairs = [self._probe(p, s) for s in self.sketch_seeds]
                a = torch.stack([x for x, _ in pairs], 1)
                b = torch.stack([y for _, y in pairs], 1)
                g = torch.tensor(coefs, dtype=torch.float64, device=a.device)
            u, s, v = sketch_svd(a, b, g, r)
            dev = p.tensor.device
            self.bases[p.name] = (
                u.float().to(dev),
                v.float().to(dev),
                (torch.diag(s) / steps).float().to(dev),
            )
        self.sketch_seeds, self.sketch_coefs, self.sketch_steps = [], {}, 0

    # -- directions -----------------------------------------------------------------------
    def cores(self, p, seeds: Sequence[int]) -> list[torch.Tensor]:
        """The aligned r x r cores C_i of the directions ``seeds`` for matrix ``p``."""
        u, _, h = self.bases[p.name]
        r = u.shape[1]
        delta = float(self.options["delta"])
        return [
            align(gaussian((r, r), sd, p.key, device=u.device), h, xi_of(sd), delta) for sd in seeds
        ]

    def factors(self, p, coefs, seeds):
        """(c, U, S, V) of sum_i coefs[i] Z_i over the rows ``p`` holds (all, unless a shard)."""
        if len(p.whole_shape) != 2:
            return None
        rows = p.rows()
        if self.probing:
            pairs = [self._probe(p, sd) for sd in seeds]
            a = torch.stack([c * x for c, (x, _) in zip(coefs, pairs)], 1).float()
            b = torch.stack([y for _, y in pairs], 1).float()
            return 1.0, a[rows], torch.eye(len(seeds), device=a.device), b
        u, v, _ = self.bases[p.name]
        core = sum(c * ci for c, ci in zip(coefs, self.cores(p, seeds)))
        m, n = p.whole_shape
        return math.sqrt(m * n) / u.shape[1], u[rows], core, v

    def bounds(self, params):
        """Probing: |a_j b_k| <= 7 * 7. Aligned: |Z_jk| <= sqrt(mn)/r |C|_F (U, V orthonormal
        columns), and |C|_F <= |C_init|_F + |<h, C_init> - xi sqrt(delta)| <= 2 * 7r +
        sqrt(delta); non-finite bases (U, V, H gone non-finite) give their non-finite peak.
        1-D tensors: dense z."""
        from ..perturb.guard import peaks

        z, delta = Z_MAX["gaussian"], float(self.options["delta"])
        held = [] if self.probing else [p for p in params if p.name in self.bases]
        tops = peaks([t for p in held for t in self.bases[p.name]])
        bad = {
            p.name: next((x for x in tops[3 * i : 3 * i + 3] if not math.isfinite(x)), None)
            for i, p in enumerate(held)
        }
        out = []
        for p in params:
            if len(p.whole_shape) != 2:
                out.append(z)
            elif p.name not in bad:
                out.append(z * z)
            elif bad[p.name] is not None:
                out.append(bad[p.name])
            else:
                r = self.bases[p.name][0].shape[1]
                out.append(math.sqrt(math.prod(p.whole_shape)) / r * (2 * z * r + math.sqrt(delta)))
        return out

    # -- learning the subspace from the step's estimate -----------------------------------
    def end_step(self, step, seeds, plan, losses, coefs):
        table = getattr(plan, "table", None)
        index = {id(i.tensor): t for t, i in enumerate(table.infos)} if table is not None else {}
        for p in self.matrices:
            t = index.get(id(p.tensor))
            cs = list(coefs) if t is None else table.estimate_coefs(t, coefs, clipped=False)
            if self.probing:
                self.sketch_coefs.setdefault(p.name, []).extend(cs)
                continue
            u, v, h = self.bases[p.name]
            m, n = p.whole_shape
            scale = math.sqrt(m * n) / u.shape[1]
            delta = float(self.options["delta"])
            est = sum(c * debias(ci, h, delta) for c, ci in zip(cs, self.cores(p, seeds))) / scale
            ema = float(self.options["ema"])
            self.bases[p.name] = (u, v, ema * h + (1.0 - ema) * est)
        if self.probing:
            self.sketch_seeds.extend(int(s) for s in seeds)
            self.sketch_steps += 1

    # -- state ----------------------------------------------------------------------------
    def state_dict(self):
        return {
            "bases": {k: tuple(t.clone() for t in b) for k, b in self.bases.items()},
            "built": self.built,
            "sketch_cycle": self.sketch_cycle,
            "sketch_seeds": list(self.sketch_seeds),
            "sketch_coefs": {k: list(v) for k, v in self.sketch_coefs.items()},
            "sketch_steps": self.sketch_steps,
        }

    def load_state_dict(self, state):
        self.bases = {k: tuple(t.clone() for t in b) for k, b in state["bases"].items()}
        self.built, self.sketch_cycle = int(state["built"]), int(state["sketch_cycle"])
        self.sketch_seeds = [int(s) for s in state["sketch_seeds"]]
        self.sketch_coefs = {k: list(v) for k, v in state["sketch_coefs"].items()}
        self.sketch_steps = int(state["sketch_steps"])

    def memory_bytes(self):
        held = sum(t.numel() * t.element_size() for b in self.bases.values() for t in b)
        return held + 8 * (len(self.sketch_seeds) + sum(len(v) for v in self.sketch_coefs.values()))


@hookimpl
def kerzoo_register_projections(register):
    register(Aligned)
