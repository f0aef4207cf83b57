"""Every ```python block in README.md and docs/**/*.md runs, so a stale example fails CI.

The blocks of one file run in order in one namespace, like a reader following the page, in a
temporary working directory. A block preceded by the line ``<!-- not-run -->`` is skipped
(for snippets that need a GPU or a network); use it sparingly.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(<!-- not-run -->\s*\n)?```python\n(.*?)```", re.S)


def doc_files():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [f for f in files if FENCE.search(f.read_text())]


def blocks(path: Path):
    return [m.group(2) for m in FENCE.finditer(path.read_text()) if not m.group(1)]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    for i, code in enumerate(blocks(path)):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(
                f"{path.relative_to(ROOT)}, python block {i} failed: {exc!r}\n{code}"
            ) from exc


def test_fence_finder_sees_readme_example():
    assert blocks(ROOT / "README.md"), "README.md should carry a runnable python example"


def test_config_reference_is_generated_from_the_code():
    from kerzoo.train.reference import COMMAND, markdown

    path = ROOT / "docs" / "config-reference.md"
    assert path.exists(), f"docs/config-reference.md is missing: run `{COMMAND}`"
    assert path.read_text(encoding="utf-8") == markdown(), (
        "docs/config-reference.md differs from the code (a key, default or preset changed): run "
        f"`{COMMAND}`"
    )


def test_config_reference_covers_every_key():
    from kerzoo.presets import OPTIMIZER_OPTIONS, PARTS
    from kerzoo.train.config import SCHEMA

    text = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    keys = [f"{s}.{k}" for s, ks in SCHEMA.items() for k in ks]
    keys += [f"optimizer.{k}" for k in (*PARTS, *OPTIMIZER_OPTIONS, "preset")]
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"docs/config-reference.md lacks {missing}"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_resolve():
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


TOML = re.compile(r"```toml\n(.*?)```", re.S)


def test_toml_configs_in_the_docs_pass_the_config_check():
    """A ```toml block with a training section is a config a reader may copy: it must validate."""
    import tomllib

    from kerzoo.presets import resolve
    from kerzoo.train.config import SCHEMA, validate

    checked = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, block in enumerate(TOML.findall(path.read_text(encoding="utf-8"))):
            raw = tomllib.loads(block)
            if not set(raw) & (set(SCHEMA) - {"optimizer"}):
                continue  # an optimizer-only spec or a plugin's pyproject, checked elsewhere
            try:
                resolve(validate(raw)["optimizer"])  # the [optimizer] table's names and options too
            except Exception as exc:
                raise AssertionError(
                    f"{path.relative_to(ROOT)}, toml block {i}: {exc}\n{block}"
                ) from exc
            checked += 1
    assert checked, "no training config found in the docs' toml blocks"
