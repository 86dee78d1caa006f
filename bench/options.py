"""`./run.sh bench NAME key=value ...`: the bench's own options, split from whale config overrides."""
from __future__ import annotations

import yaml

from common.core.config import split_overrides


def split_options(argv: list[str], defaults: dict) -> tuple[dict, dict]:
    """(options: `defaults` with the given values, parsed as YAML; the remaining key=value pairs)."""
    pairs = split_overrides(argv)
    options = dict(defaults)
    for key in defaults:
        if key in pairs:
            options[key] = yaml.safe_load(pairs.pop(key))
    return options, pairs


def name_list(options: dict, key: str, known, *, all_means_known: bool = False) -> list[str]:
    """`options[key]` (a comma-separated string or a YAML list) as names (with `all_means_known`,
    `all` is every name in `known`); an unknown name is a ConfigError that lists the choices (key
    `datasets` -> "dataset")."""
    from common.core.errors import ConfigError

    value = options[key]
    names = [str(v).strip() for v in (value.split(",") if isinstance(value, str) else value)]
    if all_means_known and names == ["all"]:
        return list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown {key[:-1]} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names
