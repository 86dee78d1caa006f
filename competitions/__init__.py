"""The competitions: each package registers its `COMPETITION` in common.core.competition.COMPETITIONS
when imported; `load(name)` imports one by name (the command line and the Kaggle kernel use it)."""
from __future__ import annotations

import importlib

NAMES = ("whales", "happywhale", "landmarks", "deepfake")


def load(name: str):
    """The competition object `name` (importing its package registers it)."""
    if name not in NAMES:
        raise KeyError(f"unknown competition '{name}'; known: {', '.join(NAMES)}")
    return importlib.import_module(f"competitions.{name}").COMPETITION
