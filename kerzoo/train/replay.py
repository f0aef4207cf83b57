"""Rebuilding fine-tuned weights from the base model and the trajectory log.

Every update is (seeds, scalars): replaying the log's records with the same optimizer
re-applies each step's parameter passes without a forward, so the result equals the trained
weights bit for bit on the same backend. The log's header names the base model, the trained
parameters and a fingerprint of their starting values, so a different base is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .model import load_model, trainable_state


class ReplayError(ValueError):
    """The log cannot be replayed onto this base: the message says why and what to do."""


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A hash of the tensors' names, dtypes, shapes and bytes (the base model's identity)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def environment(device: torch.device | str) -> dict[str, str]:
    """What the bits of a run depend on beyond the log: the engine backend of the device's
    ops (c++, cuda or the pure-torch reference) and the versions of kerzoo and torch."""
    import kerzoo
    from kerzoo import engine

    kind = torch.device(device).type
    backends = sorted({row.get(kind, "reference") for row in engine.info()})
    return {
        "device": kind,
        "backend": "+".join(backends),
        "kerzoo": kerzoo.__version__,
        "torch": torch.__version__,
    }


def environment_changes(header: dict, now: dict) -> list[str]:
    """The entries of the log header's "engine" that differ from ``now`` (none for an old log)."""
    was = header.get("engine") or {}
    return [f"{k}: {was[k]} -> {now.get(k)}" for k in sorted(was) if was[k] != now.get(k)]


def read_log(path: str | Path) -> tuple[dict, list[dict]]:
    from .loop import read_jsonl

    p = Path(path)
    if not p.exists():
        raise ReplayError(
            f"trajectory log {str(p)!r} does not exist (kerzoo train writes <out>/trajectory.jsonl)"
        )
    lines = read_jsonl(p)
    if not lines or lines[0].get("kind") != "header":
        raise ReplayError(
            f"{path}: not a kerzoo trajectory log (the first line must be its header)"
        )
    records = lines[1:]
    steps = [r.get("step") for r in records]
    if steps != list(range(len(records))):
        gap = next(i for i, s in enumerate(steps) if s != i)
        raise ReplayError(
            f"{path}: record {gap + 1} is for step {steps[gap]}, expected {gap}: the log is "
            "incomplete or mixed with another run's"
        )
    return lines[0], records


def replay(
    base: str | None, log: str | Path, upto: int | None = None
) -> tuple[torch.nn.Module, int]:
    """Load the base model (``base``, or the log's own when None or 'header') and apply the log's
    first ``upto`` records (all by default); returns the model and the number applied."""
    import kerzoo

    header, records = read_log(log)
    model_cfg = {"exclude": [], **header["model"]}
    if base and base != "header":
        model_cfg["name"] = base
    model, _, _ = load_model(model_cfg, seed=header["seed"])
    state = trainable_state(model)
    if sorted(state) != header["trainable"]:
        raise ReplayError(
            f"the base model {model_cfg['name']!r} has other trained parameters than the log "
            f"{str(log)!r} ({len(state)} against {len(header['trainable'])}): is it the same model?"
        )
    if header.get("fingerprint") and fingerprint(state) != header["fingerprint"]:
        raise ReplayError(
            f"the base model {model_cfg['name']!r} does not start from the weights the log "
            f"{str(log)!r} was trained from (fingerprint differs): give the original base model"
        )
    opt = kerzoo.optimizer(dict(header["optimizer"]), model, seed=header["seed"])
    records = records if upto is None else records[:upto]
    for record in records:
        opt.replay(record)
    return model, len(records)
