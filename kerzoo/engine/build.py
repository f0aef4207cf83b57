"""Loading the compiled engine, and reporting which backend each op uses and by which route.

The C++ sources (``csrc/``) and CUDA sources (``cuda/``) are package data beside this file, so
every install carries them. Each backend (CPU; CUDA where torch sees a device) is loaded by the
first route that works, in this order:

1. ``aot``: a module built at ``pip install`` time (``KERZOO_BUILD_OPS=1``, setup.py):
   ``kerzoo._engine_cpu`` / ``kerzoo._engine_cuda``;
2. ``jit-cache``: a library this machine built before, from the cache folder
   (``KERZOO_EXT_DIR``, default ``~/.cache/kerzoo``) under a key of everything the binary
   depends on (see :func:`build_key`);
3. ``jit-built``: compiled now with ``torch.utils.cpp_extension.load`` and ninja, once, with a
   line on stderr when it starts and when it is done;
4. ``reference``: the pure-torch ops, with one warning. ``KERZOO_REQUIRE_EXT=1`` makes this an
   error; ``KERZOO_DISABLE_EXT=1`` goes straight to it.

This module imports nothing from kerzoo at its top level: setup.py loads it by path for the
flags and the build record, so that the two routes compile the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent
CPU_DIR = PACKAGE / "csrc"
CUDA_DIR = PACKAGE / "cuda"
# -march is KERZOO_CPU_ARCH (default native: the build machine's ISA, which is in the key).
CXX_FLAGS = ["-O3", "-ffast-math", "-fno-finite-math-only", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
CUDA_FLAGS = ["-O3", "--use_fast_math"]
AOT_MODULES = {"cpu": "kerzoo._engine_cpu", "cuda": "kerzoo._engine_cuda"}
AOT_RECORD = "_engine_build.json"  # beside the AOT modules: what they were built for
START_LINE = "kerzoo: compiling kerzoo's engine for this machine, once: about a minute"

_state: dict = {"tried": False, "cpu": None, "cuda": None, "route": {}, "why": {}, "where": {}}
_lock = threading.Lock()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def cpu_sources() -> list[Path]:
    return sorted(CPU_DIR.glob("*.cpp"))


def cuda_sources() -> list[Path]:
    """The CUDA kernels (plain CUDA) and their torch glue."""
    return sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cpp"))


def arch() -> str:
    return os.environ.get("KERZOO_CPU_ARCH", "").strip() or "native"


def cxx_flags() -> list[str]:
    return [*CXX_FLAGS, f"-march={arch()}"]


def compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension will call: $CXX, else c++."""
    return os.environ.get("CXX", "").strip() or "c++"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({type(exc).__name__})"
    return (out.stdout + out.stderr).strip()


def cpu_isa() -> str:
    """The CPU's instruction set, which -march=native resolves to: the flags /proc/cpuinfo lists
    (Linux), else the compiler's own resolution (``-march=native -Q --help=target``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return platform.machine() + ":" + " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + ":" + _run([compiler(), "-march=native", "-Q", "--help=target"])


def build_key(kind: str) -> dict:
    """Everything a compiled backend depends on; its hash names the cache folder.

    Two environments on one machine (another torch, interpreter or compiler) get two folders
    and never rebuild each other's; a cache shared across CPUs never loads code built for
    another ISA."""
    cxx = compiler()
    key = {
        "kind": kind,
        "torch": torch.__version__,
        "torch_path": str(Path(torch.__file__).resolve().parent),
        "torch_cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": sys.executable,
        "python_version": sys.version,
        "cxx": shutil.which(cxx) or cxx,
        "cxx_version": _run([cxx, "--version"]).splitlines()[0:1],
        "cxx_flags": cxx_flags(),
        "ld_flags": LD_FLAGS,
        "isa": cpu_isa() if arch() == "native" else arch(),
        "sources": {},
    }
    if kind == "cuda":
        key["cuda_flags"] = CUDA_FLAGS
        key["cuda_arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        key["nvcc"] = shutil.which("nvcc")
    for p in sorted([*CPU_DIR.iterdir(), *(CUDA_DIR.iterdir() if kind == "cuda" else [])]):
        key["sources"][f"{p.parent.name}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return key


def cache_root() -> Path:
    root = os.environ.get("KERZOO_EXT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerzoo"
    )
    return Path(root)


def cache_dir(kind: str) -> Path:
    blob = json.dumps(build_key(kind), sort_keys=True).encode()
    return cache_root() / f"{kind}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _library(build_dir: Path, name: str) -> Path:
    return build_dir / f"{name}.so"


def _ninja_on_path() -> None:
    """The ninja package's binary, for an interpreter run without its environment activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except (ImportError, AttributeError):
        pass


