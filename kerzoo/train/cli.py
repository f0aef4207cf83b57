"""`kerzoo train [CONFIG]`, `kerzoo export RUN` and `kerzoo replay BASE LOG` (imports kept light:
the work is lazy)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _number(x: float | None) -> str:
    return "non-finite" if x is None else f"{x:.4g}"


def _eval_from(d: dict) -> str:
    if not d["eval_source"] and not d["eval_split"]:
        return "held out"
    source = d["eval_source"] or d["source"]
    return f"from {source}[{d['eval_split']}]" if d["eval_split"] else f"from {source}"


def cmd_train(args) -> int:
    from . import config as config_mod, distributed
    from .data import DataError
    from .export import ExportError, export_run, loader
    from .loop import Run, TrainingError, plot, release_folder
    from .model import ModelError
    from .tasks import TaskError

    errors = (
        config_mod.ConfigError,
        DataError,
        ModelError,
        TaskError,
        TrainingError,
        ExportError,
        OSError,
    )
    started = time.perf_counter()
    run = parallel = cfg = None
    say = print
    terminated = []

    def on_term(signum, frame):  # SIGTERM (a scheduler, `kill`) stops the run as Ctrl-C does
        terminated.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        cfg = config_mod.load(args.config, args.set or [])
        if args.steps:
            cfg["train"]["steps"] = args.steps
        if args.out:
            cfg["train"]["out"] = args.out
        parallel = distributed.from_env(cfg)
        if parallel is not None and parallel.rank != 0:
            say = lambda *a, **k: None  # noqa: E731 (rank 0 speaks for the run; errors are printed by every rank)
        run = Run(
            cfg,
            resume=not args.fresh,
            progress=parallel is None or parallel.rank == 0,
            parallel=parallel,
        )
        if parallel is not None:
            say(
                f"data parallel: {parallel.world} ranks ({parallel.backend}), global batch "
                f"{cfg['train']['batch_size']}, parameters "
                + (
                    f"sharded with FSDP2 ({len(parallel.sharded)} fully_shard units"
                    + (", CPU offload)" if cfg["distributed"]["offload"] else ")")
                    if run.sharded
                    else "replicated"
                )
            )
        say(
            f"kerzoo train: {cfg['model']['name']} ({run.kind}), training {run.trained:,} of "
            f"{run.total_params:,} parameters; {len(run.train_set):,} training and "
            f"{len(run.eval_set):,} evaluation examples ({_eval_from(cfg['data'])}); optimizer "
            f"{cfg['optimizer']}; output "
            f"{run.out}/"
        )
        if run.took_over:
            say(f"took over the lock of a run that was killed ({run.took_over})")
        if run.step:
            say(
                f"resuming from the checkpoint at step {run.step}"
                if run.step < cfg["train"]["steps"]
                else f"the run in {run.out} has finished its {run.step} steps (--fresh starts over)"
            )
        result = run.train()
        exported = export_run(run)
    except KeyboardInterrupt:
        where = (
            f"the checkpoint in {run.out}"
            if run and run.checkpoint_path.exists()
            else "no checkpoint yet"
        )
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(
            f"\nkerzoo train: {what}; kept {where}. Run the same command to resume.",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    except errors as exc:
        rank = f" (rank {parallel.rank})" if parallel is not None else ""
        print(f"kerzoo train{rank}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not hasattr(exc, "_kerzoo_plugin"):
            raise
        import traceback

        traceback.print_exc()
        where = (
            f"the checkpoint in {run.out} is kept"
            if run and run.checkpoint_path.exists()
            else "no checkpoint was written yet"
        )
        print(
            f"kerzoo train: a plugin failed: {exc}; {where}. Fix the plugin (or choose another "
            "part in [optimizer]) and run the same command to resume",
            file=sys.stderr,
        )
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if run is not None:
            run.close()
        elif cfg is not None:  # the Run stopped in its setup (bad data, model, task): unlock
            release_folder(Path(cfg["train"]["out"]))
        if parallel is not None:
            parallel.close()
    if not run.writer:
        return 0
    png = plot(run.metrics_path, run.out / "plot.png")
    minutes = (time.perf_counter() - started) / 60
    first, last = result["first_acc"], result["last_acc"]
    lm = result["first_loss"] is not None or result["last_loss"] is not None
    print(
        f"eval {'token accuracy' if lm else 'accuracy'}: {first:.3f} before, {last:.3f} after "
        f"{result['last_eval_step']} steps ({len(run.eval_set)} evaluation examples; "
        f"{minutes:.1f} min)"
    )
    if lm:
        print(
            f"eval loss:     {_number(result['first_loss'])} before, "
            f"{_number(result['last_loss'])} after (perplexity {_number(result['first_ppl'])} "
            f"-> {_number(result['last_ppl'])})"
        )
    if parallel is not None:
        print(distributed.traffic_line(run))
    print(f"output:      {run.out}/")
    print(f"metrics:     {run.metrics_path}")
    print(f"plot:        {png}")
    print(
        f"checkpoint:  {run.checkpoint_path} ({_size(run.checkpoint_path)}; run the same command "
        "to resume)"
    )
    if run.sharded:
        weights = run.out / distributed.EXPORT
        print(f"weights:     {weights} ({_size(weights)}; the trained tensors whole, torch.load)")
    print(
        f"trajectory:  {run.traj_path} ({_size(run.traj_path)}); rebuild the weights from the base "
        f"model with `kerzoo replay header {run.traj_path}`"
    )
    if exported is not None:
        what = "adapter:    " if cfg["model"]["lora"] else "model:      "
        print(f"{what} {exported}/ ({loader(run.kind, bool(cfg['model']['lora']))})")
    if cfg["log"]["tensorboard"]:
        print(f"tensorboard: {run.out / 'tensorboard'} (tensorboard --logdir {run.out})")
    return 0


def cmd_export(args) -> int:
    from .export import ExportError, export_path, from_checkpoint, loader, write
    from .loop import CHECKPOINT, TrainingError, lock_folder, release_folder
    from .model import ModelError

    source = Path(args.run)
    checkpoint = source / CHECKPOINT if source.is_dir() else source
    folder = checkpoint.parent
    try:
        if not checkpoint.is_file():
            raise ExportError(
                f"{str(checkpoint)!r} does not exist: give a run folder of kerzoo train (it holds "
                f"{CHECKPOINT}) or a checkpoint file"
            )
        lock_folder(folder)  # not while a kerzoo train writes the folder
        try:
            model, tokenizer, kind, ck = from_checkpoint(checkpoint)
            lora = bool(ck["config"]["model"].get("lora"))
            path = Path(args.out) if args.out else export_path(ck["config"], out=folder)
            write(model, tokenizer, path, guard=(folder,))
        finally:
            release_folder(folder)
    except (ExportError, ModelError, TrainingError, OSError) as exc:
        print(f"kerzoo export: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported the {'adapters' if lora else 'model'} of {checkpoint} (step {ck['step']}) to "
        f"{path}/; load it with {loader(kind, lora)}"
    )
    return 0


def cmd_replay(args) -> int:
    import torch

    from .distributed import checkpoint_params
    from .loop import TrainingError, load_checkpoint
    from .model import ModelError, trainable_state
    from .replay import ReplayError, environment, environment_changes, read_log, replay

    try:
        started = time.perf_counter()
        model, n = replay(args.base, args.log)
        state = trainable_state(model)
        out = Path(args.out)
        torch.save(state, out)
        print(
            f"replayed {n} steps in {time.perf_counter() - started:.1f} s; {len(state)} trained "
            f"tensors written to {out} ({_size(out)}; the log is {_size(Path(args.log))})"
        )
        header, _ = read_log(args.log)
        changed = environment_changes(header, environment(next(model.parameters()).device))
        if changed:
            print(
                f"note: the log was written under another engine or version ({'; '.join(changed)})"
                ": a replay is bit for bit only under the same ones",
                file=sys.stderr,
            )
        if args.check:
            ck = load_checkpoint(Path(args.check))
            params = checkpoint_params(Path(args.check))  # a sharded one's from its DCP files
            diff = [k for k, v in params.items() if k not in state or not torch.equal(state[k], v)]
            if ck["step"] != n:
                print(
                    f"the checkpoint is at step {ck['step']} but the log has {n} steps",
                    file=sys.stderr,
                )
                return 1
            if diff:
                why = (
                    f" (expected: the log was written under {'; '.join(changed)})"
                    if changed
                    else ""
                )
                print(
                    f"DIFFERENT from the checkpoint in {len(diff)} tensor(s), e.g. {diff[0]}{why}",
                    file=sys.stderr,
                )
                return 1
            print(f"identical to {args.check}, bit for bit ({len(state)} tensors)")
    except (ReplayError, ModelError, TrainingError, OSError) as exc:
        print(f"kerzoo replay: {exc}", file=sys.stderr)
        return 2
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model from a TOML/YAML config (no config: the offline default run)",
    )
    p.add_argument(
        "config", nargs="?", help="TOML or YAML file; none runs the default offline task"
    )
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config key, checked like the file's (repeatable); the value is read as "
        'a TOML literal (100, 1e-4, true, "text", ["a", "b"]) or else as a string',
    )
    p.add_argument("--out", help="override train.out")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over: remove the output folder's checkpoint and logs",
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "export",
        help="write a run's trained model (or LoRA adapters) from its checkpoint as a "
        "save_pretrained folder",
    )
    p.add_argument("run", help="a kerzoo train output folder, or a checkpoint file in one")
    p.add_argument(
        "--out", help="the folder to write (default: export.path of the run, <run>/model)"
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser(
        "replay", help="rebuild fine-tuned weights from the base model and a trajectory log"
    )
    p.add_argument(
        "base",
        help="the base model (a folder or builtin:...), or 'header' for the one the log names",
    )
    p.add_argument("log", help="trajectory.jsonl written by kerzoo train")
    p.add_argument(
        "--out", default="replayed.pt", help="where to write the rebuilt trained tensors"
    )
    p.add_argument("--check", help="a checkpoint to compare with, bit for bit")
    p.set_defaults(func=cmd_replay)
