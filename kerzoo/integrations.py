"""kerzoo inside other training stacks: accelerate's prepared optimizer and accumulation.

accelerate wraps an optimizer in ``AcceleratedOptimizer``, whose ``step(closure)`` returns None
(the step's loss is lost) and does nothing while ``accelerator.accumulate`` holds the gradients
of a micro-batch (so that micro-batch's closure is never evaluated). ``ZOAccumulate`` takes
the closures itself and steps the kerzoo optimizer under the wrapper:

    opt, sched = accelerator.prepare(kerzoo.optimizer("mezo", model, lr=1e-6), sched)
    zo = kerzoo.integrations.ZOAccumulate(opt)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = zo.step(lambda b=batch: model(**b).loss)  # None until the last micro-batch
        sched.step()

At the last micro-batch of each accumulation window (accelerate's ``sync_gradients``) it runs
one ZO step with the window's closures as a list: every micro-batch is evaluated at the same
perturbation and the loss is their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .optim import ZOOptimizer


def unwrap_optimizer(optimizer: Any) -> ZOOptimizer:
    """The kerzoo optimizer inside wrappers that keep it as ``.optimizer`` (accelerate's)."""
    seen = optimizer
    for _ in range(8):
        if isinstance(seen, ZOOptimizer):
            return seen
        seen = getattr(seen, "optimizer", None)
        if seen is None:
            break
    raise TypeError(
        f"{type(optimizer).__name__} is not a kerzoo optimizer nor a wrapper of one; build it with "
        "kerzoo.optimizer(name, model, ...) (or kerzoo.optim_class) before accelerator.prepare"
    )


class ZOAccumulate:
    """Steps a kerzoo optimizer, prepared by accelerate or not, once per accumulation window.

    ``step(closure)`` keeps the closure; at the window's last micro-batch (accelerate's
    ``sync_gradients``, or every ``every``-th call without accelerate) it evaluates all the
    window's closures at the same perturbation and returns the step's loss, else None. A closure
    is run later than it is made: bind its batch (``lambda b=batch: model(**b).loss``).
    """

    def __init__(self, optimizer: Any, every: int | None = None):
        self.optimizer = unwrap_optimizer(optimizer)
        self.gradient_state = getattr(optimizer, "gradient_state", None)
        if self.gradient_state is None and every is None:
            every = 1
        if self.gradient_state is not None and every is not None:
            raise ValueError(
                f"every={every}: accelerate sets the accumulation window "
                "(Accelerator(gradient_accumulation_steps=...)); leave every unset"
            )
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        state = getattr(optimizer, "accelerator_state", None)
        processes = getattr(state, "num_processes", 1) or 1
        if processes > 1:
            raise ValueError(
                f"{processes} processes: each would step on its own losses and the replicas "
                "would drift apart; run kerzoo's data parallel (docs/distributed.md) instead"
            )
        self.every = every
        self.pending: list[Callable[[], Any]] = []

    def step(self, closure: Callable[[], Any]) -> float | None:
        if not callable(closure):
            raise TypeError(
                f"step takes a closure returning the batch's loss, got {type(closure).__name__}"
            )
        self.pending.append(closure)
        last = (
            self.gradient_state.sync_gradients
            if self.gradient_state is not None
            else len(self.pending) == self.every
        )
        if not last:
            return None
        closures, self.pending = self.pending, []
        return self.optimizer.step(closures)

    @property
    def last_record(self) -> dict[str, Any] | None:
        """The last step's record: its coefficients (the projected gradient), losses, lr."""
        return self.optimizer.last_record
