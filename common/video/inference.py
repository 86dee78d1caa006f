"""A trained run -> P(class) per video: the one inference path, used by `train` (on cached faces),
by `predict` and by the offline Kaggle kernel (on video files).

Steps, each a small function so training can tune what inference applies:

1. faces: sample frames, detect, crop (`common.video.face_cache.FaceExtractor`, the `detect` settings);
2. crops -> probabilities: every fold model's logit (and its mirror's, `infer.tta_flip`),
   averaged over models, through a sigmoid (`FrameClassifier` is defined here because training
   and inference must build exactly the same network);
3. frames: a frame's probability is the max over its faces (one swapped face makes it fake);
4. aggregation over frames, by a strategy from `AGGREGATIONS` chosen on out-of-fold log loss;
5. calibration: a temperature on the logit, then clipping to [eps, 1 - eps] (log loss punishes a
   confident mistake without bound), both tuned on out-of-fold predictions.

It never crashes on a bad video: an unreadable file gets 0.5 (the log loss of knowing nothing,
0.693) and an `UnreadableVideoWarning` naming the file; a video in which no sampled frame shows a
face gets the run's prior (`calibration.json`'s `prior`: 0.5 under the class-balanced objective,
the out-of-fold share of positives under plain log loss) instead of a guess from centre crops.
Every answered video leaves a detection record (`detection_table`, `detection_line`). It imports neither albumentations nor the
trainer, so the Kaggle kernel needs only torch, timm, OpenCV, numpy, pandas and PyYAML.
"""
from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from common.core.config import read_saved_config
from common.core.errors import DataError
from common.core.registry import Registry
from common.engine.precision import autocast
from common.video.face_cache import FaceExtractor, VideoFaces
from common.models.network import GeM, create_backbone, load_backbone_init

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # as common.data.augment (a test checks)
UNKNOWN = 0.5  # the answer for a video that cannot be read


class UnreadableVideoWarning(UserWarning):
    """A video could not be decoded or processed; it was answered with 0.5."""


# --- the network ----------------------------------------------------------------------------


class FrameClassifier(nn.Module):
    """timm backbone -> GeM -> dropout -> Linear(features, 1): one logit (P(positive class)) per crop."""

    def __init__(self, backbone: nn.Module, gem_p: float = 3.0, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, 1))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.pool(self.backbone.forward_features(images))).squeeze(1)}


