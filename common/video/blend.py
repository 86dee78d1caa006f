"""Self-blended images: pseudo-fakes made from a real face alone.

Why: Shiohara & Yamasaki (CVPR 2022, "Detecting Deepfakes with Self-Blended Images")
showed that a detector trained on real faces plus *self-blends* - a face pasted onto
itself after a slight colour and geometry change, through a soft mask - generalises to
unseen forgery methods better than one trained on the fakes of one dataset.  The blend
leaves exactly the traces every face swap leaves (a blending boundary, colour mismatch,
resampling inside the face) without any identity change to over-fit on.

The mask follows the face's landmarks when the crop has them (``landmark_mask``): SBI uses
the convex hull of dlib's 81 landmarks; we have the detector's five (eyes, nose, mouth
corners, ``common.video.faces.LANDMARKS``), so their hull is grown about its centroid by a
random factor, rounded (a disc added), stretched upward over the brows and forehead (the five
points stop at the eyes), randomly deformed by a smooth flow, eroded or dilated, and blurred with a random
kernel, all in units of the face's eye-mouth distance.  ``landmark_mask_bound`` is the
largest region such a mask can reach.  Crops without landmarks (NaN, or none given) get the
landmark-free fallback ``face_mask``: crops are centred, so a randomly sized ellipse around
the crop centre, deformed, eroded and blurred.  The source is always the crop itself with
colour, small geometry and frequency (resampling) jitter.

Use as the only source of fakes: train on real crops only, and let ``SelfBlendAugment``
(``p=0.5``) turn half of them into fakes at load time, taking the label it returns::

    blend = SelfBlendAugment(p=0.5, seed=0)
    out = blend(image=real_crop, landmarks=crop_landmarks)  # {"image", "label" (0/1), "mask"}

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

    The fallback for crops without landmarks (``landmark_mask`` otherwise): crops are centred
    on the face, so the inner face is an ellipse near the centre.  The blur kernel is random,
    so some boundaries are sharp and some smooth.
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


# --- the landmark mask ---------------------------------------------------------------------
# Lengths are in units of the eye-mouth distance ``d`` (eye midpoint to mouth-corner midpoint,
# about 0.36 of the face box's side, ~50 px in a 224 px crop with margin 0.3), so the mask
# scales with the face, not with the crop.  Proportions below are those of the ArcFace
# 5-point template (eyes ~0.5 d above the landmarks' centroid and ~0.43 d to its sides, mouth
# corners ~0.5 d below and ~0.36 d to the sides); the outline figures (temples, jaw, chin,
# brows, hairline) are rough proportions of an average face (dlib's 68/81-point layout).
LANDMARK_GROWTH = (1.4, 1.8)
"""Hull growth about the centroid.  With the rounding below: at the low end a tight inner face
(~0.12 d to spare beside the eyes after the largest erosion, so they stay inside), at the high
end the whole face - ~1.1 d to the sides at the eyes (the temples: a face is ~2.6 interocular
distances wide) and ~1.25 d below the centroid (the chin is ~1.05 d), SBI's full-face hull."""
LANDMARK_ROUNDING = (0.05, 0.35)
"""Radius of the disc added to the grown hull (a Minkowski sum), times ``d``: it rounds the
corners a bare 5-point hull has (a trapezoid; scaled alone, its bottom corners would jut out
past the jaw) into a face-like outline, and adds a margin around the points."""
LANDMARK_LIFT = (0.15, 0.45)
"""Upward sweep (the hull is swept this far, times ``d``, from the mouth toward the eyes): the
five points stop at the eyes, the brows are ~0.3 d and the hairline ~1.0 d above them.  With
growth and rounding the top lands between the brows (0.75 d above the centroid) and a little
above the hairline (1.7 d) - SBI uses dlib's 81 points (forehead included) 3 times in 4, the
68 (up to the brows) otherwise."""
LANDMARK_MIN_HALF_WIDTH = 0.35
"""Two extra hull points this far (times ``d``) to either side of the centroid, across the
face: inside the hull of a frontal face (~0.39 d there), they keep a profile face's mask
(eyes nearly on top of each other) face-wide rather than a sliver."""
LANDMARK_DEFORM = 0.1
"""Largest displacement of the smooth random flow, per axis, times ``d`` (~5 px at d=50; the
ellipse's flow is 0.04 of the crop side, ~9 px at 224): SBI's elastic transform scale."""
LANDMARK_DEFORM_SPACING = 0.5
"""Distance between the flow's random control points, times ``d``: a few bumps per side."""
LANDMARK_ERODE = (-0.1, 0.1)
"""Signed radius of the erosion (< 0) or dilation (> 0), times ``d`` (SBI erodes by blurring
and thresholding; dilation adds the hull's own size jitter)."""
LANDMARK_BLUR = (0.1, 0.8)
"""Gaussian kernel side, times ``d`` (odd, at least 3; OpenCV's sigma for it, ~0.15 x side):
from a near-sharp boundary (~5 px) to a ~40 px soft one (SBI: 5-17 px kernels on ~224 px
masks, sigma up to 46, i.e. up to a box-like 17 px blur)."""


