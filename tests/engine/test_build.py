"""How the engine is built and loaded: the cache key, the routes, the messages, the package data."""

import fnmatch
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import kerzoo.engine as engine

# the module (kerzoo.engine.build is also the name of its function build())
build = importlib.import_module("kerzoo.engine.build")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_cache_folder_differs_per_environment(monkeypatch):
    """Two venvs sharing a home (another interpreter or torch), another compiler, other flags or
    another CPU: another folder, so no environment rebuilds another's engine."""
    base = build.cache_dir("cpu")
    assert build.cache_dir("cpu") == base
    assert build.cache_dir("cuda") != base
    changes = [
        lambda m: m.setattr(sys, "executable", "/other/venv/bin/python"),
        lambda m: m.setattr(build.torch, "__file__", "/other/site-packages/torch/x.py"),
        lambda m: m.setattr(build.torch, "__version__", "0.0.1"),
        lambda m: m.setenv("CXX", "clang++"),
        lambda m: m.setattr(build, "CXX_FLAGS", [*build.CXX_FLAGS, "-O2"]),
        lambda m: m.setattr(build, "cpu_isa", lambda: "x86_64:sse2"),
        lambda m: m.setenv("KERZOO_CPU_ARCH", "x86-64-v3"),
        lambda m: m.setattr(build, "CPU_DIR", build.PACKAGE / "cuda"),
    ]
    for change in changes:
        with monkeypatch.context() as m:
            change(m)
            assert build.cache_dir("cpu") != base


def test_the_isa_is_the_cpus_and_march_native_is_in_the_flags():
    assert build.cpu_isa() and build.cpu_isa() == build.cpu_isa()
    assert "-march=native" in build.cxx_flags()


def test_info_names_the_route_of_each_backend():
    rows = engine.info()
    routes = {"aot", "jit-cache", "jit-built", "reference"}
    assert all(r["cpu_route"] in routes and r["cuda_route"] in routes for r in rows)
    fill = rows[0]
    assert (fill["cpu_route"] == "reference") == (fill["cpu"] == "reference")
    lines = engine.info_lines()
    cpu_line = next(line for line in lines if line.startswith("cpu route: "))
    assert cpu_line.startswith(f"cpu route: {fill['cpu_route']}")
    if fill["cpu_route"] == "reference":
        assert "why: " in cpu_line


def test_an_aot_module_is_used_only_where_it_fits(monkeypatch):
    class Spec:
        origin = "/site/kerzoo/_engine_cpu.so"

    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    assert build._aot("cpu") == (None, "not built at install time")
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: Spec)
    monkeypatch.setattr(build, "aot_record", lambda: None)
    assert "no build record" in build._aot("cpu")[1]
    record = {"torch": build.torch.__version__, "arch": "native", "isa": build.cpu_isa()}
    monkeypatch.setattr(build, "aot_record", lambda: {"cpu": record})
    assert build._aot("cpu") == (Spec.origin, "")
    monkeypatch.setattr(build, "aot_record", lambda: {"cpu": {**record, "torch": "1.0"}})
    assert "built for torch 1.0" in build._aot("cpu")[1]
    monkeypatch.setattr(build, "aot_record", lambda: {"cpu": {**record, "isa": "x86_64:sse2"}})
    assert "another CPU" in build._aot("cpu")[1]
    generic = {**record, "arch": "x86-64-v3", "isa": "x86_64:sse2"}
    monkeypatch.setattr(build, "aot_record", lambda: {"cpu": generic})
    assert build._aot("cpu") == (Spec.origin, "")


def _fresh(tmp_path, code, **env):
    base = {
        k: v for k, v in os.environ.items() if k not in ("KERZOO_DISABLE_EXT", "KERZOO_REQUIRE_EXT")
    }
    env = {**base, "KERZOO_EXT_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_a_missing_compiler_is_named_then_the_reference_runs_with_one_warning(tmp_path):
    code = (
        "import warnings, torch, kerzoo.engine as e\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always'); e.fill_z(torch.zeros(8), 1, 2)\n"
        "    e.add_z(torch.zeros(8), 1., 1, 2)\n"
        "print(len(w)); print(w[0].message); print(e.info_lines()[-2])"
    )
    out = _fresh(tmp_path, code, CXX="/no/such/g++")
    assert out.returncode == 0, out.stderr
    count, message, line = out.stdout.strip().splitlines()
    assert count == "1"
    assert "no C++ compiler: '/no/such/g++'" in message and "reference" in message
    assert line.startswith("cpu route: reference; why: build failed") and "/no/such/g++" in line
    assert build.START_LINE not in out.stderr  # nothing was compiled


def test_the_build_says_when_it_starts(tmp_path):
    out = _fresh(
        tmp_path, "import torch, kerzoo.engine as e; e.fill_z(torch.zeros(8), 1, 2)", CXX="false"
    )
    assert out.returncode == 0, out.stderr
    assert build.START_LINE in out.stderr


in_checkout = pytest.mark.skipif(not PYPROJECT.exists(), reason="not run from a checkout")


@in_checkout
def test_the_package_data_globs_carry_every_engine_source_and_each_matches():
    globs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["kerzoo"]
    root = build.PACKAGE.parent
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    for g in globs:
        assert any(fnmatch.fnmatch(f, g) for f in files), f"package-data glob {g!r} matches nothing"
    sources = [*build.CPU_DIR.iterdir(), *build.CUDA_DIR.iterdir()]
    assert sources
    for p in sources:
        rel = str(p.relative_to(root))
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data"


@in_checkout
@pytest.mark.parametrize("name", ["LICENSE", "CHANGELOG.md"])
def test_the_release_files_exist(name):
    assert (PYPROJECT.parent / name).stat().st_size > 0
