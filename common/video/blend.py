"""Self-blended images: pseudo-fakes made from a real face alone.

Why: Shiohara & Yamasaki (CVPR 2022, "Detecting Deepfakes with Self-Blended Images")
showed that a detector trained on real faces plus *self-blends* - a face pasted onto
itself after a slight colour and geometry change, through a soft mask - generalises to
unseen forgery methods better than one trained on the fakes of one dataset.  The blend
leaves exactly the traces every face swap leaves (a blending boundary, colour mismatch,
resampling inside the face) without any identity change to over-fit on.

This version is landmark-free: face crops are centred, so the mask is a randomly sized
ellipse around the crop centre, randomly deformed, eroded and blurred.

Use as the only source of fakes: train on real crops only, and let ``SelfBlendAugment``
(``p=0.5``) turn half of them into fakes at load time, taking the label it returns::

    blend = SelfBlendAugment(p=0.5, seed=0)
    out = blend(image=real_crop)          # {"image", "label" (0 real / 1 fake), "mask"}

Apply geometric/colour augmentations to the whole image *after* the blend, so they do not
wash out the boundary the model must learn.
"""
from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import get_worker_info


def _odd(value: float) -> int:
    value = int(round(value))
    return value if value % 2 == 1 else value + 1


def perturb_colour(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random hue shift, saturation, brightness and contrast change, and RGB channel shift."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6) * strength) % 180  # OpenCV hue is 0..179
    hsv[..., 1] *= 1 + rng.uniform(-0.2, 0.2) * strength
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    contrast = 1 + rng.uniform(-0.2, 0.2) * strength
    brightness = rng.uniform(-20, 20) * strength
    channel_shift = rng.uniform(-12, 12, size=3) * strength
    out = (out - out.mean()) * contrast + out.mean() + brightness + channel_shift
    return np.clip(out, 0, 255).astype(np.uint8)


def perturb_geometry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small random scale (±5 %) and translation (±3 % of the side), edges replicated."""
    h, w = image.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03, size=2) * (w, h)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    matrix[:, 2] += (tx, ty)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def perturb_resample(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down- and up-sample (resampling blur) or sharpen, the texture change of a generator."""
    h, w = image.shape[:2]
    if rng.random() < 0.7:
        factor = rng.uniform(0.4, 0.8)
        small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return cv2.addWeighted(image, 1.6, blurred, -0.6, 0)


def face_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Soft float32 mask in [0, 1]: a random ellipse around the centre, deformed, eroded, blurred.

    Stands in for SBI's landmark convex hull: crops are centred on the face, so the inner
    face is an ellipse near the centre.  The blur kernel is random, so some boundaries are
    sharp and some smooth.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    centre = (round(width * (0.5 + rng.uniform(-0.04, 0.04))), round(height * (0.52 + rng.uniform(-0.04, 0.04))))
    axes = (round(width * rng.uniform(0.24, 0.36)), round(height * rng.uniform(0.30, 0.42)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-10, 10)), 0, 360, 255, thickness=-1)
    # deform: a smooth random warp, so the outline is not a perfect ellipse
    grid = max(2, min(height, width) // 32)
    flow = rng.uniform(-1, 1, size=(grid, grid, 2)).astype(np.float32) * 0.04 * min(height, width)
    flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    mask = cv2.remap(mask, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    erode = _odd(rng.uniform(0.0, 0.08) * min(height, width))
    if erode > 1:
        mask = cv2.erode(mask, np.ones((erode, erode), np.uint8))
    blur = _odd(rng.uniform(0.05, 0.25) * min(height, width))
    mask = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (blur, blur), 0)
    return np.clip(mask, 0.0, 1.0)


def blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target`` for uint8 images and a float [H, W] mask."""
    m = mask[..., None].astype(np.float32)
    out = m * source.astype(np.float32) + (1 - m) * target.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as in the SBI paper: mostly full blends


def self_blend(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pseudo_fake uint8 [H, W, 3], mask float32 [H, W] in [0, 1])``.

    A colour-, geometry- and texture-perturbed copy of ``face`` is blended over ``face``
    through a soft mask (scaled by a random blend ratio); pixels where the mask is 0 are
    unchanged.
    """
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"self_blend expects an RGB uint8 face [H, W, 3], got {face.dtype} {face.shape}")
    source = perturb_colour(face, rng)
    source = perturb_geometry(source, rng)
    if rng.random() < 0.5:
        source = perturb_resample(source, rng)
    mask = face_mask(face.shape[0], face.shape[1], rng) * float(rng.choice(BLEND_RATIOS))
    return blend(source, face, mask), mask.astype(np.float32)


def _rank() -> int:
    """This process's rank in a torch.distributed job (0 when there is none)."""
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except (ImportError, RuntimeError):
        return 0


class SelfBlendAugment:
    """With probability ``p``, replace a real face by its self-blend and label it fake.

    Called albumentations-style: ``aug(image=img) -> {"image", "label", "mask"}`` where
    ``label`` is 1 for a self-blend, 0 otherwise, and ``mask`` is the blend mask (zeros if
    untouched), usable as an auxiliary target.

    Randomness comes from ``seed`` (the run seed) alone, so a run is reproducible:

    * outside DataLoader workers, the stream is ``np.random.default_rng(seed)``;
    * in DataLoader worker ``w`` (``torch.utils.data.get_worker_info().id``), the first call
      switches to the stream ``SeedSequence(seed, spawn_key=(w,))`` - the ``w``-th child
      ``SeedSequence(seed).spawn`` would give - so forked workers do not all produce the same
      blends, yet worker ``w`` produces the same ones in every run with this seed. Under
      torch.distributed with several processes the rank joins the key, ``(rank, w)``.

    The process id plays no part. Workers are expected to persist across epochs (the training
    loaders use ``persistent_workers``); re-created workers start their streams again. With
    ``seed=None`` the main process draws fresh entropy and each worker uses torch's per-worker
    seed (``get_worker_info().seed``).
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.seed = seed
        self._stream_key: tuple[int, ...] | None = None  # the worker the stream was derived for
        self._rank = _rank()  # workers started by spawn do not see the process group
        self.rng = np.random.default_rng(seed)

    def _worker_stream(self) -> np.random.Generator:
        info = get_worker_info()
        if info is None:
            return self.rng  # main process (num_workers=0): the stream seeded in __init__
        rank = _rank() or self._rank
        key = (int(info.id),) if rank == 0 else (rank, int(info.id))
        if key != self._stream_key:  # first call in this worker (its copy still has the parent's key)
            self._stream_key = key
            if self.seed is None:
                self.rng = np.random.default_rng(np.random.SeedSequence(int(info.seed) % 2 ** 64))
            else:
                self.rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
        return self.rng

    def __call__(self, *, image: np.ndarray) -> dict:
        rng = self._worker_stream()
        if rng.random() < self.p:
            fake, mask = self_blend(image, rng)
            return {"image": fake, "label": 1, "mask": mask}
        return {"image": image, "label": 0, "mask": np.zeros(image.shape[:2], np.float32)}
