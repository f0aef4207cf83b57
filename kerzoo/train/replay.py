"""Rebuilding fine-tuned weights from the base model and the trajectory log.

Every update is (seeds, scalars): replaying the log's records with the same optimizer
re-applies each step's parameter passes without a forward, so the result equals the trained
weights bit for bit on the same backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import load_model, trainable_state


def read_log(path: str | Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("kind") != "header":
        raise ValueError(f"{path}: not a kerzoo trajectory log (the first line must be its header)")
    return lines[0], lines[1:]


def replay(base: str | None, log: str | Path) -> tuple[torch.nn.Module, int]:
    import kerzoo

    header, records = read_log(log)
    model_cfg = dict(header["model"])
    if base and base != "header":
        model_cfg["name"] = base
    model, _, _ = load_model(model_cfg)
    if sorted(trainable_state(model)) != header["trainable"]:
        raise ValueError("the base model's trainable parameters differ from the log's: is it the same model?")
    opt = kerzoo.optimizer(dict(header["optimizer"]), model, seed=header["seed"])
    for record in records:
        opt.replay(record)
    return model, len(records)
