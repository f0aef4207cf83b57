"""The time of a ZO step, one entry point with a mode per question (models built in models.py).

    python benchmarks/step.py time --model opt-125m --device cpu --dtype float32 --batch 4 --seq 64
    python benchmarks/step.py time --model opt-1.3b --device cuda --dtype bfloat16 \\
        --batch 16 --seq 256 --presets
    python benchmarks/step.py presets [--steps 20] [--batch 16]
    python benchmarks/step.py projections [--steps 5] [--out docs/benchmarks/projections-cpu.json]
    python benchmarks/step.py overhead [--model minilm] [--dtypes float32,bfloat16]
    python benchmarks/step.py host [--tensors 388] [--presets mezo kerzoo:r_scope=tensor ...]
    python benchmarks/step.py profile --model opt-125m mezo mezo:perturb=onthefly
    python benchmarks/step.py compile [--preset mezo] [--perturb inplace]
    python benchmarks/step.py batched [--preset fzoo] [--model tiny-opt] [--dtype float32]

Modes:
- time: one forward and one MeZO step on an OPT-shaped causal LM (random weights): kerzoo in
  place and on the fly against the peers' loop (torch.manual_seed, torch.normal per parameter,
  +1 -2 +1, update), the step's overhead over its two forwards and peak memory against
  inference. With --presets, every named optimizer's step too (its first step apart: bases and
  probes are built there), its forwards per step, the state it holds and its peak memory.
- presets: per-step time and held memory of every registered optimizer on all-MiniLM-L6-v2,
  every parameter trained, on batches of words from the default task.
- projections: per-step time, CPU time, held memory and bytes written of the projection
  presets beside mezo on all-MiniLM-L6-v2 (embeddings frozen); writes JSON and a Markdown table.
- overhead: a step's overhead over its forwards on a small transformer, against the peers'
  loop, and the perturbation work alone (a closure that runs no forward); JSON and a table.
- host: the host's share of a step: N tiny tensors (N/2 Linear(8, 8); 388 is OPT-1.3B's count)
  on one thread, where forward and kernels cost microseconds, so a step is the optimizer's
  per-tensor Python and dispatch.
- profile: torch.profiler over a few steps on an OPT-shaped model, the top ops by device and
  CPU time.
- compile: a tiny LLaMA (fp32) stepped eagerly and through torch.compile(model): forward and
  step times of both and their ratio.
- batched: one step's points evaluated one forward each (on the fly) against all in one
  forward over a replicated batch (perturb="batched"): step time, forwards per second, and the
  largest relative difference between the two runs' first-step losses.

An optimizer is named as name[:key=value,...], e.g. kerzoo:r_scope=tensor or mezo:perturb=onthefly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kerzoo
import kerzoo.engine

import models
from common import (
    best_time,
    held_bytes,
    median,
    parse_spec,
    peak,
    peers_mezo_step,
    source_commit,
    sync,
    timed_steps,
    workspace_bytes,
    write_json,
)


def peers_step(model, closure, seed, eps=1e-3, lr=1e-6):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return peers_mezo_step(named, closure, seed, eps, lr)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else "cpu"


# ----------------------------------------------------------------------------------------- time


def time_preset(name: str, model, loss, device, steps: int) -> dict:
    """One named optimizer with its default options: first step, median of the next ``steps``,
    forwards per step, bytes of state it holds, and peak memory over one step."""
    try:
        opt = kerzoo.optimizer(name, model, lr=0.0)
        first = timed_steps(opt, loss, 1, device)[0]
        row = {
            "first_step_s": first,
            "step_s": median(timed_steps(opt, loss, steps, device)),
            "forwards": len(opt.last_record["losses"]),
            "held_bytes": held_bytes(opt),
            "peak_bytes": peak(lambda: opt.step(loss), device),
        }
        opt.close()
    except Exception as exc:  # a preset that fails on this device is reported, the others still run
        row = {"error": f"{type(exc).__name__}: {exc}"}
    print(name, row, flush=True)
    return row


def run_time(args) -> None:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = models.opt(args.model, dtype, device)
    ids = torch.randint(0, models.OPT_VOCAB, (args.batch, args.seq), device=device)

    def loss():
        return model(input_ids=ids, labels=ids).loss

    with torch.no_grad():
        t_fwd = best_time(loss, device, args.repeat)
        mem_inf = peak(loss, device)
    res = {
        "model": args.model,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_s": t_fwd,
        "inference_peak_bytes": mem_inf,
        "engine": kerzoo.engine.info()[1],
    }
    for mode in ("inplace", "onthefly"):
        opt = kerzoo.optimizer("mezo", model, lr=1e-7, eps=1e-3, perturb=mode)
        t = best_time(lambda: opt.step(loss), device, args.repeat)
        res[f"kerzoo_{mode}_step_s"] = t
        res[f"kerzoo_{mode}_overhead_s"] = t - 2 * t_fwd
        res[f"kerzoo_{mode}_peak_bytes"] = peak(lambda: opt.step(loss), device)
        opt.close()
    seed = [0]

    def peers():
        seed[0] += 1
        peers_step(model, loss, seed[0])

    t = best_time(peers, device, args.repeat)
    res["peers_step_s"], res["peers_overhead_s"] = t, t - 2 * t_fwd
    res["peers_peak_bytes"] = peak(peers, device)
    res["speedup_inplace_vs_peers"] = res["peers_step_s"] / res["kerzoo_inplace_step_s"]
    if args.presets is not None:
        res["presets"] = {
            name: time_preset(name, model, loss, device, args.steps)
            for name in (args.presets or kerzoo.list_optimizers())
        }
    print(json.dumps(res, indent=2))
    write_json(res, args.json)


# -------------------------------------------------------------------------------------- presets


def run_presets(args) -> None:
    from kerzoo.train import config, data, model as M, tasks

    cfg = config.load(None)
    cfg["model"]["trainable"] = []
    model, tok, kind = M.load_model(cfg["model"])
    batch = data.load_examples("vader-polarity")[: args.batch]
    task = tasks.Classification(cfg["task"], tok, kind, [ex["label"] for ex in batch])

    def closure():  # the mean cross-entropy over the batch
        total, count = task.loss_sum(model, batch)
        return total / count

    with torch.no_grad():
        closure()
        t = time.perf_counter()
        for _ in range(5):
            closure()
        forward = (time.perf_counter() - t) / 5
    rows = {"forward_s": forward, "params": sum(p.numel() for p in model.parameters())}
    for name in args.only or kerzoo.list_optimizers():
        opt = kerzoo.optimizer(name, model, lr=0.0, eps=1e-3)
        times = timed_steps(opt, closure, args.steps, warmup=1)
        rows[name] = {
            "step_s": sum(times) / len(times),
            "forwards": len(opt.last_record["losses"]) + (3 if name == "zo-sgd-cons" else 0),
            "held_MB": held_bytes(opt) / 1e6,
        }
        opt.close()
        print(name, rows[name], flush=True)
    write_json(rows, args.json)


# ---------------------------------------------------------------------------------- projections

PROJECTION_CASES = [
    ("mezo", "inplace"),
    ("mezo", "onthefly"),
    ("subzero", "inplace"),
    ("subzero", "onthefly"),
    ("subzero", "outputs"),
    ("lozo", "inplace"),
    ("lozo", "outputs"),
    ("pgap", "inplace"),
    ("pgap", "outputs"),
    ("hizoo", "inplace"),
    ("kerzoo", "inplace"),
    ("kerzoo-subspace", "inplace"),
    ("kerzoo-subspace", "outputs"),
]


def classifier_closure(model, batch, seq):
    """Cross-entropy of a fixed random linear head on the mean-pooled embedding of a fixed random
    batch (batch x seq tokens)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    head = torch.randn(model.config.hidden_size, 2, generator=g) / model.config.hidden_size**0.5

    def closure():
        hidden = model(input_ids=ids).last_hidden_state.mean(1)
        return torch.nn.functional.cross_entropy(hidden @ head, labels)

    return closure


