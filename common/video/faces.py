"""Face detection and face crops, behind one small interface.

Why: deepfake artefacts live in the face, which fills a few percent of a DFDC frame, so
models look at face crops rather than whole frames.  Which detector finds the faces is a
choice (speed vs. recall, what weights the Kaggle kernel can carry), so detectors share
one method, ``detect(rgb) -> [n, 5] (x1, y1, x2, y2, score)``, and those that also find the
five landmarks (eyes, nose, mouth corners) add ``detect_landmarks(rgb) -> (boxes, [n, 5, 2])``.
They are created by name:

* ``mtcnn``: MTCNN (Zhang et al. 2016), the detector of most DFDC solutions, as shipped by
  ``facenet-pytorch``: its three small CNNs' weights are inside the wheel, so it works offline.
  Boxes and five landmarks.  The wheel pins torch 2.2, so it is installed without its
  dependencies (``requirements-nodeps.txt``; ``run.sh`` does it).
* ``haar``: OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless, so it
  works offline everywhere.  Misses turned or tilted faces (about 63 % of frames found on
  the ``carphone`` clip, where the head turns).  The last fallback.
* ``ssd``: OpenCV's DNN ResNet-10 SSD face detector (Caffe), much better recall.
* ``yunet``: OpenCV's YuNet (``cv2.FaceDetectorYN``, ONNX), fast and accurate; five landmarks.

The OpenCV CNN detectors need weight files that cannot be downloaded here; they are found in a
directory given as an argument, the ``FACE_DETECTOR_DIR`` environment variable,
``inputs/weights/``, or any ``/kaggle/input/<dataset>/`` folder, and otherwise fail with an
error that names the file and how to bring it.

``extract_faces`` turns the detections of a video's sampled frames into crops: a frame where the
detector found nothing is searched again at full resolution around the face of the nearest frame
that has one (DFDC faces are small in a 1080p frame, and the first pass runs on a downscaled
frame), ``mode="all"`` links the boxes of consecutive frames into tracks and keeps the largest
tracks, and crops are centred on the landmarks when the detector gives them.
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


LANDMARKS = ("left eye", "right eye", "nose", "mouth left", "mouth right")  # image left/right, not the person's


def _no_landmarks(n: int = 0) -> np.ndarray:
    return np.full((n, len(LANDMARKS), 2), np.nan, dtype=np.float32)


def detect_faces(detector: FaceDetector, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [n, 5], landmarks [n, 5, 2])`` of any detector; NaN landmarks when it has none."""
    if hasattr(detector, "detect_landmarks"):
        boxes, landmarks = detector.detect_landmarks(rgb)
        return np.asarray(boxes, np.float32).reshape(-1, 5), np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    boxes = np.asarray(detector.detect(rgb), np.float32).reshape(-1, 5)
    return boxes, _no_landmarks(len(boxes))


