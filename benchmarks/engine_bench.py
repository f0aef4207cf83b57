"""The engine against the peers' perturbation loop, on tensors shaped like OPT models.

    python benchmarks/engine_bench.py --device cpu --model opt-125m --dtype float32
    python benchmarks/engine_bench.py --device cuda --model opt-1.3b --dtype bfloat16

One ZO step's perturbation work, without forwards:
- kerzoo: theta + eps z; fused restore-and-perturb to theta - eps z; fused restore + update
  (3 passes, z regenerated from (seed, key, index), nothing allocated per tensor);
- peers (MeZO's loop): torch.manual_seed(s), then per tensor z = torch.normal(...) and add_,
  for +1, -2, +1 and again for the update (4 passes, a full z allocated per tensor);
- floor: one in-place add_ of a scalar over the same tensors (one read and write of each).
Also: the fraction of elements restored bit-exactly after many perturb/restore cycles.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from common import best_time, sync

import kerzoo.engine as engine


def opt_shapes(name: str) -> list[tuple[int, ...]]:
    d, layers, ffn = {"opt-125m": (768, 12, 3072), "opt-350m": (1024, 24, 4096), "opt-1.3b": (2048, 24, 8192)}[name]
    shapes = [(50272, d), (2050, d)]
    for _ in range(layers):
        shapes += [(d, d), (d,)] * 4 + [(ffn, d), (ffn,), (d, ffn), (d,), (d,), (d,), (d,), (d,)]
    return shapes + [(d,), (d,)]





def kerzoo_step(params, keys, seed=1, eps=1e-3, lr=1e-6, g=0.5):
    for p, k in zip(params, keys):
        engine.add_z(p, eps, seed, k)
    for p, k in zip(params, keys):
        engine.restore_perturb(p, -eps, seed, -eps, seed, k)
    for p, k in zip(params, keys):
        engine.add_z_multi(p, [eps, -lr * g], [seed, seed], k)


def peers_step(params, seed=1, eps=1e-3, lr=1e-6, g=0.5):
    for scale in (1, -2, 1):
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)
            p.data.add_(z, alpha=scale * eps)
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)
        p.data.add_(z, alpha=-lr * g)


def floor_pass(params):
    for p in params:
        p.mul_(1.0000001)


def peak_bytes(fn, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def exactness(dtype, device, cycles: int, n: int = 1 << 20, eps: float = 1e-3) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    theta0 = (torch.randn(n, generator=g) * 0.05).to(dtype).to(device)
    ours, theirs = theta0.clone(), theta0.clone()
    key = engine.param_key("w")
    for c in range(cycles):
        engine.add_z(ours, eps, c, key)
        engine.add_z(ours, -eps, c, key)
        for scale in (1, -2, 1):
            torch.manual_seed(c)
            theirs.add_(torch.normal(0, 1, size=theirs.shape, device=device, dtype=dtype), alpha=scale * eps)
    frac = lambda t: float((t == theta0).float().mean())
    return {"kerzoo_inplace": frac(ours), "peers": frac(theirs), "kerzoo_onthefly": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=1000, help="perturb/restore cycles for exactness")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    engine.load_extension()
    backend = {r["op"]: r[device.type if device.type == "cuda" else "cpu"] for r in engine.info()}
    params = [torch.randn(s, device=device).mul_(0.05).to(dtype) for s in opt_shapes(args.model)]
    keys = [engine.param_key(f"p{i}") for i in range(len(params))]
    numel = sum(p.numel() for p in params)
    bytes_ = numel * params[0].element_size()
    t_floor = best_time(lambda: floor_pass(params), device, args.repeat)
    src = torch.empty(bytes_ // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t_copy = best_time(lambda: dst.copy_(src), device, args.repeat)
    del src, dst
    t_ours = best_time(lambda: kerzoo_step(params, keys), device, args.repeat)
    t_peers = best_time(lambda: peers_step(params), device, args.repeat)
    res = {
        "machine": platform.node() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "device": str(device), "model": args.model, "dtype": args.dtype, "params": numel,
        "backend": backend["add_z_multi"],
        "floor_add_s": t_floor, "floor_GBps": 2 * bytes_ / t_floor / 1e9,
        "copy_GBps": 2 * bytes_ / t_copy / 1e9,
        "kerzoo_step_s": t_ours, "kerzoo_GBps_per_pass": 3 * 2 * bytes_ / t_ours / 1e9,
        "kerzoo_pass_fraction_of_copy": (3 * 2 * bytes_ / t_ours) / (2 * bytes_ / t_copy),
        "peers_step_s": t_peers, "speedup_vs_peers": t_peers / t_ours, "kerzoo_over_floor": t_ours / t_floor,
        "kerzoo_pass_over_floor": t_ours / 3 / t_floor,
        "peak_extra_bytes_kerzoo": peak_bytes(lambda: kerzoo_step(params, keys), device),
        "peak_extra_bytes_peers": peak_bytes(lambda: peers_step(params), device),
        "largest_tensor_bytes": max(p.numel() for p in params) * params[0].element_size(),
    }
    if args.cycles and dtype != torch.float64:
        res["exact_fraction"] = exactness(dtype, device, args.cycles)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
