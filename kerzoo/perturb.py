"""On-the-fly perturbation: W is never written while perturbed (ALGORITHMS.md, Rounding).

While a point theta + sum_i c_i z_i is active, a forward pre-hook on every module that owns a
trainable tensor W builds W' = W + sum_i c_i z_i into a transient of W's size and lets the
module's forward see W' (``p.data`` is swapped for the duration of that module's forward); a
forward hook swaps W back. Only the update ever writes W, so leaving a point is exact in every
dtype, and a skipped step leaves W bit-identical. Memory: the transients of one module at a
time (its own parameters, not its children's). Work: one copy and one engine pass per tensor
per forward, about what the in-place passes cost.

Limits, checked where possible: a tensor must be read inside the forward of the module that
owns it (true of torch and transformers layers, tied embeddings included). A tensor that no
forward touched while a point was active is reported once with a warning: it is either unused
by the loss or read outside its module's forward, and then ``perturb="inplace"`` is the mode to use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
import torch

from .projections.base import ParamInfo, Projection

Factor = Callable[[int, ParamInfo], float] | None


def point_coefficients(point: dict[int, float], seeds: Sequence[int], factor: Factor = None,
                       info: ParamInfo | None = None) -> tuple[list[float], list[int]]:
    """Coefficients and seeds of ``point`` ({direction: scale}) for one tensor, times the factor."""
    idx = sorted(point)
    if factor is None:
        return [point[i] for i in idx], [seeds[i] for i in idx]
    return [point[i] * factor(i, info) for i in idx], [seeds[i] for i in idx]


class OnTheFly:
    """Hooks that show each module's forward W + sum c_i z_i while a point is active."""

    def __init__(self, module: torch.nn.Module, infos: Sequence[ParamInfo], projection: Projection):
        self.projection = projection
        self.infos = {id(i.tensor): i for i in infos}
        self._point: dict[int, float] = {}
        self._seeds: Sequence[int] = ()
        self._factor: Factor = None
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, its real data), a stack
        self._touched: set[int] = set()
        self._warned = False
        self.handles = []
        for m in module.modules():
            owned = [p for p in m._parameters.values() if p is not None and id(p) in self.infos]
            if owned:
                self.handles.append(m.register_forward_pre_hook(self._pre(owned)))
                self.handles.append(m.register_forward_hook(self._post(len(owned))))

    def _pre(self, owned: list[torch.Tensor]):
        def hook(module, args):
            if not self._point:
                return
            for p in owned:
                info = self.infos[id(p)]
                transient = p.data.clone()
                self.projection.add(info, transient, *point_coefficients(self._point, self._seeds, self._factor, info))
                self._saved.append((p, p.data))
                p.data = transient
                self._touched.add(id(p))
        return hook

    def _post(self, count: int):
        def hook(module, args, output):
            if self._point:
                self._restore(len(self._saved) - count)
        return hook

    def _restore(self, down_to: int = 0) -> None:
        while len(self._saved) > max(down_to, 0):
            p, real = self._saved.pop()
            p.data = real

    @contextlib.contextmanager
    def at(self, point: dict[int, float], seeds: Sequence[int], factor: Factor = None) -> Iterator[None]:
        """Forwards inside this block see theta + point; W is restored even if a forward raises."""
        self._point, self._seeds, self._factor = dict(point), seeds, factor
        try:
            yield
        finally:
            self._point = {}
            self._restore()
        if point and not self._warned:
            self._check_coverage()

    def _check_coverage(self) -> None:
        missed = [i.name for k, i in self.infos.items() if k not in self._touched]
        self._warned = True
        if missed:
            shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            warnings.warn(f"kerzoo (perturb='onthefly'): {shown} were not perturbed during the forward: unused by "
                          "the loss, or read outside the forward of the module that owns them; in the second case "
                          "use perturb='inplace'", RuntimeWarning, stacklevel=7)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