def _eye_mouth(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """``(unit vector from the mouth to the eyes, eye-mouth distance d)``."""
    up = landmarks[:2].mean(axis=0) - landmarks[3:].mean(axis=0)
    d = float(np.hypot(*up))
    return up / max(d, 1e-12), d


def usable_landmarks(landmarks, height: int, width: int) -> bool:
    """Whether ``landmarks`` ([5, 2] crop pixels) can shape the mask: all finite, inside a
    generous window around the crop (one crop side beyond each edge) and an eye-mouth
    distance of at least 1 px.  Otherwise the blend falls back to ``face_mask``."""
    if landmarks is None:
        return False
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        return False
    if (points[:, 0] < -width).any() or (points[:, 0] > 2 * width).any():
        return False
    if (points[:, 1] < -height).any() or (points[:, 1] > 2 * height).any():
        return False
    return _eye_mouth(points)[1] >= 1.0


def _landmark_hull(landmarks: np.ndarray, growth: float, rounding: float, lift: float) -> np.ndarray:
    """The grown, rounded, lifted convex hull as int32 vertices in 1/16 px (for ``shift=4``).

    Growth about the centroid (which lies in the hull), a Minkowski sum with a disc and one
    with a segment in a fixed direction each only enlarge the hull as their factor grows, so
    the hull at the largest factors contains every other one.
    """
    points = landmarks.astype(np.float64)
    centre = points.mean(axis=0)
    up, d = _eye_mouth(points)
    across = np.array([-up[1], up[0]])
    points = np.vstack([points, centre + LANDMARK_MIN_HALF_WIDTH * d * across,
                        centre - LANDMARK_MIN_HALF_WIDTH * d * across])
    grown = centre + growth * (points - centre)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)  # the disc as an inscribed 24-gon
    disc = rounding * d * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rounded = (grown[:, None, :] + disc[None]).reshape(-1, 2)
    swept = np.vstack([rounded, rounded + lift * d * up])
    return cv2.convexHull(np.round(swept * 16).astype(np.int32))


def _landmark_reach(d: float) -> int:
    """How far (px, per axis) deformation, dilation and blur can move the mask's outer edge beyond
    the hull: the flow's bound rounded up plus the pixel bilinear sampling reaches, the largest
    dilation kernel's half side, the largest blur kernel's half side (a square kernel), and 2 px
    for rasterising two different hulls.  Each step spreads the mask within a square of its reach
    (the dilation's ellipse fits in one), so the mask stays within a square of their sum."""
    flow = int(np.ceil(LANDMARK_DEFORM * d)) + 1
    dilation = int(round(max(LANDMARK_ERODE[1], 0.0) * d))
    blur = (max(3, _odd(LANDMARK_BLUR[1] * d)) - 1) // 2
    return flow + dilation + blur + 2


def landmark_mask(height: int, width: int, landmarks, rng: np.random.Generator) -> np.ndarray:
    """Soft float32 mask in [0, 1] shaped by the five landmarks (crop pixels, ``[5, 2]``).

    SBI's landmark hull with five points: their convex hull (plus ``LANDMARK_MIN_HALF_WIDTH``
    points across the centroid) grown about the centroid by a random ``LANDMARK_GROWTH``
    factor, rounded by a random ``LANDMARK_ROUNDING`` disc and swept upward (mouth -> eyes
    direction, so a tilted face's forehead is covered too) by a random ``LANDMARK_LIFT``;
    then deformed by a smooth random flow, eroded or dilated, and blurred with a random
    kernel.  Never leaves ``landmark_mask_bound``.
    Landmarks that are not ``usable_landmarks`` (NaN, absent) give ``face_mask(height, width,
    rng)``, drawing from ``rng`` exactly as it does.
    """
    if not usable_landmarks(landmarks, height, width):
        return face_mask(height, width, rng)
    points = np.asarray(landmarks, np.float64)
    d = _eye_mouth(points)[1]
    mask = np.zeros((height, width), dtype=np.uint8)
    hull = _landmark_hull(points, float(rng.uniform(*LANDMARK_GROWTH)), float(rng.uniform(*LANDMARK_ROUNDING)),
                          float(rng.uniform(*LANDMARK_LIFT)))
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=4)
    # deform: a smooth random flow (control points every LANDMARK_DEFORM_SPACING d, bicubic
    # in between and clipped, so no pixel moves more than LANDMARK_DEFORM d per axis)
    grid = int(np.clip(round(min(height, width) / (LANDMARK_DEFORM_SPACING * d)) + 1, 2, 64))
    amplitude = LANDMARK_DEFORM * d
    flow = rng.uniform(-1, 1, size=(grid, grid, 2)).astype(np.float32) * amplitude
    flow = np.clip(cv2.resize(flow, (width, height), interpolation=cv2.INTER_CUBIC), -amplitude, amplitude)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    mask = cv2.remap(mask, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    radius = rng.uniform(*LANDMARK_ERODE) * d
    size = 2 * int(round(abs(radius))) + 1
    if size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        mask = cv2.dilate(mask, kernel) if radius > 0 else cv2.erode(mask, kernel)
    blur = max(3, _odd(rng.uniform(*LANDMARK_BLUR) * d))
    mask = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (blur, blur), 0)
    return np.clip(mask, 0.0, 1.0)


