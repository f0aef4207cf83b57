"""Building the compiled extension just in time, and reporting which backend each op uses.

The C++ (and, where CUDA is present, CUDA) sources in ``extensions/`` are compiled with
``torch.utils.cpp_extension.load`` and ninja into a cache folder (``KERZOO_EXT_DIR``, default
``~/.cache/kerzoo/ext-<hash>``), once. If that is impossible the pure-torch reference runs,
with one warning; ``KERZOO_REQUIRE_EXT=1`` makes it an error and ``KERZOO_DISABLE_EXT=1``
skips the extension.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path

import torch

SOURCES = Path(__file__).resolve().parents[2] / "extensions"
_state: dict = {"tried": False, "cpu": None, "cuda": None, "why": {}}
_lock = threading.Lock()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def cpu_sources() -> list[Path]:
    return sorted((SOURCES / "csrc").glob("*.cpp"))


def cuda_sources() -> list[Path]:
    """The CUDA kernels (plain CUDA) and their torch glue."""
    return sorted((SOURCES / "cuda").glob("*.cu")) + sorted((SOURCES / "cuda").glob("*.cpp"))


def cache_dir(sources: list[Path]) -> Path:
    h = hashlib.sha256(torch.__version__.encode())
    for p in [*sources, *sorted(SOURCES.rglob("*.h"))]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    root = os.environ.get("KERZOO_EXT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerzoo"
    )
    return Path(root) / f"ext-{h.hexdigest()[:16]}"


def _compile(name: str, sources: list[Path], verbose: bool, cuda: bool) -> None:
    from torch.utils import cpp_extension

    build_dir = cache_dir(sources)
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp"]
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        build_directory=str(build_dir),
        verbose=verbose,
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "--use_fast_math"] if cuda else None,
        is_python_module=False,
    )


def load_extension(verbose: bool = False, cuda: bool | None = None) -> None:
    """Compile (first time) and load the extension; on failure keep the reference, warn once."""
    if _state["tried"]:
        return
    with _lock:
        if _state["tried"]:
            return
        _state["tried"] = True
        why = _state["why"]
        if _flag("KERZOO_DISABLE_EXT"):
            why["cpu"] = why["cuda"] = "KERZOO_DISABLE_EXT is set"
            return
        errors = []
        if not cpu_sources():
            why["cpu"] = "no C++ sources in extensions/csrc"
        else:
            try:
                _compile("kerzoo_cpu", cpu_sources(), verbose, cuda=False)
                _state["cpu"] = "c++"
            except Exception as exc:  # compiler missing, build error...
                why["cpu"] = (
                    f"build failed: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                )
                errors.append(why["cpu"])
        want_cuda = torch.cuda.is_available() if cuda is None else cuda
        if not cuda_sources():
            why["cuda"] = "no CUDA sources in extensions/cuda"
        elif not want_cuda:
            why["cuda"] = "no CUDA device" if torch.version.cuda else "torch has no CUDA"
        else:
            try:
                _compile("kerzoo_cuda", cuda_sources(), verbose, cuda=True)
                _state["cuda"] = "cuda"
            except Exception as exc:
                why["cuda"] = (
                    f"build failed: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                )
                errors.append(why["cuda"])
        if errors or not _state["cpu"]:
            reason = "; ".join(errors) or why.get("cpu")
            msg = (
                f"kerzoo: the compiled engine is not available ({reason}); "
                "using the pure-torch reference"
            )
            if _flag("KERZOO_REQUIRE_EXT"):
                raise RuntimeError(msg + " and KERZOO_REQUIRE_EXT=1 forbids it")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)


def build(verbose: bool = False, cuda: bool | None = None) -> dict:
    """Build the extension now (``kerzoo build-ext``); returns the backend per device."""
    with _lock:
        _state.update(tried=False, cpu=None, cuda=None, why={})
    load_extension(verbose=verbose, cuda=cuda)
    return {
        "cpu": _state["cpu"] or "reference",
        "cuda": _state["cuda"] or "reference",
        "why": dict(_state["why"]),
    }


def _has(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"kerzoo::{op}", key)


def info() -> list[dict]:
    """One row per op: the backend used on CPU and on CUDA, and why a backend was skipped."""
    from .ops import OPS

    load_extension()
    rows = []
    for op in OPS:
        cpu = "c++" if _has(op, "CPU") else "reference"
        cuda = "cuda" if _has(op, "CUDA") else "reference"
        why = "; ".join(f"{dev}: {w}" for dev, w in _state["why"].items())
        rows.append({"op": op, "cpu": cpu, "cuda": cuda, "why": why})
    return rows


def info_lines() -> list[str]:
    rows = info()
    width = max((len(r["op"]) for r in rows), default=0) + 1
    lines = [f"{r['op']:<{width}} cpu: {r['cpu']:<10} cuda: {r['cuda']}" for r in rows]
    why = rows[0]["why"] if rows else ""
    if why:
        lines.append(f"skipped: {why}")
    return lines
