"""Configuration: one YAML per competition, a named preset, then `key=value` overrides.

Why not a bigger library: the whole contract fits in a page. Keys are dotted paths into nested
mappings, values are parsed as YAML scalars (so `train.epochs=3`, `infer.new_whale=false`,
`data.image_size=[128,256]` do what they look like), unknown keys are an error with a suggestion,
and the resolved config is written to every run directory so a run can be reproduced or reused.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from common.core.errors import ConfigError


class Config(dict):
    """A dict with attribute access (`cfg.train.epochs`) whose nested mappings are Configs too."""

    def __init__(self, data: Mapping | None = None):
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = Config(value) if isinstance(value, Mapping) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo))

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def set_path(self, dotted: str, value: Any) -> None:
        *parents, leaf = dotted.split(".")
        node: Any = self
        for part in parents:
            node = node[part]
        node[leaf] = value

    @property
    def command_line_keys(self) -> tuple[str, ...]:
        """The keys given as `key=value` when this config was loaded (what `predict` checks)."""
        return self.__dict__.get("_command_line_keys", ())


def lookup(tree: Mapping, dotted: str, missing: Any = None) -> Any:
    """The value at `a.b.c` in nested mappings, or `missing` where the path does not exist."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def _all_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, Mapping):
            keys.extend(_all_keys(value, path + "."))
    return keys


def parse_value(text: str, default: Any = None) -> Any:
    """Parse a command-line value as YAML, coercing to the type of the default where that is safe."""
    value = yaml.safe_load(text) if text != "" else None
    if isinstance(default, bool) or default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, (int, str)):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if isinstance(default, int) and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    return value


def set_dotted(cfg: dict, dotted: str, raw: Any, *, parse: bool = True, source: str = "override") -> None:
    """Set `a.b.c` in a nested dict, refusing keys the base config does not define."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = _all_keys(cfg)
            hint = difflib.get_close_matches(dotted, known, n=3)
            msg = f"unknown config key '{dotted}' ({source})"
            if hint:
                msg += f"; did you mean {', '.join(repr(h) for h in hint)}?"
            raise ConfigError(msg)
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node[leaf], dict) and not (isinstance(raw, dict)):
        raise ConfigError(f"config key '{dotted}' is a section, not a value ({source})")
    node[leaf] = parse_value(raw, node[leaf]) if parse and isinstance(raw, str) else raw


def split_overrides(args: Iterable[str]) -> dict[str, str]:
    pairs = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got '{arg}'")
        key, value = arg.split("=", 1)
        pairs[key.strip()] = value
    return pairs


DEFAULTS = Path(__file__).resolve().parents[1] / "defaults.yaml"


def deep_merge(base: dict, update: Mapping) -> dict:
    """`update` wins; nested mappings merge key by key (a competition may add keys of its own)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config(path: str | Path, overrides: Iterable[str] = (), defaults: str | Path | None = DEFAULTS) -> Config:
    """defaults.yaml <- the competition's YAML <- preset (from `preset=` or the YAML) <- `key=value`."""
    path = Path(path)
    raw: dict = {}
    if defaults is not None:
        with open(defaults) as f:
            raw = yaml.safe_load(f) or {}
    with open(path) as f:
        deep_merge(raw, yaml.safe_load(f) or {})
    presets = raw.pop("presets", {}) or {}
    pairs = split_overrides(overrides)
    preset = pairs.get("preset", raw.get("preset"))
    preset = parse_value(preset) if isinstance(preset, str) and "preset" in pairs else preset
    if preset not in (None, "", "default"):
        if preset not in presets:
            raise ConfigError(f"unknown preset '{preset}' in {path}; known: {', '.join(presets) or 'none'}")
        for key, value in presets[preset].items():
            set_dotted(raw, key, value, parse=False, source=f"preset '{preset}' in {path}")
    raw["preset"] = preset
    for key, value in pairs.items():
        if key == "preset":
            continue
        set_dotted(raw, key, value, source="command line")
    cfg = Config(raw)
    cfg.__dict__["_command_line_keys"] = tuple(pairs)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from common.core.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def fill_missing(target: Config, source: Mapping, prefix: str = "") -> list[str]:
    """Add to `target`, in place, every key of `source` it lacks; returns the dotted keys added.

    Why: a run saved before a key existed must still predict, export and report. Every new key's
    default is the behaviour from before it (no padding, no EMA, no post-processing, ...), so filling
    the gaps from today's defaults reproduces what the run did; keys the run saved are never touched."""
    added = []
    for key, value in source.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
            added.append(prefix + key)
        elif isinstance(value, Mapping) and isinstance(target[key], Mapping):
            added += fill_missing(target[key], value, f"{prefix}{key}.")
    return added


def read_saved_config(path: str | Path) -> Config:
    with open(path) as f:
        return Config(yaml.safe_load(f))
