"""Perturb a linear layer's output instead of its weight (``perturb="outputs"``).

docs/algorithms.md (SubZero): for y = x W^T + b and a low-rank direction W' = W + c U S V^T,

    y' = x W'^T + b = y + c ((x V) S^T) U^T,

so a forward at a perturbed point needs no pass over W at all: the layer runs unchanged and a
forward hook adds the rank-r term in place (addmm), costing O(tokens (m + n) r) flops and one
write of the output (tokens x m), against a copy of W and a pass over it (2 m n writes) for the
on-the-fly transient: it writes less when tokens < 2 n, and needs no m x n workspace at all.
W is never written while perturbed, so the restore is exact in every dtype.

Applies to every ``torch.nn.Linear`` whose weight's direction is low-rank (the projection's
``factors`` gives (c, U, S, V)); other tensors (biases, norms, embeddings, a dense projection)
get the on-the-fly transient of kerzoo.perturb.onthefly. The added term is computed in float32
(float64 for float64 outputs) and rounded once into the output's dtype.
"""

from __future__ import annotations

import torch

from ..projections.base import Projection
from .base import named
from .onthefly import OnTheFly


class OutputPerturbation(OnTheFly):
    """On-the-fly hooks that perturb nn.Linear outputs by their low-rank direction."""

    mode = "outputs"

    def __init__(self, module, infos, projection):
        self._stack: list[
            tuple[int, tuple | None]
        ] = []  # per active forward: (tensors swapped, factors)
        super().__init__(module, infos, projection)
        # the transient workspace: the largest module's tensors that still need one (a projection
        # that gives low-rank factors gives them for 2-D tensors, so a Linear weight needs none)
        lowrank = type(projection).factors is not Projection.factors
        self._ws_size = {}
        for m in module.modules():
            self._reserve(
                p
                for p in m._parameters.values()
                if p is not None
                and id(p) in self.index
                and not (lowrank and isinstance(m, torch.nn.Linear) and p is m.weight)
            )

    def _pre(self, owned):
        def hook(module, args):
            if self._rows is None:
                return
            with named("projection", self.projection):
                self._stack.append(self._enter(module, owned))

        return torch.compiler.disable(hook, recursive=True)

    def _enter(self, module, owned):
        """Show the module's forward its perturbed tensors: (tensors swapped, the weight's
        factors or None)."""
        rows = self._rows
        factors, swapped = None, 0
        for p in owned:
            info = self.infos[self.index[id(p)]]
            cs, ss = map(list, rows[self.index[id(p)]])
            if isinstance(module, torch.nn.Linear) and p is module.weight:
                factors = self.projection.factors(info, cs, ss)
                if factors is not None:
                    self._touched.add(id(p))
                    continue
            transient, k = self._transient(p)
            self.projection.add(info, transient, cs, ss)
            self._saved.append((p, p.data, k, p.numel()))
            p.data = transient
            self._touched.add(id(p))
            swapped += 1
        return swapped, factors

    def _post(self, count):
        def hook(module, args, output):
            if self._rows is None or not self._stack:
                return None
            swapped, factors = self._stack.pop()
            self._release_if_aliased(output)
            self._restore(len(self._saved) - swapped)
            if factors is None:
                return None
            c, u, s, v = factors
            ct = torch.float64 if output.dtype == torch.float64 else torch.float32
            xvs = (args[0].to(ct) @ v.to(ct)) @ s.to(ct).T  # tokens x r
            if output.dtype == ct and output.is_contiguous():  # one write of the output, in place
                output.view(-1, output.shape[-1]).addmm_(
                    xvs.view(-1, xvs.shape[-1]), u.to(ct).T, alpha=c
                )
                return output
            return (
                torch.addmm(
                    output.to(ct).view(-1, output.shape[-1]),
                    xvs.view(-1, xvs.shape[-1]),
                    u.to(ct).T,
                    alpha=c,
                )
                .view(output.shape)
                .to(output.dtype)
            )

        return torch.compiler.disable(hook, recursive=True)

    def _restore(self, down_to: int = 0) -> None:
        super()._restore(down_to)
        if down_to <= 0:
            self._stack.clear()
