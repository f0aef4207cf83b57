"""Reading TOML and YAML config files into plain dicts (optimizer specs and training runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file or key and what to do."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .toml, .yaml or .yml file; a clear ConfigError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
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
