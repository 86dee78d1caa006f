"""Images in, tensors out: robust decoding, a resized-image cache, and a dataset over a table.

Decoding JPEGs is the bottleneck on a small CPU box, so every image is decoded and resized once
into a uint8 memory-mapped array (`ImageCache`); epochs then read from that array. Building the
cache is also where an unreadable image is found, before any training starts.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from common.core.errors import DataError


def truncated(path: str | Path) -> bool:
    """A JPEG without its end-of-image marker, or a PNG without IEND: libjpeg decodes such a file as
    partly flat grey with a nameless warning, which would be trained on silently."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read()
    if head[:3] == b"\xff\xd8\xff":
        return b"\xff\xd9" not in tail
    if head == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail
    return False


def load_rgb(path: str | Path) -> np.ndarray:
    """Read any image mode (grey, palette, RGBA, 16-bit) as an RGB uint8 array; DataError if unreadable
    or truncated."""
    path = str(path)
    if truncated(path):
        raise DataError(f"{path}: truncated image (its end-of-image marker is missing): re-download or remove it")
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


def content_hash(path: str | Path) -> str:
    """A fast hash of a file's bytes: all of them up to 256 KiB, else the size and both ends."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= 1 << 18:
                return hashlib.blake2b(f.read(), digest_size=12).hexdigest()
            h = hashlib.blake2b(str(size).encode(), digest_size=12)
            h.update(f.read(1 << 17))
            f.seek(-(1 << 17), os.SEEK_END)
            h.update(f.read())
            return h.hexdigest()
    except OSError:
        return "missing"


def check_files_exist(paths: Sequence[str | Path], listed_in: str | Path) -> None:
    """Fail before training when a listed image is missing, naming both files."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{listed_in}: listed image {missing[0]} does not exist{more}")


RESIZE_MODES = ("stretch", "pad")
# `pad`'s border: the ImageNet mean colour, not black. After normalisation with ImageNet's mean/std
# it is ~0 in every channel, i.e. what the network's own zero padding feeds its convolutions: the
# border adds no signal of its own. Black would become about -2 after normalisation, a strong dark
# frame whose edges every first-layer filter answers to (and whose width tells the aspect ratio).
# It is a fixed colour, independent of `data.normalize`, so the cache entry does not depend on it.
PAD_COLOUR = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))


