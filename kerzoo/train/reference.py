"""docs/config-reference.md, generated from the code so that it cannot drift.

    python -m kerzoo.train.reference -o docs/config-reference.md

The training sections come from ``kerzoo.train.config.SCHEMA`` (type derived from the default);
the ``[optimizer]`` section from ``kerzoo.presets`` (the optimizer's own options, the default
parts) and from the registries of the built-in plugins (every part's options and every preset).
Entry-point plugins are left out, so the page is the same on every machine. An option of a
built-in part with no entry in ``PART_OPTION_DOCS`` is an error: document it there.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..presets import DEFAULT_PARTS, OPTIMIZER_OPTIONS, PARTS
from .config import CHOICES, DEFAULT_OPTIMIZER, DEFAULT_RUN, POSITIVE, SCHEMA

COMMAND = "python -m kerzoo.train.reference -o docs/config-reference.md"

OPTION_DOCS = {
    "lr": "learning rate (per param group in Python; a torch LR scheduler can drive it)",
    "eps": "perturbation scale ε: the points are θ ± ε·(scale)·z",
    "weight_decay": "decoupled weight decay θ ← θ(1 − lr·wd), not applied to 1-D tensors (biases, "
    "norms)",
    "seed": "seed of the directions: the same seed gives the same trajectory",
    "perturb": "auto, inplace, onthefly, outputs or batched (all of a step's points in one "
    "forward over the batch repeated per point: the closure takes n; kerzoo train and ZOTrainer "
    "do it for you, not with distributed.shard); auto perturbs on the fly when a module with "
    "fp16/bf16 parameters is given, in place otherwise",
    "stochastic_rounding": "round updates of low-precision weights stochastically; unset: on when "
    "a parameter is fp16/bf16",
    "clip": "per-tensor clipping of the estimate's norm (0: off)",
    "module": "Python only: the module whose layers are perturbed on the fly "
    "(kerzoo.optimizer(spec, model) sets it)",
}

PART_OPTION_DOCS = {
    ("two-point", "directions"): "directions q per step (2 forwards each)",
    ("one-sided", "directions"): "directions q per step (q + 1 forwards)",
    ("three-point", "directions"): "directions q per step (2q + 1 forwards)",
    ("kernel", "directions"): "directions q per step (2 forwards each)",
    ("fzoo", "directions"): "directions N per step (N + 1 forwards, or one with perturb = batched)",
    ("fzoo", "normalize"): "divide the step by the standard deviation of the N perturbed losses",
    ("kernel", "kernel"): "a registered kernel (`kerzoo list kernels`)",
    ("kernel", "C"): "scale of the weight K_a(r) = (C/a) K(r/a)",
    ("kernel", "r_max"): "radius a of r ~ U[−a, a] at the start",
    ("kernel", "r_min"): "radius a after r_shrink_steps",
    (
        "kernel",
        "r_shrink_steps",
    ): "steps over which a shrinks linearly from r_max to r_min (0: a stays r_max)",
    (
        "kernel",
        "r_scope",
    ): "direction (one r per direction) or tensor (one r per direction and tensor)",
    (
        "kernel",
        "rescale",
    ): "true: K_a(r) = (C/a) K(r/a) (moments kept as a shrinks); false: C K(r), "
    "the public code's (a hidden lr decay)",
    ("primal-averaging", "rate"): "beta_t = 1 + t rate: theta <- c / beta_t + (1 - 1/beta_t) theta",
    ("dense", "dist"): "distribution of z: gaussian or rademacher",
    ("subspace", "rank"): "rank r of each matrix's random subspace",
    ("subspace", "refresh"): "steps between redraws of the subspace",
    ("lowrank", "rank"): "rank r of the directions U V^T",
    ("lowrank", "nu"): "steps V is kept before it is redrawn",
    ("aligned", "rank"): "rank r of the estimated gradient subspace",
    ("aligned", "refresh"): "steps per cycle: the subspace is re-estimated every this many steps",
    ("aligned", "probe_steps"): "rank-1 probe steps at the start of each cycle (must be < refresh)",
    (
        "aligned",
        "delta",
    ): "alignment δ > 0: <H, C> = ±√δ‖H‖; 1 keeps the estimate unbiased in the subspace",
    ("aligned", "ema"): "exponential average of the projected-gradient estimate H, in [0, 1)",
    ("hessian", "alpha"): "rate of the diagonal Hessian estimate's moving average",
    ("hessian", "init"): "initial value of the diagonal Hessian estimate",
    ("hessian", "dist"): "distribution of z: gaussian or rademacher",
    ("sparse-mezo", "sparsity"): "share of each tensor's largest weights left unperturbed, [0, 1)",
    ("sparse-mezo", "dist"): "distribution of z: gaussian or rademacher",
    ("lezo", "fraction"): "share of the model's blocks perturbed per step, (0, 1]",
    ("lezo", "dist"): "distribution of z: gaussian or rademacher",
    ("momentum", "beta"): "momentum coefficient (one full-size buffer)",
    ("momentum-replay", "beta"): "momentum coefficient (no buffer: rebuilt from past seeds)",
    ("momentum-replay", "history"): "steps of history h the momentum is rebuilt from (>= 1)",
    ("adam-replay", "beta1"): "Adam's first-moment decay (no buffer: rebuilt from past seeds)",
    ("adam-replay", "beta2"): "Adam's second-moment decay (over the last h steps only)",
    ("adam-replay", "adam_eps"): "Adam's denominator ε (not the perturbation eps)",
    ("adam-replay", "history"): "steps of history h both moments are rebuilt from (>= 1)",
    ("adam", "beta1"): "Adam's first-moment decay",
    ("adam", "beta2"): "Adam's second-moment decay",
    ("adam", "adam_eps"): "Adam's denominator ε (not the perturbation eps)",
}


def type_name(default: Any) -> str:
    """The config type a key accepts, derived from its default as the validator does."""
    if default is None:
        return "bool (unset: automatic)"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, list):
        return "list of strings"
    if isinstance(default, dict):
        return "table"
    return {str: "string", int: "integer", float: "float"}.get(
        type(default), type(default).__name__
    )


def show(value: Any) -> str:
    """A default as it is written in TOML."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _builtin_entries(kind: str):
    from ..plugins import manager

    m = manager()
    return [e for e in m.registries[kind].entries() if m.sources.get(e.plugin) == "builtin"]


