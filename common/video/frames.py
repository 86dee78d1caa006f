"""Read a few evenly spaced frames from a video, decoding no more than needed.

Why: deepfake detectors look at faces in a handful of frames per video (DFDC videos
have 300 frames; models use 8-32).  Converting every frame to RGB is the expensive part,
so we keep the decoder moving but only convert the frames we keep.

Two backends sit behind one function, picked by measurement on the 176x144 H.264 clip
``carphone_pristine.mp4`` (120 frames, 2-core CPU, see ``DEFAULT_BACKEND``):

* ``opencv``: ``VideoCapture.grab()`` for every frame, ``retrieve()`` only for kept ones.
* ``pyav``: decode every packet (threaded) and convert only kept frames to RGB.

Seeking (``container.seek``) is not used: H.264 files often have a single key frame
(this clip has one), so each seek would decode from the start again.

If the preferred backend fails to open or read a file, the other one is tried before
``VideoReadError`` is raised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from common.core.errors import DataError


class VideoReadError(DataError):
    """A video file cannot be opened, is empty, or is corrupt; the message names the file."""


def sample_indices(total_frames: int, n_frames: int) -> np.ndarray:
    """``n_frames`` evenly spaced frame indices in ``[0, total_frames)``, first and last included.

    Asking for more frames than the video has returns every frame once (no duplicates).
    """
    if total_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    n = min(n_frames, total_frames)
    return np.unique(np.linspace(0, total_frames - 1, n).round().astype(np.int64))


def _resize_max_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink so that the longer side is at most ``max_side`` (never enlarges)."""
    if max_side is None:
        return rgb
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# --- backends: each returns (frames, total_frame_count) and raises on failure ---------------


def _opencv_frame_count(cap: cv2.VideoCapture) -> int:
    return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def _read_opencv(path: Path, n_frames: int, max_side: int | None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open this video")
        total = _opencv_frame_count(cap)
        if total <= 0:
            raise VideoReadError(f"{path}: video reports no frames")
        wanted = set(sample_indices(total, n_frames).tolist())
        last = max(wanted)
        frames = []
        for index in range(last + 1):
            if not cap.grab():
                break  # frame count in the header was too optimistic
            if index in wanted:
                ok, bgr = cap.retrieve()
                if ok:
                    frames.append(_resize_max_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side))
        return frames
    finally:
        cap.release()


def _read_pyav(path: Path, n_frames: int, max_side: int | None) -> list[np.ndarray]:
    import av  # imported lazily: OpenCV alone is enough for the default backend

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            total = stream.frames or _pyav_estimate_frames(container, stream)
            if total <= 0:
                raise VideoReadError(f"{path}: video reports no frames")
            wanted = set(sample_indices(total, n_frames).tolist())
            last = max(wanted)
            frames = []
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    frames.append(_resize_max_side(frame.to_ndarray(format="rgb24"), max_side))
                if index >= last:
                    break
            return frames
    except av.error.FFmpegError as err:
        raise VideoReadError(f"{path}: PyAV cannot decode this video ({err})") from err


def _pyav_estimate_frames(container, stream) -> int:
    """Frame count from duration x rate, for containers whose header has no count."""
    if container.duration and stream.average_rate:
        return int(round(container.duration / 1_000_000 * float(stream.average_rate)))
    return 0


BACKENDS: dict[str, Callable[[Path, int, int | None], list[np.ndarray]]] = {
    "opencv": _read_opencv,
    "pyav": _read_pyav,
}
# CPU time on carphone_pristine.mp4 (176x144, 120 frames, busy 2-core box): 8 frames
# opencv 55 ms / pyav 58 ms, all 120 frames opencv 66 ms / pyav 88 ms; seeking per frame
# (either library) 25 ms per sampled frame.  A 1280x720 copy, 16 frames: 460 vs 440 ms.
DEFAULT_BACKEND = "opencv"


def read_frames(
    path: str | Path,
    n_frames: int,
    *,
    max_side: int | None = None,
    backend: str = DEFAULT_BACKEND,
) -> np.ndarray:
    """Return ``[n, H, W, 3]`` uint8 RGB frames sampled evenly over the video.

    ``n`` equals ``n_frames`` unless the video is shorter (then every frame) or ends before
    its header said (then the frames that exist).  ``max_side`` shrinks frames so their
    longer side fits.  Raises ``VideoReadError`` naming the file when nothing can be read.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found")
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {sorted(BACKENDS)}")
    order = [backend] + [name for name in BACKENDS if name != backend]
    problems = []
    for name in order:
        try:
            frames = BACKENDS[name](path, n_frames, max_side)
        except VideoReadError as err:
            problems.append(f"{name}: {err}")
            continue
        if frames:
            return np.stack(frames)
        problems.append(f"{name}: no frame could be decoded")
    raise VideoReadError(f"{path}: cannot read video frames ({'; '.join(problems)})")


def video_info(path: str | Path) -> dict:
    """``{"frames", "fps", "width", "height"}`` from the container header (no decoding)."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open this video")
        info = {
            "frames": _opencv_frame_count(cap),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()
    if info["frames"] <= 0 or info["width"] <= 0:
        raise VideoReadError(f"{path}: video header has no frames or no size")
    return info
