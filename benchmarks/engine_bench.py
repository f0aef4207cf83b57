"""The engine against the peers' perturbation loop, on tensors shaped like OPT models.

    python benchmarks/engine_bench.py --device cpu --model opt-125m --dtype float32
    python benchmarks/engine_bench.py --device cuda --model opt-1.3b --dtype bfloat16

One ZO step's perturbation work, without forwards:
- kerzoo: theta + eps z; fused restore-and-perturb to theta - eps z; fused restore + update
  (3 passes, z regenerated from (seed, key, index), nothing allocated per tensor), with one
  foreach call per pass (kerzoo_step) and with one call per tensor (kerzoo_per_tensor_step);
- peers (MeZO's loop, common.peers_mezo_step): torch.manual_seed(s), then per tensor
  z = torch.normal(...) and p.data = p.data + scale * z * eps, for +1, -2, +1 and again for the
  update (4 passes, a full z and out-of-place results allocated per tensor);
- floor: one in-place add_ of a scalar over the same tensors (one read and write of each);
- peak memory: torch.cuda.max_memory_allocated, or on CPU the rise of the
  resident-set high-water mark over one step in a fresh process.
Also: the fraction of elements restored bit-exactly after many perturb/restore cycles.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

import kerzoo.engine as engine

from common import best_time, peers_mezo_step, rss_high_water, write_json


def opt_shapes(name: str) -> list[tuple[int, ...]]:
    d, layers, ffn = {
        "opt-125m": (768, 12, 3072),
        "opt-350m": (1024, 24, 4096),
        "opt-1.3b": (2048, 24, 8192),
    }[name]
    shapes = [(50272, d), (2050, d)]
    for _ in range(layers):
        shapes += [(d, d), (d,)] * 4 + [(ffn, d), (ffn,), (d, ffn), (d,), (d,), (d,), (d,), (d,)]
    return [*shapes, (d,), (d,)]


def kerzoo_step(params, keys, seed=1, eps=1e-3, lr=1e-6, g=0.5):
    """Three fused passes, one engine call per tensor per pass (what the optimizer does today)."""
    for p, k in zip(params, keys):
        engine.add_z(p, eps, seed, k)
    for p, k in zip(params, keys):
        engine.restore_perturb(p, -eps, seed, -eps, seed, k)
    for p, k in zip(params, keys):
        engine.add_z_multi(p, [eps, -lr * g], [seed, seed], k)


def kerzoo_step_foreach(params, keys, seed=1, eps=1e-3, lr=1e-6, g=0.5):
    """The same three passes, one engine call per pass over all tensors."""
    engine.add_z_foreach(params, eps, seed, keys)
    engine.restore_perturb_foreach(params, -eps, seed, -eps, seed, keys)
    engine.add_z_multi_foreach(params, [eps, -lr * g], [seed, seed], keys)


def peers_step(params, seed=1, eps=1e-3, lr=1e-6):
    """The peers' step without forwards: a constant loss, so every pass still runs."""
    return peers_mezo_step([(f"p{i}", p) for i, p in enumerate(params)], lambda: 0.0, seed, eps, lr)


def floor_pass(params):
    """One plain in-place pass (a read and a write of every element): the memory floor."""
    for p in params:
        p.add_(1e-7)


def make_params(model: str, device, dtype):
    """Tensors shaped like the model's, ~N(0, 0.05^2), created in place (no temporary)."""
    return [torch.empty(s, device=device, dtype=dtype).normal_(0, 0.05) for s in opt_shapes(model)]


