"""The compiled backends the kernel-against-reference tests need: a failed build where a compiler
exists is a failure, not a skip (CI must not stay green with a broken engine)."""

import importlib
import os
import shutil

import pytest
import torch

import kerzoo.engine as engine

# the module (kerzoo.engine.build is also the name of its function build())
build = importlib.import_module("kerzoo.engine.build")


def _require(kind: str, backend: str) -> None:
    row = engine.info()[0]
    if row[kind] == backend:
        return
    if os.environ.get("KERZOO_DISABLE_EXT", "").strip() not in ("", "0"):
        pytest.skip("KERZOO_DISABLE_EXT is set")
    tools = [build.compiler()] + (["nvcc"] if kind == "cuda" else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no compiler here ({', '.join(missing)}): {row['why']}")
    pytest.fail(f"the compiler is here but the {kind} engine did not load: {row['why']}")


@pytest.fixture(scope="module")
def ext():
    _require("cpu", "c++")


@pytest.fixture
def cuda_ext():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _require("cuda", "cuda")
