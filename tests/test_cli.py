import subprocess
import sys
from fractions import Fraction

import pytest

from kerzoo.cli import main
from kerzoo.kernels import PolynomialKernel

# module:attribute targets for check-kernel
BROKEN = PolynomialKernel("broken", [0, 3, 0, 1], order=3)  # E[s K] = 1 + 1/5, E[s^3 K] = 3/5 + 1/7
GOOD = PolynomialKernel("good", [0, Fraction(75, 4), 0, Fraction(-105, 4)], order=3)


def test_list_kernels_shows_builtins_with_plugin_and_doc(capsys):
    assert main(["list", "kernels"]) == 0
    out = capsys.readouterr().out
    for name in ("legendre1", "legendre3", "legendre5"):
        assert name in out
    assert "kerzoo.kernels.legendre" in out and "cancels the eps^2 bias" in out


def test_check_kernel_valid_by_name(capsys):
    assert main(["check-kernel", "legendre5"]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_kernel_refuses_bad_kernel_with_moments_and_exit_1(capsys):
    assert main(["check-kernel", f"{__name__}:BROKEN"]) == 1
    out = capsys.readouterr().out
    assert "1.200000000000e+00" in out and "FAIL" in out and "INVALID" in out


def test_check_kernel_accepts_module_attribute(capsys):
    assert main(["check-kernel", f"{__name__}:GOOD"]) == 0


def test_check_kernel_unknown_name_suggests():
    with pytest.raises(SystemExit, match="legendre3"):
        main(["check-kernel", "legendre4"])


def test_info_reports_versions_and_plugins(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert (
        "torch" in out and "kerzoo.kernels.legendre  (builtin)" in out and "plugins failed:" in out
    )


def test_console_script_runs_as_a_user_would():
    result = subprocess.run(
        [sys.executable, "-m", "kerzoo.cli", "check-kernel", "tests.test_cli:BROKEN"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout


def test_build_ext_reports_backends(capsys):
    rc = main(["build-ext"])
    out = capsys.readouterr().out
    assert "add_z_multi" in out and "cpu:" in out
    assert rc == (0 if "cpu: c++" in out else 1)