def bytes_written(opt, model, tokens: int) -> tuple[int, int]:
    """(bytes written into parameter-sized buffers, bytes of outputs rewritten) per step, counted
    from tensor sizes: in place, every pass over theta writes it once (two-point: perturb,
    restore+perturb, restore+update = 3 passes); on the fly, each forward clones each tensor and
    adds z to the copy (2 writes per tensor per forward) and the update is one pass; with
    perturb='outputs' a low-rank Linear writes nothing parameter-sized during the forwards, only
    its output gains the rank-r term in place (tokens x out writes), and the update is one pass."""
    forwards = len(opt.last_record["losses"])
    nbytes = {id(i.tensor): i.tensor.numel() * i.tensor.element_size() for i in opt.infos}
    total = sum(nbytes.values())
    if opt.mode == "inplace":
        return total * (forwards + 1), 0
    lowrank = out_writes = 0
    if opt.mode == "outputs":
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and id(m.weight) in nbytes:
                info = next(i for i in opt.infos if i.tensor is m.weight)
                if opt.projection.factors(info, [1.0], [1]) is not None:
                    lowrank += nbytes[id(m.weight)]
                    out_writes += tokens * m.out_features * 4
    return forwards * 2 * (total - lowrank) + total, forwards * out_writes


def run_projections(args) -> None:
    torch.set_num_threads(args.threads)
    model = models.minilm()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("embeddings."))
    closure = classifier_closure(model, args.batch, args.seq)
    with torch.no_grad():
        closure()
        times, cpu = [], []
        for _ in range(max(3, args.steps)):
            t, c = time.perf_counter(), time.process_time()
            closure()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = {
        "forward_s": statistics.median(times),
        "forward_cpu_s": statistics.median(cpu),
        "trained_params": trained,
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "cases": [],
    }
    print(
        f"forward {rows['forward_s']:.3f} s, {trained / 1e6:.1f} M trained parameters", flush=True
    )
    for name, perturb in PROJECTION_CASES:
        options, warmup = {}, 1
        if name == "pgap":  # time the aligned phase at full rank: rank 8 needs 8 probe steps first
            options, warmup = {"probe_steps": 8}, 8
        opt = kerzoo.optimizer(name, model, lr=0.0, eps=1e-3, perturb=perturb, **options)
        for _ in range(warmup):
            opt.step(closure)
        steps, cpu = [], []
        for _ in range(args.steps):
            t, c = time.perf_counter(), time.process_time()
            opt.step(closure)
            steps.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        row = {
            "preset": name,
            "perturb": perturb,
            "step_s": statistics.median(steps),
            "cpu_s": statistics.median(cpu),
            "cpu_per_forward": statistics.median(cpu) / rows["forward_cpu_s"],
            "forwards": len(opt.last_record["losses"]),
            "held_MB": held_bytes(opt) / 1e6,
            "workspace_MB": workspace_bytes(opt) / 1e6,
        }
        written, outputs = bytes_written(opt, model, args.batch * args.seq)
        row.update(written_params_MB=written / 1e6, written_outputs_MB=outputs / 1e6)
        opt.close()
        rows["cases"].append(row)
        print(row, flush=True)
    if args.out:
        write_json(rows, args.out)
        write_projections_markdown(os.path.splitext(args.out)[0] + ".md", rows, args)


