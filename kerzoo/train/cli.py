"""`kerzoo train [CONFIG]` and `kerzoo replay BASE LOG` (imports kept light: the work is lazy)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def cmd_train(args) -> int:
    from . import config as config_mod, distributed
    from .data import DataError
    from .loop import Run, TrainingError, plot
    from .model import ModelError
    from .tasks import TaskError

    errors = (config_mod.ConfigError, DataError, ModelError, TaskError, TrainingError, OSError)
    started = time.perf_counter()
    run = parallel = None
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
        cfg = config_mod.load(args.config)
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
            f"{len(run.eval_set):,} held-out examples; optimizer {cfg['optimizer']}; output "
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
        if parallel is not None:
            parallel.close()
    if not run.writer:
        return 0
    png = plot(run.metrics_path, run.out / "plot.png")
    minutes = (time.perf_counter() - started) / 60
    first, last = result["first_acc"], result["last_acc"]
    print(
        f"eval accuracy: {first:.3f} before, {last:.3f} after {result['last_eval_step']} steps "
        f"({len(run.eval_set)} held-out examples; {minutes:.1f} min)"
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
    p.add_argument("--out", help="override train.out")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over: remove the output folder's checkpoint and logs",
    )
    p.set_defaults(func=cmd_train)
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