def fit_image(img: np.ndarray, size: tuple[int, int], resize: str = "stretch",
              colour: Sequence[int] = PAD_COLOUR) -> np.ndarray:
    """`img` (H x W x 3 uint8) as exactly `size` = (height, width), with cv2.INTER_AREA.

    stretch: resized to (height, width), the aspect ratio lost.
    pad: resized by one factor so that it fits inside (height, width) with the aspect ratio kept
    (one side then fills its dimension), and centred on a `colour` canvas (see PAD_COLOUR).
    """
    height, width = int(size[0]), int(size[1])
    if resize == "stretch":
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    if resize != "pad":
        raise ValueError(f"resize={resize!r}: one of {', '.join(RESIZE_MODES)}")
    h, w = img.shape[:2]
    scale = min(height / h, width / w)
    new_h, new_w = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = np.asarray(colour, np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return canvas


class ImageCache:
    """All images of a table, decoded once and resized to (height, width), in a uint8 memmap.

    `resize` is `stretch` (to (height, width) exactly) or `pad` (aspect ratio kept, the rest padded:
    `fit_image`). `boxes`, aligned with `paths` (None: the whole image), crops each image to its
    box grown by `box_margin` before the resize (`common.data.boxes`); `boxes_source` (the CSV)
    is named when a box turns out to lie outside its image. Both are part of the cache key.

    The cache trusts nothing it has not checked: its key covers the file list, the size and each
    file's content (all bytes of a file up to 256 KiB, else its size and first and last 128 KiB), so
    an image changed with its size and mtime kept (`cp -p`, `rsync -a`, unzip) gets a new entry; on
    opening, the entry's file size and the checksums of a sample of rows are verified, and a
    damaged entry is rebuilt with a printed line. One process fills an entry while others wait.
    Building is threaded (cv2 releases the GIL).
    """

    CHECKED_ROWS = 64

    def __init__(self, paths: Sequence[str | Path], size: tuple[int, int], cache_dir: str | Path | None,
                 workers: int = 4, progress: bool = True, *, resize: str = "stretch",
                 boxes: Sequence[tuple[float, float, float, float] | None] | None = None, box_margin: float = 0.1,
                 boxes_source: str = "data.boxes"):
        from common.core.files import write_json_atomic
        from common.core.locks import filling

        self.paths = [str(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize={resize!r}: one of {', '.join(RESIZE_MODES)}")
        self.resize = resize
        if boxes is not None and len(boxes) != len(self.paths):
            raise ValueError(f"{len(boxes)} boxes for {len(self.paths)} images")
        self.boxes = None if boxes is None or all(b is None for b in boxes) else \
            [None if b is None else tuple(float(v) for v in b) for b in boxes]
        self.box_margin = float(box_margin)
        self.boxes_source = str(boxes_source)
        shape = (len(self.paths), self.size[0], self.size[1], 3)
        if cache_dir is None:
            self.array = np.empty(shape, np.uint8)
            self._fill(range(len(self.paths)), workers, progress)
            return
        key = self._key()
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        file, done = directory / f"{key}.u8", directory / f"{key}.json"
        with filling(directory / f"{key}.lock"):
            if self._intact(file, done, shape):
                self.array = np.memmap(file, np.uint8, "r", shape=shape)
                return
            done.unlink(missing_ok=True)
            self.array = np.memmap(file, np.uint8, "w+", shape=shape)
            self._fill(range(len(self.paths)), workers, progress)
            self.array.flush()
            write_json_atomic(done, {"n": len(self.paths), "size": self.size, "first": self.paths[:1],
                                     "rows": self._row_sums()})
            self.array = np.memmap(file, np.uint8, "r", shape=shape)

    def _checked_rows(self) -> list[int]:
        n = len(self.paths)
        return sorted({int(i) for i in np.linspace(0, n - 1, min(n, self.CHECKED_ROWS))}) if n else []

    def _row_sums(self) -> dict[str, str]:
        return {str(i): hashlib.blake2b(np.ascontiguousarray(self.array[i]).tobytes(), digest_size=8).hexdigest()
                for i in self._checked_rows()}

    def _intact(self, file: Path, done: Path, shape) -> bool:
        """A complete entry whose file has the right size and whose sampled rows are what was written."""
        if not done.exists():
            return False
        expected = int(np.prod(shape))
        if not file.exists() or file.stat().st_size != expected:
            found = file.stat().st_size if file.exists() else "no"
            print(f"image cache {file}: {found} bytes, expected {expected}; rebuilding it", flush=True)
            return False
        try:
            rows = json.loads(done.read_text()).get("rows", {})
        except (OSError, json.JSONDecodeError):
            rows = None
        self.array = np.memmap(file, np.uint8, "r", shape=shape)
        if rows != self._row_sums():
            print(f"image cache {file}: its content changed since it was written; rebuilding it", flush=True)
            return False
        return True

    def _key(self) -> str:
        """The entry's name. `stretch` without boxes hashes exactly what it always did (existing
        caches stay valid); `pad` adds the mode to the size, and an image with a box adds the box
        and the margin to its own line (an image without one keeps its line)."""
        head = repr(self.size) if self.resize == "stretch" else f"{self.size!r}|resize={self.resize}"
        h = hashlib.sha1(head.encode())
        for i, p in enumerate(self.paths):
            box = None if self.boxes is None else self.boxes[i]
            extra = "" if box is None else f"|box={','.join(map(repr, box))}|margin={self.box_margin!r}"
            h.update(f"{p}|{content_hash(p)}{extra}\n".encode())
        return h.hexdigest()[:20]

    def _fill(self, indices, workers: int, progress: bool) -> None:
        from common.data.boxes import crop

        size = self.size

        def work(i: int) -> None:
            img = load_rgb(self.paths[i])
            if self.boxes is not None and self.boxes[i] is not None:
                img = crop(img, self.boxes[i], self.box_margin, image=self.paths[i], source=self.boxes_source)
            self.array[i] = fit_image(img, size, self.resize)

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


def seed_transform(dataset, seed: int) -> None:
    """Seed the albumentations pipeline of `dataset` (if it has one). albumentations 2 keeps its own
    random state, drawn afresh for every `Compose` and deaf to `np.random.seed`/`torch.manual_seed`:
    unseeded, two runs with the same `seed` see different augmentations and end differently."""
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed) % 2 ** 32)


def reseed_worker_transform(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: forked workers would share the pipeline's random state (identical
    augmentations in every worker, and every epoch without persistent workers); reseed it from the
    worker's torch seed, which differs per worker and per epoch and follows the run's seed."""
    info = get_worker_info()
    seed_transform(info.dataset, info.seed)
