"""Embeddings streamed to disk, chunk by chunk, so a gallery of millions fits any machine.

Why: a recognition gallery (1.5 M training images in Landmark Recognition) times a 512-d
embedding is 1.5 GB in float16 and hours of GPU time to compute. Holding it all in RAM while it
is computed, or losing it to a crash, are both avoidable: every chunk of rows is embedded, written
into a float16 `np.memmap` and flushed, and only then is the progress file advanced. A restart
continues from the last complete chunk; peak memory is one chunk, whatever the number of rows.

Files for a store at `<stem>`:
  <stem>.f16    float16 memmap, shape [n, dim], row i = the embedding of ids[i]
  <stem>.ids    the ids, one per line, in row order (written once, when the store is created)
  <stem>.json   n, dim, chunk_size, rows_done, a fingerprint of the ids and the caller's `key`

A store whose ids, dimension or `key` (e.g. "which checkpoint, which TTA") differ from what is
asked for is stale: it is started again from row 0 instead of being silently reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from common.core.errors import DataError

DTYPE = np.float16


def _ids_fingerprint(ids: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for i in ids:
        digest.update(str(i).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _write_json_atomically(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new progress, never half of one


class EmbeddingStore:
    """A float16 [n, dim] array on disk, filled in order by chunks of `chunk_size` rows.

    `EmbeddingStore(stem, ids, dim, chunk_size, key)` opens the store at `stem` if it matches
    (same ids, dim and key) and creates it otherwise. Fill it with :meth:`write` in chunk order
    (`pending_chunks()` says which chunks are left); read it with :meth:`array` or
    :meth:`iter_chunks` once `complete`.
    """

    def __init__(self, stem: str | Path, ids: Sequence[str], dim: int, *, chunk_size: int = 4096, key: str = ""):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.stem = Path(stem)
        self.ids = [str(i) for i in ids]
        self.n, self.dim, self.chunk_size, self.key = len(self.ids), int(dim), int(chunk_size), str(key)
        self.data_path = self.stem.with_suffix(".f16")
        self.ids_path = self.stem.with_suffix(".ids")
        self.meta_path = self.stem.with_suffix(".json")
        self._meta = {"n": self.n, "dim": self.dim, "chunk_size": self.chunk_size, "key": self.key,
                      "ids_sha1": _ids_fingerprint(self.ids), "dtype": np.dtype(DTYPE).name, "rows_done": 0}
        if not self._matches_existing():
            self._create()

    # -- opening -------------------------------------------------------------------------------
    def _matches_existing(self) -> bool:
        if not (self.meta_path.exists() and self.data_path.exists() and self.ids_path.exists()):
            return False
        try:
            saved = json.loads(self.meta_path.read_text())
        except json.JSONDecodeError:
            return False
        same = all(saved.get(k) == self._meta[k] for k in ("n", "dim", "chunk_size", "key", "ids_sha1", "dtype"))
        expected_bytes = self.n * self.dim * np.dtype(DTYPE).itemsize
        if not same or self.data_path.stat().st_size != expected_bytes:
            return False
        self._meta["rows_done"] = int(saved["rows_done"])
        return True

    def _create(self) -> None:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.meta_path.unlink(missing_ok=True)  # progress first: a crash below must not leave a "valid" store
        with open(self.data_path, "wb") as f:  # sparse file of the final size; rows are filled by write()
            f.truncate(self.n * self.dim * np.dtype(DTYPE).itemsize)
        self.ids_path.write_text("".join(f"{i}\n" for i in self.ids))
        _write_json_atomically(self.meta_path, self._meta)

    @classmethod
    def open(cls, stem: str | Path) -> "EmbeddingStore":
        """An existing store as it is on disk (complete or not); DataError if there is none."""
        stem = Path(stem)
        meta_path, ids_path = stem.with_suffix(".json"), stem.with_suffix(".ids")
        if not meta_path.exists() or not ids_path.exists():
            raise DataError(f"{stem}: no embedding store here (missing {meta_path.name} or {ids_path.name})")
        meta = json.loads(meta_path.read_text())
        ids = ids_path.read_text().splitlines()
        return cls(stem, ids, meta["dim"], chunk_size=meta["chunk_size"], key=meta["key"])

    # -- progress ------------------------------------------------------------------------------
    @property
    def rows_done(self) -> int:
        return int(self._meta["rows_done"])

    @property
    def complete(self) -> bool:
        return self.rows_done >= self.n

    def pending_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) of every chunk still to write, in order."""
        return [(start, min(start + self.chunk_size, self.n)) for start in range(self.rows_done, self.n, self.chunk_size)]

    # -- writing -------------------------------------------------------------------------------
    def write(self, start: int, embeddings: np.ndarray) -> None:
        """Write the next chunk (rows start..start+len): data first, flushed, then the progress."""
        embeddings = np.asarray(embeddings)
        if start != self.rows_done:
            raise ValueError(f"{self.stem}: chunks must be written in order; expected start {self.rows_done}, got {start}")
        stop = start + len(embeddings)
        expected = min(start + self.chunk_size, self.n)
        if stop != expected:
            raise ValueError(f"{self.stem}: chunk at {start} has {len(embeddings)} rows, expected {expected - start}")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"{self.stem}: chunk has shape {embeddings.shape}, expected [{len(embeddings)}, {self.dim}]")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError(f"{self.stem}: chunk at {start} contains NaN or inf")
        memmap = np.memmap(self.data_path, DTYPE, "r+", shape=(self.n, self.dim))
        memmap[start:stop] = embeddings.astype(DTYPE)
        memmap.flush()
        del memmap
        self._meta["rows_done"] = stop
        _write_json_atomically(self.meta_path, self._meta)

    # -- reading -------------------------------------------------------------------------------
    def _require_complete(self) -> None:
        if not self.complete:
            raise DataError(f"{self.stem}: embedding store is incomplete ({self.rows_done}/{self.n} rows)")

    def array(self) -> np.memmap:
        """The whole store as a read-only float16 memmap [n, dim] (nothing is loaded until indexed)."""
        self._require_complete()
        if self.n == 0:
            return np.zeros((0, self.dim), DTYPE)
        return np.memmap(self.data_path, DTYPE, "r", shape=(self.n, self.dim))

    def iter_chunks(self, chunk_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 rows) chunk by chunk: what a search over a huge query set consumes."""
        data, size = self.array(), int(chunk_size or self.chunk_size)
        for start in range(0, self.n, size):
            yield start, np.asarray(data[start:start + size], dtype=np.float32)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.stem}, {self.rows_done}/{self.n} rows x {self.dim})"


def fill_store(store: EmbeddingStore, embed_rows: Callable[[int, int], np.ndarray],
               progress: Callable[[int, int], None] | None = None) -> EmbeddingStore:
    """Fill every pending chunk with `embed_rows(start, stop) -> [stop - start, dim]`."""
    for start, stop in store.pending_chunks():
        store.write(start, embed_rows(start, stop))
        if progress is not None:
            progress(stop, store.n)
    return store


def embed_to_store(model, dataset, ids: Sequence[str], stem: str | Path, *, dim: int, key: str = "",
                   chunk_size: int = 4096, batch_size: int = 64, device="cpu", tta_flip: bool = False,
                   desc: str = "embed", progress: bool = True) -> EmbeddingStore:
    """Embed `dataset` (row i = ids[i]) into the store at `stem`, resuming after its last complete chunk.

    Uses `common.engine.embed.extract_embeddings` on one chunk (a `Subset`) at a time, so memory holds
    one chunk of embeddings, never all of them.
    """
    from torch.utils.data import Subset

    from common.engine.embed import extract_embeddings

    if len(dataset) != len(ids):
        raise ValueError(f"{stem}: dataset has {len(dataset)} items but {len(ids)} ids")
    store = EmbeddingStore(stem, ids, dim, chunk_size=chunk_size, key=key)
    if store.rows_done and not store.complete:
        print(f"{desc}: resuming at row {store.rows_done}/{store.n}", flush=True)

    def embed_rows(start: int, stop: int) -> np.ndarray:
        return extract_embeddings(model, Subset(dataset, range(start, stop)), batch_size=batch_size, device=device,
                                  tta_flip=tta_flip, desc=f"{desc} [{start}:{stop}]", progress=progress)

    return fill_store(store, embed_rows)


def checkpoint_key(fold_dir: Path, cfg) -> str:
    """Identifies what produced an embedding: the checkpoint's content (so a copied run, e.g. a Kaggle
    weights dataset, still matches its stored embeddings), TTA and the image size."""
    digest = hashlib.sha1()
    with open(fold_dir / "best.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{digest.hexdigest()[:16]}|tta={bool(cfg.infer.tta_flip)}|size={list(cfg.data.image_size)}"


def stored_distractors(fold_dir: Path, key: str) -> EmbeddingStore | None:
    """The distractor embeddings `train` left in a fold, if they came from this very checkpoint."""
    stem = fold_dir / "embeddings" / "distractors"
    if not stem.with_suffix(".json").exists():
        return None
    store = EmbeddingStore.open(stem)
    return store if store.complete and store.key == key and len(store) else None
