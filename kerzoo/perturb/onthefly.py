"""On-the-fly perturbation: W is never written while perturbed (docs/algorithms.md, Rounding).

While a point theta + sum_i c_i z_i is active, a forward pre-hook on every module that owns a
trainable tensor W builds W' = W + sum_i c_i z_i into a transient of W's size and lets the
module's forward see W' (``p.data`` is swapped for the duration of that module's forward); a
forward hook swaps W back. Only the update ever writes W, so leaving a point is exact in every
dtype, and a skipped step leaves W bit-identical. Memory: a workspace the size of the largest
module's own parameters (per dtype and device), reused by every forward (nested modules take
the next slice; a fresh tensor when it is full). Work: one copy per tensor and one projection
call (one engine call for the dense projection) per module per forward.

Limits, checked where possible: a tensor must be read inside the forward of the module that
owns it (true of torch and transformers layers, tied embeddings included). A tensor that no
forward touched while a point was active is reported once with a warning: it is either unused
by the loss or read outside its module's forward, and then ``perturb="inplace"`` is the mode to use.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..projections.base import ParamInfo, Projection
from .base import Perturber
from .table import Rows


class OnTheFly(Perturber):
    """Hooks that show each module's forward W + sum c_i z_i while a point is active."""

    mode = "onthefly"
    exact_restore = True

    def __init__(self, module: torch.nn.Module, infos: list[ParamInfo], projection: Projection):
        super().__init__(infos, projection)
        self.index = {id(i.tensor): t for t, i in enumerate(self.infos)}
        self._rows: Rows | None = None
        # a stack of (parameter, its real data, workspace key or None, elements taken from the
        # workspace)
        self._saved: list[tuple[torch.Tensor, torch.Tensor, tuple | None, int]] = []
        self._touched: set[int] = set()
        self._warned = False
        # (dtype, device) -> elements: the largest module's own tensors
        self._ws_size: dict[tuple, int] = {}
        self._ws: dict[tuple, torch.Tensor] = {}
        self._top: dict[tuple, int] = {}
        # (dtype, device, start, shape) -> that view of the workspace
        self._views: dict[tuple, torch.Tensor] = {}
        self.handles = []
        for m in module.modules():
            owned = [p for p in m._parameters.values() if p is not None and id(p) in self.index]
            if owned:
                self._reserve(owned)
                self._attach(m, owned)

    def _attach(self, m: torch.nn.Module, owned: list[torch.Tensor]) -> None:
        """Hook module m, which owns the trainable tensors ``owned``."""
        self.handles.append(m.register_forward_pre_hook(self._pre(owned)))
        self.handles.append(m.register_forward_hook(self._post(len(owned))))

    def _reserve(self, tensors) -> None:
        """Grow the workspace, per (dtype, device), to hold one module's tensors at once."""
        need: dict[tuple, int] = {}
        for p in tensors:
            need[(p.dtype, p.device)] = need.get((p.dtype, p.device), 0) + p.numel()
        for k, n in need.items():
            self._ws_size[k] = max(self._ws_size.get(k, 0), n)

    def _transient(self, p: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """A copy of p's data in the reused workspace (a stack: nested modules take the next slice),
        or a fresh tensor when the workspace is full. Reuse spares a fresh allocation's page faults.
        """
        k, n = (p.dtype, p.device), p.numel()
        top = self._top.get(k, 0)
        if top + n > self._ws_size.get(k, 0):
            return p.data.clone(), None
        out = self._views.get((k, top, p.shape))
        # slicing and viewing cost more than the copy for small tensors: once per place and shape
        if out is None:
            if k not in self._ws:
                self._ws[k] = torch.empty(self._ws_size[k], dtype=p.dtype, device=p.device)
            out = self._views[(k, top, p.shape)] = self._ws[k][top : top + n].view(p.shape)
        out.copy_(p.data)
        self._top[k] = top + n
        return out, k

    def _swap_in(self, owned: list[torch.Tensor], rows: Rows) -> None:
        """Each of ``owned`` reads a transient holding W + its row of ``rows`` (one pass); the
        real data goes on the stack that _restore pops."""
        items, ts = [], []
        for p in owned:
            t = self.index[id(p)]
            transient, k = self._transient(p)
            items.append((self.infos[t], transient))
            ts.append(t)
            self._saved.append((p, p.data, k, p.numel()))
            p.data = transient
            self._touched.add(id(p))
        self._pass(items, ts, rows)

    def _pre(self, owned: list[torch.Tensor]):
        def hook(module, args):
            if self._rows is not None:
                self._swap_in(owned, self._rows)

        return torch.compiler.disable(hook, recursive=True)

    def _post(self, count: int):
        def hook(module, args, output):
            if self._rows is not None:
                self._release_if_aliased(output)
                self._restore(len(self._saved) - count)

        return torch.compiler.disable(hook, recursive=True)

    def _release_if_aliased(self, output: object) -> None:
        """An output that is a view of a transient (a module returning its own weight, say) keeps
        that buffer: the workspace is handed over to it and a new one is made for later forwards."""
        stack, ptrs = [output], {t.untyped_storage().data_ptr(): k for k, t in self._ws.items()}
        while stack and ptrs:
            o = stack.pop()
            if isinstance(o, torch.Tensor):
                k = ptrs.pop(o.untyped_storage().data_ptr(), None)
                if k is not None:
                    del self._ws[k]
                    self._views = {key: v for key, v in self._views.items() if key[0] != k}
            elif isinstance(o, (list, tuple)):
                stack.extend(o)
            elif isinstance(o, dict):
                stack.extend(o.values())

    def _restore(self, down_to: int = 0) -> None:
        while len(self._saved) > max(down_to, 0):
            p, real, k, n = self._saved.pop()
            p.data = real
            if k is not None:
                self._top[k] -= n

    @contextlib.contextmanager
    def at(self, rows: Rows):
        """Forwards inside this block see theta + rows; W is restored even if a forward raises."""
        self._rows = None if rows.empty else rows
        try:
            yield
        finally:
            self._rows = None
            self._restore()
        if not rows.empty and not self._warned:
            self._check_coverage()

    def _check_coverage(self) -> None:
        missed = [i.name for i in self.infos if id(i.tensor) not in self._touched]
        self._warned = True
        if len(missed) == len(self.infos):
            raise RuntimeError(
                f"kerzoo (perturb={self.mode!r}): the closure's forwards perturbed none of "
                f"the {len(self.infos)} trainable tensors, so every loss is L(theta) and "
                "nothing would train. Run the model given to kerzoo.optimizer inside the "
                "closure; for a model whose weights are read outside their module's forward, "
                "use perturb='inplace'"
            )
        if missed:
            shown = ", ".join(missed[:5]) + (
                f" and {len(missed) - 5} more" if len(missed) > 5 else ""
            )
            warnings.warn(
                f"kerzoo (perturb='onthefly'): {shown} were not perturbed during the forward: "
                "unused by the loss, or read outside the forward of the module that owns them; in "
                "the second case use perturb='inplace'",
                RuntimeWarning,
                stacklevel=7,
            )

    def memory_bytes(self) -> int:
        """Bytes held between steps: the workspace, the largest module's tensors per dtype."""
        return sum(t.numel() * t.element_size() for t in self._ws.values())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self._ws = {}
