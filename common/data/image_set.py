"""The images of one run: train and test tables, extra images (e.g. distractors), one decoded
cache and the transforms. Identification, recognition and pretraining all read images this way."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from common.core.paths import cache_root
from common.data.augment import build_transform
from common.data.images import ImageCache, ImageDataset
from common.engine.embed import extract_embeddings


class ImageSet:
    """Rows 0..n_train-1 are train images, then test images, then `extra` ones, in one cache."""

    def __init__(self, cfg, competition: str, train: pd.DataFrame, test: pd.DataFrame, extra: Sequence = ()):
        self.cfg = cfg
        size = tuple(cfg.data.image_size)
        paths = [*map(str, train.path), *map(str, test.path), *map(str, extra)]
        # one process decodes, the others wait on the cache entry's lock and then open it
        self.images = ImageCache(paths, size, cache_root(cfg) / competition, progress=cfg.progress)
        n_train, n_test = len(train), len(test)
        self.rows = {"train": np.arange(n_train), "test": np.arange(n_train, n_train + n_test),
                     "extra": np.arange(n_train + n_test, len(paths))}
        self.train_tf = build_transform(cfg.augment.train, size)
        self.valid_tf = build_transform(cfg.augment.valid, size)

    def dataset(self, rows, labels=None, train: bool = False) -> ImageDataset:
        return ImageDataset(self.images, rows, labels, self.train_tf if train else self.valid_tf)

    def embed(self, model, rows, device, desc: str, tta: bool | None = None) -> np.ndarray:
        """L2-normalised embeddings of cache rows (sharded over processes, gathered in order)."""
        cfg = self.cfg
        tta = bool(cfg.infer.tta_flip) if tta is None else tta
        return extract_embeddings(model, self.dataset(rows), batch_size=cfg.infer.batch_size, device=device,
                                  tta_flip=tta, desc=desc, progress=cfg.progress, amp=bool(cfg.train.amp))
