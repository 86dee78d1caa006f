"""`python -m bench <name> [key=value ...]`: run one benchmark by name.

Each benchmark is a module with `main(argv) -> int`, imported only when asked for, so a
benchmark with heavy imports (or one not written yet) costs the others nothing.
"""
from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, str] = {
    "train": "bench.train",
    "heads": "bench.heads",
    "retrieval": "bench.retrieval",
    "pretrain": "bench.pretrain",
    "deepfake": "bench.deepfake",
    "oneshot": "bench.oneshot",
    "reid": "bench.reid",
}

USAGE = "usage: ./run.sh bench <{names}> [key=value ...]"


def usage(error: str | None = None) -> int:
    if error:
        print(f"error: {error}", file=sys.stderr)
    print(USAGE.format(names="|".join(BENCHES)), file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        return usage()
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        return usage(f"unknown benchmark '{name}'")
    try:
        module = importlib.import_module(BENCHES[name])
    except ModuleNotFoundError as exc:
        if exc.name != BENCHES[name]:
            raise  # the benchmark exists but one of its own imports is missing: show the real error
        return usage(f"benchmark '{name}' is not available yet ({BENCHES[name]} does not exist)")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