def detect_faces_batch(detector: FaceDetector, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``detect_faces`` of each image; one batched call for detectors that have
    ``detect_landmarks_batch`` (MTCNN: a video's frames share one image pyramid pass per scale),
    one call per image otherwise."""
    if not images:
        return []
    if hasattr(detector, "detect_landmarks_batch"):
        return [(np.asarray(b, np.float32).reshape(-1, 5), np.asarray(p, np.float32).reshape(-1, 5, 2))
                for b, p in detector.detect_landmarks_batch(images)]
    return [detect_faces(detector, image) for image in images]


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


def yunet_output_to_landmarks(faces: np.ndarray | None, scale: float = 1.0) -> np.ndarray:
    """The five landmarks of YuNet's rows (right eye, left eye, nose, right and left mouth corner of
    the person: image left first, as ``LANDMARKS``) -> ``[n, 5, 2]``."""
    if faces is None or len(faces) == 0:
        return _no_landmarks()
    return (np.asarray(faces, np.float32)[:, 4:14].reshape(-1, 5, 2) * scale).astype(np.float32)


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

    def detect_landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _check_rgb(rgb)
        small, back = _downscale(rgb, self.max_side)
        self.net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        return yunet_output_to_boxes(faces, back), yunet_output_to_landmarks(faces, back)


# --- MTCNN from facenet-pytorch (weights inside the wheel) ----------------------------------


MTCNN_PACKAGE = "facenet-pytorch==2.6.0"
MTCNN_BATCH = 16  # frames per batched MTCNN call: bounds the pyramid's memory (16 frames of 640x360: ~60 MB)


def _channels_last(net):
    """``net`` (one of MTCNN's P/R/O-Nets) with its weights and every input in channels-last layout.

    Why: torch's CPU convolutions and max-pooling have vectorised NHWC kernels, and R-/O-Net run on
    thousands of small candidate crops per video. Same numbers, less time: on the real 1080p DFDC
    clip with the most candidates, 32 frames at 640 px took 1.20 s instead of 2.05 s, every box equal.
    """
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast(net)


class MtcnnDetector:
    """MTCNN (P-, R- and O-Net cascade) of ``facenet-pytorch``, on CPU unless told otherwise.

    Runs on the frame downscaled so its longer side is ``max_side`` (detection cost grows with the
    pixel count; DFDC's winners detected on downscaled frames too), ignoring faces smaller than
    ``min_face_frac`` of that side (at least 20 px): the image pyramid starts at that size, so a
    larger minimum is faster.  Measured on the two real 1080p DFDC clips at 32 frames, one thread:
    640 px / 40 px faces found the face in 28 and 32 of 32 frames in 0.8 and 1.8 s (the misses are
    recovered by `extract_faces`' second look); 1920 px found 31 of 32 in 3.0 s.  ``score`` is
    O-Net's face probability.
    """

    def __init__(self, *, max_side: int | None = 640, min_face_frac: float = 0.0625,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 device: str = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise MissingWeightsError(
                f"faces.detector=mtcnn needs {MTCNN_PACKAGE}, whose wheel carries the MTCNN weights "
                f"({exc}). Install it without its dependencies (it pins torch 2.2): "
                f".venv/bin/pip install --no-deps {MTCNN_PACKAGE}; ./run.sh does so from requirements-nodeps.txt"
            ) from None
        self.max_side, self.min_face_frac = max_side, float(min_face_frac)
        self.net = MTCNN(keep_all=True, device=device, thresholds=list(thresholds), factor=factor,
                         select_largest=False, post_process=False)
        self.pnet, self.rnet, self.onet = (_channels_last(n) for n in (self.net.pnet, self.net.rnet, self.net.onet))

    def detect_landmarks(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_landmarks_batch([rgb])[0]

    def detect_landmarks_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Boxes and landmarks of each image, images of one size detected together.

        Why batch: P-Net runs once per pyramid scale over the whole batch and R-/O-Net over every
        candidate of the batch, so the per-call overhead (most of the cost on small frames) is
        paid once per size instead of once per frame: on the 1080p DFDC clips, 32 frames in one
        call took 0.4 s where 32 calls took 1.0 s. Uses ``facenet_pytorch``'s own ``detect_face``
        (``MTCNN.detect``'s batch path breaks on numpy 2 when frames hold different face counts).
        """
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        out: list = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        smalls = []
        for i, rgb in enumerate(images):
            _check_rgb(rgb)
            small, back = _downscale(rgb, self.max_side)
            smalls.append((np.ascontiguousarray(small), back))
            groups.setdefault(small.shape, []).append(i)
        net = self.net
        for shape, members in groups.items():
            smallest = max(20, round(self.min_face_frac * max(shape[:2])))
            for start in range(0, len(members), MTCNN_BATCH):
                chunk = members[start:start + MTCNN_BATCH]
                with torch.no_grad():
                    boxes, points = detect_face(np.stack([smalls[i][0] for i in chunk]), smallest, self.pnet,
                                                self.rnet, self.onet, net.thresholds, net.factor, net.device)
                for i, b, p in zip(chunk, boxes, points):
                    out[i] = self._to_frame(np.asarray(b, np.float32).reshape(-1, 5),
                                            np.asarray(p, np.float32).reshape(-1, 5, 2), smalls[i][1], images[i].shape)
        return out

    @staticmethod
    def _to_frame(boxes: np.ndarray, points: np.ndarray, back: float, shape) -> tuple[np.ndarray, np.ndarray]:
        """Detections on the downscaled image -> frame coordinates, clipped; empty boxes dropped."""
        if len(boxes) == 0:
            return _no_boxes(), _no_landmarks()
        h, w = shape[:2]
        boxes = boxes.copy()
        boxes[:, :4] *= back
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep].astype(np.float32), (points * back)[keep].astype(np.float32)

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        return self.detect_landmarks(rgb)[0]


DETECTORS = Registry("face detector", keys=("faces.detector",), also=("auto",))
DETECTORS.add("mtcnn", MtcnnDetector)
DETECTORS.add("haar", HaarDetector)
DETECTORS.add("ssd", SsdResNetDetector)
DETECTORS.add("yunet", YuNetDetector)


def create_detector(name: str, **kwargs) -> FaceDetector:
    """Build a detector by registry name, e.g. ``create_detector("yunet", weights_dir=...)``."""
    return DETECTORS.get(name, "faces.detector")(**kwargs)


# --- crops ----------------------------------------------------------------------------------


def _crop_window(height: int, width: int, box, margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``box`` grown by ``margin`` on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0:
        raise ValueError(f"empty face box {tuple(box[:4])}")
    left = int(np.clip(np.floor(x1 - margin * bw), 0, width - 1))
    top = int(np.clip(np.floor(y1 - margin * bh), 0, height - 1))
    right = int(np.clip(np.ceil(x2 + margin * bw), left + 1, width))
    bottom = int(np.clip(np.ceil(y2 + margin * bh), top + 1, height))
    return left, top, right, bottom


def crop_face(rgb: np.ndarray, box, margin: float = 0.3, size: int = 224,
              points: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Square ``[size, size, 3]`` crop around ``box`` (x1, y1, x2, y2[, score]).

    Each side of the box grows by ``margin`` times the box's width (left/right) or height
    (top/bottom), the result is clipped to the image, resized isotropically so its longer
    side is ``size``, and centred on a black square (zero padding) - faces keep their shape.
    With ``points`` (frame coordinates ``[k, 2]``, e.g. landmarks) it returns ``(crop, points in
    crop coordinates)``.
    """
    h, w = rgb.shape[:2]
    left, top, right, bottom = _crop_window(h, w, box, margin)
    patch = rgb[top:bottom, left:right]
    ph, pw = patch.shape[:2]
    scale = size / max(ph, pw)
    new_w, new_h = max(1, round(pw * scale)), max(1, round(ph * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size, 3), dtype=rgb.dtype)
    oy, ox = (size - new_h) // 2, (size - new_w) // 2
    out[oy : oy + new_h, ox : ox + new_w] = patch
    if points is None:
        return out
    points = np.asarray(points, np.float32)
    mapped = (points - np.array([left, top], np.float32)) * np.array([new_w / pw, new_h / ph], np.float32)
    return out, (mapped + np.array([ox, oy], np.float32)).astype(np.float32)


def landmark_box(box, landmarks: np.ndarray) -> np.ndarray:
    """A square box as large as ``box``'s longer side, centred on the landmarks' centroid.

    Why: boxes of one face jitter from frame to frame and between detectors, the landmarks much
    less, so crops centred on them put eyes and mouth at nearly the same place in every crop.
    Without valid landmarks, ``box`` itself.
    """
    box = np.asarray(box, np.float32)
    if landmarks is None or not np.isfinite(landmarks).all():
        return box
    side = float(max(box[2] - box[0], box[3] - box[1]))
    cx, cy = (float(v) for v in np.asarray(landmarks, np.float32).mean(axis=0))
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, *box[4:]], np.float32)


class FaceCrop(NamedTuple):
    """One face from one frame; unpacks as ``(frame_idx, face_idx, crop, score)``; ``landmarks``
    ``[5, 2]`` in crop pixels (NaN when the detector gives none) and ``second_look`` (found by
    the search around a neighbouring frame's face) come after."""

    frame_idx: int
    face_idx: int
    crop: np.ndarray
    score: float
    landmarks: np.ndarray = _no_landmarks(1)[0]
    second_look: bool = False


FALLBACK_SCORE = 0.0  # score of centre crops used when a video has no detected face


def centre_box(height: int, width: int, margin: float) -> np.ndarray:
    """The box whose ``margin``-expanded crop is the largest centred square of the frame."""
    side = min(height, width) / (1 + 2 * margin)
    cx, cy = width / 2, height / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, FALLBACK_SCORE])


EXTRACT_MODES = ("largest", "all")
SEARCH_GROWTH = 1.0  # the second look searches the neighbour's box grown by its size on every side ...
SEARCH_FACE_PX = 96  # ... shrunk so that box's longer side is at most this (never enlarged): MTCNN finds a
                     # face of 60-100 px as well as a 250 px one, at a tenth of the pixels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _largest(boxes: np.ndarray) -> int:
    """Index of the largest of ``boxes`` (the first on ties)."""
    return int(np.argmax([_area(b) for b in boxes]))


def _search_window(frame: np.ndarray, near_box: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The region of ``frame`` around ``near_box`` grown by ``SEARCH_GROWTH``, shrunk so the box's
    longer side is at most ``SEARCH_FACE_PX``; with its top-left corner in the frame and the scale."""
    h, w = frame.shape[:2]
    left, top, right, bottom = _crop_window(h, w, near_box, SEARCH_GROWTH)
    window = frame[top:bottom, left:right]
    scale = min(1.0, SEARCH_FACE_PX / max(float(near_box[2] - near_box[0]), float(near_box[3] - near_box[1]), 1.0))
    if scale < 1.0:
        window = cv2.resize(window, (max(1, round(window.shape[1] * scale)), max(1, round(window.shape[0] * scale))),
                            interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(window), np.array([left, top], np.float32), scale


def _from_window(boxes: np.ndarray, landmarks: np.ndarray, offset: np.ndarray, scale: float):
    if len(boxes):
        boxes = boxes.copy()
        boxes[:, :4] /= scale
        boxes[:, 0:2] += offset
        boxes[:, 2:4] += offset
        landmarks = landmarks / scale + offset
    return boxes, landmarks


def second_looks(frames: list[np.ndarray], detector: FaceDetector,
                 near_boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Search each frame again, at full resolution, in the region around its ``near_boxes`` entry
    (the face of a nearby frame): a face the downscaled first pass missed, or a frame the first
    pass skipped, is found at a fraction of a full-frame pass's cost. The windows are padded
    (black, bottom and right) to one size and detected in one batch. Boxes and landmarks in frame
    coordinates."""
    looks = [_search_window(frame, box) for frame, box in zip(frames, near_boxes)]
    if not looks:
        return []
    height = max(w.shape[0] for w, _, _ in looks)
    width = max(w.shape[1] for w, _, _ in looks)
    padded = []
    for window, _, _ in looks:
        canvas = np.zeros((height, width, 3), np.uint8)
        canvas[: window.shape[0], : window.shape[1]] = window
        padded.append(canvas)
    found = detect_faces_batch(detector, padded)
    return [_from_window(b, p, offset, scale) for (b, p), (_, offset, scale) in zip(found, looks)]


def second_look(frame: np.ndarray, detector: FaceDetector, near_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``second_looks`` of one frame."""
    return second_looks([frame], detector, [near_box])[0]


def _nearest_face(found: list, anchors: list[int], i: int) -> np.ndarray:
    """The largest face of the frame in ``anchors`` nearest to frame ``i`` (the earlier one on ties)."""
    j = min(anchors, key=lambda k: (abs(k - i), k))
    return found[j][0][_largest(found[j][0])]


def _look_near(frames: list, detector: FaceDetector, found: list, anchors: list[int], targets: list[int]) -> list:
    """``second_looks`` in frames ``targets``, each around the nearest anchor frame's largest face."""
    return second_looks([frames[i] for i in targets], detector, [_nearest_face(found, anchors, i) for i in targets])


BETWEEN_MODES = ("look", "interpolate")  # extract_faces: frames between whole-frame searches (detect_every > 1)


def _interpolated_face(found: list, anchors: list[int], i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i``'s face from the largest faces of the nearest anchor frames before and after it
    (linear in the frame index; the nearest one alone past either end), as ``(boxes [1, 5],
    landmarks [1, 5, 2])``; NaN landmarks stay NaN."""
    before = [a for a in anchors if a < i]
    after = [a for a in anchors if a > i]
    ends = [a for a in (before[-1] if before else None, after[0] if after else None) if a is not None]
    faces = [(found[a][0][_largest(found[a][0])], found[a][1][_largest(found[a][0])]) for a in ends]
    if len(ends) == 1:
        box, points = faces[0]
        return box[None].copy(), points[None].copy()
    w = (i - ends[0]) / (ends[1] - ends[0])
    box = (1 - w) * faces[0][0] + w * faces[1][0]
    box[4] = min(faces[0][0][4], faces[1][0][4])
    points = (1 - w) * faces[0][1] + w * faces[1][1]
    return box[None].astype(np.float32), points[None].astype(np.float32)


def link_tracks(boxes_per_frame: list[np.ndarray], min_iou: float = 0.3) -> list[np.ndarray]:
    """Per frame, the track index of each box: a box joins the track whose last box (in an earlier
    frame) overlaps it most (IoU >= ``min_iou``, one box per track and frame), else starts one.
    Tracks are numbered by total box area, largest first, so track 0 is the main face."""
    last: list[np.ndarray] = []
    area: list[float] = []
    raw: list[np.ndarray] = []
    for boxes in boxes_per_frame:
        ids = np.full(len(boxes), -1, np.int64)
        taken: set[int] = set()
        for b in np.argsort([-_area(x) for x in boxes], kind="stable"):
            overlaps = [(_iou(boxes[b], last[t]), t) for t in range(len(last)) if t not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= min_iou:
                t = best[1]
            else:
                t = len(last)
                last.append(boxes[b])
                area.append(0.0)
            ids[b] = t
            taken.add(t)
            last[t] = boxes[b]
            area[t] += _area(boxes[b])
        raw.append(ids)
    rank = {t: r for r, t in enumerate(sorted(range(len(area)), key=lambda t: (-area[t], t)))}
    return [np.array([rank[t] for t in ids], np.int64) for ids in raw]


def extract_faces(
    frames,
    detector: FaceDetector,
    *,
    margin: float = 0.3,
    size: int = 224,
    mode: str = "largest",
    max_faces: int = 2,
    second_looks: bool = True,
    detect_every: int = 1,
    between: str = "look",
) -> list[FaceCrop]:
    """Detect and crop faces in every frame.

    ``mode="largest"`` keeps the largest box per frame (DFDC videos mostly show one subject;
    the biggest face is usually the one that was swapped); ``"all"`` links boxes across frames
    into tracks (``link_tracks``) and keeps the ``max_faces`` largest tracks, ``face_idx`` being the
    track's rank.  A frame with no face is searched again around the nearest frame's face
    (``second_look``, unless ``second_looks=False``); frames still without one are skipped.  If no
    frame has a face, every frame contributes its largest centred square instead, with score 0.0
    (``FALLBACK_SCORE``) so callers can tell - a prediction is still needed for such videos.
    Crops are centred on the landmarks when the detector gives them (``landmark_box``).

    ``detect_every=k`` (> 1) searches the whole frame only in every k-th sampled frame; the others
    are searched around the face of the nearest such frame (``second_look``: a small window, a
    fraction of a full pass's cost) and only searched whole when that finds nothing. A face that
    enters between two whole-frame passes is missed until the next one (``mode="all"``).
    ``between="interpolate"`` (``mode="largest"`` only) runs no detector on those frames at all: the
    largest face's box and landmarks are interpolated linearly between the nearest searched frames
    before and after (held at the ends), at the lower of their scores. With 32 of 300 frames sampled
    and k=4 the searched frames are 1.25 s apart; on the shared real clips (two DFDC videos, carphone)
    the interpolated boxes overlap the detector's own boxes of those frames by IoU 0.86-0.91 on
    average (landmarks off by 9-16 % of the eye distance). On a CPU this is what brings detection
    under the decoder's cost on 1080p clips (`bench deepfake`).
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {EXTRACT_MODES}")
    if between not in BETWEEN_MODES:
        raise ValueError(f"unknown between {between!r}; choose from {BETWEEN_MODES}")
    if between == "interpolate" and mode != "largest":
        raise ValueError("between='interpolate' follows one face: it needs mode='largest'")
    if int(detect_every) < 1:
        raise ValueError(f"detect_every={detect_every}; at least 1")
    frames = list(frames)
    every = int(detect_every)
    whole = [i for i in range(len(frames)) if i % every == 0]
    found: list = [None] * len(frames)
    for i, result in zip(whole, detect_faces_batch(detector, [frames[i] for i in whole])):
        found[i] = result
    if every > 1:
        anchors = [i for i in whole if len(found[i][0])]
        rest = [i for i in range(len(frames)) if found[i] is None]
        if anchors and between == "interpolate":
            for i in rest:
                found[i] = _interpolated_face(found, anchors, i)
        elif anchors:
            for i, result in zip(rest, _look_near(frames, detector, found, anchors, rest)):
                found[i] = result
        again = [i for i in rest if found[i] is None or not len(found[i][0])]
        for i, result in zip(again, detect_faces_batch(detector, [frames[i] for i in again])):
            found[i] = result
    looked = [False] * len(frames)
    hits = [i for i, (boxes, _) in enumerate(found) if len(boxes)]
    misses = [i for i in range(len(frames)) if not len(found[i][0])]
    if second_looks and hits and misses:
        for i, (boxes, landmarks) in zip(misses, _look_near(frames, detector, found, hits, misses)):
            if len(boxes):
                found[i], looked[i] = (boxes, landmarks), True
    if mode == "largest":
        keep = [[_largest(boxes)] if len(boxes) else [] for boxes, _ in found]
        ranks = [np.zeros(len(k), np.int64) for k in keep]
    else:
        tracks = link_tracks([boxes for boxes, _ in found])
        keep = [[int(b) for b in np.argsort(ids, kind="stable") if ids[b] < max_faces] for ids in tracks]
        ranks = [ids[k] for ids, k in zip(tracks, keep)]
    crops: list[FaceCrop] = []
    for frame_idx, (frame, (boxes, landmarks), chosen, rank) in enumerate(zip(frames, found, keep, ranks)):
        for b, face_idx in zip(chosen, rank):
            crop, points = crop_face(frame, landmark_box(boxes[b], landmarks[b]), margin, size, points=landmarks[b])
            crops.append(FaceCrop(frame_idx, int(face_idx), crop, float(boxes[b][4]), points, looked[frame_idx]))
    if not crops:
        for frame_idx, frame in enumerate(frames):
            box = centre_box(frame.shape[0], frame.shape[1], margin)
            crops.append(FaceCrop(frame_idx, 0, crop_face(frame, box, margin, size), FALLBACK_SCORE))
    return crops
