"""Batched evaluation: all of a step's points in one forward (``perturb="batched"``).

The closure takes n, the number of points evaluated together, and returns their n losses: it
runs the model once on its batch repeated n times along dim 0 (``kerzoo.replicate``; replica k
is rows [k B, (k + 1) B)) and reduces each replica's rows to one loss (``kerzoo.replica_losses``
for a causal LM). While the points are active, each ``torch.nn.Linear`` whose weight is trainable
runs as one batched matmul: the n replicas' weights W + sum_i c_i z_i (and biases) are built into
a stack, and replica k's rows are multiplied by stack k (``torch.baddbmm``). Any other module that
owns trainable tensors runs its forward once per replica, on that replica's rows, with its
point's tensors in a transient (as on the fly: kerzoo.perturb.onthefly), and the replicas'
outputs are concatenated. Everything else (attention, activations, the loss) runs once over the
n-times batch. So FZOO's N + 1 forwards are one forward of fewer, larger kernels; W is never
written, so leaving the points is exact in every dtype and a skipped step leaves W
bit-identical.

Each replica's layer sees exactly the weights and rows that its own forward would, so a replica's
loss equals a separate forward's up to the rounding of the ops that ran batched. Memory: besides
the n-times activations, the stack of n copies of the largest trainable Linear (weight and bias),
held between steps like on the fly's workspace (``memory_bytes``).

Limits, refused with a message when the optimizer is built or at the first forward: a module that
owns trainable tensors must have no submodules (true of Linear, Embedding, LayerNorm and the
RMSNorms of transformers), and its tensor inputs must carry the batch on dim 0; a compiled model
(its graph cannot run a layer per replica); DTensor parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .onthefly import OnTheFly
from .table import Rows


def replicate(batch: Any, n: int) -> Any:
    """The batch repeated n times along dim 0 (tensors inside dicts, lists and tuples too):
    replica k is rows [k B, (k + 1) B). Non-tensors are returned as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.repeat(n, *([1] * (batch.dim() - 1))) if batch.dim() else batch
    if isinstance(batch, dict):
        return type(batch)({k: replicate(v, n) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(replicate(v, n) for v in batch)
    return batch


def replica_losses(logits: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Per replica, the causal-LM loss transformers computes for ``labels=``: next-token cross
    entropy, mean over the replica's tokens whose label is not -100. Shape (n,), float32."""
    if logits.shape[0] % n:
        raise ValueError(f"logits for {logits.shape[0]} rows cannot be split into {n} replicas")
    shift = logits[:, :-1].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shift.reshape(-1, shift.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(n, -1)
    counts = (target != -100).view(n, -1).sum(1)
    return nll.sum(1) / counts.clamp_min(1)


def _rows_of(x: Any, total: int, lo: int, hi: int) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == total:
        return x[lo:hi]
    return x


def _first_tensor(args: Sequence, kwargs: dict) -> torch.Tensor | None:
    for x in (*args, *kwargs.values()):
        if isinstance(x, torch.Tensor) and x.dim():
            return x
    return None


class Batched(OnTheFly):
    """Each module owning trainable tensors runs once per replica with that replica's point."""

    mode = "batched"
    exact_restore = True

    def __init__(self, module: torch.nn.Module, infos, projection):
        self._names = {id(m): name or "the root module" for name, m in module.named_modules()}
        self._owners: list[tuple[torch.nn.Module, list[torch.Tensor]]] = []
        self._points: list[Rows | None] | None = None
        # (dtype, device) -> the stack the fused Linears build their n weights (and biases) in
        self._stacks: dict[tuple, torch.Tensor] = {}
        super().__init__(module, infos, projection)

    def _attach(self, m, owned):
        children = [n for n, _ in m.named_children()]
        if children:
            names = [self.infos[self.index[id(p)]].name for p in owned]
            raise ValueError(
                f"perturb='batched' runs each module that owns trainable tensors once per "
                f"replica, and {self._names[id(m)]!r} ({type(m).__name__}) owns {names[0]}"
                f"{' and more' if len(names) > 1 else ''} but also has submodules "
                f"({', '.join(children[:3])}), which would run per replica too. Freeze those "
                "tensors (requires_grad=False, or the config's model.exclude), or use "
                "perturb='onthefly'"
            )
        self._owners.append((m, owned))

    @contextlib.contextmanager
    def at_many(self, points: Sequence[Rows]) -> Iterator[None]:
        """Forwards inside this block take a batch of len(points) replicas; replica k sees
        theta + points[k]."""
        active = [None if r.empty else r for r in points]
        self._points = active
        installed = []
        if any(r is not None for r in active):
            for m, owned in self._owners:
                installed.append((m, m.__dict__.get("forward")))
                m.forward = self._forward(m, m.forward, owned)
        try:
            yield
        finally:
            for m, saved in installed:
                if saved is None:
                    del m.forward
                else:
                    m.forward = saved
            self._points = None
            self._restore()
        if installed and not self._warned:
            self._check_coverage()

    @contextlib.contextmanager
    def at(self, rows: Rows) -> Iterator[None]:
        with self.at_many([rows]):
            yield

    def _forward(self, m: torch.nn.Module, forward, owned: list[torch.Tensor]):
        # a plain Linear whose weight is trained: one batched matmul over the replicas
        fused = (
            type(m) is torch.nn.Linear
            and any(p is m.weight for p in owned)
            and (
                m.bias is None or (m.bias.dtype, m.bias.device) == (m.weight.dtype, m.weight.device)
            )
        )

        def replicas(*args, **kwargs):
            points = self._points
            n = len(points)
            lead = _first_tensor(args, kwargs)
            if lead is None or lead.shape[0] % n:
                rows = "no tensor input" if lead is None else f"a batch of {lead.shape[0]} rows"
                raise ValueError(
                    f"perturb='batched': {self._names[id(m)]!r} got {rows} for {n} points. The "
                    f"closure gets n (here {n}) and must run the model on its batch repeated n "
                    "times along dim 0 (kerzoo.replicate(batch, n)), returning n losses"
                )
            total = lead.shape[0]
            if fused and len(args) == 1 and not kwargs and args[0].dim() >= 2:
                return self._linear(m, args[0], n)
            b = total // n
            outs = []
            for k, rows in enumerate(points):
                a = [_rows_of(x, total, k * b, (k + 1) * b) for x in args]
                kw = {key: _rows_of(x, total, k * b, (k + 1) * b) for key, x in kwargs.items()}
                if rows is None:
                    outs.append(forward(*a, **kw))
                    continue
                base = len(self._saved)
                try:
                    self._swap_in(owned, rows)
                    outs.append(forward(*a, **kw))
                finally:
                    self._restore(base)
            return _concat(outs, self._names[id(m)])

        return replicas

    def _stack(self, like: torch.Tensor, numel: int) -> torch.Tensor:
        """At least ``numel`` elements of like's dtype and device, reused from step to step."""
        k = (like.dtype, like.device)
        buf = self._stacks.get(k)
        if buf is None or buf.numel() < numel:
            self._stacks[k] = buf = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf

    def _linear(self, m: torch.nn.Linear, x: torch.Tensor, n: int) -> torch.Tensor:
        """The replicas' Linear in one ``baddbmm``: stack k holds replica k's W (and bias)."""
        w, bias = m.weight, m.bias
        out_f, in_f = w.shape
        per = w.numel() + (bias.numel() if bias is not None else 0)
        buf = self._stack(w, n * per)
        ws = buf[: n * w.numel()].view(n, out_f, in_f)
        bs = buf[n * w.numel() : n * per].view(n, 1, out_f) if bias is not None else None
        ws.copy_(w.detach().expand(n, out_f, in_f))
        if bs is not None:
            bs.copy_(bias.detach().view(1, 1, out_f).expand(n, 1, out_f))
        mine = [(p, t) for p, t in ((w, ws), (bias, bs)) if p is not None and id(p) in self.index]
        for k, rows in enumerate(self._points):
            if rows is None:
                continue
            items = [(self.infos[self.index[id(p)]], t[k].view(p.shape)) for p, t in mine]
            self._pass(items, [self.index[id(p)] for p, _ in mine], rows)
        for p, _ in mine:
            self._touched.add(id(p))
        x3 = x.reshape(n, -1, in_f)
        wt = ws.transpose(1, 2)
        y = torch.bmm(x3, wt) if bs is None else torch.baddbmm(bs, x3, wt)
        return y.view(*x.shape[:-1], out_f)

    def memory_bytes(self) -> int:
        return super().memory_bytes() + sum(
            t.numel() * t.element_size() for t in self._stacks.values()
        )

    def remove(self) -> None:
        super().remove()
        self._stacks = {}


def _concat(outs: list, where: str) -> Any:
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    if isinstance(first, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in first):
        return type(first)(torch.cat(parts) for parts in zip(*outs))
    raise TypeError(
        f"perturb='batched': {where!r} returned a {type(first).__name__}; the replicas' outputs "
        "can be joined only when they are tensors (or tuples of tensors). Use perturb='onthefly'"
    )
