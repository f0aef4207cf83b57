"""`kerzoo train [CONFIG]` and `kerzoo replay BASE LOG` (imports kept light: the work is lazy)."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def cmd_train(args) -> int:
    from . import config as config_mod
    from .loop import Run, TrainingError, plot

    try:
        cfg = config_mod.load(args.config)
        if args.steps:
            cfg["train"]["steps"] = args.steps
        if args.out:
            cfg["train"]["out"] = args.out
        started = time.perf_counter()
        run = Run(cfg, resume=not args.fresh)
        if run.step:
            print(f"resuming {run.out} from step {run.step}")
        result = run.train()
    except (config_mod.ConfigError, TrainingError, ValueError, OSError) as exc:
        print(f"kerzoo train: {exc}", file=sys.stderr)
        return 2
    final = run.evaluate()
    png = plot(run.metrics_path, run.out / "plot.png")
    minutes = (time.perf_counter() - started) / 60
    if result["first_acc"] is not None:
        print(f"eval accuracy: {result['first_acc']:.3f} before, {final:.3f} after {run.step} steps ({minutes:.1f} min)")
    else:
        print(f"eval accuracy {final:.3f} after {run.step} steps")
    size = lambda p: f"{p.stat().st_size / 1024:.0f} KiB"
    print(f"output:      {run.out}/")
    print(f"metrics:     {run.metrics_path}")
    print(f"plot:        {png}")
    print(f"checkpoint:  {run.out / 'checkpoint.pt'} ({size(run.out / 'checkpoint.pt')})")
    print(f"trajectory:  {run.traj_path} ({size(run.traj_path)}); rebuild the weights with "
          f"`kerzoo replay header {run.traj_path}`")
    return 0


def cmd_replay(args) -> int:
    import torch

    from .loop import load_checkpoint
    from .model import trainable_state
    from .replay import replay

    model, n = replay(args.base, args.log)
    state = trainable_state(model)
    out = Path(args.out)
    torch.save(state, out)
    print(f"replayed {n} steps; weights of {len(state)} tensors written to {out}")
    if args.check:
        ck = load_checkpoint(Path(args.check))
        same = ck["step"] == n and all(torch.equal(state[k], v) for k, v in ck["params"].items())
        print("identical to the checkpoint" if same else "DIFFERENT from the checkpoint")
        return 0 if same else 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model from a TOML/YAML config (no config: the offline default run)")
    p.add_argument("config", nargs="?", help="TOML or YAML file; none runs the default offline task")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--out", help="override train.out")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in the output folder")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("replay", help="rebuild fine-tuned weights from the base model and a trajectory log")
    p.add_argument("base", help="the base model (a folder or builtin:...), or 'header' for the log's own")
    p.add_argument("log", help="trajectory.jsonl written by kerzoo train")
    p.add_argument("--out", default="replayed.pt", help="where to write the rebuilt trainable weights")
    p.add_argument("--check", help="a checkpoint to compare with, bit for bit")
    p.set_defaults(func=cmd_replay)
