"""The plugin manager: built-ins first, then entry points of the group ``kerzoo``.

Every plugin, built-in or not, registers through the hooks of :mod:`kerzoo.hookspecs`.
Each plugin loads and registers inside its own guard: one that fails to import or to
register is recorded with its reason (``failed_plugins()``, ``kerzoo info``), its partial
registrations are rolled back, and the others still load.

Environment:
- ``KERZOO_DISABLE_PLUGINS=1``: load the built-ins only, no entry points.
- ``KERZOO_PLUGINS=a,b``: load only the entry points named ``a`` and ``b``.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .registry import Entry, RegistrationError, Registry

# kind -> hook name; the order is the order in which hooks run (presets last: they name parts).
HOOKS = {
    "kernels": "kerzoo_register_kernels",
    "estimators": "kerzoo_register_estimators",
    "projections": "kerzoo_register_projections",
    "updates": "kerzoo_register_updates",
    "optimizers": "kerzoo_register_optimizers",
}

BUILTIN_PLUGINS = (
    "kerzoo.kernels.legendre",
    "kerzoo.kernels.minvar",
    "kerzoo.estimators.two_point",
    "kerzoo.estimators.kernel",
    "kerzoo.projections.dense",
    "kerzoo.projections.lowrank",
    "kerzoo.projections.aligned",
    "kerzoo.projections.hessian",
    "kerzoo.projections.presets",
    "kerzoo.updates.rules",
    "kerzoo.presets",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass(frozen=True)
class PluginFailure:
    name: str
    stage: str  # "import" or "register"
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} failed to {self.stage}: {self.reason}"


def _validators() -> dict[str, Callable[[Any], None]]:
    from .kernels.moments import validate_kernel

    return {"kernels": validate_kernel}


class _Manager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in HOOKS}
        self.failures: list[PluginFailure] = []
        self.sources: dict[str, str] = {}  # plugin name -> "builtin" or distribution name
        self.validators = _validators()

    # -- registration -------------------------------------------------------------------
    def _run_hooks(self, plugin: Any, name: str) -> list[tuple[str, str]]:
        """Call ``plugin``'s hooks; return the (kind, name) pairs it registered."""
        added: list[tuple[str, str]] = []
        for kind, hook in HOOKS.items():
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            registry, validate = self.registries[kind], self.validators.get(kind)

            def register(
                obj: Any,
                item_name: str | None = None,
                *,
                doc: str | None = None,
                _registry: Registry = registry,
                _kind: str = kind,
                _validate=validate,
            ) -> None:
                item_name = item_name if item_name is not None else getattr(obj, "name", None)
                if item_name is None:
                    raise RegistrationError(
                        f"plugin {name!r} registered {obj!r} in {_kind} without a name: "
                        "give the object a `name` attribute or call register(obj, 'its-name')"
                    )
                if _validate is not None:
                    _validate(obj)
                _registry.register(item_name, obj, plugin=name, doc=doc)
                added.append((_kind, item_name))

            impl(register=register)
        return added

    def add(self, plugin: Any, name: str, source: str) -> None:
        """Register one plugin object; on any error roll back what it registered and re-raise."""
        self.pm.register(plugin, name=name)
        try:
            self._run_hooks(plugin, name)
        except BaseException:
            self._drop(name)
            self.pm.unregister(name=name)
            raise
        self.sources[name] = source

    def _drop(self, name: str) -> None:
        for registry in self.registries.values():
            for entry in list(registry.entries()):
                if entry.plugin == name:
                    registry.unregister(entry.name)

    def remove(self, name: str) -> None:
        self._drop(name)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.sources.pop(name, None)

    def guarded_add(self, name: str, source: str, load: Callable[[], Any]) -> None:
        try:
            plugin = load()
        except Exception as exc:  # a broken plugin must not take the host down
            self._fail(name, "import", exc)
            return
        try:
            self.add(plugin, name, source)
        except Exception as exc:
            self._fail(name, "register", exc)

    def _fail(self, name: str, stage: str, exc: Exception) -> None:
        failure = PluginFailure(name, stage, f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        warnings.warn(f"kerzoo: {failure}; the other plugins loaded", RuntimeWarning, stacklevel=4)

    # -- loading ------------------------------------------------------------------------
    def load_all(self) -> None:
        for module in BUILTIN_PLUGINS:
            self.guarded_add(module, "builtin", lambda m=module: importlib.import_module(m))
        if os.environ.get("KERZOO_DISABLE_PLUGINS", "").strip() not in ("", "0"):
            return
        allow = os.environ.get("KERZOO_PLUGINS")
        allowed = {n.strip() for n in allow.split(",") if n.strip()} if allow is not None else None
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "entry point"
            self.guarded_add(ep.name, dist, ep.load)


_lock = threading.Lock()
_manager: _Manager | None = None


def manager() -> _Manager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    with _lock:
        if _manager is None:
            m = _Manager()
            m.load_all()
            _manager = m
        return _manager


def reload() -> None:
    """Forget every plugin and load again (after installing a plugin, or changing the env vars)."""
    global _manager
    with _lock:
        _manager = None
    manager()


def get_registry(kind: str) -> Registry:
    """The registry of ``kind``: one of kernels, estimators, projections, updates, optimizers."""
    if kind not in HOOKS:
        from .registry import UnknownNameError

        raise UnknownNameError("registries", kind, list(HOOKS))
    return manager().registries[kind]


def get(kind: str, name: str) -> Any:
    return get_registry(kind)[name]


def entry(kind: str, name: str) -> Entry:
    return get_registry(kind).entry(name)


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (a module or an object with hook methods) now.

    Errors (a name clash, a kernel that fails its moments) are raised, and nothing the plugin
    registered is kept. Returns the plugin's name, for :func:`unregister_plugin`.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    manager().add(plugin, name, "runtime")
    return name


def unregister_plugin(name: str) -> None:
    manager().remove(name)


def loaded_plugins() -> dict[str, str]:
    """Plugin name -> where it came from ("builtin", a distribution name, or "runtime")."""
    return dict(manager().sources)


def failed_plugins() -> list[PluginFailure]:
    return list(manager().failures)
