"""The optional ahead-of-time build of kerzoo's engine (everything else is in pyproject.toml).

    KERZOO_BUILD_OPS=1 pip install --no-build-isolation .

builds kerzoo._engine_cpu, and where nvcc and a CUDA torch are present kerzoo._engine_cuda,
with torch.utils.cpp_extension's BuildExtension against the torch already installed (hence
--no-build-isolation), with the flags of the just-in-time route (kerzoo/engine/build.py). Without
KERZOO_BUILD_OPS the package is pure Python and the engine is compiled on first use.
KERZOO_CPU_ARCH (default native) picks -march: set it (e.g. x86-64-v3) for an image that runs on
other CPUs than the one that builds it.
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _wanted() -> bool:
    return os.environ.get("KERZOO_BUILD_OPS", "").strip() not in ("", "0")


def _build_module():
    """kerzoo/engine/build.py by path (importing kerzoo would import all of it)."""
    spec = importlib.util.spec_from_file_location("_kerzoo_build", HERE / "kerzoo/engine/build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(paths):
    return [str(p.relative_to(HERE)) for p in paths]


def _options() -> dict:
    if not _wanted():
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        raise SystemExit(
            f"KERZOO_BUILD_OPS=1 needs torch installed first and pip's --no-build-isolation ({exc})"
        ) from None
    b = _build_module()
    exts = [
        CppExtension(
            "kerzoo._engine_cpu",
            _rel(b.cpu_sources()),
            extra_compile_args={"cxx": b.cxx_flags()},
            extra_link_args=b.LD_FLAGS,
        )
    ]
    record = {"cpu": {"torch": torch.__version__, "arch": b.arch(), "isa": b.cpu_isa()}}
    if torch.version.cuda and CUDA_HOME and shutil.which("nvcc"):
        exts.append(
            CUDAExtension(
                "kerzoo._engine_cuda",
                _rel(b.cuda_sources()),
                extra_compile_args={"cxx": ["-O3"], "nvcc": b.CUDA_FLAGS},
            )
        )
        record["cuda"] = {"torch": torch.__version__, "arch": "n/a", "isa": None}
    else:
        print("kerzoo: no nvcc or no CUDA torch: building the CPU engine only")

    class Build(BuildExtension):
        def run(self):
            super().run()
            out = Path(self.build_lib) / "kerzoo" / b.AOT_RECORD
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=1))
            if self.inplace:
                (HERE / "kerzoo" / b.AOT_RECORD).write_text(json.dumps(record, indent=1))

    return {"ext_modules": exts, "cmdclass": {"build_ext": Build}}


setup(**_options())
