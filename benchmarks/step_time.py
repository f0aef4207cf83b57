"""One ZO step on an OPT-shaped transformer: kerzoo against the peers' MeZO loop.

    python benchmarks/step_time.py --model opt-125m --device cpu --dtype float32 --batch 4 --seq 64
    python benchmarks/step_time.py --model opt-1.3b --device cuda --dtype bfloat16 \\
        --batch 16 --seq 256

The model is built from an OPT config with random weights (no download). Reported: one
forward, one MeZO step (2 forwards + perturbation passes) with kerzoo in place and on the fly,
and with the peers' loop (torch.manual_seed, torch.normal per parameter, +1 -2 +1, update),
the step's overhead over its two forwards, and peak memory against inference.
With --presets, every named optimizer's step too (its first step apart: bases and probes are
built there), its forwards per step, the state it holds and its peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import kerzoo
import kerzoo.engine

from common import best_time, held_bytes, peers_mezo_step, sync, write_json

CONFIGS = {  # hidden, layers, heads, ffn
    "opt-125m": (768, 12, 12, 3072),
    "opt-350m": (1024, 24, 16, 4096),
    "opt-1.3b": (2048, 24, 32, 8192),
}


def build(name: str, dtype, device):
    from transformers import OPTConfig, OPTForCausalLM

    d, layers, heads, ffn = CONFIGS[name]
    config = OPTConfig(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        word_embed_proj_dim=d,
        vocab_size=50272,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    with torch.device(
        device
    ):  # initialised where it runs: a 1.3B model's CPU init takes longer than the benchmark
        model = OPTForCausalLM(config).to(dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def peers_step(model, loss, seed, eps=1e-3, lr=1e-6):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return peers_mezo_step(named, loss, seed, eps, lr)


def peak(fn, device):
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated()


def time_preset(name: str, model, loss, device, steps: int) -> dict:
    """One named optimizer with its default options: first step, median of the next ``steps``,
    forwards per step, bytes of state it holds, and peak memory over one step."""
    try:
        opt = kerzoo.optimizer(name, model, lr=0.0)
        sync(device)
        t = time.perf_counter()
        opt.step(loss)
        sync(device)
        first = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            opt.step(loss)
            sync(device)
            times.append(time.perf_counter() - t)
        row = {
            "first_step_s": first,
            "step_s": sorted(times)[len(times) // 2],
            "forwards": len(opt.last_record["losses"]),
            "held_bytes": held_bytes(opt),
            "peak_bytes": peak(lambda: opt.step(loss), device),
        }
        opt.close()
    except Exception as exc:  # a preset that fails on this device is reported, the others still run
        row = {"error": f"{type(exc).__name__}: {exc}"}
    print(name, row, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="opt-125m", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--presets", nargs="*", help="also time these named optimizers (no names: all registered)"
    )
    ap.add_argument(
        "--steps", type=int, default=10, help="steps timed per preset (after its first)"
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build(args.model, dtype, device)
    ids = torch.randint(0, 50272, (args.batch, args.seq), device=device)

    def loss():
        return model(input_ids=ids, labels=ids).loss

    with torch.no_grad():
        t_fwd = best_time(loss, device, args.repeat)
        mem_inf = peak(loss, device)
    res = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
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


if __name__ == "__main__":
    main()
