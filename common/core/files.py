"""Writes that a crash cannot leave half done: a temporary file in the same folder, then one rename.

Why: a kill while a checkpoint, `metrics.json` or `submission.csv` is being written must leave the
previous complete file (or none), never a truncated one that the next `resume` or `predict` chokes on.
Checkpoints are loaded as tensors, numbers and strings only: a file from elsewhere (a Kaggle weights
dataset, `model.init=FILE`) cannot run code when it is opened.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from common.core.errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode any other file would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2))


def write_csv_atomic(frame, path: str | Path, **kwargs) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)
    return Path(path)


def write_npz_atomic(path: str | Path, **arrays) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)
    return Path(path)


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically: the previous checkpoint survives until the new one is complete."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device="cpu") -> dict:
    """Tensors, numbers and strings only (`weights_only=True`): a checkpoint cannot run code on load."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: not a plain tensor checkpoint, refused (loading it would need pickle: "
                        f"{str(exc).splitlines()[0]})") from None
    except (EOFError, RuntimeError) as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})") from None
