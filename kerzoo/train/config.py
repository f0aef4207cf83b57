"""The training config: TOML or YAML, every key checked against this schema.

The schema's defaults are model-agnostic (every parameter trained, no LoRA); the default run
(`kerzoo train` with no config, ``DEFAULT_RUN``) sets on top of them the trained layers of
all-MiniLM-L6-v2. ``configs/default.toml`` holds the same values.
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_config_file
from ..schedules import SCHEDULES

SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "model": {
        "name": (
            "builtin:all-minilm-l6-v2",
            "a local folder, a transformers name (needs network or cache), "
            "or builtin:all-minilm-l6-v2 (shipped by a PyPI package)",
        ),
        "kind": ("auto", "encoder, causal or auto (from the model's config)"),
        "device": (
            "auto",
            "auto (CUDA when torch has it, under torchrun cuda:LOCAL_RANK; else the CPU), cpu, "
            "cuda or cuda:N",
        ),
        "dtype": (
            "float32",
            "float32, float64, bfloat16 or float16 (low precision is perturbed on the fly: exact "
            "restores)",
        ),
        "trainable": (
            [],
            "a parameter is trained if its name contains one of these; [] trains all",
        ),
        "exclude": ([], 'parameters whose name contains one of these stay frozen, e.g. ["embed"]'),
        "lora": ({}, "PEFT LoRA options (r, lora_alpha, target_modules); {} for none"),
        "load_in_8bit": (
            False,
            "load the base weights in 8 bits with bitsandbytes (a CUDA GPU and "
            "kerzoo[quant]); needs model.lora: the adapters are trained",
        ),
        "load_in_4bit": (
            False,
            "load the base weights in 4 bits (NF4, computing in model.dtype) with bitsandbytes "
            "(a CUDA GPU and kerzoo[quant]); needs model.lora",
        ),
        "device_map": (
            "",
            'passed to from_pretrained (accelerate places the layers: "auto", "cpu", "cuda:0"; '
            'needs accelerate, kerzoo[hf]); "" for none: model.device holds the whole model',
        ),
    },
    "data": {
        "source": (
            "vader-polarity",
            "a .jsonl/.json/.csv file, a folder saved with datasets' save_to_disk (a Dataset or "
            "a DatasetDict), or a built-in task",
        ),
        "split": (
            "",
            'a saved DatasetDict: the split trained on, e.g. "train" ("": its only split)',
        ),
        "text_key": ("text", "the field holding the text"),
        "label_key": (
            "label",
            "the field holding the integer label (multiple choice: the right option's index)",
        ),
        "options_key": ("options", "multiple_choice: the field holding the list of options"),
        "answer_key": ("answer", "lm: the field holding the gold answer"),
        "prompt_key": ("prompt", "sft: the field holding the prompt (the template's {text})"),
        "completion_key": (
            "completion",
            "sft: the field holding the completion (the loss is on its tokens only)",
        ),
        "eval_size": (
            500,
            "examples for evaluation: held out of the source (a seeded shuffle, then the first "
            "ones), or, with eval_source or eval_split, drawn the same way from there (all of "
            "them when there are fewer)",
        ),
        "eval_source": (
            "",
            "evaluate on this source (the kinds source takes) instead of examples held out of "
            'source; "" with eval_split set: source itself, at eval_split',
        ),
        "eval_split": (
            "",
            'the split of the eval source when it is a saved DatasetDict, e.g. "validation"',
        ),
    },
    "task": {
        "type": (
            "classification",
            "classification (label words), multiple_choice (options scored by "
            "log-likelihood), lm (loss on the gold answer), causal_lm (loss on every token of "
            "the text) or sft (loss on the completion after the prompt); all but the first need "
            "a causal LM",
        ),
        "template": (
            "{text}",
            "the prompt; {text} is replaced by the example's text (sft: its prompt; causal_lm: "
            "the loss is on every token of the result but the first)",
        ),
        "label_words": (
            ["terrible", "great"],
            "one word per label, in label order (causal LMs: one token each)",
        ),
        "label_prompt": ("It was {word}.", "encoders: the sentence each label word is embedded in"),
        "temperature": (0.05, "encoders: logits are cosine similarities divided by this"),
        "max_length": (32, "tokens per example (lm, sft: the prompt and the answer each)"),
    },
    "optimizer": {},  # passed to kerzoo.optimizer, which checks its own options
    "train": {
        "steps": (2000, "optimizer steps"),
        "batch_size": (16, "examples per step (per micro-batch with grad_accum > 1)"),
        "grad_accum": (1, "micro-batches per step, all evaluated at the same perturbation"),
        "eval_every": (200, "evaluate every this many steps (and at the start and the end)"),
        "eval_batch_size": (64, "examples per evaluation forward"),
        "checkpoint_every": (250, "write a checkpoint every this many steps"),
        "keep_checkpoints": (
            1,
            "checkpoints kept: checkpoint.pt and the newest K - 1 it replaced, as "
            "checkpoint-<step>.pt",
        ),
        "seed": (0, "seed of the data order, the held-out split and the perturbations"),
        "out": ("runs/default", "output folder"),
        "schedule": ("constant", "constant, linear or cosine learning rate"),
        "warmup_steps": (0, "linear warm-up steps"),
        "min_lr_factor": (0.0, "linear/cosine: the lr at the end, as a fraction of the initial lr"),
        "max_nan_streak": (
            20,
            "stop after this many steps in a row skipped (a non-finite loss, coefficient, "
            "update or optimizer state)",
        ),
        "threads": (0, "torch threads (0: torch's default)"),
    },
    "log": {
        "tensorboard": (
            False,
            "also write the metrics (loss, lr, projected_grad, eval metrics) as TensorBoard "
            "events in <out>/tensorboard (needs tensorboard, kerzoo[tensorboard])",
        ),
    },
    "export": {
        "enabled": (
            True,
            "at the end of kerzoo train, write the model as transformers/PEFT load it: a "
            "save_pretrained folder (model, tokenizer, config; safetensors), or with model.lora "
            "the PEFT adapter folder",
        ),
        "path": (
            "auto",
            "the folder: auto is <out>/model, or <out>/adapter with model.lora; a relative path "
            "is under train.out",
        ),
    },
    "distributed": {  # read only under torchrun (WORLD_SIZE > 1)
        "backend": ("auto", "gloo, nccl, or auto: nccl when CUDA is available, else gloo"),
        "shard": (
            False,
            "shard the model with torch's FSDP2 (fully_shard per transformer block and the root): "
            "each rank keeps, perturbs and checkpoints only its rows of each tensor; false: every "
            "rank holds the whole model",
        ),
        "offload": (
            False,
            "with shard: FSDP2's CPUOffloadPolicy, the shards kept in CPU memory between forwards "
            "(their perturbation and update on the CPU engine)",
        ),
        "check_every": (
            100,
            "compare a hash of the ranks' parameters every this many steps (and at the end)",
        ),
        "timeout": (
            600,
            "seconds a collective waits for the other ranks before the run stops with an error",
        ),
    },
}
DEFAULT_OPTIMIZER = {"preset": "mezo", "lr": 1e-4, "eps": 1e-3}
DEFAULT_RUN = {"model": {"trainable": ["encoder.layer.4.", "encoder.layer.5."]}}
CHOICES = {
    ("model", "kind"): ("auto", "encoder", "causal"),
    ("model", "dtype"): ("float32", "float64", "bfloat16", "float16"),
    ("task", "type"): ("classification", "multiple_choice", "lm", "causal_lm", "sft"),
    ("train", "schedule"): SCHEDULES,
    ("distributed", "backend"): ("auto", "gloo", "nccl"),
}
POSITIVE = (
    "steps",
    "batch_size",
    "grad_accum",
    "eval_every",
    "checkpoint_every",
    "eval_batch_size",
    "max_nan_streak",
    "keep_checkpoints",
)
# numeric options of [optimizer] (kerzoo.optimizer checks the rest): numbers, not strings
OPTIMIZER_NUMBERS = ("lr", "eps", "weight_decay", "clip")
# keys whose change makes a checkpoint's continuation differ from the run that wrote it
TRAJECTORY_KEYS = (
    "model",
    "data",
    "task",
    "optimizer",
    "train.seed",
    "train.batch_size",
    "train.grad_accum",
    "train.schedule",
    "train.warmup_steps",
    "train.min_lr_factor",
)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def defaults() -> dict[str, dict[str, Any]]:
    out = {
        section: {k: copy.deepcopy(v[0]) for k, v in keys.items()}
        for section, keys in SCHEMA.items()
    }
    out["optimizer"] = dict(DEFAULT_OPTIMIZER)
    return out


def number(where: str, value: Any, want: type = float) -> Any:
    """``value`` as a ``want`` (int or float): a number, or a string that is one ("1e-4",
    " 3 "; an int key takes an integral value); anything else is a ConfigError naming
    ``where``."""
    expected = f"{where} = {value!r}: expected {want.__name__}"
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            raise ConfigError(f"{expected} (a string must hold a number, e.g. '1e-4')") from None
        if not math.isfinite(parsed) or (want is int and not parsed.is_integer()):
            raise ConfigError(f"{expected}, finite" + (" and integral" if want is int else ""))
        return int(parsed) if want is int else parsed
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{expected} (a number)")
    if want is float:
        if not math.isfinite(value):
            raise ConfigError(f"{expected}, finite")
        return float(value)
    return value


def _check_value(section: str, key: str, value: Any) -> Any:
    default, doc = SCHEMA[section][key]
    want = type(default)
    if (
        want in (int, float)
        and not isinstance(value, bool)
        and (want is float or isinstance(value, str))
    ):
        value = number(f"{section}.{key}", value, want)
    if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
        raise ConfigError(f"{section}.{key} = {value!r}: expected {want.__name__} ({doc})")
    if want is list and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{section}.{key} = {value!r}: expected a list of strings ({doc})")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(
            f"{section}.{key} = {value!r}{_suggest(value, choices)}: use one of "
            f"{', '.join(choices)}"
        )
    return value


def validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Defaults overridden by ``raw``; an unknown section or key is an error naming it."""
    cfg = defaults()
    for section, values in raw.items():
        if section not in SCHEMA:
            raise ConfigError(
                f"unknown config section [{section}]{_suggest(section, SCHEMA)}; "
                f"sections: {', '.join(SCHEMA)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section [{section}] must be a table of keys, got {values!r}")
        if section == "optimizer":
            cfg["optimizer"] = dict(values) if values else dict(DEFAULT_OPTIMIZER)
            for key in OPTIMIZER_NUMBERS:
                if key in cfg["optimizer"]:
                    cfg["optimizer"][key] = number(f"optimizer.{key}", cfg["optimizer"][key])
            continue
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"unknown key {section}.{key}{_suggest(key, SCHEMA[section])}; "
                    f"[{section}] keys: {', '.join(SCHEMA[section])}"
                )
            cfg[section][key] = _check_value(section, key, value)
    t = cfg["train"]
    for key in POSITIVE:
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {t[key]}")
    if not 0 <= t["warmup_steps"] <= t["steps"]:
        raise ConfigError(
            f"train.warmup_steps = {t['warmup_steps']}: must be in [0, train.steps = {t['steps']}]"
        )
    if not 0.0 <= t["min_lr_factor"] <= 1.0:
        raise ConfigError(f"train.min_lr_factor = {t['min_lr_factor']}: must be in [0, 1]")
    for key in ("check_every", "timeout"):
        if cfg["distributed"][key] < 1:
            raise ConfigError(f"distributed.{key} must be >= 1, got {cfg['distributed'][key]}")
    if cfg["distributed"]["offload"] and not cfg["distributed"]["shard"]:
        raise ConfigError(
            "distributed.offload = true offloads FSDP2's shards, so it needs distributed.shard = "
            "true: set both (under torchrun, also with --nproc_per_node 1)"
        )
    if cfg["data"]["eval_size"] < 1:
        raise ConfigError(f"data.eval_size must be >= 1, got {cfg['data']['eval_size']}")
    if cfg["model"]["lora"] and cfg["model"]["trainable"]:
        raise ConfigError(
            f"model.trainable = {cfg['model']['trainable']!r} and model.lora are exclusive: LoRA "
            "trains its adapters (add modules to model.lora.modules_to_save to train them too)"
        )
    m = cfg["model"]
    if m["load_in_8bit"] and m["load_in_4bit"]:
        raise ConfigError("model.load_in_8bit and model.load_in_4bit are exclusive: choose one")
    bits = "load_in_8bit" if m["load_in_8bit"] else "load_in_4bit" if m["load_in_4bit"] else None
    if bits and not m["lora"]:
        raise ConfigError(
            f"model.{bits} = true needs model.lora: quantized weights are not trained (their "
            "values are codes), the LoRA adapters on them are; e.g. model.lora = {r = 8, "
            'target_modules = ["q_proj", "v_proj"]}'
        )
    if not cfg["export"]["path"].strip():
        raise ConfigError(
            'export.path = "": give a folder, or "auto"; export.enabled = false writes none'
        )
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` (``--set``) as (the key's path, the value): the value read as a TOML
    literal (1e-4, true, "text", ["a", "b"], {r = 8}); anything that is not one is the string
    as written (a path, a name), which the schema then checks like a file's value."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    key, sep, text = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(
            f"--set {item!r}: write section.key=value, e.g. --set train.steps=100 or "
            "--set optimizer.lr=1e-4"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return path, value


def apply_overrides(raw: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``raw`` with each ``section.key=value`` of ``items`` set in it, in order (a later one wins);
    an [optimizer] key is set over the table the run would use (DEFAULT_OPTIMIZER when the
    config has none), so ``--set optimizer.lr=1e-3`` keeps the default method."""
    raw = copy.deepcopy(raw)
    for item in items:
        path, value = parse_override(item)
        if path[0] == "optimizer" and not raw.get("optimizer"):
            raw["optimizer"] = dict(DEFAULT_OPTIMIZER)
        table = raw
        for i, part in enumerate(path[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(path[: i + 1])} is {table!r}, not a table"
                )
        table[path[-1]] = value
    return raw


def load(path: str | Path | None, overrides: list[str] = ()) -> dict[str, dict[str, Any]]:
    """Read and validate a TOML or YAML config; None gives the default run. ``overrides``
    (``--set section.key=value``) are set over it before it is checked."""
    if path is None:
        return validate(apply_overrides(DEFAULT_RUN, list(overrides)))
    raw = read_config_file(path)
    if not raw:
        raise ConfigError(
            f"config {str(path)!r} is empty: it would train every parameter with the schema's "
            "defaults, which is not the default run. Run `kerzoo train` with no config for the "
            "default run (configs/default.toml holds it), or write the keys you mean"
        )
    return validate(apply_overrides(raw, list(overrides)))


def flat(cfg: dict, key: str) -> Any:
    """The value of ``section`` or ``section.key``; a key the schema has but ``cfg`` (written by
    an older kerzoo) lacks reads as its default."""
    section, _, name = key.partition(".")
    keys = SCHEMA.get(section) or {}
    values = {k: v[0] for k, v in keys.items()} | cfg.get(section, {})
    return values if not name else values.get(name)


def trajectory_changes(old: dict, new: dict) -> list[str]:
    """The keys (of TRAJECTORY_KEYS, and train.steps under a decaying schedule) that differ.
    A key that ``old`` (a checkpoint's config, maybe written before the key existed) lacks is
    read as its default."""
    keys = list(TRAJECTORY_KEYS)
    if new["train"]["schedule"] != "constant":
        keys.append("train.steps")
    return [
        f"{k}: {flat(old, k)!r} -> {flat(new, k)!r}" for k in keys if flat(old, k) != flat(new, k)
    ]