def _compile(kind: str, verbose: bool) -> Path:
    from torch.utils import cpp_extension

    cxx = compiler()
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"no C++ compiler: {cxx!r} is not on PATH; install one (e.g. apt-get install g++) "
            "or set CXX to its path"
        )
    if kind == "cuda" and shutil.which("nvcc") is None and not cpp_extension.CUDA_HOME:
        raise RuntimeError("no CUDA compiler: nvcc is not on PATH and CUDA_HOME is not set")
    _ninja_on_path()
    name = f"kerzoo_{kind}"
    build_dir = cache_dir(kind)
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "key.json").write_text(json.dumps(build_key(kind), indent=1, sort_keys=True))
    print(START_LINE, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in (cpu_sources() if kind == "cpu" else cuda_sources())],
        build_directory=str(build_dir),
        verbose=verbose,
        extra_cflags=cxx_flags(),
        extra_ldflags=LD_FLAGS,
        extra_cuda_cflags=CUDA_FLAGS if kind == "cuda" else None,
        is_python_module=False,
    )
    (build_dir / "complete").write_text("")
    print(
        f"kerzoo: engine ({kind}) compiled in {time.perf_counter() - t0:.1f} s, "
        f"cached in {build_dir}",
        file=sys.stderr,
        flush=True,
    )
    return build_dir


def aot_record() -> dict | None:
    """What setup.py recorded about the AOT modules it built, or None where it built none."""
    path = PACKAGE.parent / AOT_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _aot(kind: str) -> tuple[str | None, str]:
    """The AOT module's path if it fits this environment, else None and why not."""
    spec = importlib.util.find_spec(AOT_MODULES[kind])
    if spec is None or not spec.origin:
        return None, "not built at install time"
    record = (aot_record() or {}).get(kind)
    if record is None:
        return None, f"no build record for {AOT_MODULES[kind]}"
    if record.get("torch") != torch.__version__:
        return None, f"built for torch {record.get('torch')}, this is {torch.__version__}"
    if record.get("arch") == "native" and record.get("isa") != cpu_isa():
        return None, "built for another CPU (-march=native)"
    return spec.origin, ""