def peak_bytes(fn, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cpu_peak_child(which: str, model: str, dtype: str) -> None:
    """In a fresh process: the rise of the resident-set high-water mark over one step."""
    params = make_params(model, torch.device("cpu"), getattr(torch, dtype))
    keys = [engine.param_key(f"p{i}") for i in range(len(params))]
    engine.fill_z(torch.empty(8), 0, 0)  # load the extension before the baseline
    before = rss_high_water()
    {
        "kerzoo": lambda: kerzoo_step(params, keys),
        "kerzoo_foreach": lambda: kerzoo_step_foreach(params, keys),
        "peers": lambda: peers_step(params),
    }[which]()
    print(rss_high_water() - before)


def cpu_peak_bytes(which: str, model: str, dtype: str) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--peak-child", which, "--model", model, "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def exactness(dtype, device, cycles: int, n: int = 1 << 20, eps: float = 1e-3) -> dict:
    """Fraction of elements bit-exact after ``cycles`` perturb/restore cycles with no update.

    kerzoo in place: the step's fused path (+eps z; restore and -eps z in one pass; +eps z).
    peers: +1, -2, +1 with torch.normal. kerzoo on the fly: W + eps z goes to a transient
    buffer for the forward, W itself is never written."""
    g = torch.Generator(device="cpu").manual_seed(0)
    theta0 = (torch.randn(n, generator=g) * 0.05).to(dtype).to(device)
    ours, theirs, w = theta0.clone(), theta0.clone(), theta0.clone()
    buf = torch.empty_like(w)
    key = engine.param_key("w")
    for c in range(cycles):
        engine.add_z(ours, eps, c, key)
        engine.restore_perturb(ours, -eps, c, -eps, c, key)
        engine.add_z(ours, eps, c, key)
        for scale in (1, -2, 1):
            torch.manual_seed(c)
            theirs.add_(
                torch.normal(0, 1, size=theirs.shape, device=device, dtype=dtype), alpha=scale * eps
            )
        for scale in (1, -1):
            engine.fill_z(buf, c, key)
            buf.mul_(scale * eps).add_(w)  # the perturbed weight of one forward
    frac = lambda t: float((t == theta0).float().mean())
    return {"kerzoo_inplace": frac(ours), "peers": frac(theirs), "kerzoo_onthefly": frac(w)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="opt-125m", help="opt-125m, opt-350m or opt-1.3b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--cycles", type=int, default=1000, help="perturb/restore cycles for exactness (0: skip)"
    )
    ap.add_argument(
        "--exact-dtypes", default="float32,float16,bfloat16", help="dtypes of the exactness check"
    )
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU; default: torch's)")
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        return cpu_peak_child(args.peak_child, args.model, args.dtype)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    engine.load_extension()
    backend = {r["op"]: r[device.type if device.type == "cuda" else "cpu"] for r in engine.info()}
    params = make_params(args.model, device, dtype)
    keys = [engine.param_key(f"p{i}") for i in range(len(params))]
    numel = sum(p.numel() for p in params)
    bytes_ = numel * params[0].element_size()
    src = torch.empty(bytes_ // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t_copy = best_time(lambda d=dst, s=src: d.copy_(s), device, args.repeat)
    del src, dst
    # interleaved, so that a busy machine slows all four alike
    t_ours = t_each = t_peers = t_floor = float("inf")
    for _ in range(args.repeat):
        t_floor = min(t_floor, best_time(lambda: floor_pass(params), device, 1))
        t_ours = min(t_ours, best_time(lambda: kerzoo_step_foreach(params, keys), device, 1))
        t_each = min(t_each, best_time(lambda: kerzoo_step(params, keys), device, 1))
        t_peers = min(t_peers, best_time(lambda: peers_step(params), device, 1))
    pass_bytes = 2 * bytes_
    res = {
        "machine": platform.node() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "model": args.model,
        "dtype": args.dtype,
        "params": numel,
        "tensors": len(params),
        "backend": backend["add_z_multi"],
        "floor_pass_s": t_floor,
        "floor_GBps": pass_bytes / t_floor / 1e9,
        "copy_GBps": pass_bytes / t_copy / 1e9,
        "kerzoo_step_s": t_ours,
        "kerzoo_per_tensor_step_s": t_each,
        "peers_step_s": t_peers,
        "speedup_vs_peers": t_peers / t_ours,
        "speedup_vs_peers_per_tensor": t_peers / t_each,
        "kerzoo_GBps_per_pass": 3 * pass_bytes / t_ours / 1e9,
        "kerzoo_pass_fraction_of_copy": (3 * pass_bytes / t_ours) / (pass_bytes / t_copy),
        "kerzoo_pass_over_floor": t_ours / 3 / t_floor,
        "largest_tensor_bytes": max(p.numel() for p in params) * params[0].element_size(),
    }
    if device.type == "cuda":
        res["peak_extra_bytes"] = {
            "kerzoo": peak_bytes(lambda: kerzoo_step_foreach(params, keys), device),
            "kerzoo_per_tensor": peak_bytes(lambda: kerzoo_step(params, keys), device),
            "peers": peak_bytes(lambda: peers_step(params), device),
        }
    else:
        del params
        res["peak_extra_bytes"] = {
            "kerzoo": cpu_peak_bytes("kerzoo_foreach", args.model, args.dtype),
            "kerzoo_per_tensor": cpu_peak_bytes("kerzoo", args.model, args.dtype),
            "peers": cpu_peak_bytes("peers", args.model, args.dtype),
        }
        res["peak_extra_bytes"]["how"] = (
            "rise of the resident-set high-water mark (VmHWM) over one step, in a fresh process"
        )
    if args.cycles:
        res["exact_fraction"] = {
            name: exactness(getattr(torch, name), device, args.cycles)
            for name in args.exact_dtypes.split(",")
            if name
        }
        res["exact_fraction"]["cycles"] = args.cycles
    print(json.dumps(res, indent=2))
    write_json(res, args.json)


if __name__ == "__main__":
    main()
