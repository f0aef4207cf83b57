"""docs/writing-plugins.md, followed as a new user would: the packages of its walkthrough are
extracted from the page, installed, found by `kerzoo list`, and pass their own tests (the kernel
check and the conformance suite).

Every fenced block preceded by ``<!-- file: PATH -->`` is written to PATH under a temporary
folder. The packages are installed with pip into a folder of their own (``--target``, no
network: ``--no-deps --no-build-isolation`` with the setuptools already installed), which the
subprocesses put on their PYTHONPATH: entry points are found there by importlib.metadata, as
in an environment where they were pip-installed, and the current environment is left untouched.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import kerzoo

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-plugins.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\s*\n```[a-z]*\n(.*?)```", re.S)
# what each package registers: (entry-point name, kind, item name)
EXPECTED = {
    "kerzoo-septic": ("septic", "kernels", "septic3"),
    "kerzoo-stencil": ("stencil", "estimators", "stencil5"),
    "kerzoo-masked": ("masked", "projections", "masked"),
}


def guide_files() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in FILE_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}


def test_guide_has_a_complete_package_per_part():
    files = guide_files()
    for pkg in EXPECTED:
        module = pkg.replace("-", "_")
        for rel in ("pyproject.toml", f"{module}.py"):
            assert f"{pkg}/{rel}" in files, (
                f"docs/writing-plugins.md lacks the file block {pkg}/{rel}"
            )
        assert any(p.startswith(f"{pkg}/tests/") for p in files), f"{pkg} has no tests in the guide"
        assert f'\n{EXPECTED[pkg][0]} = "{module}"' in files[f"{pkg}/pyproject.toml"], (
            f"{pkg}: entry point"
        )


def _run(args, env, cwd, timeout=300):
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def test_walkthrough_packages_install_list_and_pass_their_tests(tmp_path):
    work = tmp_path / "work"
    for rel, text in guide_files().items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    site = tmp_path / "site"
    env = {
        k: v for k, v in os.environ.items() if k not in ("KERZOO_PLUGINS", "KERZOO_DISABLE_PLUGINS")
    }
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-compile",
            "--target",
            str(site),
            *(str(work / pkg) for pkg in EXPECTED),
        ],
        env,
        tmp_path,
    )
    # the installed packages, then the kerzoo this test imports (a checkout or an install)
    env["PYTHONPATH"] = os.pathsep.join(
        [
            str(site),
            str(Path(kerzoo.__file__).resolve().parents[1]),
            *filter(None, [os.environ.get("PYTHONPATH")]),
        ]
    )
    cli = [
        sys.executable,
        "-c",
        "import sys; from kerzoo.cli import main; sys.exit(main(sys.argv[1:]))",
    ]

    listing = _run([*cli, "list"], env, tmp_path)
    for plugin, kind, item in EXPECTED.values():
        section = listing.split(f"{kind} (", 1)[1].split("\n\n", 1)[0]
        rows = [line.split() for line in section.splitlines()]
        assert [item, plugin] in [r[:2] for r in rows], (
            f"{item} (plugin {plugin}) not listed under {kind}:\n{listing}"
        )

    assert "valid" in _run([*cli, "check-kernel", "septic3"], env, tmp_path)
    tests = [str(work / pkg / "tests") for pkg in EXPECTED]
    out = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(work),
            *tests,
        ],
        env,
        work,
        timeout=600,
    )
    assert " passed" in out and "failed" not in out, out
