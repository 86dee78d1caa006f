"""The images of one run: train and test tables, extra images (e.g. distractors), one decoded
cache and the transforms. Identification, recognition and pretraining all read images this way."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from common.core.paths import cache_root
from common.data.augment import build_transform
from common.data.boxes import boxes_for, read_boxes
from common.data.images import ImageCache, ImageDataset
from common.engine.embed import extract_embeddings
from common.models.input_config import image_size, normalization


def _ids(table: pd.DataFrame) -> list:
    """A table's `image` ids (what a boxes CSV may name instead of the file name), None without the column."""
    return [str(v) for v in table["image"]] if "image" in table.columns else [None] * len(table)


class ImageSet:
    """Rows 0..n_train-1 are train images, then test images, then `extra` ones, in one cache.

    The cache resizes with `data.resize` (stretch | pad) and, with `data.boxes=FILE`, crops each image
    to its box grown by `data.box_margin` first; the CSV is read and checked here, before any image is
    decoded. Its names match an image's file name, else the table's `image` id (`common.data.boxes`).
    Transforms normalise with `data.normalize` (imagenet | auto: the backbone's pretrained mean/std).
    A config saved before these keys existed reads as stretch, no boxes, ImageNet.
    """

    def __init__(self, cfg, competition: str, train: pd.DataFrame, test: pd.DataFrame, extra: Sequence = ()):
        self.cfg = cfg
        size = image_size(cfg)
        paths = [*map(str, train.path), *map(str, test.path), *map(str, extra)]
        boxes, source = self._boxes(cfg, paths, [*_ids(train), *_ids(test), *[None] * len(extra)])
        # one process decodes, the others wait on the cache entry's lock and then open it
        self.images = ImageCache(paths, size, cache_root(cfg) / competition, progress=cfg.progress,
                                 resize=cfg.data.get("resize", "stretch"), boxes=boxes,
                                 box_margin=float(cfg.data.get("box_margin", 0.1)), boxes_source=source)
        n_train, n_test = len(train), len(test)
        self.rows = {"train": np.arange(n_train), "test": np.arange(n_train, n_train + n_test),
                     "extra": np.arange(n_train + n_test, len(paths))}
        self.mean, self.std = normalization(cfg)
        self.train_tf = build_transform(cfg.augment.train, size, mean=self.mean, std=self.std)
        self.valid_tf = build_transform(cfg.augment.valid, size, mean=self.mean, std=self.std)

    @staticmethod
    def _boxes(cfg, paths: list[str], ids: list) -> tuple[list | None, str]:
        """Each path's box from `data.boxes` (None: none configured), with one line saying how many
        images have none (they are used whole) and how many of the CSV's names matched no image."""
        file = cfg.data.get("boxes")
        if file in (None, ""):
            return None, "data.boxes"
        table = read_boxes(file)
        boxes, unused = boxes_for(table, paths, ids)
        whole = sum(b is None for b in boxes)
        print(f"data.boxes={file}: {len(paths) - whole} of {len(paths)} images cropped to their box "
              f"(margin {cfg.data.get('box_margin', 0.1)}), {whole} without a row used whole"
              + (f"; {unused} of the file's {len(table)} image names match no image" if unused else ""), flush=True)
        return boxes, str(file)

    def dataset(self, rows, labels=None, train: bool = False) -> ImageDataset:
        return ImageDataset(self.images, rows, labels, self.train_tf if train else self.valid_tf)

    def embed(self, model, rows, device, desc: str, tta: bool | None = None) -> np.ndarray:
        """L2-normalised embeddings of cache rows (sharded over processes, gathered in order)."""
        cfg = self.cfg
        tta = bool(cfg.infer.tta_flip) if tta is None else tta
        return extract_embeddings(model, self.dataset(rows), batch_size=cfg.infer.batch_size, device=device,
                                  tta_flip=tta, desc=desc, progress=cfg.progress, amp=bool(cfg.train.amp))