def landmark_mask_bound(height: int, width: int, landmarks) -> np.ndarray:
    """Bool ``[H, W]``: the largest region ``landmark_mask`` can cover for these landmarks.

    The hull at the largest growth, rounding and lift, widened by the most the deformation,
    dilation and blur can push the edge out (``_landmark_reach``, per axis).  Every
    ``landmark_mask`` for these landmarks is exactly 0 outside it.  All True when the landmarks
    are not usable (the fallback ellipse is not bounded by them).
    """
    if not usable_landmarks(landmarks, height, width):
        return np.ones((height, width), dtype=bool)
    points = np.asarray(landmarks, np.float64)
    reach = _landmark_reach(_eye_mouth(points)[1])
    # drawn on a canvas ``reach`` wider on every side: hull outside the crop but within reach of
    # it widens the region inside the crop too
    hull = np.zeros((height + 2 * reach, width + 2 * reach), dtype=np.uint8)
    largest = _landmark_hull(points + reach, LANDMARK_GROWTH[1], LANDMARK_ROUNDING[1], LANDMARK_LIFT[1])
    cv2.fillConvexPoly(hull, largest, 255, lineType=cv2.LINE_8, shift=4)
    hull = cv2.dilate(hull, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    return hull[reach:reach + height, reach:reach + width] > 0


def blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target`` for uint8 images and a float [H, W] mask."""
    m = mask[..., None].astype(np.float32)
    out = m * source.astype(np.float32) + (1 - m) * target.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as in the SBI paper: mostly full blends


def self_blend(face: np.ndarray, rng: np.random.Generator,
               landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pseudo_fake uint8 [H, W, 3], mask float32 [H, W] in [0, 1])``.

    A colour-, geometry- and texture-perturbed copy of ``face`` is blended over ``face``
    through a soft mask (scaled by a random blend ratio); pixels where the mask is 0 are
    unchanged.  The mask is ``landmark_mask`` for ``landmarks`` (``[5, 2]`` crop pixels); with
    none, or NaN ones, it is ``face_mask`` and the result is exactly what it was before
    landmarks existed, for the same ``rng`` state.
    """
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"self_blend expects an RGB uint8 face [H, W, 3], got {face.dtype} {face.shape}")
    source = perturb_colour(face, rng)
    source = perturb_geometry(source, rng)
    if rng.random() < 0.5:
        source = perturb_resample(source, rng)
    mask = landmark_mask(face.shape[0], face.shape[1], landmarks, rng) * float(rng.choice(BLEND_RATIOS))
    return blend(source, face, mask), mask.astype(np.float32)


def _rank() -> int:
    """This process's rank in a torch.distributed job (0 when there is none)."""
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except (ImportError, RuntimeError):
        return 0


class WorkerStream:
    """A numpy random stream per DataLoader worker, derived from one seed (see `SelfBlendAugment`
    for the rules); subclasses draw from ``self._worker_stream()``."""

    def __init__(self, seed: int | None = None):
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


class SelfBlendAugment(WorkerStream):
    """With probability ``p``, replace a real face by its self-blend and label it fake.

    Called albumentations-style: ``aug(image=img, landmarks=None) -> {"image", "label",
    "mask"}`` where ``label`` is 1 for a self-blend, 0 otherwise, and ``mask`` is the blend mask
    (zeros if untouched), usable as an auxiliary target.  ``landmarks`` (``[5, 2]`` crop pixels,
    optional) shape the mask (``landmark_mask``); without them, or NaN, the ellipse is used and
    the outputs are the same as before landmarks existed.  Either way one call draws "blend or
    not" first, then (when blending) the blend itself, from the stream below.

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
        super().__init__(seed)
        self.p = p

    def __call__(self, *, image: np.ndarray, landmarks: np.ndarray | None = None) -> dict:
        rng = self._worker_stream()
        if rng.random() < self.p:
            fake, mask = self_blend(image, rng, landmarks)
            return {"image": fake, "label": 1, "mask": mask}
        return {"image": image, "label": 0, "mask": np.zeros(image.shape[:2], np.float32)}