def write_projections_markdown(path: str, rows: dict, args) -> None:
    lines = [
        "# Projections: per-step time, held memory and bytes written",
        "",
        f"Command: `python benchmarks/step.py projections --steps {args.steps} "
        f"--batch {args.batch} --seq {args.seq} --threads {args.threads} --out {args.out}`  ",
        f"Machine: {platform.machine()} {os.cpu_count()}-core VM, torch {torch.__version__}, "
        f"{args.threads} thread; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "all-MiniLM-L6-v2, every parameter but the embeddings trained "
        f"({rows['trained_params'] / 1e6:.1f} M), batch {rows['batch']} x {rows['seq']} tokens, "
        f"fp32. One forward: {rows['forward_s'] * 1e3:.0f} ms ({rows['forward_cpu_s'] * 1e3:.0f} "
        f"ms of CPU). Step: median of {args.steps} steps; CPU time (all threads) is steadier than "
        "wall time on a shared machine, and is also given in forwards. Held: what the projection "
        "and update keep between steps. Written: bytes written into parameter-sized buffers per "
        "step (and, with perturb='outputs', into layer outputs), counted from tensor sizes.",
        "",
        "| preset | perturb | forwards | step | CPU | CPU in forwards | held | workspace | "
        "written (params / outputs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['preset']} | {c['perturb']} | {c['forwards']} | {c['step_s'] * 1e3:.0f} ms | "
        f"{c['cpu_s'] * 1e3:.0f} ms | {c['cpu_per_forward']:.2f} | {c['held_MB']:.2f} MB | "
        f"{c['workspace_MB']:.2f} MB | {c['written_params_MB']:.0f} / "
        f"{c['written_outputs_MB']:.1f} MB |"
        for c in rows["cases"]
    ]
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------- overhead


