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
    """Name -> object, read like a mapping.

    `keys` are the config keys whose values name an entry (e.g. 'model.head'); `also` are words
    those keys accept besides the entries (e.g. 'auto', 'none'), resolved by the code that reads them.
    """

    def __init__(self, kind: str, keys: tuple[str, ...] = (), also: tuple[str, ...] = ()):
        if kind in ALL:
            raise RuntimeError(f"a registry of {kind} exists already")
        self.kind, self.keys_in_config, self.also = kind, tuple(keys), tuple(also)
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
        """Sorted, for messages."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        """In registration order (a registry's first entry is its default preference, e.g. on ties)."""
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def keys(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return list(self._entries.items())

    def values(self):
        return [obj for _, obj in self.items()]

    def check(self, name: Any, key: str | None = None) -> None:
        """Raise the ConfigError `get` would raise, without returning anything."""
        self.get(name, key)

    def get(self, name: Any, key: str | None = None) -> Any:
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        where = key or (self.keys_in_config[0] if self.keys_in_config else None)
        choices = [*self.names(), *self.also]
        message = f"unknown {self.kind} '{name}'" + (f" ({where}={name})" if where else "")
        hint = difflib.get_close_matches(str(name), choices, n=1)
        message += f"; did you mean '{hint[0]}'?" if hint else "."
        raise ConfigError(f"{message} Choices: {', '.join(choices)}")

    def check_value(self, value: Any, key: str) -> None:
        """A config value for `key`: an entry, or one of the extra words."""
        if value in self.also or (is_none(value) and "none" in self.also):
            return
        self.get(value, key)


def is_none(value: Any) -> bool:
    """The ways a config says "none of them" (YAML null, false, the word none)."""
    return value in (None, False, "none", "None", "")
