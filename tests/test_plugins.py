import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

import kerzoo
from kerzoo import plugins
from kerzoo.hookspecs import hookimpl
from kerzoo.registry import NameClashError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "kerzoo-example-plugin"


@pytest.fixture(scope="module")
def example_installed():
    """Install the example plugin package as a user would, unless it already is."""
    if not any(ep.name == "example" for ep in entry_points(group="kerzoo")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-e",
                str(EXAMPLE),
            ],
            check=True,
        )
    yield
    plugins.reload()


@pytest.fixture
def fresh(monkeypatch):
    """Reload the plugin manager after the test changes the environment."""
    yield monkeypatch
    monkeypatch.undo()
    plugins.reload()


def test_example_plugin_is_found_by_entry_point(example_installed):
    plugins.reload()
    eps = {ep.name: ep for ep in entry_points(group="kerzoo")}
    assert eps["example"].value == "kerzoo_example_plugin"
    entry = plugins.entry("kernels", "quintic3")
    assert entry.plugin == "example"
    assert plugins.loaded_plugins()["example"] == "kerzoo-example-plugin"


def test_disable_plugins_keeps_builtins_only(example_installed, fresh):
    fresh.setenv("KERZOO_DISABLE_PLUGINS", "1")
    plugins.reload()
    assert "quintic3" not in kerzoo.list_kernels()
    assert "legendre3" in kerzoo.list_kernels()


def test_allow_list_keeps_only_named_plugins(example_installed, fresh):
    fresh.setenv("KERZOO_PLUGINS", "someone-else")
    plugins.reload()
    assert "quintic3" not in kerzoo.list_kernels()
    fresh.setenv("KERZOO_PLUGINS", "example")
    plugins.reload()
    assert "quintic3" in kerzoo.list_kernels()


def _fake_entry_points(tmp_path, fresh, modules: dict[str, str]):
    """Entry points whose modules are real files in tmp_path, loaded by ep.load() as pip would."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    fresh.syspath_prepend(str(tmp_path))
    eps = [EntryPoint(name=n, value=n, group="kerzoo") for n in modules]
    fresh.setattr(plugins, "entry_points", lambda group: eps if group == "kerzoo" else [])
    fresh.setenv("KERZOO_PLUGINS", ",".join(modules))


GOOD = """
    from kerzoo.hookspecs import hookimpl
    from kerzoo.kernels import PolynomialKernel
    @hookimpl
    def kerzoo_register_kernels(register):
        register(PolynomialKernel("{name}", [0, 3], order=1))
"""


def test_plugin_that_raises_at_import_is_reported_and_others_load(tmp_path, fresh):
    _fake_entry_points(
        tmp_path,
        fresh,
        {
            "kz_broken_import": "raise ImportError('needs a library that is not installed')",
            "kz_good": GOOD.format(name="good-kernel"),
        },
    )
    with pytest.warns(RuntimeWarning, match="kz_broken_import"):
        plugins.reload()
    failures = {f.name: f for f in plugins.failed_plugins()}
    assert failures["kz_broken_import"].stage == "import"
    assert "needs a library that is not installed" in failures["kz_broken_import"].reason
    assert "good-kernel" in kerzoo.list_kernels()
    assert "legendre3" in kerzoo.list_kernels()


def test_plugin_that_raises_while_registering_is_rolled_back(tmp_path, fresh):
    _fake_entry_points(
        tmp_path,
        fresh,
        {
            "kz_half": GOOD.format(name="half-kernel")
            + "        raise RuntimeError('second item broke')\n",
            "kz_good": GOOD.format(name="good-kernel"),
        },
    )
    with pytest.warns(RuntimeWarning, match="kz_half"):
        plugins.reload()
    failures = {f.name: f for f in plugins.failed_plugins()}
    assert (
        failures["kz_half"].stage == "register"
        and "second item broke" in failures["kz_half"].reason
    )
    assert "half-kernel" not in kerzoo.list_kernels()
    assert "good-kernel" in kerzoo.list_kernels()


def test_name_clash_between_entry_points_names_both(tmp_path, fresh):
    _fake_entry_points(
        tmp_path,
        fresh,
        {
            "kz_a": GOOD.format(name="same-name"),
            "kz_b": GOOD.format(name="same-name"),
        },
    )
    with pytest.warns(RuntimeWarning, match="kz_b"):
        plugins.reload()
    (failure,) = plugins.failed_plugins()
    assert failure.name == "kz_b" and "kz_a" in failure.reason and "kz_b" in failure.reason
    assert plugins.entry("kernels", "same-name").plugin == "kz_a"


def test_name_clash_with_builtin_is_refused_at_runtime():
    class Clash:
        @hookimpl
        def kerzoo_register_kernels(self, register):
            register(kerzoo.plugins.get("kernels", "legendre3"), "legendre3")

    with pytest.raises(NameClashError, match=r"kerzoo.kernels.legendre"):
        plugins.register_plugin(Clash(), "clash")
    assert plugins.entry("kernels", "legendre3").plugin == "kerzoo.kernels.legendre"


def test_unknown_registry_kind_suggests():
    with pytest.raises(KeyError, match="kernels"):
        plugins.get_registry("kernel")


def test_example_plugin_estimator_passes_the_conformance_suite(example_installed):
    from kerzoo.testing import check_optimizer

    plugins.reload()
    assert plugins.entry("estimators", "richardson").plugin == "example"
    check_optimizer({"estimator": "richardson", "update": "sgd"})


def test_example_plugin_projection_is_listed_and_passes_the_conformance_suite(
    example_installed, capsys
):
    from kerzoo.cli import main
    from kerzoo.testing import check_optimizer

    plugins.reload()
    assert plugins.entry("projections", "sparse").plugin == "example"
    assert main(["list", "projections"]) == 0
    (line,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("sparse ")]
    assert "example" in line
    check_optimizer({"projection": "sparse", "update": "sgd"})
    check_optimizer({"preset": "kerzoo", "projection": "sparse", "density": 0.5})


def test_example_sparse_projection_keeps_density_and_unit_second_moment(example_installed):
    import torch

    from kerzoo.engine import param_key
    from kerzoo.projections import ParamInfo

    plugins.reload()
    sparse = plugins.get("projections", "sparse")(density=0.25)
    info = ParamInfo("w", param_key("w"), torch.zeros(400, 500), 0)
    z = sparse.materialize(info, [1.0], [7])
    kept = float((z != 0).float().mean())
    assert abs(kept - 0.25) < 0.01, kept
    assert abs(float((z * z).mean()) - 1.0) < 0.03
    assert torch.equal(z, sparse.materialize(info, [1.0], [7]))  # a pure function of the seed
    assert not torch.equal(
        z != 0, sparse.materialize(info, [1.0], [8]) != 0
    )  # a fresh mask per direction
    shard = ParamInfo(
        "w", param_key("w"), torch.zeros(3000), 0, offset=12345
    )  # shardable: a flat slice
    assert torch.equal(sparse.materialize(shard, [1.0], [7]), z.flatten()[12345:15345])
    with pytest.raises(ValueError, match="density"):
        plugins.get("projections", "sparse")(density=0.0)