class FrameLogit(nn.Module):
    """images -> one logit per image (P(fake) = sigmoid, before the run's calibration): for ONNX."""

    def __init__(self, model: FrameClassifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


def build_classifier(cfg, pretrained=None) -> FrameClassifier:
    """The network of `cfg.model`; `pretrained=False` when fold weights will be loaded anyway (and then
    `model.init`, e.g. a `pretrain` run's backbone.pt, is not loaded either)."""
    m = cfg.model
    backbone = create_backbone(m.backbone, m.pretrained if pretrained is None else pretrained)
    model = FrameClassifier(backbone, gem_p=m.gem_p, dropout=m.dropout)
    if m.get("init") and pretrained is None:
        load_backbone_init(model, m.init)
    return model


def to_tensor(crops: np.ndarray, device) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> ImageNet-normalised float [n, 3, H, W] (what A.Normalize + ToTensorV2 give)."""
    x = torch.from_numpy(np.array(crops, dtype=np.uint8)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def crop_logits(models: Sequence[nn.Module], crops: np.ndarray, *, device, batch_size: int = 64,
                tta_flip: bool = False, amp: bool = True) -> np.ndarray:
    """Mean logit over models (and mirrors) for each crop: float32 [n], in the precision training
    used (`train.amp`, common.engine.precision)."""
    out = np.zeros(len(crops), np.float32)
    for start in range(0, len(crops), batch_size):
        x = to_tensor(crops[start:start + batch_size], device)
        total = torch.zeros(len(x), device=device)
        for model in models:
            model.eval()
            with torch.no_grad(), autocast(device, amp):
                total += model(x)["logits"].float()
                if tta_flip:
                    total += model(x.flip(-1))["logits"].float()
        out[start:start + len(x)] = (total / (len(models) * (2 if tta_flip else 1))).cpu().numpy()
    return out


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


# --- frames -> one video probability --------------------------------------------------------


def frame_probabilities(crop_probs: np.ndarray, frame_idx: np.ndarray) -> np.ndarray:
    """One probability per frame: the max over the frame's faces (frames in increasing order)."""
    crop_probs, frame_idx = np.asarray(crop_probs, np.float64), np.asarray(frame_idx)
    if len(crop_probs) == 0:
        return crop_probs
    frames = np.unique(frame_idx)
    return np.array([crop_probs[frame_idx == f].max() for f in frames])


def aggregate_mean(p: np.ndarray, **_) -> float:
    return float(np.mean(p))


def aggregate_median(p: np.ndarray, **_) -> float:
    return float(np.median(p))


def aggregate_confident(p: np.ndarray, *, threshold: float = 0.8, share: float = 0.4,
                        real_threshold: float = 0.2, real_share: float = 0.9, **_) -> float:
    """The DFDC winner's rule (Seferbekov): when many frames are confidently fake, trust only those.

    If more than `share` of the frames score above `threshold`, return their mean; else if more
    than `real_share` score below `real_threshold`, return the mean of those; else the plain mean.
    A swap that shows in a third of the frames is not diluted by the frames where it is hidden.
    """
    p = np.asarray(p, np.float64)
    fake, real = p[p > threshold], p[p < real_threshold]
    if len(fake) > share * len(p):
        return float(fake.mean())
    if len(real) > real_share * len(p):
        return float(real.mean())
    return float(p.mean())


AGGREGATIONS = Registry("aggregation", keys=("infer.aggregation",), also=("auto",))
AGGREGATIONS.add("mean", aggregate_mean)
AGGREGATIONS.add("median", aggregate_median)
AGGREGATIONS.add("confident", aggregate_confident)


def aggregation_params(infer_cfg) -> dict:
    """Keyword arguments of the strategies, from the `infer` config section."""
    return {"threshold": infer_cfg["confident_threshold"], "share": infer_cfg["confident_share"],
            "real_threshold": infer_cfg["confident_real_threshold"],
            "real_share": infer_cfg["confident_real_share"]}


def aggregate(frame_probs: np.ndarray, strategy: str, **params) -> float:
    fn = AGGREGATIONS.get(strategy, "infer.aggregation")
    if len(frame_probs) == 0:
        return UNKNOWN
    return fn(np.asarray(frame_probs, np.float64), **params)


def calibrate(p, temperature: float = 1.0, eps: float = 0.0) -> np.ndarray:
    """sigmoid(logit(p) / temperature), clipped to [eps, 1 - eps]."""
    out = sigmoid(logit(p) / float(temperature)) if temperature != 1.0 else np.asarray(p, np.float64)
    return np.clip(out, eps, 1.0 - eps)


DEFAULT_CALIBRATION = {"aggregation": "mean", "temperature": 1.0, "clip_eps": 0.01}


# --- the predictor --------------------------------------------------------------------------


class VideoPredictor:
    """Fold models + face extractor + tuned post-processing of one run (or a Kaggle weights dataset)."""

    def __init__(self, cfg, models: Sequence[nn.Module], calibration: dict | None = None, *, device=None,
                 progress: bool = True, extractor: FaceExtractor | None = None):
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models = [m.to(self.device).eval() for m in models]
        self.calibration = {**DEFAULT_CALIBRATION, **(calibration or {})}
        self.params = aggregation_params(cfg.infer)
        self.progress = progress
        self._extractor = extractor
        self._local = threading.local()  # predict's worker threads: an extractor (decoder, detector) each
        self.failures: list[str] = []  # videos answered UNKNOWN
        self.records: list[dict] = []   # per video: sampled frames, frames with a face, how it was answered

    @classmethod
    def load(cls, weights_dir: str | Path, fold_dirs: Sequence[Path] | None = None, *, cfg=None, device=None,
             progress: bool = True) -> "VideoPredictor":
        """From a folder holding config.yaml, calibration.json and the fold models (a run directory):
        `fold_dirs`, else the run's `train.run_folds`; `cfg`: the run's config as predict resolved it
        (default: its config.yaml)."""
        from common.core.files import load_checkpoint

        weights_dir = Path(weights_dir)
        if not (weights_dir / "config.yaml").is_file():
            raise DataError(f"{weights_dir}: no config.yaml (not a run directory or weights dataset)")
        cfg = cfg if cfg is not None else read_saved_config(weights_dir / "config.yaml")
        if fold_dirs is None:
            from common.engine.folds import run_folds

            fold_dirs = [weights_dir / f"fold{f}" for f in run_folds(cfg)]
        checkpoints = [Path(d) / "best.pt" for d in fold_dirs]
        missing = [str(c) for c in checkpoints if not c.is_file()]
        if missing:
            raise DataError(f"{weights_dir}: no trained model in {', '.join(missing)}")
        models = []
        for checkpoint in checkpoints:
            model = build_classifier(cfg, pretrained=False)
            model.load_state_dict(load_checkpoint(checkpoint)["model"])
            models.append(model)
        calibration_file = weights_dir / "calibration.json"
        calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
        if calibration is None:
            warnings.warn(f"{calibration_file} missing: using {DEFAULT_CALIBRATION}", stacklevel=2)
        return cls(cfg, models, calibration, device=device, progress=progress)

    @property
    def extractor(self) -> FaceExtractor:
        own = getattr(self._local, "extractor", None)  # set in predict's worker threads
        if own is not None:
            return own
        if self._extractor is None:  # built on first use: training predicts from cached crops
            self._extractor = FaceExtractor.from_config(self.cfg)
        return self._extractor

    def crop_probabilities(self, crops: np.ndarray) -> np.ndarray:
        logits = crop_logits(self.models, crops, device=self.device, batch_size=int(self.cfg.infer.batch_size),
                             tta_flip=bool(self.cfg.infer.tta_flip), amp=bool(self.cfg.train.amp))
        return sigmoid(logits)

    def raw_probability(self, faces: VideoFaces, strategy: str | None = None) -> float:
        """Aggregated, before calibration."""
        frames = frame_probabilities(self.crop_probabilities(faces.crops), faces.frame_idx)
        return aggregate(frames, strategy or self.calibration["aggregation"], **self.params)

    def finish(self, raw) -> np.ndarray:
        c = self.calibration
        return calibrate(raw, c["temperature"], c["clip_eps"])

    @property
    def prior(self) -> float:
        return float(self.calibration.get("prior", UNKNOWN))

    def _record(self, path, faces: VideoFaces | None, error: str | None = None) -> None:
        sampled = int(self.cfg.video.frames) if faces is None or faces.frames is None else int(faces.frames)
        found = 0 if faces is None else faces.frames_with_face
        how = "unreadable" if faces is None else ("model" if faces.found_faces else "prior (no face)")
        self._sink("records").append({"video": Path(str(path)).name, "frames_sampled": sampled,
                                      "frames_with_face": found,
                                      "second_looks": 0 if faces is None else int(faces.second_look.sum()),
                                      "crops": 0 if faces is None else len(faces), "answered_by": how,
                                      "error": error or ""})

    def _sink(self, name: str) -> list:
        """`self.records` / `self.failures`, or, in one of predict's worker threads, that thread's list
        for the video at hand (`_predict_in_parallel` appends them in input order)."""
        own = getattr(self._local, name, None)
        return getattr(self, name) if own is None else own

    def _answer(self, faces: VideoFaces) -> float:
        if not faces.found_faces:
            return self.prior
        return float(self.finish([self.raw_probability(faces)])[0])

    def predict_faces(self, faces: Sequence[VideoFaces | None], paths: Sequence | None = None) -> np.ndarray:
        """Calibrated probabilities for already extracted faces (None = unreadable -> 0.5)."""
        paths = list(paths) if paths is not None else [f"video{i}" for i in range(len(faces))]
        out = np.empty(len(faces))
        for i, (f, path) in enumerate(tqdm(list(zip(faces, paths)), desc="classify", disable=not self.progress,
                                           leave=False)):
            out[i] = UNKNOWN if f is None else self._answer(f)
            self._record(path, f, None if f is not None else "unreadable when the face cache was built")
        return out

    def predict_video(self, path: str | Path, frames: np.ndarray | None = None,
                      read_error: Exception | None = None) -> float:
        """One video file -> calibrated P(positive); 0.5 and a warning if anything goes wrong.
        ``frames``: its sampled frames when already read (``predict``'s read-ahead), or the
        ``read_error`` reading them raised."""
        try:
            if read_error is not None:
                raise read_error
            faces = self.extractor(path) if frames is None else self.extractor.faces_in(frames)
            answer = self._answer(faces)
        except Exception as exc:  # noqa: BLE001 - one bad file must not cost the whole submission
            self._sink("failures").append(str(path))
            problem = str(exc) if str(path) in str(exc) else f"{path}: {exc.__class__.__name__}: {exc}"
            warnings.warn(f"{problem}; predicting {UNKNOWN}", UnreadableVideoWarning, stacklevel=2)
            self._record(path, None, problem)
            return UNKNOWN
        self._record(path, faces)
        return answer

    def detection_table(self):
        """One row per answered video: frames sampled, frames with a detected face, second looks,
        crops, and whether the model, the prior (no face) or 0.5 (unreadable) answered it."""
        import pandas as pd

        return pd.DataFrame(self.records, columns=["video", "frames_sampled", "frames_with_face", "second_looks",
                                                   "crops", "answered_by", "error"])

    def detection_line(self) -> str:
        """`faces: found in <pct>% of <n> sampled frames`, with the videos answered without a face."""
        table = self.detection_table()
        sampled, found = int(table.frames_sampled.sum()), int(table.frames_with_face.sum())
        line = f"faces: found in {100.0 * found / max(sampled, 1):.1f}% of {sampled} sampled frames"
        line += f" ({len(table)} videos"
        prior = int((table.answered_by == "prior (no face)").sum())
        if prior:
            line += f"; {prior} without any face answered the prior {self.prior:.3f}"
        bad = table[table.answered_by == "unreadable"]
        if len(bad):
            line += f"; {len(bad)} unreadable answered {UNKNOWN}: {', '.join(bad.video.head(20))}"
            line += " ..." if len(bad) > 20 else ""
        return line + ")"

    def _read(self, path) -> tuple[np.ndarray | None, Exception | None]:
        try:
            return self.extractor.read(path), None
        except Exception as exc:  # noqa: BLE001 - reported by predict_video, per video
            return None, exc

    def predict(self, paths: Sequence[str | Path], desc: str = "predict videos") -> np.ndarray:
        """P(positive) per video file. With ``infer.read_ahead=k`` (> 0) the next k videos' frames
        are decoded on a background thread while this one's faces are detected and classified: the
        decoder (PyAV releases the GIL) and the networks overlap, so a video costs about the
        larger of the two instead of their sum (``bench deepfake``'s "predict" column)."""
        paths = list(paths)
        ahead = int(self.cfg.infer.get("read_ahead", 0) or 0)
        workers = int(self.cfg.infer.get("workers", 1) or 1)
        if workers > 1 and len(paths) > 1:
            return self._predict_in_parallel(paths, workers, desc)
        bar = tqdm(paths, desc=desc, disable=not self.progress)
        if ahead < 1 or len(paths) < 2:
            return np.array([self.predict_video(p) for p in bar])
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        out = []
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
            pending = deque(pool.submit(self._read, p) for p in paths[: ahead + 1])
            for i, path in enumerate(bar):
                frames, error = pending.popleft().result()
                if i + ahead + 1 < len(paths):
                    pending.append(pool.submit(self._read, paths[i + ahead + 1]))
                out.append(self.predict_video(path, frames, error))
        return np.array(out)

    def _predict_in_parallel(self, paths: list, workers: int, desc: str) -> np.ndarray:
        """``infer.workers=n``: n videos in flight, each thread with its own extractor (decoder and
        detector state) and the shared models. On a CPU this keeps the cores busy where one video's
        decoder and detector leave them idle in turn (``bench deepfake``'s "2 at a time"); the
        per-video records stay in the order of ``paths``."""
        from concurrent.futures import ThreadPoolExecutor

        def one(path) -> tuple[float, list, list]:
            local = self._local
            if getattr(local, "extractor", None) is None:
                local.extractor = FaceExtractor.from_config(self.cfg)
            local.records, local.failures = [], []
            try:
                return self.predict_video(path), local.records, local.failures
            finally:
                local.records = local.failures = None

        out = []
        with ThreadPoolExecutor(workers, thread_name_prefix="predict") as pool:
            for answer, records, failures in tqdm(pool.map(one, paths), total=len(paths), desc=desc,
                                                  disable=not self.progress):
                out.append(answer)
                self.records.extend(records)
                self.failures.extend(failures)
        return np.array(out)
