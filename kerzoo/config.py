"""Reading TOML and YAML config files into plain dicts (optimizer specs and training runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file or key and what to do."""


def read_text(path: Path, what: str = "file", error: type[Exception] = ConfigError) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped); ``error`` (a ConfigError unless given)
    naming the file and the line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{what} {path!s}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None


_LOADER = None


def _yaml_loader():
    """PyYAML's SafeLoader, reading floats as YAML 1.2 does: PyYAML (YAML 1.1) reads 1e-4, with
    no dot, as the string "1e-4"."""
    global _LOADER
    if _LOADER is None:
        import re

        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"),
        )
        _LOADER = Loader
    return _LOADER


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .toml, .yaml or .yml file; a clear ConfigError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = read_text(p, "config")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.load(text, Loader=_yaml_loader()) or {}
        else:
            raise ConfigError(f"config {str(p)!r}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config {str(p)!r} could not be parsed: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config {str(p)!r} must hold a mapping of keys, got {type(raw).__name__}"
        )
    return raw
