"""Convergence race on the default fine-tuning task.

Every method gets the same budget of training forward passes (mezo's 2,000 steps x 2 = 4,000 by
default) on the default run (all-MiniLM-L6-v2, VADER word polarity, top two layers trained), for
several seeds; accuracy on the 500 held-out words is taken every ``--eval-forwards`` forwards.
Forward passes are counted by wrapping the run's loss, so P-GAP's probe steps and HiZOO's third
forward are counted as they happen; wall time is training time without the evaluations.

Learning rates: ``--tune`` first runs each method for ``--tune-forwards`` forwards at each lr of
its grid (seed 0) and keeps the one with the best held-out accuracy (ties: lower final loss).

    python benchmarks/race.py --tune --out docs/benchmarks/race-cpu     # ~1.5 h on 2 cores

writes race-cpu.json (every curve), race-cpu.md (the table) and race-cpu.png (the plot).

A method is a preset or preset:key=value,... (options of the preset, e.g. kerzoo:r_scope=tensor),
plus one option of the harness: hidden_decay=T multiplies the lr at step t by KerZOO's hidden
decay h(a) = E[r 4K(r)] / 4 = (15/4) a^2 (5/3 - 7 a^2 / 5), a = max(1 - t/T, 1e-4) (what the
public KerZOO code's unrescaled shrink does to its step), to give mezo the same schedule; and
anneal=linear or anneal=cosine, which lowers the lr from its value to 0 at the budget's last
forward (by forwards counted, so a method of 9 forwards a step anneals as one of 2); and lora=R,
which trains MeZO's LoRA setting (rank R, alpha 2R, on every layer's query and value) in place of
the top two layers: the same model, data and task, far fewer trained parameters. A race of a
shorter budget to an earlier race's mezo final (--target) asks which method gets there in fewer
forwards, each with its lr tuned at that budget:

    python benchmarks/race.py --tune --forwards 1100 --tune-forwards 1100 --eval-forwards 100 \
        --methods mezo mezo:anneal=cosine fzoo:anneal=cosine \
        --target docs/benchmarks/race-cpu.json:mezo --out docs/benchmarks/race-cpu-1100

The KerZOO ablation, part by part (its shrink horizon scaled to the race's 667 kerzoo steps):

    python benchmarks/race.py --tune --methods kerzoo \
        kerzoo:C=4,rescale=false,r_max=1,r_min=1e-4,r_shrink_steps=667 \
        kerzoo:C=4,rescale=false,r_max=1,r_min=1e-4,r_shrink_steps=667,r_scope=tensor \
        kerzoo-recipe:r_shrink_steps=667 \
        kerzoo-recipe:r_shrink_steps=667,update=primal-averaging \
        mezo:hidden_decay=2000 --with docs/benchmarks/race-cpu.json:mezo \
        --out docs/benchmarks/race-cpu-kerzoo-ablation
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import parse_spec

METHODS = ("mezo", "kerzoo", "subzero", "lozo", "pgap", "zo-adam")
# lr grids around each preset family's scale on this task (mezo's default run uses 1e-4); the
# replay and sparse grids are where a first race put them: best at the top of the default grid
# (zo-sgd-mmt-replay: at its bottom); race-cpu-replay-sparse.md was tuned on these
GRIDS = {
    "zo-adam": (1e-5, 3e-5, 1e-4),
    "fzoo": (1e-6, 3e-6, 1e-5, 3e-5),
    "zo-adam-replay": (1e-4, 3e-4, 1e-3),
    "sparse-mezo": (1e-4, 3e-4, 1e-3),
    "lezo": (1e-4, 3e-4, 1e-3),
    "zo-sgd-mmt-replay": (3e-6, 1e-5, 3e-5),
}
DEFAULT_GRID = (3e-5, 1e-4, 3e-4)
# fzoo's step is normalised by the losses' spread, about lr sqrt(N) / (N eps) per coordinate: its
# grid is for eps 1e-3 and moves with eps
EPS_SCALED = {"fzoo"}


def grid(method: str, eps: float) -> tuple[float, ...]:
    """The lrs --tune tries for ``method`` (its own grid, else its preset's, else the default)."""
    preset = parse_method(method)[0]
    lrs = GRIDS.get(method, GRIDS.get(preset, DEFAULT_GRID))
    if preset in EPS_SCALED:
        lrs = tuple(float(f"{lr * eps / 1e-3:.3g}") for lr in lrs)
    return lrs


HARNESS = ("hidden_decay", "anneal", "lora")  # options of the harness, not of the optimizer


def parse_method(method: str) -> tuple[str, dict, dict]:
    """preset[:key=value,...] -> (preset, optimizer options, harness options)."""
    preset, options = parse_spec(method)
    harness = {k: options.pop(k) for k in HARNESS if k in options}
    if "hidden_decay" in harness:
        harness["hidden_decay"] = int(harness["hidden_decay"])
    if "lora" in harness and (not isinstance(harness["lora"], int) or harness["lora"] < 1):
        raise SystemExit(f"{method!r}: lora={harness['lora']!r} is not a rank: use lora=8")
    if harness.get("anneal") not in (None, "linear", "cosine"):
        raise SystemExit(
            f"{method!r}: anneal={harness['anneal']!r} is not a schedule: use anneal=linear or "
            "anneal=cosine (the lr falls to 0 at the budget's last forward)"
        )
    return preset, options, harness


def lr_factor(harness: dict, step: int, forwards: int, budget: int) -> float:
    """The harness's multiplier of the lr at ``step``, after ``forwards`` of the ``budget``:
    KerZOO's hidden decay over hidden_decay steps, and/or the anneal schedule from 1 to 0 over
    the budget's forwards (by forwards, so a method of 9 forwards a step anneals as one of 2)."""
    from kerzoo.schedules import factor

    f = 1.0
    if harness.get("hidden_decay"):
        f *= hidden_decay(step, harness["hidden_decay"])
    if harness.get("anneal"):
        f *= factor(harness["anneal"], forwards, budget)
    return f


def without_lr(method: str) -> str:
    """The method's spec without its lr= option."""
    preset, _, rest = method.partition(":")
    kept = [item for item in rest.split(",") if item and not item.startswith("lr=")]
    return preset + (":" + ",".join(kept) if kept else "")


def hidden_decay(step: int, horizon: int) -> float:
    """KerZOO's unrescaled shrink as an lr factor: E[r 4K(r)] / 4 at a = max(1 - t/T, 1e-4)."""
    a = max(1.0 - step / horizon, 1e-4)
    return 15.0 / 4.0 * a * a * (5.0 / 3.0 - 7.0 * a * a / 5.0)


TASK_SECTIONS = ("model", "data", "task")  # what --task takes from its run config


def task_run(task: str | None, dtype: str) -> dict:
    """The run config's model, data and task: the default run's, or those of the --task file,
    with the model's dtype set to ``dtype``."""
    from kerzoo.config import read_config_file
    from kerzoo.train import config as config_mod

    raw = read_config_file(task) if task else config_mod.DEFAULT_RUN
    run = {k: dict(raw.get(k, {})) for k in TASK_SECTIONS}
    run["model"]["dtype"] = dtype
    return run


def one_run(job: dict) -> dict:
    """One training run; returns its curve: (forwards, train seconds, eval accuracy) per eval."""
    import torch

    from kerzoo.train import config as config_mod
    from kerzoo.train.loop import Run

    torch.set_num_threads(job["threads"])
    budget, every = job["forwards"], job["eval_forwards"]
    preset, options, harness = parse_method(job["method"])
    options.pop("lr", None)  # a method's own lr= is the job's lr
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = task_run(job.get("task"), job.get("dtype", "float32"))
        if harness.get("lora"):  # MeZO's LoRA setting: rank r, alpha 2r, on query and value
            r = harness["lora"]
            run_cfg["model"]["trainable"] = []
            run_cfg["model"]["lora"] = {
                "r": r,
                "lora_alpha": 2 * r,
                "target_modules": ["query", "value"],
            }
        cfg = config_mod.validate(
            {
                **run_cfg,
                "optimizer": {
                    "preset": preset,
                    **options,
                    "lr": job["lr"],
                    "eps": job.get("eps", 1e-3),
                },
                "train": {
                    "steps": 10**7,
                    "eval_every": 10**7,
                    "checkpoint_every": 10**7,
                    "seed": job["seed"],
                    "threads": job["threads"],
                    "out": tmp,
                },
            }
        )
        run = Run(cfg, resume=False, progress=False)
        counted = {"forwards": 0}
        if harness:
            set_lr = run._set_lr

            def scheduled():
                set_lr()
                f = lr_factor(harness, run.step, counted["forwards"], budget)
                for g in run.opt.param_groups:
                    g["lr"] *= f

            run._set_lr = scheduled
        loss_of = run.batch_loss

        def counting(batch):
            counted["forwards"] += 1
            return loss_of(batch)

        run.batch_loss = counting
        losses: list = []
        run.callbacks.append(lambda _run, record: losses.append(record.get("loss")))
        run._started = True  # the harness evaluates step 0 itself, outside the timed steps
        curve = [
            {
                "step": 0,
                "forwards": 0,
                "seconds": 0.0,
                "cpu_seconds": 0.0,
                "acc": run.evaluate()["eval_acc"],
                "loss": None,
            }
        ]
        seconds, cpu, next_eval = 0.0, 0.0, every
        while counted["forwards"] < budget:
            t, c = time.perf_counter(), time.process_time()
            run.train(stop_at=run.step + 1)
            seconds += time.perf_counter() - t
            cpu += time.process_time() - c
            if counted["forwards"] >= next_eval or counted["forwards"] >= budget:
                finite = [x for x in losses[-50:] if x is not None and math.isfinite(x)]
                curve.append(
                    {
                        "step": run.step,
                        "forwards": counted["forwards"],
                        "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu, 2),
                        "acc": run.evaluate()["eval_acc"],
                        "loss": statistics.fmean(finite) if finite else None,
                    }
                )
                while next_eval <= counted["forwards"]:
                    next_eval += every
    return {**job, "curve": curve}


def run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    done = []
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        for result in pool.imap_unordered(one_run, jobs):
            last = result["curve"][-1]
            print(
                f"  {result['method']:8s} lr={result['lr']:.0e} seed={result['seed']}: acc "
                f"{last['acc']:.3f} after {last['forwards']} forwards, {last['seconds']:.0f} s",
                flush=True,
            )
            done.append(result)
    return done


def reach(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or above ``target``."""
    return next((p for p in curve if p["acc"] >= target - 1e-12), None)


def checkpoints(forwards: int) -> tuple[int, ...]:
    """The equal-budget columns: 800, 2,000, 4,000 and 10,000 forwards up to the budget, and
    the budget itself."""
    return tuple(sorted({f for f in (800, 2000, 4000, 10000) if f < forwards} | {forwards}))


def split_source(spec: str) -> tuple[str, str]:
    """FILE.json:METHOD -> (FILE.json, METHOD); the method may hold colons of its own
    (mezo:lora=8)."""
    path, sep, method = spec.partition(".json:")
    if not sep or not method:
        raise SystemExit(f"{spec!r}: write an earlier race as FILE.json:METHOD")
    return path + ".json", method


def target_of(spec: str) -> dict:
    """--target FILE.json:METHOD: the mean final accuracy of METHOD in an earlier race, and the
    forwards it took there to reach it (mean over the seeds that did)."""
    path, method = split_source(spec)
    saved = json.loads(Path(path).read_text())
    runs = [r for r in saved["runs"] if r["method"] == method]
    if not runs:
        raise SystemExit(f"--target {spec}: no runs of {method!r} in {path}")
    acc = statistics.fmean(r["curve"][-1]["acc"] for r in runs)
    hits = [h for h in (reach(r["curve"], acc) for r in runs) if h is not None]
    return {
        "source": spec,
        "method": method,
        "acc": acc,
        "budget": saved["meta"]["forwards"],
        "forwards": statistics.fmean(h["forwards"] for h in hits),
    }


def summarise(results: list[dict], forwards: int, target: dict | None = None) -> dict:
    by = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    mezo_end = (
        target["acc"] if target else statistics.fmean(r["curve"][-1]["acc"] for r in by["mezo"])
    )
    rows = {}
    for method, runs in by.items():
        hits = [reach(r["curve"], mezo_end) for r in runs]
        reached = [h for h in hits if h is not None]
        rows[method] = {
            "lr": runs[0]["lr"],
            "final_acc": [r["curve"][-1]["acc"] for r in runs],
            "final_acc_mean": statistics.fmean(r["curve"][-1]["acc"] for r in runs),
            "seconds": statistics.fmean(r["curve"][-1]["seconds"] for r in runs),
            "forwards_per_second": statistics.fmean(
                r["curve"][-1]["forwards"] / r["curve"][-1]["seconds"] for r in runs
            ),
            "reached": len(reached),
            # reaching it once can be one lucky evaluation; ending at it is held
            "ends_at_target": sum(reach(r["curve"][-1:], mezo_end) is not None for r in runs),
            "runs": len(runs),
            "forwards_to_target": statistics.fmean(h["forwards"] for h in reached)
            if reached
            else None,
            "minutes_to_target": statistics.fmean(h["seconds"] for h in reached) / 60
            if reached
            else None,
            "cpu_minutes_to_target": (
                statistics.fmean(h["cpu_seconds"] for h in reached) / 60
                if reached and all("cpu_seconds" in h for h in reached)
                else None
            ),
            "cpu_seconds_per_forward": statistics.fmean(
                r["curve"][-1]["cpu_seconds"] / r["curve"][-1]["forwards"] for r in runs
            )
            if "cpu_seconds" in runs[0]["curve"][-1]
            else None,
            "acc_at": {
                str(f): statistics.fmean(acc_at(r["curve"], f) for r in runs)
                for f in checkpoints(forwards)
            },
        }
    return {"target": mezo_end, "target_from": target, "methods": rows}


def acc_at(curve: list[dict], forwards: int) -> float:
    """The accuracy at the last evaluation at or before ``forwards``."""
    return [p["acc"] for p in curve if p["forwards"] <= forwards][-1]


def title(meta: dict) -> str:
    task = f"`{meta['task']}`" if meta.get("task") else "the default task"
    dtype = meta.get("dtype", "float32")
    return task + ("" if dtype == "float32" else f", {dtype}")


def write_markdown(path: Path, summary: dict, meta: dict) -> None:
    target, src = summary["target"], summary.get("target_from")
    mezo = summary["methods"]["mezo"]
    lines = [
        f"# Convergence race on {title(meta)}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['workers']} runs at a time, {meta['threads']} thread "
        f"each; load average at the end {meta['load']}.",
        *(
            [
                "Included from earlier races (same task, budget and eps; the trajectories are "
                "deterministic): " + ", ".join(f"`{w}`" for w in meta["included"]) + "."
            ]
            if meta.get("included")
            else []
        ),
        "",
        f"Every method gets {meta['forwards']:,} training forward passes "
        f"({meta['forwards'] // 2:,} mezo steps) on "
        + (
            f"the model, data and task of `{meta['task']}` ("
            if meta.get("task")
            else "the default run (all-MiniLM-L6-v2, VADER word polarity, top two layers, "
        )
        + f"batch 16, {meta.get('dtype', 'float32')}, eps {meta.get('eps', 1e-3):g}), seeds "
        f"{', '.join(map(str, meta['seeds']))}; held-out accuracy on 500 examples every "
        f"{meta['eval_forwards']} forwards. "
        + (
            f"Learning rate per method: its own `lr=`, else the best of its grid after "
            f"{meta['tune_forwards']:,} forwards on seed 0 (grids in `benchmarks/race.py`; "
            "tuning table below). "
            if meta["tune_forwards"]
            else "Learning rate per method: its own `lr=`, else the one its race tuned (tuning "
            "table below). "
            if meta["tuning"]
            else "Learning rate per method: its own `lr=`, else --lr (no tuning). "
        )
        + "Time is training time only (evaluations excluded): wall minutes, and CPU minutes of "
        "the run's one thread, the steadier measure on a machine shared with other work.",
        "",
        (
            f"Target: the accuracy {src['method']} ends at after {src['budget']:,} forwards in "
            f"`{src['source']}`, mean over its seeds = **{target:.3f}**; it reached that there in "
            f"{src['forwards']:,.0f} forwards (mean of the seeds that did)."
            if src
            else f"Target: the accuracy mezo ends at, mean over its seeds = **{target:.3f}**."
        ),
        "",
        "| method | lr | final accuracy (per seed) | mean | forwards to target | wall min to "
        "target | CPU min to target | CPU ms per forward | reached | ends at or above |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in summary["methods"].items():
        f2t = (
            f"{row['forwards_to_target']:,.0f}"
            if row["forwards_to_target"] is not None
            else "not reached"
        )
        m2t = f"{row['minutes_to_target']:.1f}" if row["minutes_to_target"] is not None else "-"
        c2t = (
            f"{row['cpu_minutes_to_target']:.1f}"
            if row.get("cpu_minutes_to_target") is not None
            else "-"
        )
        cpf = (
            f"{1e3 * row['cpu_seconds_per_forward']:.0f}"
            if row.get("cpu_seconds_per_forward")
            else "-"
        )
        lines.append(
            f"| {method} | {row['lr']:.0e} | {' / '.join(f'{a:.3f}' for a in row['final_acc'])} | "
            f"{row['final_acc_mean']:.3f} | {f2t} | {m2t} | {c2t} | {cpf} | "
            f"{row['reached']}/{row['runs']} | {row.get('ends_at_target', '-')}/{row['runs']} |"
        )
    lines += [
        "",
        "Reached: the seeds whose accuracy touched the target at some evaluation (one lucky "
        "evaluation of 500 examples can do it: its standard error is about 0.014); ends at or "
        "above: the seeds whose last evaluation is at or above it.",
        "",
        (
            f"Against {src['method']}'s {src['forwards']:,.0f} forwards to the target in "
            f"`{src['source']}` (mean over the seeds that reached it; a method that did not "
            "reach it in this budget needs more than all of it):"
            if src
            else "Against mezo (forwards and minutes to reach mezo's final accuracy; mean over "
            "the seeds that reached it; a method that did not reach it in the budget needs more "
            "than all of it):"
        ),
        "",
    ]
    for method, row in summary["methods"].items():
        if src:
            got = row["forwards_to_target"]
            lines.append(
                f"- {method}: {got:,.0f} forwards, {got / src['forwards']:.2f}x "
                f"({row['reached']}/{row['runs']} seeds reached it)"
                if got is not None
                else f"- {method}: did not reach {target:.3f} within {meta['forwards']:,} "
                "forwards on any seed"
            )
            continue
        if method == "mezo" or not mezo["forwards_to_target"]:
            continue
        if row["forwards_to_target"] is None:
            lines.append(
                f"- {method}: did not reach {target:.3f} within {meta['forwards']:,} forwards on "
                f"any seed (mezo: {mezo['forwards_to_target']:,.0f})"
            )
            continue
        df = row["forwards_to_target"] / mezo["forwards_to_target"] - 1
        key = (
            "cpu_minutes_to_target"
            if row.get("cpu_minutes_to_target") and mezo.get("cpu_minutes_to_target")
            else "minutes_to_target"
        )
        dm = row[key] / mezo[key] - 1
        what = "CPU minutes" if key.startswith("cpu") else "wall minutes"
        lines.append(
            f"- {method}: {100 * abs(df):.0f} % {'more' if df > 0 else 'fewer'} forwards and "
            f"{100 * abs(dm):.0f} % {'more' if dm > 0 else 'fewer'} {what} than mezo "
            f"({row['reached']}/{row['runs']} seeds reached it)"
        )
    cols = [str(f) for f in checkpoints(meta["forwards"])]
    lines += [
        "",
        "Mean held-out accuracy at equal forward budgets:",
        "",
        "| method | " + " | ".join(f"{int(c):,} forwards" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method, row in summary["methods"].items():
        lines.append(f"| {method} | " + " | ".join(f"{row['acc_at'][c]:.3f}" for c in cols) + " |")
    lines += [
        "",
        f"![accuracy against forwards and wall time]({path.with_suffix('.png').name})",
        "",
    ]
    if meta.get("tuning"):
        lines += [
            "## Learning-rate tuning (seed 0)",
            "",
            "| method | lr | accuracy | final loss |",
            "|---|---|---|---|",
        ]
        for t in meta["tuning"]:
            loss = f"{t['loss']:.4f}" if t["loss"] is not None else "-"
            lines.append(f"| {t['method']} | {t['lr']:.0e} | {t['acc']:.3f} | {loss} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, results: list[dict], target: float, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = list(
        dict.fromkeys(r["method"] for r in results)
    )  # any registered optimizer, in run order
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        for i, r in enumerate(runs):
            xs_f = [p["forwards"] for p in r["curve"]]
            xs_t = [p.get("cpu_seconds", p["seconds"]) / 60 for p in r["curve"]]
            ys = [p["acc"] for p in r["curve"]]
            label = method if i == 0 else None
            axes[0].plot(xs_f, ys, color=colours.get(method), alpha=0.8, label=label)
            axes[1].plot(xs_t, ys, color=colours.get(method), alpha=0.8, label=label)
    for ax, xlabel in zip(
        axes, ("training forward passes", "training CPU minutes, one thread (evaluations excluded)")
    ):
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    dashed = (
        f"the target, {split_source(meta['target'])[1]}'s final mean in "
        f"{Path(split_source(meta['target'])[0]).name}"
        if meta.get("target")
        else "mezo's final mean"
    )
    fig.suptitle(f"Race on {title(meta)}: accuracy per seed; dashed: {dashed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def include(spec: str, args) -> tuple[list, list, str]:
    """--with FILE.json:METHOD: that method's runs and tuning rows from an earlier race."""
    path, method = split_source(spec)
    saved = json.loads(Path(path).read_text())
    defaults = {"eps": 1e-3, "task": None, "dtype": "float32"}  # what older races ran
    keys = ("forwards", "eval_forwards", "eps", "task", "dtype")
    same = {k: saved["meta"].get(k, defaults.get(k)) for k in keys}
    if same != {k: getattr(args, k) for k in keys}:
        raise SystemExit(
            f"--with {spec}: that race ran {same}, not this one's budget, eps, task and dtype"
        )
    runs = [r for r in saved["runs"] if r["method"] == method]
    if not runs:
        raise SystemExit(f"--with {spec}: no runs of {method!r} in {path}")
    tuned = [t for t in saved["meta"].get("tuning", []) if t["method"] == method]
    return runs, tuned, method


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        help="presets, preset:key=value,... (lr=X fixes the lr; hidden_decay=T; "
        "anneal=linear|cosine: the lr falls to 0 at the budget; lora=R: LoRA adapters trained); "
        "none: only "
        "the --with races' runs, in one table",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--forwards", type=int, default=4000)
    p.add_argument("--eval-forwards", type=int, default=400)
    p.add_argument("--tune", action="store_true", help="pick each method's lr from its grid first")
    p.add_argument("--tune-forwards", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4, help="without --tune: every method's lr")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eps", type=float, default=1e-3, help="every method's perturbation scale")
    p.add_argument(
        "--task",
        default=None,
        metavar="RUN.toml",
        help="take [model], [data] and [task] from this run config (default: the default run)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help="the model's dtype (bfloat16 and float16 are perturbed on the fly)",
    )
    p.add_argument(
        "--out", default="docs/benchmarks/race-cpu", help="path prefix of the .json/.md/.png"
    )
    p.add_argument(
        "--with",
        dest="with_",
        nargs="+",
        default=[],
        metavar="FILE.json:METHOD",
        help="include METHOD's runs (and tuning) from an earlier race's JSON, same task and budget",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="FILE.json:METHOD",
        help="race to METHOD's final accuracy in an earlier race (any budget) instead of this "
        "race's mezo's",
    )
    p.add_argument(
        "--grid",
        nargs="+",
        type=float,
        default=None,
        metavar="LR",
        help="--tune tries these lrs for every method instead of the method's grid",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="only rewrite the .md and .png from the .json at --out",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        saved = json.loads(out.with_suffix(".json").read_text())
        summary = summarise(
            saved["runs"], saved["meta"]["forwards"], saved.get("summary", {}).get("target_from")
        )
        out.with_suffix(".json").write_text(json.dumps({**saved, "summary": summary}, indent=1))
        write_markdown(out.with_suffix(".md"), summary, saved["meta"])
        plot(out.with_suffix(".png"), saved["runs"], summary["target"], saved["meta"])
        return print(out.with_suffix(".md").read_text())
    included = [include(spec, args) for spec in args.with_]  # checked before anything runs
    target = target_of(args.target) if args.target else None
    if "mezo" not in [without_lr(m) for m in args.methods] + [m for _, _, m in included]:
        raise SystemExit(
            "the race's target is mezo's final accuracy: add mezo to --methods, or "
            "--with FILE.json:mezo from an earlier race of the same task and budget"
        )
    base = {
        "forwards": args.forwards,
        "eval_forwards": args.eval_forwards,
        "threads": args.threads,
        "eps": args.eps,
        "task": args.task,
        "dtype": args.dtype,
    }
    # a method's own lr= fixes its lr and leaves its name (mezo:lr=1e-4 races as mezo)
    fixed = {without_lr(m): parse_method(m)[1]["lr"] for m in args.methods if "lr=" in m}
    args.methods = [without_lr(m) for m in args.methods]
    lrs, tuning = {m: fixed.get(m, args.lr) for m in args.methods}, []
    tuned = [m for m in args.methods if m not in fixed]
    if args.tune and tuned:
        print("tuning learning rates (seed 0)", flush=True)
        jobs = [
            {
                **base,
                "forwards": args.tune_forwards,
                "eval_forwards": args.tune_forwards,
                "method": m,
                "lr": lr,
                "seed": 0,
            }
            for m in tuned
            for lr in (args.grid or grid(m, args.eps))
        ]
        for r in run_jobs(jobs, args.workers):
            last = r["curve"][-1]
            tuning.append(
                {"method": r["method"], "lr": r["lr"], "acc": last["acc"], "loss": last["loss"]}
            )
        tuning.sort(key=lambda t: (args.methods.index(t["method"]), t["lr"]))
        for m in tuned:
            mine = [t for t in tuning if t["method"] == m]
            lrs[m] = max(
                mine, key=lambda t: (t["acc"], -(t["loss"] if t["loss"] is not None else math.inf))
            )["lr"]
        print("chosen:", lrs, flush=True)
    print("race", flush=True)
    jobs = [
        {**base, "method": m, "lr": lrs[m], "seed": s} for s in args.seeds for m in args.methods
    ]
    results = run_jobs(jobs, args.workers) if jobs else []
    order = [*(m for _, _, m in included), *args.methods]
    for runs, tuned, _ in included:
        results += runs
        tuning += tuned
    results.sort(key=lambda r: (order.index(r["method"]), r["seed"]))
    import os

    import torch

    meta = {
        "command": "python benchmarks/race.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()}-core VM, torch {torch.__version__}",
        "workers": args.workers,
        "threads": args.threads,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "forwards": args.forwards,
        "eval_forwards": args.eval_forwards,
        "seeds": args.seeds,
        "eps": args.eps,
        "task": args.task,
        "dtype": args.dtype,
        "tune_forwards": args.tune_forwards if args.tune else 0,
        "tuning": tuning,
        "included": args.with_,
        "target": args.target,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # the runs first: a table that fails to build loses no curve (--report rebuilds it)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    summary = summarise(results, args.forwards, target)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1)
    )
    write_markdown(out.with_suffix(".md"), summary, meta)
    plot(out.with_suffix(".png"), results, summary["target"], meta)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
