"""A run's model as transformers and PEFT load it: the ``[export]`` folder of ``kerzoo train``
and ``kerzoo export RUN``.

Full fine-tuning writes a ``save_pretrained`` folder (config, safetensors weights, tokenizer):
``AutoModel.from_pretrained`` (``AutoModelForCausalLM`` for a causal LM) loads it. A LoRA run
writes the PEFT adapter folder (adapter_config.json, adapter_model.safetensors, the tokenizer):
``PeftModel.from_pretrained(base, folder)`` puts it on the base model. Either gives the outputs of
the trained model bit for bit (tests/train/test_export.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from . import config as config_mod

MARKERS = ("config.json", "adapter_config.json")  # what an exported folder holds


class ExportError(RuntimeError):
    """The folder could not be written: the message names it and what to do."""


def export_path(cfg: dict, out: str | Path | None = None) -> Path:
    """The export folder of a config: export.path, with "auto" and a relative path under ``out``
    (train.out unless given)."""
    out = Path(cfg["train"]["out"] if out is None else out)
    path = (cfg.get("export") or {}).get("path", "auto")
    if path == "auto":
        return out / ("adapter" if cfg["model"]["lora"] else "model")
    p = Path(path).expanduser()
    return p if p.is_absolute() else out / p


def write(
    model: torch.nn.Module,
    tokenizer,
    path: Path,
    guard: tuple[Path, ...] = (),
) -> Path:
    """Write ``model`` (a PEFT model: its adapters) and ``tokenizer`` to ``path`` with
    save_pretrained, in safetensors. The folder is written beside ``path`` and then renamed over
    it, so ``path`` is either the previous export or the new one. ``path`` must be new or a
    previous export, and none of ``guard`` (the run folder) or a folder above them."""
    path = Path(path)
    resolved = path.resolve()
    for g in guard:
        if resolved == g.resolve() or resolved in g.resolve().parents:
            raise ExportError(
                f"export.path {str(path)!r} is the run folder {g} or holds it: writing the model "
                "there would replace the run's files; give a folder inside it (the default, auto) "
                "or elsewhere"
            )
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not any((path / m).exists() for m in MARKERS))
    ):
        raise ExportError(
            f"export folder {str(path)!r} exists and is not a model folder written by "
            "save_pretrained (no config.json or adapter_config.json): it is left as it is; "
            "give another export.path (or --out) or move it away"
        )
    tmp = path.with_name(path.name + ".export-tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(
            f"could not write the export folder {path} ({exc.strerror or exc}); the run's "
            "checkpoint is kept: free some space (or fix the folder) and write it with "
            "`kerzoo export RUN_FOLDER`"
        ) from None
    return path


def export_run(run) -> Path | None:
    """The export of a finished Run, when export.enabled: every rank joins in (a sharded run
    gathers its trained tensors), rank 0 writes. Returns the folder (None elsewhere)."""
    if not run.cfg["export"]["enabled"]:
        return None
    if not run.sharded:
        if not run.writer:
            return None
        return write(run.model, run.tokenizer, export_path(run.cfg), guard=(run.out,))
    state = run.parallel.full_state(run)  # FSDP2: gathered one tensor at a time, kept by rank 0
    if not run.writer:
        return None
    # the model's FSDP2 modules hold DTensors: rank 0 writes a plain copy of it, trained
    model, tokenizer, _ = _trained(run.cfg["model"], state, run.checkpoint_path)
    return write(model, tokenizer, export_path(run.cfg), guard=(run.out,))


def _trained(model_cfg: dict, state: dict, where: Path):
    """A plain (unsharded) copy of the model with the trained tensors ``state``: (model,
    tokenizer, kind)."""
    from .loop import restore_params
    from .model import load_model

    model, tokenizer, kind = load_model(model_cfg)
    restore_params(model, state, where)
    return model, tokenizer, kind


def loader(kind: str, lora: bool) -> str:
    """How transformers/PEFT load the folder, for the messages."""
    cls = "AutoModelForCausalLM" if kind == "causal" else "AutoModel"
    return (
        f"PeftModel.from_pretrained({cls}.from_pretrained(BASE), FOLDER)"
        if lora
        else f"{cls}.from_pretrained(FOLDER)"
    )


def from_checkpoint(checkpoint: Path):
    """The trained model of a checkpoint: (model, tokenizer, kind, the checkpoint's dict)."""
    from .distributed import checkpoint_params
    from .loop import load_checkpoint

    ck = load_checkpoint(checkpoint)
    model_cfg = {**config_mod.defaults()["model"], **ck["config"]["model"]}
    state = checkpoint_params(checkpoint, ck)  # sharded: read from its DCP files
    return (*_trained(model_cfg, state, checkpoint), ck)