def measure_overhead(args, dtype_name: str) -> dict:
    """Rounds of (forward, every method once); each figure is the best over the rounds, so a burst
    of load from another process on a shared machine inflates no single figure."""
    model, vocab, loss_of = models.small(args.model, getattr(torch, dtype_name))
    ids = torch.randint(
        0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    dev = torch.device(args.device)
    model.to(dev)
    ids = ids.to(dev)
    closure = lambda: loss_of(ids)
    no_forward = lambda: torch.tensor(1.0)
    seed = [0]

    def peers(c):
        seed[0] += 1
        return peers_step(model, c, seed[0], lr=1e-7)

    runs = {
        "kerzoo:mezo:inplace": ("mezo", "inplace", 2),
        "kerzoo:mezo:onthefly": ("mezo", "onthefly", 2),
        "kerzoo:kerzoo:inplace": ("kerzoo", "inplace", 6),
    }
    opts = {}
    timed = {"forward": lambda: torch.no_grad()(closure)()}
    for key, (preset, mode, _) in runs.items():
        opts[key] = opt = kerzoo.optimizer(preset, model, lr=1e-7, eps=1e-3, perturb=mode)
        timed[key] = (lambda o: lambda: o.step(closure))(opt)
        if mode == "inplace":
            timed[key + ":alone"] = (lambda o: lambda: o.step(no_forward))(opt)
    timed["peers:mezo"] = lambda: peers(closure)
    timed["peers:mezo:alone"] = lambda: peers(no_forward)
    best = {k: float("inf") for k in timed}
    for _ in range(args.repeat):
        for k, fn in timed.items():
            best[k] = min(best[k], best_time(fn, dev, 1))
    for o in opts.values():
        o.close()
    t_fwd = best["forward"]
    res = {
        "dtype": dtype_name,
        "forward_s": t_fwd,
        "params": sum(p.numel() for p in model.parameters()),
    }
    forwards = {**{k: v[2] for k, v in runs.items()}, "peers:mezo": 2}
    for key, n in forwards.items():
        row = {"forwards": n, "step_s": best[key], "overhead_s": best[key] - n * t_fwd}
        if key + ":alone" in best:
            row["passes_alone_s"] = best[key + ":alone"]
        res[key] = row
    return res


def overhead_table(results: list[dict]) -> str:
    lines = [
        "| dtype | method | forwards | step | overhead over forwards | overhead / forwards | "
        "passes alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        f = res["forward_s"]
        for key, row in res.items():
            if not isinstance(row, dict):
                continue
            alone = f"{row['passes_alone_s'] * 1e3:.0f} ms" if "passes_alone_s" in row else "n/a"
            lines.append(
                f"| {res['dtype']} | {key} | {row['forwards']} | {row['step_s'] * 1e3:.0f} ms | "
                f"{row['overhead_s'] * 1e3:.0f} ms | "
                f"{row['overhead_s'] / (row['forwards'] * f):.2f} | {alone} |"
            )
    return "\n".join(lines)


def run_overhead(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure_overhead(args, d) for d in args.dtypes.split(",")]
    meta = {
        "model": args.model,
        "device": args.device,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "engine": kerzoo.engine.info()[1],
        "results": results,
    }
    print(json.dumps(meta, indent=2, default=str))
    print(overhead_table(results))
    write_json(meta, args.json)


# ----------------------------------------------------------------------------------------- host


def host_step(spec: str, mode: str, layers: int, dtype, steps: int = 20) -> tuple[float, float]:
    """(wall, CPU) seconds: medians of ``steps`` steps after 3 of optimizer ``spec`` on a fresh
    TinyLayers(layers). CPU (process) time is the steadier of the two on a shared machine."""
    name, options = parse_spec(spec, {"lr": 1e-7})
    model = models.TinyLayers(layers).to(dtype)
    x = torch.randn(4, 8, dtype=dtype)
    opt = kerzoo.optimizer(name, model, perturb=mode, **options)
    closure = lambda: model(x)
    timed_steps(opt, closure, 0, warmup=3)
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        opt.step(closure)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    opt.close()
    return median(wall), median(cpu)


def run_host(args) -> None:
    torch.set_num_threads(1)
    layers, dtype = args.tensors // 2, getattr(torch, args.dtype)
    model, x = models.TinyLayers(layers).to(dtype), torch.randn(4, 8, dtype=dtype)
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(20):
            model(x)
        forward = (time.perf_counter() - t) / 20
    rows = {
        "tensors": 2 * layers,
        "dtype": args.dtype,
        "forward_s": forward,
        "torch": torch.__version__,
        "kerzoo_commit": source_commit(),
        "rounds": args.rounds,
        "steps": {},
        "cpu_steps": {},
    }
    print(f"{2 * layers} tensors, {args.dtype}, one forward {forward * 1e3:.2f} ms")
    runs = [(spec, mode) for spec in args.presets for mode in args.modes.split(",")]
    seen: dict[tuple, list[tuple[float, float]]] = {run: [] for run in runs}
    for _ in range(args.rounds):  # a busy moment hits one round of each run, not all of one
        for spec, mode in runs:
            seen[spec, mode].append(host_step(spec, mode, layers, dtype, args.steps))
    for spec, mode in runs:
        key = f"{spec} {mode}"
        rows["steps"][key] = median(w for w, _ in seen[spec, mode])
        rows["cpu_steps"][key] = median(c for _, c in seen[spec, mode])
        print(
            f"{key:32s} {rows['steps'][key] * 1e3:7.1f} ms a step, "
            f"{rows['cpu_steps'][key] * 1e3:7.1f} ms of CPU  (rounds: "
            + ", ".join(f"{w * 1e3:.1f}" for w, _ in seen[spec, mode])
            + ")",
            flush=True,
        )
    write_json(rows, args.json)


# -------------------------------------------------------------------------------------- profile


def run_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = models.opt(args.model, dtype, device)
    ids = torch.randint(0, models.OPT_VOCAB, (args.batch, args.seq), device=device)
    loss = lambda: model(input_ids=ids, labels=ids).loss
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for spec in args.optimizers:
        name, options = parse_spec(spec, {"lr": 1e-7})
        opt = kerzoo.optimizer(name, model, **options)
        opt.step(loss)  # bases, probes and buffers are built here
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                opt.step(loss)
            sync(device)
        opt.close()
        table = prof.key_averages()
        print(f"\n##### {spec} ({opt.mode}), {args.steps} steps")
        if device.type == "cuda":
            print(
                table.table(
                    sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60
                )
            )
        print(
            table.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60)
        )


# -------------------------------------------------------------------------------------- compile


def run_compile(args) -> None:
    """Eager, then compiled: each a fresh tiny LLaMA (same weights) and optimizer, the forward
    timed (best of --repeat) and the step (median of --steps after --warmup; the first compiled
    step, which compiles, timed apart)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    name, options = parse_spec(args.preset, {"lr": 0.0, "eps": 1e-3})
    ids = torch.randint(0, 512, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    res = {
        "model": "tiny-llama",
        "params": sum(p.numel() for p in models.tiny_llama(dtype).parameters()),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "optimizer": args.preset,
        "perturb": args.perturb,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kerzoo_commit": source_commit(),
    }
    for kind in ("eager", "compiled"):
        model = models.tiny_llama(dtype)
        run = torch.compile(model) if kind == "compiled" else model
        closure = lambda run=run: run(input_ids=ids, labels=ids).loss
        try:
            opt = kerzoo.optimizer(name, model, perturb=args.perturb, **options)
            first = timed_steps(opt, closure, 1)[0]
            steps = timed_steps(opt, closure, args.steps, warmup=args.warmup)
            with torch.no_grad():
                fwd = best_time(closure, torch.device("cpu"), args.repeat)
            opt.close()
        except Exception as exc:  # torch.compile failing here is a result to record
            res[kind] = {"error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
            print(kind, res[kind], flush=True)
            continue
        res[kind] = {"first_step_s": first, "step_s": median(steps), "forward_s": fwd}
        if kind == "compiled":  # graphs built over the run: more than one means recompiles
            from torch._dynamo.utils import counters

            res[kind]["graphs"] = counters["stats"]["unique_graphs"]
        print(kind, res[kind], flush=True)
    if "step_s" in res["eager"] and "step_s" in res["compiled"]:
        res["compiled_over_eager_step"] = res["compiled"]["step_s"] / res["eager"]["step_s"]
        res["compiled_over_eager_forward"] = (
            res["compiled"]["forward_s"] / res["eager"]["forward_s"]
        )
    print(json.dumps(res, indent=2))
    write_json(res, args.json)


def run_batched(args) -> None:
    """The same optimizer and weights, its points evaluated separately and batched."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    name, options = parse_spec(args.preset, {"lr": 0.0})
    build = {"tiny-llama": models.tiny_llama, "tiny-opt": models.tiny_opt}[args.model]
    vocab = build(dtype).config.vocab_size
    ids = torch.randint(
        0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    res = {
        "model": args.model,
        "params": sum(p.numel() for p in build(dtype).parameters()),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "optimizer": args.preset,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "engine": kerzoo.engine.info()[1],
        "kerzoo_commit": source_commit(),
    }
    first = {}
    for perturb in ("onthefly", "batched"):
        model = build(dtype)
        opt = kerzoo.optimizer(name, model, perturb=perturb, seed=1, **options)
        if perturb == "batched":

            def closure(n, model=model):
                rep = kerzoo.replicate(ids, n)
                return kerzoo.replica_losses(model(input_ids=rep).logits, rep, n)

        else:
            closure = lambda model=model: model(input_ids=ids, labels=ids).loss
        cpu: list[float] = []
        steps = timed_steps(opt, closure, args.steps, warmup=args.warmup, cpu=cpu)
        first[perturb] = opt.last_record["losses"]
        points = len(opt.last_record["losses"])
        step_s = median(steps)
        res[perturb] = {
            "step_s": step_s,
            "cpu_step_s": median(cpu),
            "points": points,
            "forwards_per_s": points / step_s,
        }
        print(perturb, res[perturb], flush=True)
    with torch.no_grad():
        model = build(dtype)
        res["forward_s"] = best_time(
            lambda: model(input_ids=ids, labels=ids).loss, torch.device("cpu"), args.repeat
        )
    res["batched_over_separate_step"] = res["batched"]["step_s"] / res["onthefly"]["step_s"]
    res["batched_over_separate_cpu"] = res["batched"]["cpu_step_s"] / res["onthefly"]["cpu_step_s"]
    res["max_rel_loss_difference"] = max(
        abs(a - b) / abs(a) for a, b in zip(first["onthefly"], first["batched"])
    )
    print(json.dumps(res, indent=2))
    write_json(res, args.json)


# ------------------------------------------------------------------------------------------ CLI


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("time", help="a step on an OPT-shaped model against the peers' loop")
    p.add_argument("--model", default="opt-125m", choices=sorted(models.OPT_CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--presets", nargs="*", help="also time these named optimizers (no names: all registered)"
    )
    p.add_argument("--steps", type=int, default=10, help="steps timed per preset (after its first)")
    p.add_argument("--json")
    p.set_defaults(run=run_time)

    p = sub.add_parser("presets", help="every registered optimizer on all-MiniLM-L6-v2")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--only", nargs="+", help="these optimizers only (default: all registered)")
    p.add_argument("--json")
    p.set_defaults(run=run_presets)

    p = sub.add_parser("projections", help="the projection presets: time, memory, bytes written")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON path; a Markdown table is written beside it (.md)")
    p.set_defaults(run=run_projections)

    p = sub.add_parser("overhead", help="a step's overhead over its forwards, small transformer")
    p.add_argument("--model", default="minilm", choices=["minilm", "minilm-config", "tiny-opt"])
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json")
    p.set_defaults(run=run_overhead)

    p = sub.add_parser("host", help="the host's share of a step: many tiny tensors, one thread")
    p.add_argument("--tensors", type=int, default=388)
    p.add_argument(
        "--presets",
        nargs="+",
        default=["mezo", "kerzoo", "subzero", "lozo", "pgap", "hizoo"],
        help="name[:key=value,...]",
    )
    p.add_argument("--modes", default="inplace,onthefly")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=20, help="steps timed per run (after 3)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    p.set_defaults(run=run_host)

    p = sub.add_parser("profile", help="torch.profiler over a few steps on an OPT-shaped model")
    p.add_argument("optimizers", nargs="+", help="name[:key=value,...]")
    p.add_argument("--model", default="opt-125m", choices=sorted(models.OPT_CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.set_defaults(run=run_profile)

    p = sub.add_parser("compile", help="a step on a tiny LLaMA, eager against torch.compile")
    p.add_argument("--preset", default="mezo", help="name[:key=value,...]; lr defaults to 0")
    p.add_argument("--perturb", default="inplace")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json")
    p.set_defaults(run=run_compile)

    p = sub.add_parser("batched", help="a step's points one forward each, or all in one forward")
    p.add_argument("--preset", default="fzoo", help="name[:key=value,...]; lr defaults to 0")
    p.add_argument("--model", default="tiny-opt", choices=["tiny-opt", "tiny-llama"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json")
    p.set_defaults(run=run_batched)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
