"""Face detection and face crops, behind one small interface.

Why: deepfake artefacts live in the face, which fills a few percent of a DFDC frame, so
models look at face crops rather than whole frames.  Which detector finds the faces is a
choice (speed vs. recall, what weights the Kaggle kernel can carry), so detectors share
one method, ``detect(rgb) -> [n, 5] (x1, y1, x2, y2, score)``, and are created by name:

* ``haar``: OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless, so it
  works offline everywhere.  Misses turned or tilted faces (about 63 % of frames found on
  the ``carphone`` clip, where the head turns).
* ``ssd``: OpenCV's DNN ResNet-10 SSD face detector (Caffe), much better recall.
* ``yunet``: OpenCV's YuNet (``cv2.FaceDetectorYN``, ONNX), fast and accurate.

The CNN detectors need weight files that cannot be downloaded here; they are found in a
directory given as an argument, the ``FACE_DETECTOR_DIR`` environment variable,
``inputs/weights/``, or any ``/kaggle/input/<dataset>/`` folder, and otherwise fail with an
error that names the file and how to bring it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np

from common.core.registry import Registry

WEIGHTS_ENV_VAR = "FACE_DETECTOR_DIR"


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(rgb uint8 [H, W, 3]) -> float32 [n, 5] (x1, y1, x2, y2, score)``."""

    def detect(self, rgb: np.ndarray) -> np.ndarray: ...


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def _downscale(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink big frames before detection (much faster; faces in DFDC are large).

    Returns the image and the factor that maps its coordinates back to the original.
    """
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb, 1.0
    scale = max_side / max(h, w)
    small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return small, 1.0 / scale


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")


# --- Haar cascade ---------------------------------------------------------------------------


class HaarDetector:
    """OpenCV frontal-face Haar cascade (offline, CPU, ~11 ms on a 176x144 frame).

    ``score`` is ``neighbours / (neighbours + min_neighbors)``: the number of overlapping raw
    windows merged into the box, squashed to (0, 1); 0.5 means "just passed".  It ranks
    boxes but is not a probability.
    """

    def __init__(
        self,
        *,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size_frac: float = 0.08,
        max_side: int | None = 640,
    ):
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FileNotFoundError(f"{path}: Haar cascade missing or unreadable")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_frac = min_size_frac
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        _check_rgb(rgb)
        small, back = _downscale(rgb, self.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        min_side = max(24, round(self.min_size_frac * min(gray.shape)))
        rects, neighbours = self.classifier.detectMultiScale2(
            gray, self.scale_factor, self.min_neighbors, minSize=(min_side, min_side)
        )
        if len(rects) == 0:
            return _no_boxes()
        rects = np.asarray(rects, dtype=np.float32)
        neighbours = np.asarray(neighbours, dtype=np.float32).reshape(-1)
        boxes = np.column_stack([rects[:, :2], rects[:, :2] + rects[:, 2:]]) * back
        scores = neighbours / (neighbours + self.min_neighbors)
        return np.column_stack([boxes, scores]).astype(np.float32)


# --- CNN detectors whose weights must be brought along --------------------------------------


class MissingWeightsError(FileNotFoundError):
    """A detector's weight file is not present; the message says how to bring it."""


def _candidate_dirs(weights_dir: str | Path | None) -> list[Path]:
    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    if os.environ.get(WEIGHTS_ENV_VAR):
        dirs.append(Path(os.environ[WEIGHTS_ENV_VAR]))
    dirs.append(Path("inputs/weights"))
    kaggle = Path("/kaggle/input")
    if kaggle.is_dir():
        dirs += sorted(p for p in kaggle.glob("*") if p.is_dir())
        dirs += sorted(p for p in kaggle.glob("*/*") if p.is_dir())
    return dirs


def find_weight_file(name: str, weights_dir: str | Path | None, how_to_get: str) -> Path:
    """First ``<dir>/<name>`` over the candidate directories, else ``MissingWeightsError``.

    ``weights_dir`` may also be the file itself.
    """
    if weights_dir is not None and Path(weights_dir).is_file() and Path(weights_dir).name == name:
        return Path(weights_dir)
    searched = _candidate_dirs(weights_dir)
    for directory in searched:
        if (directory / name).is_file():
            return directory / name
    raise MissingWeightsError(
        f"face detector weight file {name!r} not found (searched: "
        f"{', '.join(str(d) for d in searched) or 'nothing'}). {how_to_get} Then pass its folder "
        f"as weights_dir=..., set {WEIGHTS_ENV_VAR}=<folder>, put it in inputs/weights/, or on "
        f"Kaggle upload it as a dataset and attach it to the kernel (/kaggle/input/<dataset>/)."
    )


def ssd_output_to_boxes(detections: np.ndarray, width: int, height: int, threshold: float) -> np.ndarray:
    """OpenCV SSD output ``[1, 1, N, 7]`` (img, class, score, x1, y1, x2, y2 in 0..1) -> boxes."""
    rows = detections.reshape(-1, 7)
    rows = rows[rows[:, 2] >= threshold]
    if len(rows) == 0:
        return _no_boxes()
    boxes = np.clip(rows[:, 3:7], 0.0, 1.0) * np.array([width, height, width, height], np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return np.column_stack([boxes, rows[:, 2]])[keep].astype(np.float32)


class SsdResNetDetector:
    """OpenCV DNN ResNet-10 SSD face detector (300x300 input, Caffe weights)."""

    PROTOTXT = "deploy.prototxt"
    WEIGHTS = "res10_300x300_ssd_iter_140000.caffemodel"
    HOW_TO_GET = (
        "Get deploy.prototxt from github.com/opencv/opencv (samples/dnn/face_detector) and "
        "res10_300x300_ssd_iter_140000.caffemodel from github.com/opencv/opencv_3rdparty "
        "(branch dnn_samples_face_detector_20170830) on a machine with internet."
    )

    def __init__(self, weights_dir: str | Path | None = None, *, threshold: float = 0.5):
        prototxt = find_weight_file(self.PROTOTXT, weights_dir, self.HOW_TO_GET)
        weights = find_weight_file(self.WEIGHTS, weights_dir, self.HOW_TO_GET)
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        blob = cv2.dnn.blobFromImage(cv2.resize(bgr, (300, 300)), 1.0, (300, 300), (104.0, 177.0, 123.0))
        self.net.setInput(blob)
        return ssd_output_to_boxes(self.net.forward(), w, h, self.threshold)


def yunet_output_to_boxes(faces: np.ndarray | None, scale: float = 1.0) -> np.ndarray:
    """``cv2.FaceDetectorYN.detect`` rows (x, y, w, h, 10 landmark coords, score) -> boxes."""
    if faces is None or len(faces) == 0:
        return _no_boxes()
    faces = np.asarray(faces, dtype=np.float32)
    xy, wh = faces[:, 0:2], faces[:, 2:4]
    boxes = np.column_stack([xy, xy + wh]) * scale
    return np.column_stack([boxes, faces[:, 14]]).astype(np.float32)


class YuNetDetector:
    """OpenCV YuNet face detector (``cv2.FaceDetectorYN``, ONNX weights, ~340 KB)."""

    WEIGHTS = "face_detection_yunet_2023mar.onnx"
    HOW_TO_GET = (
        "Get face_detection_yunet_2023mar.onnx from github.com/opencv/opencv_zoo "
        "(models/face_detection_yunet) on a machine with internet."
    )

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        *,
        threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int | None = 640,
    ):
        model = find_weight_file(self.WEIGHTS, weights_dir, self.HOW_TO_GET)
        self.net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), threshold, nms_threshold, 5000)
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        _check_rgb(rgb)
        small, back = _downscale(rgb, self.max_side)
        self.net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        return yunet_output_to_boxes(faces, back)


