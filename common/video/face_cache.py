"""Video -> face crops, and the on-disk cache that makes decoding a one-time cost (`detect`).

Why: decoding a video and finding its faces costs far more than one training step on the crops
(see `./run.sh bench deepfake`), and every epoch would repeat it. So the `detect` step runs once
per video and setting, and stores each video's crops as a uint8 `.npy` (memory-mapped when
read back) next to a `.json` with the frame index, face index and detector score of every crop.
The `.json` is written last and atomically: its presence marks the video done, so an interrupted
`detect` continues where it stopped. A video that cannot be decoded (the reader's `VideoReadError`,
or any other `DataError`) is recorded as such (its `.json` holds the error) and is not retried.
Any other exception (MemoryError, KeyboardInterrupt, an OSError of a failing disk or network
share, a bug) is transient as far as the cache knows: nothing is recorded for that video, the
exception propagates once the videos already being processed are finished, and the next
`detect` retries it. Entries recorded by older versions with such an error are retried too.

Cache folder: `<cache root>/<competition>/faces/<settings hash>/<video folder>/<name>-<hash>.npy`;
the settings hash covers everything that changes the crops (frames, video backend, detector,
margin, size, mode), the file hash covers the video's path, size and modification time.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from common.core.errors import ConfigError, DataError
from common.video.faces import BETWEEN_MODES, EXTRACT_MODES, FALLBACK_SCORE, MissingWeightsError, create_detector, extract_faces
from common.video.frames import BACKENDS, DEFAULT_BACKEND, read_frames

# `faces.detector=auto` takes the first of these that can be built (mtcnn: facenet-pytorch installed;
# the OpenCV ones: their weight files found), else Haar
CNN_DETECTORS = ("mtcnn", "yunet", "ssd")
NEEDS_WEIGHTS_DIR = ("yunet", "ssd")
# Bumped when the crops of the same settings change: 2 = second look around a neighbour's face,
# tracks for faces.mode=all, crops centred on the landmarks, landmarks stored
EXTRACT_VERSION = 2
# What a recorded error may be: a video that cannot be decoded, for good. Names, as stored in the
# `.json` ("VideoReadError: ..."), so entries of older versions can be told apart.
PERMANENT_ERRORS = (DataError,)
PERMANENT_ERROR_NAMES = ("VideoReadError", "DataError")


@dataclass
class VideoFaces:
    """The face crops of one video: uint8 [n, S, S, 3] and, per crop, its frame, face rank and score,
    its five landmarks in crop pixels ([n, 5, 2], NaN when the detector has none) and whether it was
    found by the second look; `frames` is how many frames were sampled."""

    crops: np.ndarray
    frame_idx: np.ndarray
    face_idx: np.ndarray
    score: np.ndarray
    landmarks: np.ndarray | None = None
    second_look: np.ndarray | None = None
    frames: int | None = None

    def __post_init__(self):
        n = len(self.crops)
        if self.landmarks is None:
            self.landmarks = np.full((n, 5, 2), np.nan, np.float32)
        if self.second_look is None:
            self.second_look = np.zeros(n, bool)

    @property
    def frames_with_face(self) -> int:
        """Sampled frames in which a face was detected (0 when the crops are centre crops)."""
        return len(set(self.frame_idx[self.score > FALLBACK_SCORE].tolist()))

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def found_faces(self) -> bool:
        """False when no frame had a detected face and the crops are centre crops (score 0)."""
        return bool(np.any(self.score > FALLBACK_SCORE))


def crop_size(cfg) -> int:
    height, width = (int(v) for v in cfg.data.image_size)
    if height != width:
        raise ConfigError(f"data.image_size={list(cfg.data.image_size)}: face crops are square; use [S, S]")
    return height


def resolve_detector(name: str, weights_dir: str | None):
    """(resolved name, detector): `auto` is the first CNN detector whose weights exist, else Haar."""
    if name != "auto":
        kwargs = {"weights_dir": weights_dir} if name in NEEDS_WEIGHTS_DIR else {}
        try:
            return name, create_detector(name, **kwargs)
        except MissingWeightsError as exc:
            raise ConfigError(f"faces.detector={name}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"faces.detector={name}: {exc}") from None
    for candidate in CNN_DETECTORS:
        try:
            kwargs = {"weights_dir": weights_dir} if candidate in NEEDS_WEIGHTS_DIR else {}
            return candidate, create_detector(candidate, **kwargs)
        except MissingWeightsError:
            continue
    return "haar", create_detector("haar")


class FaceExtractor:
    """One video file -> `VideoFaces`, with the settings of `cfg.video` and `cfg.faces`."""

    def __init__(self, *, frames: int, size: int, margin: float = 0.3, mode: str = "largest",
                 detector: str = "haar", weights_dir: str | None = None, backend: str = DEFAULT_BACKEND,
                 max_faces: int = 2, detect_every: int = 1, between: str = "look"):
        if mode not in EXTRACT_MODES:
            raise ConfigError(f"faces.mode={mode}; choose from {', '.join(EXTRACT_MODES)}")
        if backend not in BACKENDS:
            raise ConfigError(f"video.backend={backend}; choose from {', '.join(BACKENDS)}")
        if int(frames) < 1:
            raise ConfigError(f"video.frames={frames}; at least 1")
        self.frames, self.size, self.margin, self.mode, self.backend = int(frames), int(size), float(margin), mode, backend
        if int(max_faces) < 1:
            raise ConfigError(f"faces.max_faces={max_faces}; at least 1")
        if int(detect_every) < 1:
            raise ConfigError(f"faces.detect_every={detect_every}; at least 1")
        if between not in BETWEEN_MODES:
            raise ConfigError(f"faces.between={between}; choose from {', '.join(BETWEEN_MODES)}")
        if between == "interpolate" and mode != "largest":
            raise ConfigError(f"faces.between=interpolate follows one face: it needs faces.mode=largest (got {mode})")
        self.weights_dir, self.max_faces, self.detect_every = weights_dir, int(max_faces), int(detect_every)
        self.between = between
        self.detector_name, self.detector = resolve_detector(detector, weights_dir)

    def fresh(self) -> "FaceExtractor":
        """The same settings with a detector of its own (detectors are not guaranteed thread-safe)."""
        return FaceExtractor(frames=self.frames, size=self.size, margin=self.margin, mode=self.mode,
                             detector=self.detector_name, weights_dir=self.weights_dir, backend=self.backend,
                             max_faces=self.max_faces, detect_every=self.detect_every, between=self.between)

    @classmethod
    def from_config(cls, cfg) -> "FaceExtractor":
        return cls(frames=cfg.video.frames, size=crop_size(cfg), margin=cfg.faces.margin, mode=cfg.faces.mode,
                   detector=cfg.faces.detector, weights_dir=cfg.faces.get("weights_dir"), backend=cfg.video.backend,
                   max_faces=cfg.faces.get("max_faces", 2), detect_every=cfg.faces.get("detect_every", 1),
                   between=cfg.faces.get("between", "look"))

    def settings(self) -> dict:
        """Everything that changes the crops; its hash names the cache folder. The backend belongs
        here: OpenCV and PyAV do not decode (convert to RGB) every video to the same pixels."""
        return {"frames": self.frames, "size": self.size, "margin": self.margin, "mode": self.mode,
                "detector": self.detector_name, "backend": self.backend, "extract": EXTRACT_VERSION,
                **({"max_faces": self.max_faces} if self.mode == "all" else {}),
                **({"detect_every": self.detect_every} if self.detect_every > 1 else {}),
                **({"between": self.between} if self.detect_every > 1 and self.between != "look" else {})}

    def read(self, path: str | Path) -> np.ndarray:
        """The sampled frames (raises `VideoReadError` naming the file)."""
        return read_frames(path, self.frames, backend=self.backend)

    def faces_in(self, frames: np.ndarray) -> VideoFaces:
        found = extract_faces(frames, self.detector, margin=self.margin, size=self.size, mode=self.mode,
                              max_faces=self.max_faces, detect_every=self.detect_every, between=self.between)
        return VideoFaces(crops=np.stack([f.crop for f in found]),
                          frame_idx=np.array([f.frame_idx for f in found], np.int32),
                          face_idx=np.array([f.face_idx for f in found], np.int32),
                          score=np.array([f.score for f in found], np.float32),
                          landmarks=np.stack([f.landmarks for f in found]).astype(np.float32),
                          second_look=np.array([f.second_look for f in found], bool), frames=len(frames))

    def __call__(self, path: str | Path) -> VideoFaces:
        return self.faces_in(self.read(path))


def _write_atomic(path: Path, write) -> None:
    partial = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a half-written file (disk full, interrupt) is not left behind
        raise


def _is_permanent(error: str | None) -> bool:
    """Whether a recorded error (``"<ExceptionName>: message"``) is a decode failure, kept for good."""
    return error is None or error.split(":", 1)[0].strip() in PERMANENT_ERROR_NAMES


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, array)


class FaceCache:
    """Face crops of many videos on disk, built once (`build`) and read back memory-mapped (`load`)."""

    def __init__(self, extractor: FaceExtractor, directory: str | Path, *, progress: bool = True,
                 workers: int = 1, open_files: int = 128):
        self.extractor = extractor
        settings = extractor.settings()
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        self.directory = Path(directory) / digest
        self._bases: dict[Path, Path] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_file = self.directory / "settings.json"
        if not settings_file.exists():
            settings_file.write_text(json.dumps(settings, indent=2))
        self.progress, self.workers = progress, max(1, int(workers))
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()  # recently used memmaps
        self._open_files = open_files
        self._local = threading.local()

    def _base(self, path: str | Path) -> Path:
        from common.data.images import content_hash

        path = Path(path).resolve()
        if path not in self._bases:  # hashed once per process: a video is asked about many times
            key = f"{path}|{content_hash(path)}"  # content, not size and mtime (cp -p, rsync -a keep those)
            self._bases[path] = self.directory / path.parent.name / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        return self._bases[path]

    def is_done(self, path: str | Path) -> bool:
        """True once the video's crops, or its decode failure, are recorded. An entry that records
        any other (transient) error, as older versions did, does not count: it is retried."""
        file = self._base(path).with_suffix(".json")
        if not file.exists():
            return False
        try:
            meta = json.loads(file.read_text())
        except (OSError, ValueError):  # unreadable entry: redo it
            return False
        return _is_permanent(meta.get("error"))

    def _extractor(self) -> FaceExtractor:
        """One extractor per thread: detectors are not guaranteed to be thread-safe."""
        if self.workers == 1:
            return self.extractor
        if not hasattr(self._local, "extractor"):
            self._local.extractor = self.extractor.fresh()
        return self._local.extractor

    def _detect_one(self, path: str) -> str | None:
        base = self._base(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        meta = {"source": str(Path(path).resolve()), "settings": self.extractor.settings(), "error": None}
        # Only a decode failure is recorded (and never retried). Anything else (MemoryError,
        # KeyboardInterrupt, an OSError of the disk, a bug) propagates and nothing is written, so
        # the next `detect` retries the video.
        try:
            faces = self._extractor()(path)
        except PERMANENT_ERRORS as exc:
            name = exc.__class__.__name__ if exc.__class__.__name__ in PERMANENT_ERROR_NAMES else "DataError"
            meta["error"] = f"{name}: {exc}"
        except BaseException as exc:
            exc.add_note(f"while detecting faces in {path} (not recorded in the face cache: retried next time)")
            raise
        else:
            _write_atomic(base.with_suffix(".npy"), lambda p: _save_npy(p, faces.crops))
            landmarks = np.round(faces.landmarks.astype(np.float64), 1)
            meta.update(frame_idx=faces.frame_idx.tolist(), face_idx=faces.face_idx.tolist(),
                        score=[round(float(s), 4) for s in faces.score], found_faces=faces.found_faces,
                        frames=faces.frames, frames_with_face=faces.frames_with_face,
                        second_look=faces.second_look.astype(int).tolist(),
                        landmarks=[p.tolist() if np.isfinite(p).all() else None for p in landmarks])
        _write_atomic(base.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta)))
        return meta["error"]

    def build(self, paths: Sequence[str | Path], desc: str = "detect faces") -> dict[str, str]:
        """Detect and crop every video not cached yet; returns {path: error} for undecodable videos.

        A transient failure on one video (anything but a `DataError`) is raised once the videos
        being processed are finished; queued ones are not started, and nothing is recorded for
        the failed one, so calling `build` again continues and retries it."""
        from common.core.locks import filling

        paths = [str(p) for p in paths]
        with filling(self.directory / ".lock"):  # a second process waits, then finds the videos cached
            todo = [p for p in paths if not self.is_done(p)]
            if todo:
                pool = ThreadPoolExecutor(self.workers)
                try:
                    futures = [pool.submit(self._detect_one, p) for p in todo]
                    for future in tqdm(as_completed(futures), total=len(todo),
                                       desc=f"{desc} ({len(paths) - len(todo)} cached)", disable=not self.progress):
                        future.result()  # a transient failure propagates (after the running videos finish)
                finally:  # on failure or interrupt, do not start the videos still queued
                    pool.shutdown(wait=True, cancel_futures=True)
        return {p: error for p in paths if (error := self.error(p))}

    def meta(self, path: str | Path) -> dict:
        file = self._base(path).with_suffix(".json")
        if not file.exists():
            raise KeyError(f"{path}: not in the face cache {self.directory} (run the detect step first)")
        return json.loads(file.read_text())

    def error(self, path: str | Path) -> str | None:
        return self.meta(path)["error"]

    def crop_file(self, path: str | Path) -> Path:
        return self._base(path).with_suffix(".npy")

    def load(self, path: str | Path) -> VideoFaces:
        """The cached crops (memory-mapped, read-only) of a video `build` has seen without error."""
        meta = self.meta(path)
        if meta["error"]:
            raise KeyError(f"{path}: unreadable when the cache was built ({meta['error']})")
        npy = str(self._base(path).with_suffix(".npy"))
        crops = self._open.pop(npy, None)
        if crops is None:
            crops = np.load(npy, mmap_mode="r")
            if len(self._open) >= self._open_files:
                self._open.popitem(last=False)
        self._open[npy] = crops
        return VideoFaces(crops=crops, frame_idx=np.asarray(meta["frame_idx"], np.int32),
                          face_idx=np.asarray(meta["face_idx"], np.int32), score=np.asarray(meta["score"], np.float32),
                          landmarks=stored_landmarks(meta), frames=meta.get("frames"),
                          second_look=np.asarray(meta["second_look"], bool) if "second_look" in meta else None)


def stored_landmarks(meta: dict) -> np.ndarray:
    """The `.json`'s landmarks as float32 [n, 5, 2]; NaN for a crop stored without, and for every crop
    of an entry written before landmarks were stored."""
    nan = [[np.nan, np.nan]] * 5
    points = meta.get("landmarks") or [None] * len(meta["frame_idx"])
    return np.asarray([nan if p is None else p for p in points], np.float32).reshape(-1, 5, 2)


class CropReader:
    """Random access to cached crops, `reader(video, k) -> uint8 [S, S, 3]`; small and picklable, so
    DataLoader workers can carry it (each opens the memory maps it needs, keeping the recent ones)."""

    def __init__(self, files: Sequence[str | Path], open_files: int = 128):
        self.files = [str(f) for f in files]
        self.open_files = open_files
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self):
        return {"files": self.files, "open_files": self.open_files}

    def __setstate__(self, state):
        self.__init__(state["files"], state["open_files"])

    def __call__(self, video: int, k: int) -> np.ndarray:
        crops = self._open.pop(video, None)
        if crops is None:
            crops = np.load(self.files[video], mmap_mode="r")
            if len(self._open) >= self.open_files:
                self._open.popitem(last=False)
        self._open[video] = crops
        return np.array(crops[k])


class CropImages:
    """Cached face crops as a list of images, `crops[i] -> uint8 [S, S, 3]`, for code that takes an
    image source (the pretext tasks): item i is crop `items[i] = (video, k)` of `files[video]`."""

    def __init__(self, files: Sequence[str | Path], items: np.ndarray):
        self.reader = CropReader(files)
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        video, k = self.items[int(i)]
        return self.reader(int(video), int(k))
