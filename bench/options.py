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