DETECTORS = Registry("face detector", keys=("faces.detector",), also=("auto",))
DETECTORS.add("haar", HaarDetector)
DETECTORS.add("ssd", SsdResNetDetector)
DETECTORS.add("yunet", YuNetDetector)


def create_detector(name: str, **kwargs) -> FaceDetector:
    """Build a detector by registry name, e.g. ``create_detector("yunet", weights_dir=...)``."""
    return DETECTORS.get(name, "faces.detector")(**kwargs)


# --- crops ----------------------------------------------------------------------------------


def crop_face(rgb: np.ndarray, box, margin: float = 0.3, size: int = 224) -> np.ndarray:
    """Square ``[size, size, 3]`` crop around ``box`` (x1, y1, x2, y2[, score]).

    Each side of the box grows by ``margin`` times the box's width (left/right) or height
    (top/bottom), the result is clipped to the image, resized isotropically so its longer
    side is ``size``, and centred on a black square (zero padding) - faces keep their shape.
    """
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0:
        raise ValueError(f"empty face box {tuple(box[:4])}")
    left = int(np.clip(np.floor(x1 - margin * bw), 0, w - 1))
    top = int(np.clip(np.floor(y1 - margin * bh), 0, h - 1))
    right = int(np.clip(np.ceil(x2 + margin * bw), left + 1, w))
    bottom = int(np.clip(np.ceil(y2 + margin * bh), top + 1, h))
    patch = rgb[top:bottom, left:right]
    ph, pw = patch.shape[:2]
    scale = size / max(ph, pw)
    new_w, new_h = max(1, round(pw * scale)), max(1, round(ph * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size, 3), dtype=rgb.dtype)
    oy, ox = (size - new_h) // 2, (size - new_w) // 2
    out[oy : oy + new_h, ox : ox + new_w] = patch
    return out