def markdown() -> str:
    """The text of docs/config-reference.md."""
    out = [
        "# Config reference",
        "",
        f"<!-- Generated by `{COMMAND}`",
        "     from kerzoo/train/config.py, kerzoo/presets.py and the built-in plugins.",
        "     Do not edit by hand: tests/test_docs.py fails when this file differs from the code. "
        "-->",
        "",
        "Every key of a `kerzoo train` config (TOML or YAML), generated from the code. A key's "
        "type is",
        "that of its default (an integer is accepted where a float is expected). An unknown "
        "section or",
        "key is an error naming its closest valid name. A number may be written as a string "
        '("1e-4";',
        "YAML's `1e-4` is read as a float); a string that is not one, or a non-finite value, is "
        "refused",
        "with the key named. An empty config file is refused (no config at all is the default "
        "run).",
        "[Training](training.md) explains the sections; [the optimizers](optimizers.md) and",
        "[projections](projections.md) explain the methods.",
        "",
    ]
    for section, keys in SCHEMA.items():
        if section == "optimizer":
            continue
        out += [f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, (default, meaning) in keys.items():
            notes = []
            choices = CHOICES.get((section, key))
            if choices:
                notes.append("one of " + ", ".join(f"`{c}`" for c in choices))
            if section == "train" and key in POSITIVE:
                notes.append("≥ 1")
            extra = f" ({'; '.join(notes)})" if notes else ""
            out.append(
                f"| `{section}.{key}` | {type_name(default)} | `{_cell(show(default))}` | "
                f"{_cell(meaning)}{extra} |"
            )
        out.append("")
    run = "; ".join(
        f"`{s}.{k} = {_cell(show(v))}`" for s, keys in DEFAULT_RUN.items() for k, v in keys.items()
    )
    out += [
        f"`kerzoo train` with no config file (the default run) also sets {run}.",
        "",
        "## [optimizer]",
        "",
        "The table is passed to `kerzoo.optimizer`, which checks it: a `preset` and overrides of "
        "its",
        "options, or parts composed by name with their options. An option is routed to the part "
        "whose",
        "options name it; an option that no part knows is an error. An empty or missing table is "
        f"`{_cell(show(DEFAULT_OPTIMIZER))}`.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        "| `optimizer.preset` | string | — | a preset below (or `kerzoo list optimizers`); its "
        "parts and options are the base, the other keys override them |",
    ]
    kinds = {"estimator": "estimators", "projection": "projections", "update": "updates"}
    for part in PARTS:
        names = ", ".join(f"`{e.name}`" for e in _builtin_entries(kinds[part]))
        out.append(
            f"| `optimizer.{part}` | string | `{show(DEFAULT_PARTS[part])}` | a registered {part}: "
            f"{names}, or a plugin's |"
        )
    for key, default in OPTIMIZER_OPTIONS.items():
        kind = {"module": "torch.nn.Module"}.get(key, type_name(default))
        out.append(
            f"| `optimizer.{key}` | {kind} | `{show(default)}` | {_cell(OPTION_DOCS[key])} |"
        )
    out += [
        "",
        "### Options of the parts",
        "",
        "Set them in the same table, e.g. `rank = 4` for a subspace projection.",
        "",
        "| part | option | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for part in PARTS:
        for e in _builtin_entries(kinds[part]):
            for key, default in e.obj.defaults.items():
                if (e.name, key) not in PART_OPTION_DOCS:
                    raise KeyError(
                        f"option {key!r} of {part} {e.name!r} has no entry in "
                        "kerzoo.train.reference.PART_OPTION_DOCS: document it there"
                    )
                out.append(
                    f"| {part} `{e.name}` | `{key}` | {type_name(default)} | `{show(default)}` | "
                    f"{_cell(PART_OPTION_DOCS[(e.name, key)])} |"
                )
    out += [
        "",
        "### Presets",
        "",
        "What `preset = NAME` expands to (the built-in presets; `kerzoo list optimizers` adds "
        "plugins').",
        "",
        "| preset | parts and options | description |",
        "|---|---|---|",
    ]
    for e in _builtin_entries("optimizers"):
        spec = ", ".join(f"{k} = {show(v)}" for k, v in e.obj.spec().items())
        out.append(f"| `{e.name}` | {_cell(spec)} | {_cell(e.doc)} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kerzoo.train.reference", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-o", "--out", help="write here instead of to stdout")
    args = parser.parse_args(argv)
    text = markdown()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
