"""Shared by the benchmark scripts: timing (best of several runs, synchronising a GPU), the peers'
MeZO step, memory readings, optimizer specs and writing results. What a benchmark reads from an
optimizer beyond its documented API is read here (``workspace_bytes``), so a change inside kerzoo
is followed in one place."""

import json
import os
import statistics
import subprocess
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


def timed_steps(
    opt, closure, steps: int, device=None, warmup: int = 0, cpu: list | None = None
) -> list[float]:
    """Seconds of each of ``steps`` calls of ``opt.step(closure)`` after ``warmup`` untimed;
    ``cpu``, a list, gets each step's CPU seconds of this process (steadier on a busy machine)."""
    for _ in range(warmup):
        opt.step(closure)
    times = []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        opt.step(closure)
        if device is not None:
            sync(device)
        times.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def parse_spec(spec: str, defaults: dict | None = None) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, options): numbers where a value reads as one,
    booleans for true/false."""
    name, _, rest = spec.partition(":")
    options = dict(defaults or {})
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"optimizer spec {spec!r}: write options as key=value, got {item!r}")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
            continue
        try:
            options[key] = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            options[key] = value
    return name, options


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


def workspace_bytes(opt) -> int:
    """Bytes of the transient workspace a perturbation strategy keeps between steps (on the fly:
    the largest module's tensors that need a copy; in place: none). The one place a benchmark reads
    the optimizer's perturbation strategy (``opt.perturber``)."""
    return opt.perturber.memory_bytes()


def source_commit() -> str | None:
    """The git commit of the kerzoo package being timed (where it is a checkout), else None."""
    import kerzoo

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(kerzoo.__file__),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_json(result, path: str | None) -> None:
    """The raw result as indented JSON, where the command was given a path (--json)."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def peak(fn, device: torch.device) -> int | None:
    """Peak bytes allocated on a GPU over one call of ``fn`` (None on a CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated()
