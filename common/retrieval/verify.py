"""Spatial verification: re-score a kNN shortlist by counting geometrically consistent local matches.

Why: a global embedding summarises a whole photo in one vector, so it misses the fine spatial
detail (stripe and spot patterns, scars, fin nicks) that tells one individual from a lookalike, and
it is distracted by the background when the animal fills a small part of the frame. Local features
(SIFT / ORB / AKAZE) matched between two photos and filtered by one geometric model (a homography
or a fundamental matrix, fitted with RANSAC) keep only matches that agree with a single camera
motion: photos of the same individual (or the same scene) keep tens to hundreds of such inliers,
photos of a lookalike keep a handful. So the top-K neighbours of the embedding are re-scored by
their inlier counts (`verify_shortlist`).

Extracting features is the expensive step, and each gallery image appears in many shortlists, so
features are computed once per image and kept on disk (`FeatureCache`), keyed by the image's
content: a renamed or re-downloaded copy of an image is still a hit. OpenCV only, no learned weights.
"""
from __future__ import annotations

import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from common.core.errors import DataError
from common.core.files import write_npz_atomic
from common.data.images import content_hash, load_rgb


class Method(NamedTuple):
    """A local-feature method: `factory(max_features)` makes the OpenCV detector+descriptor, `norm` is
    the distance its descriptors are matched with, `dtype` how they are stored (SIFT's are integers
    0..255 in OpenCV, so uint8 keeps them exactly at a quarter of the size)."""
    factory: Callable[[int], cv2.Feature2D]
    norm: int
    dtype: type


METHODS: dict[str, Method] = {
    "sift": Method(lambda n: cv2.SIFT_create(nfeatures=n), cv2.NORM_L2, np.uint8),
    "orb": Method(lambda n: cv2.ORB_create(nfeatures=n), cv2.NORM_HAMMING, np.uint8),
    "akaze": Method(lambda n: cv2.AKAZE_create(max_points=n), cv2.NORM_HAMMING, np.uint8),
}

# RANSAC threshold in pixels of the resized frame: a homography fits a whole view to a few pixels;
# the epipolar distance of a fundamental matrix is tighter (it constrains one dimension only).
DEFAULT_THRESHOLD = {"homography": 5.0, "fundamental": 2.0}
ROBUST = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)  # MAGSAC++ (OpenCV >= 4.5) is less threshold-sensitive


class LocalFeatures(NamedTuple):
    """Keypoint positions (float32 [n, 2], x, y in the resized frame) and their descriptors [n, d]."""
    xy: np.ndarray
    descriptors: np.ndarray


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown local-feature method {name!r}; choices: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def extract(rgb: np.ndarray, method: str = "sift", max_features: int = 1000, max_side: int = 512,
            clahe: bool = True) -> LocalFeatures:
    """Local features of one RGB (or grey) uint8 image, at most `max_features`, strongest first.

    The image is turned grey and shrunk so its longest side is `max_side` (never enlarged: that adds
    no detail, only time); keypoints are in that frame. CLAHE (local contrast equalisation) evens out
    the shade, back-light and night-flash contrast of camera-trap photos, so the detector finds
    keypoints on the animal and not only on the brightest part of the frame.
    """
    spec = _method(method)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    scale = max_side / max(grey.shape[:2])
    if scale < 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    if clahe:
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    detector = spec.factory(max_features)
    keypoints, descriptors = detector.detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, detector.descriptorSize()), spec.dtype))
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:max_features]  # SIFT keeps ties
    xy = np.array([keypoints[i].pt for i in order], np.float32).reshape(-1, 2)
    return LocalFeatures(xy, np.ascontiguousarray(descriptors[order]).astype(spec.dtype))


