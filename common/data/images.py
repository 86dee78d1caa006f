"""Images in, tensors out: robust decoding, a resized-image cache, and a dataset over a table.

Decoding JPEGs is the bottleneck on a small CPU box, so every image is decoded and resized once
into a uint8 memory-mapped array (`ImageCache`); epochs then read from that array. Building the
cache is also where an unreadable image is found, before any training starts.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from common.core.errors import DataError


def load_rgb(path: str | Path) -> np.ndarray:
    """Read any image mode (grey, palette, RGBA, 16-bit) as an RGB uint8 array; DataError if unreadable."""
    path = str(path)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        try:  # cv2 cannot read some formats (e.g. GIF): fall back to Pillow
            from PIL import Image

            with Image.open(path) as pil:
                return np.asarray(pil.convert("RGB"))
        except Exception:
            raise DataError(f"{path}: unreadable or corrupt image") from None
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_files_exist(paths: Sequence[str | Path], listed_in: str | Path) -> None:
    """Fail before training when a listed image is missing, naming both files."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{listed_in}: listed image {missing[0]} does not exist{more}")


class ImageCache:
    """All images of a table, decoded once and resized to (height, width), in a uint8 memmap.

    The cache key covers the file list, the size and the files' sizes and mtimes, so a changed
    dataset never reuses a stale cache. Building is threaded (cv2 releases the GIL).
    """

    def __init__(self, paths: Sequence[str | Path], size: tuple[int, int], cache_dir: str | Path | None,
                 workers: int = 4, progress: bool = True):
        self.paths = [str(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        shape = (len(self.paths), self.size[0], self.size[1], 3)
        if cache_dir is None:
            self.array = np.empty(shape, np.uint8)
            self._fill(range(len(self.paths)), workers, progress)
            return
        key = self._key()
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        file, done = directory / f"{key}.u8", directory / f"{key}.json"
        if done.exists() and file.exists():
            self.array = np.memmap(file, np.uint8, "r", shape=shape)
            return
        self.array = np.memmap(file, np.uint8, "w+", shape=shape)
        self._fill(range(len(self.paths)), workers, progress)
        self.array.flush()
        done.write_text(json.dumps({"n": len(self.paths), "size": self.size, "first": self.paths[:1]}))
        self.array = np.memmap(file, np.uint8, "r", shape=shape)

    def _key(self) -> str:
        h = hashlib.sha1(repr(self.size).encode())
        for p in self.paths:
            st = Path(p).stat() if Path(p).exists() else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        return h.hexdigest()[:20]

    def _fill(self, indices, workers: int, progress: bool) -> None:
        height, width = self.size

        def work(i: int) -> None:
            img = load_rgb(self.paths[i])
            self.array[i] = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)

        indices = list(indices)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(tqdm(pool.map(work, indices), total=len(indices), desc="decode+resize images",
                      disable=not progress or len(indices) < 200, leave=False))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.array[i])


class ImageDataset(Dataset):
    """Rows `indices` of an image source, with optional integer labels and an albumentations transform."""

    def __init__(self, images: ImageCache | Sequence[str], indices: Sequence[int],
                 labels: Sequence[int] | None = None, transform: Callable | None = None):
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        source = self.images[int(self.indices[i])]
        img = load_rgb(source) if isinstance(source, (str, Path)) else source
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        label = -1 if self.labels is None else int(self.labels[i])
        return img, label


def reseed_worker_transform(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: albumentations 2 keeps its own random state, which forked workers
    would share (identical augmentations in every worker, and every epoch without persistent
    workers); reseed it from the worker's torch seed, which differs per worker and per epoch."""
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2 ** 32)
