"""The update guard: an update that would make a parameter (or the optimizer's state)
non-finite is found before anything is written, so the step is skipped with the parameters
exactly as they were (docs/training.md, What a run folder guarantees).

For a linear update, target += sum_i c_i Z_i, the check costs one read of the tensors (their
largest magnitude) when the projection bounds its directions (``Projection.bounds``: every
element of a direction Z_i of tensor p has |Z_i| <= bound): the result is finite when
max|target| + bound * sum_i |c_i| stays below half the dtype's largest value. A tensor over that,
or whose projection gives no bound, is updated first into a workspace (one tensor at a time) and
the workspace is checked: exact, at the cost of the update done twice for that tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..projections.base import ParamInfo, Projection

# target <- target * scale + sum_i c_i Z_i (scale: the step's weight decay, 1.0 without)
Add = tuple[ParamInfo, torch.Tensor, Sequence[float], Sequence[int], float]


class NonFiniteUpdate(Exception):
    """The step's update would make a tensor non-finite; raised before anything is written."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def peaks(tensors: Sequence[torch.Tensor]) -> list[float]:
    """max |t| of each tensor (nan or inf when it holds a non-finite value), in one sync."""
    if not tensors:
        return []
    by_device: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel():  # an empty shard: 0
            by_device.setdefault((t.device, t.dtype), []).append(i)
    out = [0.0] * len(tensors)
    for (device, _), idx in by_device.items():
        group = [tensors[i].detach() for i in idx]
        if device.type == "cpu":  # one pass each (the CPU's foreach_norm is ~15x slower)
            ends = [torch.aminmax(t) for t in group]
            norms = [torch.maximum(-lo, hi) for lo, hi in ends]
        else:  # one fused kernel over the tensors
            norms = torch._foreach_norm(group, math.inf)
        values = torch.stack([n.float() for n in norms]).cpu().tolist()
        for i, v in zip(idx, values):
            out[i] = v
    return out


def limit(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max) / 2 if dtype.is_floating_point else math.inf


def check_directions(projection: Projection, infos: Sequence[ParamInfo]) -> None:
    """Raise NonFiniteUpdate when the projection's directions are non-finite (its state)."""
    _directions(projection, infos, projection.bounds(infos))


def _directions(projection: Projection, infos: Sequence[ParamInfo], bounds: Sequence) -> None:
    for info, b in zip(infos, bounds):
        if b is not None and not math.isfinite(b):
            raise NonFiniteUpdate(
                f"projection {projection.name!r} has non-finite directions for {info.name} "
                f"(its state holds {b})"
            )


def check_adds(
    projection: Projection, adds: Sequence[Add], rounding: str = "nearest", rounding_seed: int = 0
) -> None:
    """Raise NonFiniteUpdate when one of ``adds`` would leave its target non-finite."""
    for _, _, cs, _, scale in adds:
        bad = [c for c in (*cs, scale) if not math.isfinite(c)]
        if bad:
            raise NonFiniteUpdate(f"a non-finite update coefficient {bad[0]}")
    bounds = projection.bounds([a[0] for a in adds])
    _directions(projection, [a[0] for a in adds], bounds)
    top = peaks([a[1] for a in adds])
    for (info, target, cs, ss, scale), b, peak in zip(adds, bounds, top):
        if not math.isfinite(peak):
            raise NonFiniteUpdate(f"{info.name} already holds a non-finite value ({peak})")
        if b is not None and peak * abs(scale) + b * sum(map(abs, cs)) < limit(target.dtype):
            continue
        trial = target.detach().clone()  # the tensor's update, done into a workspace
        if scale != 1.0:
            trial.mul_(scale)
        if cs:
            projection.add_many([(info, trial)], list(cs), list(ss), rounding, rounding_seed)
        if not bool(torch.isfinite(trial).all()):
            raise NonFiniteUpdate(
                f"the update would make {info.name} non-finite (coefficients {list(cs)[:4]})"
            )


def state_peaks(
    owner: str, states: Sequence[dict[str, object]], names: Sequence[str]
) -> list[dict[str, float]]:
    """max |buffer| of each floating-point tensor of each parameter's optimizer state, in one
    sync; a non-finite one is a NonFiniteUpdate naming the rule, the buffer and the tensor."""
    keys = [
        [k for k, v in st.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        for st in states
    ]
    flat = peaks([st[k] for st, ks in zip(states, keys) for k in ks])  # type: ignore[misc]
    out, i = [], 0
    for ks, name in zip(keys, names):
        out.append(dict(zip(ks, flat[i : i + len(ks)])))
        i += len(ks)
        for k, peak in out[-1].items():
            if not math.isfinite(peak):
                raise NonFiniteUpdate(f"{owner} state {k!r} of {name} is non-finite ({peak})")
    return out


def check_state(owner: str, state: dict[str, object], name: str) -> None:
    """Raise NonFiniteUpdate when a tensor of one parameter's optimizer state is non-finite."""
    state_peaks(owner, [state], [name])