class FaceCrop(NamedTuple):
    """One face from one frame; unpacks as ``(frame_idx, face_idx, crop, score)``."""

    frame_idx: int
    face_idx: int
    crop: np.ndarray
    score: float


FALLBACK_SCORE = 0.0  # score of centre crops used when a video has no detected face


def centre_box(height: int, width: int, margin: float) -> np.ndarray:
    """The box whose ``margin``-expanded crop is the largest centred square of the frame."""
    side = min(height, width) / (1 + 2 * margin)
    cx, cy = width / 2, height / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, FALLBACK_SCORE])


EXTRACT_MODES = ("largest", "all")


def extract_faces(
    frames,
    detector: FaceDetector,
    *,
    margin: float = 0.3,
    size: int = 224,
    mode: str = "largest",
) -> list[FaceCrop]:
    """Detect and crop faces in every frame.

    ``mode="largest"`` keeps the largest box per frame (DFDC videos mostly show one subject;
    the biggest face is usually the one that was swapped); ``"all"`` keeps every box,
    ``face_idx`` ranking them by score.  Frames without a face are skipped.  If no frame has
    a face, every frame contributes its largest centred square instead, with score 0.0
    (``FALLBACK_SCORE``) so callers can tell - a prediction is still needed for such videos.
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {EXTRACT_MODES}")
    crops: list[FaceCrop] = []
    for frame_idx, frame in enumerate(frames):
        boxes = detector.detect(frame)
        if len(boxes) == 0:
            continue
        if mode == "largest":
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            boxes = boxes[[int(np.argmax(areas))]]
        else:
            boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        for face_idx, box in enumerate(boxes):
            crops.append(FaceCrop(frame_idx, face_idx, crop_face(frame, box, margin, size), float(box[4])))
    if not crops:
        for frame_idx, frame in enumerate(frames):
            box = centre_box(frame.shape[0], frame.shape[1], margin)
            crops.append(FaceCrop(frame_idx, 0, crop_face(frame, box, margin, size), FALLBACK_SCORE))
    return crops
