"""One process per run folder, and one filler per cache entry: `flock` locks.

Why flock: the kernel releases it when the holder dies (kill -9 included), so a killed run never
leaves a lock that blocks the next one, and "stale" needs no guesswork. The lock file holds the
holder's PID so that a refused second process can say who holds it.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from common.core.errors import ConfigError

_HELD: dict[str, int] = {}  # lock path -> open descriptor, for the life of this process


def hold_run_lock(folder: Path) -> None:
    """Lock `folder/.lock` for the rest of this process, or refuse naming the process that holds it."""
    path = Path(folder) / ".lock"
    if str(path) in _HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"run folder {folder} is in use by process {holder}; wait for it to finish or pick "
                          "another run.name") from None
    previous = os.read(fd, 64).decode(errors="replace").strip()
    if previous and previous != str(os.getpid()):
        print(f"note: {path} was left by process {previous}, which has ended; taking it over", flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[str(path)] = fd


@contextmanager
def filling(path: Path, poll_s: float = 0.5) -> Iterator[None]:
    """Exclusive while a cache entry is written: a second process waits until the first is done
    (then finds the entry complete), instead of filling the same files at the same time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(poll_s)
        yield
    finally:
        os.close(fd)  # releases the lock
