"""One registry type for every pluggable name: heads, losses, pretext tasks, augmentations,
samplers, aggregations, detectors, pretrained sources, tasks, competitions.

Why one: a name typed in a YAML file or on the command line is checked the same way everywhere,
while the config is validated and before a run folder exists (`common.core.validate`): an unknown
name is a `ConfigError` that lists the choices and suggests the closest; registering a name twice
is a programming error caught at import.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from common.core.errors import ConfigError

ALL: dict[str, "Registry"] = {}  # kind -> registry, for `validate` and the docs


class Registry:
    """Name -> object. `key` is the config key whose value names an entry (e.g. 'model.head')."""

    def __init__(self, kind: str, key: str | None = None, none_allowed: bool = False):
        if kind in ALL:
            raise RuntimeError(f"a registry of {kind} exists already")
        self.kind, self.key, self.none_allowed = kind, key, none_allowed
        self._entries: dict[str, Any] = {}
        ALL[kind] = self

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@HEADS.register("arcface")`."""
        def add(obj):
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: Any) -> None:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} '{name}' is registered twice ({self._entries[name]!r} and {obj!r})")
        self._entries[name] = obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return sorted(self._entries.items())

    def check(self, name: Any, key: str | None = None) -> None:
        """Raise the ConfigError `get` would raise, without returning anything."""
        self.get(name, key)

    def get(self, name: Any, key: str | None = None) -> Any:
        if name in self._entries:
            return self._entries[name]
        where = key or self.key
        choices = ", ".join(self.names()) + (", none" if self.none_allowed else "")
        message = f"unknown {self.kind} '{name}'" + (f" ({where}={name})" if where else "")
        hint = difflib.get_close_matches(str(name), self.names(), n=1)
        if hint:
            message += f"; did you mean '{hint[0]}'?"
        raise ConfigError(f"{message} Choices: {choices}")


def is_none(value: Any) -> bool:
    """The ways a config says "none of them" (YAML null, false, the word none)."""
    return value in (None, False, "none", "None", "")
