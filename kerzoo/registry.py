"""Named registries: one per kind of part (kernels, estimators, projections, updates, optimizers).

A registry is a read-only mapping from name to object. It refuses a second object under a
taken name (naming both plugins) and answers an unknown name with an error that lists the
closest names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class UnknownNameError(KeyError):
    """A name that no plugin registered: a KeyError, so `name in registry` style code works."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name = kind, name
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {kind[:-1] if kind.endswith('s') else kind} {name!r}"
        if self.suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?"
        msg += f" Known {kind}: {', '.join(sorted(known)) or '(none)'}."
        msg += f" `kerzoo list {kind}` shows them with the plugin that gave each."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return self.args[0]


class NameClashError(ValueError):
    """Two plugins registered the same name in one registry."""


class RegistrationError(ValueError):
    """An object refused at registration (for instance a kernel that fails its moments)."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    plugin: str
    doc: str


def first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "doc", None) or getattr(obj, "__doc__", None) or ""
    if not isinstance(doc, str):
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def unknown_options(owner: str, given: dict[str, Any], known: dict[str, Any]) -> None:
    """Raise TypeError naming each option of ``given`` that ``known`` lacks, with close matches."""
    bad = [k for k in given if k not in known]
    if not bad:
        return
    parts = []
    for k in bad:
        close = difflib.get_close_matches(k, list(known), n=1, cutoff=0.6)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"{owner} got unknown option(s) {', '.join(parts)}; its options are: "
        f"{', '.join(sorted(known)) or '(none)'}"
    )


class Registry(Mapping):
    """Mapping of name -> registered object for one kind of part."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, obj: Any, plugin: str = "<unknown>", doc: str | None = None
    ) -> Entry:
        if not isinstance(name, str) or not name:
            raise RegistrationError(
                f"plugin {plugin!r} registered a {self.kind} entry with name {name!r}: "
                "a name must be a non-empty string"
            )
        if name in self._entries:
            old = self._entries[name]
            raise NameClashError(
                f"{self.kind} name {name!r} is registered twice: by plugin {old.plugin!r} and by "
                f"plugin {plugin!r}. Rename one of them, or disable one plugin "
                "(KERZOO_PLUGINS allow-list)."
            )
        entry = Entry(name, obj, plugin, doc if doc is not None else first_doc_line(obj))
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._entries)) from None

    def entries(self) -> list[Entry]:
        return [self._entries[k] for k in sorted(self._entries)]

    def __getitem__(self, name: str) -> Any:
        return self.entry(name).obj

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