def _load_backend(kind: str, verbose: bool) -> None:
    """One backend by the first route that works; records route, where, and why."""
    route, why, where = _state["route"], _state["why"], _state["where"]
    notes = []
    path, reason = _aot(kind)
    if path:
        try:
            torch.ops.load_library(path)
            route[kind], where[kind] = "aot", path
            return
        except Exception as exc:
            reason = f"failed to load: {type(exc).__name__}: {exc}"
    notes.append(f"aot: {reason}")
    name = f"kerzoo_{kind}"
    try:
        build_dir = cache_dir(kind)
        lib = _library(build_dir, name)
        if lib.exists() and (build_dir / "complete").exists():
            torch.ops.load_library(str(lib))
            route[kind], where[kind] = "jit-cache", str(lib)
            why[kind] = "; ".join(notes)
            return
        build_dir = _compile(kind, verbose)
        route[kind], where[kind] = "jit-built", str(_library(build_dir, name))
        why[kind] = "; ".join(notes)
    except Exception as exc:  # compiler missing, build error...
        text = str(exc).strip()
        route[kind] = "reference"
        why[kind] = f"build failed: {type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def load_extension(verbose: bool = False, cuda: bool | None = None) -> None:
    """Load (building the first time) the compiled backends; on failure keep the reference and
    warn once, or raise where KERZOO_REQUIRE_EXT=1."""
    if _state["tried"]:
        return
    with _lock:
        if _state["tried"]:
            return
        _state["tried"] = True
        why, route = _state["why"], _state["route"]
        if _flag("KERZOO_DISABLE_EXT"):  # asked for: no warning
            why["cpu"] = why["cuda"] = "KERZOO_DISABLE_EXT is set"
            route["cpu"] = route["cuda"] = "reference"
            return
        _load_backend("cpu", verbose)
        want_cuda = torch.cuda.is_available() if cuda is None else cuda
        if not want_cuda:
            route["cuda"] = "reference"
            why["cuda"] = "no CUDA device" if torch.version.cuda else "torch has no CUDA"
        else:
            _load_backend("cuda", verbose)
        _state["cpu"] = "c++" if route["cpu"] != "reference" else None
        _state["cuda"] = "cuda" if route["cuda"] != "reference" else None
        failed = [k for k in ("cpu", "cuda") if route[k] == "reference" and "failed" in why[k]]
        if failed or route["cpu"] == "reference":
            reason = "; ".join(f"{k}: {why[k]}" for k in failed) or why["cpu"]
            msg = (
                f"kerzoo: the compiled engine is not available ({reason}); "
                "using the pure-torch reference"
            )
            if _flag("KERZOO_REQUIRE_EXT"):
                raise RuntimeError(msg + " and KERZOO_REQUIRE_EXT=1 forbids it")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)


def build(verbose: bool = False, cuda: bool | None = None) -> dict:
    """Load the compiled backends now, building them where needed (``kerzoo build-ext``);
    returns the backend, route and reason per device."""
    with _lock:
        _state.update(tried=False, cpu=None, cuda=None, route={}, why={}, where={})
    load_extension(verbose=verbose, cuda=cuda)
    return {
        "cpu": _state["cpu"] or "reference",
        "cuda": _state["cuda"] or "reference",
        "route": dict(_state["route"]),
        "why": dict(_state["why"]),
    }


def _has(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"kerzoo::{op}", key)


def info() -> list[dict]:
    """One row per op: the backend on CPU and on CUDA, the route each backend came by, and why
    a route was skipped."""
    from .ops import OPS

    load_extension()
    rows = []
    route = _state["route"]
    for op in OPS:
        cpu = "c++" if _has(op, "CPU") else "reference"
        cuda = "cuda" if _has(op, "CUDA") else "reference"
        why = "; ".join(f"{dev}: {w}" for dev, w in _state["why"].items() if w)
        rows.append(
            {
                "op": op,
                "cpu": cpu,
                "cuda": cuda,
                "cpu_route": route.get("cpu", "reference") if cpu != "reference" else "reference",
                "cuda_route": route.get("cuda", "reference")
                if cuda != "reference"
                else "reference",
                "why": why,
            }
        )
    return rows


def info_lines() -> list[str]:
    rows = info()
    width = max((len(r["op"]) for r in rows), default=0) + 1
    lines = [f"{r['op']:<{width}} cpu: {r['cpu']:<10} cuda: {r['cuda']}" for r in rows]
    for kind in ("cpu", "cuda"):
        route = _state["route"].get(kind, "reference")
        line = f"{kind} route: {route}"
        if route != "reference":
            line += f" ({_state['where'][kind]})"
        why = _state["why"].get(kind)
        if why:
            line += f"; {'why' if route == 'reference' else 'skipped'}: {why}"
        lines.append(line)
    return lines
