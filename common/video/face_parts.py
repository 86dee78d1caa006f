"""Face-part dropout: black out the eyes, the nose or the mouth of a face crop, found by its landmarks.

Why (DFDC 1st place, Seferbekov 2020): a classifier that has found one telltale region (blending
seams round the mouth, eyes that do not blink right) stops looking at the rest of the face, and
overfits to the few thousand actors of the training set. Cutting out a whole part, chosen from the
landmarks rather than at random, makes it find evidence everywhere; unlike random erasing, the
hole always covers a part the model would otherwise rely on.

Landmarks are ``common.video.faces.LANDMARKS`` in crop pixels: left eye, right eye, nose, mouth left,
mouth right (image left/right). Sizes are relative to the inter-ocular distance, so the same part is
covered at any crop size and face scale.
"""
from __future__ import annotations

import numpy as np

from common.video.blend import WorkerStream

PARTS = ("eyes", "nose", "mouth")


def part_box(landmarks: np.ndarray, part: str, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``part`` in a ``height`` x ``width`` crop, clipped to it.

    eyes: the band through both eyes, 0.35 inter-ocular distances (IOD) beyond each eye and 0.25
    above and below; nose: a square of 0.5 IOD on the nose tip; mouth: both corners, 0.25 IOD beyond
    each and 0.3 above and below.
    """
    points = np.asarray(landmarks, np.float32).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    iod = max(float(np.linalg.norm(right_eye - left_eye)), 1.0)
    if part == "eyes":
        (x0, y0), (x1, y1) = np.minimum(left_eye, right_eye), np.maximum(left_eye, right_eye)
        box = (x0 - 0.35 * iod, y0 - 0.25 * iod, x1 + 0.35 * iod, y1 + 0.25 * iod)
    elif part == "nose":
        box = (nose[0] - 0.25 * iod, nose[1] - 0.25 * iod, nose[0] + 0.25 * iod, nose[1] + 0.25 * iod)
    elif part == "mouth":
        (x0, y0), (x1, y1) = np.minimum(mouth_left, mouth_right), np.maximum(mouth_left, mouth_right)
        box = (x0 - 0.25 * iod, y0 - 0.3 * iod, x1 + 0.25 * iod, y1 + 0.3 * iod)
    else:
        raise ValueError(f"unknown face part {part!r}; choose from {PARTS}")
    left, top = int(np.clip(np.floor(box[0]), 0, width)), int(np.clip(np.floor(box[1]), 0, height))
    right, bottom = int(np.clip(np.ceil(box[2]), left, width)), int(np.clip(np.ceil(box[3]), top, height))
    return left, top, right, bottom


class FacePartDropout(WorkerStream):
    """With probability ``p``, one of ``parts`` (uniformly) is set to black. Crops without landmarks
    (NaN: the detector gave none, or the fallback centre crop) are returned unchanged. Random
    streams per DataLoader worker from ``seed``, as `SelfBlendAugment`'s."""

    def __init__(self, p: float = 0.3, parts: tuple[str, ...] = PARTS, seed: int | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"part dropout probability must be in [0, 1], got {p}")
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"face parts {sorted(unknown) or parts}: choose from {PARTS}")
        super().__init__(seed)
        self.p, self.parts = float(p), tuple(parts)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        rng = self._worker_stream()
        if landmarks is None or not np.isfinite(landmarks).all() or rng.random() >= self.p:
            return image
        part = self.parts[int(rng.integers(len(self.parts)))]
        left, top, right, bottom = part_box(landmarks, part, image.shape[0], image.shape[1])
        out = image.copy()
        out[top:bottom, left:right] = 0
        return out
