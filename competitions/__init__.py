"""Competition registry: name -> module holding `COMPETITION` (format, demo data, config) and `COMMANDS`."""
from __future__ import annotations

import importlib

COMPETITIONS = {
    "whales": "competitions.whales",
    "landmarks": "competitions.landmarks",
    "deepfake": "competitions.deepfake",
}


def load(name: str):
    if name not in COMPETITIONS:
        raise KeyError(f"unknown competition '{name}'; known: {', '.join(COMPETITIONS)}")
    return importlib.import_module(COMPETITIONS[name])
