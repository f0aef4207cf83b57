"""Shared by the benchmark scripts: timing (best of several runs, synchronising a GPU), the peers'
MeZO step, memory readings, and writing results."""

import json
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeat: int) -> float:
    """The fastest of ``repeat`` timed calls, after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def peers_mezo_step(
    named_params, closure, seed: int, eps: float = 1e-3, lr: float = 1e-6, weight_decay: float = 0.0
) -> float:
    """The peers' MeZO step, written here from its description (MeZO's trainer): the global
    generator seeded, torch.normal per parameter added out of place (+1, -2, +1), then the update
    regenerating z, with weight decay except on biases and norms. ``closure`` returns the loss.
    Returns the first loss."""
    params = list(named_params)

    def perturb(scale):
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(
                mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype
            )
            p.data = p.data + scale * z * eps

    with torch.no_grad():
        perturb(1)
        l1 = float(closure())
        perturb(-2)
        l2 = float(closure())
        perturb(1)
        g = (l1 - l2) / (2 * eps)
        torch.manual_seed(seed)
        for n, p in params:
            z = torch.normal(
                mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype
            )
            if weight_decay and "bias" not in n and "norm" not in n.lower():
                p.data = p.data - lr * (g * z + weight_decay * p.data)
            else:
                p.data = p.data - lr * g * z
    return l1


def rss_high_water() -> int:
    """Bytes: VmHWM of this process (Linux; ru_maxrss would carry the parent's mark over exec)."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_bytes(opt) -> int:
    """Bytes an optimizer holds between steps: its state tensors and its projection's buffers."""
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return state + opt.projection.memory_bytes()


def write_json(result, path: str | None) -> None:
    """The raw result as indented JSON, where the command was given a path (--json)."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
