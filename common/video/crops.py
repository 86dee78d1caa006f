"""Cached face crops as a training dataset (optionally self-blended into pseudo-fakes)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from common.video.blend import SelfBlendAugment
from common.video.face_cache import CropReader
from common.video.face_parts import FacePartDropout


class FaceCropDataset(Dataset):
    """Cached crops `(video, k)` with their video's label; optionally self-blended into fakes first.

    ``landmarks`` (optional, float32 ``[len(items), 5, 2]``, aligned with ``items``): each crop's
    five landmarks in crop pixels (``common.video.faces.LANDMARKS``), handed to ``blend`` so the
    self-blend mask follows the face; rows of NaN (no landmarks) get the blend's ellipse.  Without
    the array, ``blend`` is called as ``blend(image=...)`` alone, as before landmarks existed.
    ``part_dropout`` (a ``FacePartDropout``) then blacks out a part of real and fake crops alike,
    found by the same landmarks.
    """

    def __init__(self, reader: CropReader, items: np.ndarray, labels: np.ndarray, transform,
                 blend: SelfBlendAugment | None = None, landmarks: np.ndarray | None = None,
                 part_dropout: FacePartDropout | None = None):
        self.reader, self.items, self.labels = reader, np.asarray(items), np.asarray(labels, np.float32)
        self.transform, self.blend = transform, blend
        if landmarks is not None:
            landmarks = np.asarray(landmarks, np.float32)
            if landmarks.shape != (len(self.items), 5, 2):
                raise ValueError(f"landmarks must be [len(items)={len(self.items)}, 5, 2], got {landmarks.shape}")
        self.landmarks = landmarks
        self.part_dropout = part_dropout

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        video, k = (int(v) for v in self.items[i])
        image, label = self.reader(video, k), float(self.labels[i])
        if self.blend is not None and label == 0.0:  # only real faces become self-blended fakes
            if self.landmarks is None:
                out = self.blend(image=image)
            else:
                out = self.blend(image=image, landmarks=self.landmarks[i])
            image, label = out["image"], float(out["label"])
        if self.part_dropout is not None and self.landmarks is not None:
            image = self.part_dropout(image, self.landmarks[i])
        return self.transform(image=image)["image"], torch.tensor(label, dtype=torch.float32)
