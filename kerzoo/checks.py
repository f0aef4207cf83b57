"""Checks that turn a silent wrong result into a clear refusal (or a warning naming the fix).

Run when the optimizer is built (before any weight moves) and around each step's forwards:
compiled models, parameters that are not resident, low-precision tensors without their module,
estimator/projection compatibility, forwards in training mode, closures that return a model
output, and coefficients stuck at 0.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
ZERO_STEPS = 5  # steps of all-zero coefficients before the warning


def compiled(module: torch.nn.Module | None) -> bool:
    """True for ``torch.compile(model)`` (an OptimizedModule) and after ``model.compile()``."""
    if module is None:
        return False
    if hasattr(module, "_orig_mod"):
        return True
    return getattr(module, "_compiled_call_impl", None) is not None


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile(model)``: parameter names (and so the directions drawn for
    them) are the model's own, not prefixed with ``_orig_mod.``."""
    while hasattr(module, "_orig_mod") and isinstance(module._orig_mod, torch.nn.Module):
        module = module._orig_mod
    return module


def before_build(opt: Any, module: torch.nn.Module | None, perturb: str) -> None:
    """Refuse, before any weight moves, what the optimizer cannot do right."""
    meta = [i.name for i in opt.infos if i.tensor.is_meta]
    if meta:
        raise ValueError(
            f"{len(meta)} parameters are on the meta device ({', '.join(meta[:3])}"
            f"{', ...' if len(meta) > 3 else ''}): they hold no values, so a ZO step would "
            "evaluate the same loss at every point. This is what accelerate's offload "
            "(device_map='auto' with too little device memory) leaves on the module; load the "
            "model without offload (device_map=None, or a device_map that fits), or shard it "
            "(docs/distributed.md)"
        )
    low = [i.name for i in opt.infos if i.tensor.dtype in LOW_PRECISION]
    if low and module is None and perturb == "auto":
        raise ValueError(
            f"{len(low)} parameters are fp16/bf16 "
            f"({low[0]}, ...) and no module was given, so kerzoo would perturb them in place, "
            "where each restore rounds and the weights drift even at lr = 0. Pass the model "
            "itself (kerzoo.optimizer(name, model)) for exact on-the-fly perturbation, or "
            "perturb='inplace' to accept the rounding"
        )
    if opt.update_rule.replays_directions and not opt.projection.stationary:
        raise ValueError(
            f"update {opt.update_rule.name!r} rebuilds past steps' directions from their seeds, "
            f"and projection {opt.projection.name!r} changes its directions from step to step "
            "(bases or state), so the past directions could not be rebuilt; use projection "
            "'dense', or update 'momentum' (a full buffer)"
        )
    if opt.projection.reads_weights and opt.mode == "inplace":
        raise ValueError(
            f"projection {opt.projection.name!r} computes its directions from the weights "
            "themselves, which in place hold theta + eps z while a point is active; pass the "
            "model (kerzoo.optimizer(name, model)) so that it perturbs on the fly"
        )
    if opt.mode == "batched" and (compiled(module) or compiled(opt._given_module)):
        raise ValueError(
            "perturb='batched' runs each layer once per replica, which a compiled graph cannot "
            "follow; give the eager model (compile nothing), or use perturb='onthefly' with the "
            "compiled model"
        )
    if opt.projection.needs_center:
        seeds = list(range(opt.estimator.directions))
        plan = opt.estimator.plan(0, seeds, opt.eps)
        if not any(not pt for pt in plan.points):
            raise ValueError(
                f"projection {opt.projection.name!r} needs L(theta) at every step, and estimator "
                f"{opt.estimator.name!r} does not evaluate it: use estimator 'three-point' (the "
                "hizoo preset does)"
            )


def compiled_model(opt: Any) -> None:
    """At each step, for a hooks mode: a model compiled (and run) before the optimizer added its
    hooks holds graphs traced without them, whose forwards would all see theta. Such graphs are
    dropped once (torch._dynamo.reset()) so the next forward traces the hooks."""
    if opt.mode == "inplace" or opt._graphs_checked:
        return
    opt._graphs_checked = True
    if compiled(opt._given_module):
        import torch._dynamo

        torch._dynamo.reset()


@contextlib.contextmanager
def forward_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """The closures' forwards run in eval mode: dropout would draw new masks at every point, and
    L+ - L- would measure the masks, not the perturbation (a coefficient of 1e6 at eps = 1e-9).
    The module's training flags are restored after."""
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    if not any(t for _, t in flags):
        yield
        return
    module.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def loss_value(value: Any) -> float:
    """The closure's return as a float, refusing what is not one loss."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"the closure returned a tensor of shape {tuple(value.shape)}; return one loss "
                "(e.g. loss.mean())"
            )
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    loss = getattr(value, "loss", None)
    if loss is None and isinstance(value, dict):
        loss = value.get("loss")
    hint = (
        "it has a loss: return model(...).loss"
        if loss is not None
        else "return the loss (for a transformers model, call it with labels= and return .loss)"
    )
    raise TypeError(f"the closure returned a {type(value).__name__}, not a loss; {hint}")


def loss_values(value: Any, n: int) -> list[float]:
    """perturb='batched': the closure's n losses, one per replica, as floats."""
    if not isinstance(value, torch.Tensor) or value.numel() != n:
        got = (
            f"a tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else f"a {type(value).__name__}"
        )
        raise TypeError(
            f"perturb='batched': the closure was called with n = {n} and returned {got}; return "
            f"the {n} replicas' losses (shape ({n},)), e.g. kerzoo.replica_losses(logits, labels, "
            "n) for a causal LM run on kerzoo.replicate(batch, n)"
        )
    return [float(x) for x in value.detach().reshape(-1).tolist()]


def coefficients(opt: Any, coefs: list[float], step: int) -> None:
    """Warn once when every coefficient has been exactly 0 for ZERO_STEPS steps: eps is below the
    parameters' resolution, so L+ = L- and nothing trains."""
    if any(c != 0.0 for c in coefs if math.isfinite(c)):
        opt._zero_steps = 0
        return
    opt._zero_steps += 1
    if opt._zero_steps == ZERO_STEPS and not opt._zero_warned:
        opt._zero_warned = True
        dtypes = sorted({str(i.tensor.dtype).replace("torch.", "") for i in opt.infos})
        warnings.warn(
            f"kerzoo: every coefficient was 0 for {ZERO_STEPS} steps (up to step {step}): L+ = L- "
            f"at each point, so nothing trains. Either eps = {opt.eps:g} is below the resolution "
            f"of the parameters ({', '.join(dtypes)}; bf16 resolves about 4e-3 of a weight's "
            "size, fp16 1e-3): raise eps; or the closure's loss does not depend on the "
            "parameters",
            RuntimeWarning,
            stacklevel=4,
        )