class FeatureCache:
    """Local features per image on disk: `directory/<method>-<max_features>-<max_side>/<hash>.npz`.

    Keyed by `content_hash` of the image file, so a renamed, moved or re-downloaded copy is a hit and
    an image changed in place is not; the settings are in the folder name (`-noclahe` is added when
    CLAHE is off), so changing one never reads stale features. Each file is written atomically (a
    temporary file in the same folder, then one rename): an interrupted `fill` leaves only complete
    files, and the next `fill` computes just the rest. An unreadable image raises DataError naming it.
    """

    def __init__(self, directory: str | Path, method: str = "sift", max_features: int = 1000,
                 max_side: int = 512, clahe: bool = True):
        _method(method)
        self.method, self.max_features, self.max_side, self.clahe = method, int(max_features), int(max_side), clahe
        name = f"{method}-{self.max_features}-{self.max_side}" + ("" if clahe else "-noclahe")
        self.directory = Path(directory) / name
        self.directory.mkdir(parents=True, exist_ok=True)

    def file(self, path: str | Path) -> Path:
        """The cache file of an image (DataError if the image does not exist)."""
        if not Path(path).is_file():
            raise DataError(f"{path}: image does not exist")
        return self.directory / f"{content_hash(path)}.npz"

    def _compute(self, path: str | Path, file: Path) -> LocalFeatures:
        features = extract(load_rgb(path), self.method, self.max_features, self.max_side, self.clahe)
        write_npz_atomic(file, xy=features.xy, descriptors=features.descriptors)
        return features

    def fill(self, paths: Sequence[str | Path], progress: bool = True, workers: int = 1) -> int:
        """Compute the features of every image not cached yet; returns how many were computed."""
        todo: dict[Path, str | Path] = {}
        for p in paths:
            file = self.file(p)
            if not file.exists():
                todo.setdefault(file, p)  # two copies of one image are computed once
        pool = ThreadPoolExecutor(workers) if workers > 1 else None  # cv2 releases the GIL
        jobs = (pool.map if pool else map)(lambda item: self._compute(item[1], item[0]), todo.items())
        try:
            for _ in tqdm(jobs, total=len(todo), desc=f"{self.method} features", disable=not progress or not todo,
                          leave=False):
                pass
        finally:  # an error or Ctrl-C stops here: what is written is complete, the rest is not started
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
        return len(todo)

    def get(self, path: str | Path) -> LocalFeatures:
        """The features of one image: read from the cache, or computed and cached now."""
        file = self.file(path)
        if file.exists():
            try:
                with np.load(file) as z:
                    return LocalFeatures(z["xy"], z["descriptors"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # damaged outside this code (writes are atomic): recompute it
        return self._compute(path, file)


def root_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman, CVPR 2012): each descriptor L1-normalised, then square-rooted.

    Euclidean distance between RootSIFT vectors is the Hellinger kernel between the original SIFT
    histograms, which weighs the many small bins more and the few dominant (often edge-saturated)
    bins less; it finds more correct matches for the same cost. The results are unit vectors, so a
    dot product is all the matching needs. Applied when features are matched: the cache keeps plain
    SIFT, and switching it on or off never recomputes features.
    """
    d = descriptors.astype(np.float32)
    d /= d.sum(1, keepdims=True) + 1e-7
    return np.sqrt(d, out=d)


_buffers = threading.local()


def _similarity_buffer(rows: int, cols: int) -> np.ndarray:
    """A per-thread float32 [rows, cols] scratch matrix, reused between pairs: a fresh 4 MB result per
    pair costs page faults and cold caches that took as long as the product itself (about 10 ms
    instead of 5 for 1000 x 1000 SIFT features, one thread)."""
    buffer = getattr(_buffers, "similarity", None)
    if buffer is None or buffer.size < rows * cols:
        buffer = np.empty(max(rows * cols, 1), np.float32)
        _buffers.similarity = buffer
    return buffer[:rows * cols].reshape(rows, cols)


def _matches(a: LocalFeatures, b: LocalFeatures, norm: int, ratio: float,
             mutual: bool, root: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices (in a, in b) of the matches that pass Lowe's ratio test (the nearest neighbour clearly
    nearer than the second) and, optionally, the mutual check (a's match in b has a as its own nearest).

    L2 descriptors (SIFT) use one float32 BLAS product, which gives both directions at once: about 14x
    faster than cv2.BFMatcher's knnMatch plus a reverse match. With `root` the descriptors become
    RootSIFT unit vectors and the product is their similarity (squared distance 2 - 2 s); otherwise
    squared distances are built from it. Binary descriptors use BFMatcher.
    """
    if norm == cv2.NORM_HAMMING:
        matcher = cv2.BFMatcher(norm)
        good = [m[0] for m in matcher.knnMatch(a.descriptors, b.descriptors, k=2)
                if len(m) == 2 and m[0].distance < ratio * m[1].distance]
        ia, ib = np.array([m.queryIdx for m in good], int), np.array([m.trainIdx for m in good], int)
        if mutual and len(ia):
            back = np.array([m.trainIdx for m in matcher.match(b.descriptors, a.descriptors)], int)
            keep = back[ib] == ia
            ia, ib = ia[keep], ib[keep]
        return ia, ib
    if root:
        da, db = root_descriptors(a.descriptors), root_descriptors(b.descriptors)
    else:
        da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    score = np.matmul(da, np.ascontiguousarray(db.T), out=_similarity_buffer(len(da), len(db)))
    if root:  # unit vectors: squared distance 2 - 2 ab
        row_norm, back = 2.0, score.argmax(0) if mutual else None
    else:  # score = ab - |b|^2 / 2, so squared distance |a|^2 + |b|^2 - 2ab = |a|^2 - 2 score along a row
        na, nb = np.einsum("ij,ij->i", da, da), np.einsum("ij,ij->i", db, db)
        score -= 0.5 * nb[None]
        # b's nearest in a: the column's best of ab - |a|^2 / 2 (a's norm instead of b's)
        back = (score + 0.5 * (nb[None] - na[:, None])).argmax(0) if mutual else None
        row_norm = na
    ia, ib = np.arange(len(da)), score.argmax(1)
    best = score[ia, ib].copy()
    score[ia, ib] = -np.inf
    d_best, d_second = np.maximum(row_norm - 2 * best, 0), np.maximum(row_norm - 2 * score.max(1), 0)
    keep = d_best < ratio ** 2 * d_second  # the ratio test on squared distances
    if mutual:
        keep &= back[ib] == ia
    return ia[keep], ib[keep]


def count_inliers(a: LocalFeatures, b: LocalFeatures, method: str = "sift", ratio: float = 0.8,
                  model: str = "homography", ransac_threshold: float | None = None, min_matches: int = 8,
                  mutual: bool = True, root: bool = False) -> int:
    """How many matches between two images agree with one geometric model fitted robustly.

    `model="homography"` (a plane seen from two viewpoints: a flank, a fluke, a facade; strict, so
    lookalikes keep very few inliers) or `"fundamental"` (any rigid 3-D scene: looser, more inliers
    by chance). MAGSAC++ when OpenCV has it, else RANSAC. 0 when fewer than `min_matches` matches
    survive the ratio test, or the estimation fails. `root` matches SIFT as RootSIFT
    (`root_descriptors`); it is an error for the binary methods, which have no such form.
    """
    if root and method != "sift":
        raise ValueError(f"root=True (RootSIFT) needs method='sift', not {method!r}")
    if model not in DEFAULT_THRESHOLD:
        raise ValueError(f"unknown model {model!r}; choices: {', '.join(DEFAULT_THRESHOLD)}")
    min_matches = max(min_matches, 8 if model == "fundamental" else 4)
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0
    ia, ib = _matches(a, b, _method(method).norm, ratio, mutual, root)
    if len(ia) < min_matches:
        return 0
    pa, pb = a.xy[ia], b.xy[ib]
    threshold = DEFAULT_THRESHOLD[model] if ransac_threshold is None else float(ransac_threshold)
    try:
        if model == "homography":
            _, mask = cv2.findHomography(pa, pb, ROBUST, threshold, maxIters=2000, confidence=0.999)
        else:
            _, mask = cv2.findFundamentalMat(pa, pb, ROBUST, threshold, 0.999, 2000)
    except cv2.error:
        return 0
    return 0 if mask is None else int(mask.sum())


def verify_shortlist(query_paths: Sequence[str | Path], gallery_paths: Sequence[str | Path],
                     shortlist_ids: np.ndarray, cache: FeatureCache, progress: bool = True, workers: int = 1,
                     **match_kwargs) -> np.ndarray:
    """Inlier counts int32 [n_query, K] of each query against its K shortlisted gallery images.

    `shortlist_ids[i, j]` indexes `gallery_paths` (the kNN shortlist of query i); -1 means no
    candidate and scores 0. The counts re-score the shortlist: same individual, many inliers.
    `match_kwargs` go to `count_inliers` (ratio, model, ransac_threshold, min_matches, mutual, root).
    `workers` > 1 verifies queries in threads (OpenCV and BLAS release the GIL).
    """
    ids = np.asarray(shortlist_ids, dtype=np.int64)
    if ids.ndim != 2 or len(ids) != len(query_paths):
        raise ValueError(f"shortlist_ids must be [n_query={len(query_paths)}, K], got shape {ids.shape}")
    if ids.size and (ids.max() >= len(gallery_paths) or ids.min() < -1):
        raise ValueError(f"shortlist_ids must be in [-1, {len(gallery_paths)}), got {ids.min()}..{ids.max()}")
    gallery = lru_cache(maxsize=512)(lambda j: cache.get(gallery_paths[j]))  # a gallery image recurs
    scores = np.zeros(ids.shape, np.int32)

    def one(i: int) -> None:
        if (ids[i] < 0).all():
            return
        query = cache.get(query_paths[i])
        for j, g in enumerate(ids[i]):
            if g >= 0:
                scores[i, j] = count_inliers(query, gallery(int(g)), cache.method, **match_kwargs)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(one, range(len(ids))), total=len(ids), desc="spatial verification",
                      disable=not progress or not len(ids), leave=False):
            pass
    return scores
