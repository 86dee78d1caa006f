"""Video -> faces -> P(class) for binary video labels (DFDC). Scored by log loss.

1. Face crops of every video, computed once and cached on disk (`common.video.face_cache`;
   the `detect` command fills the cache alone).
2. Folds grouped by `group` (a fake and the real video it was made from share a fold, asserted
   by `common.engine.folds.group_folds`), stratified on the label.
3. Per fold, a frame classifier (`common.video.inference.FrameClassifier`) trained on crops with
   BCE and label smoothing; classes balanced by the sampler (or weighted); self-blended images
   (`common.video.blend`) can turn real crops into extra fakes, or be the only fakes (`blend.mode`).
   The per-epoch validation score is the held-out videos' log loss.
4. Out-of-fold frame probabilities -> one probability per video by each aggregation strategy,
   each calibrated on OOF log loss (`common.video.calibration`); the best one is saved in
   `calibration.json`, which inference applies as is.
5. Test videos: the fold models averaged through `common.video.inference.VideoPredictor`, on the
   cached faces in `train`, and decoded on the fly in `predict`, exactly as in the Kaggle kernel.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.errors import ConfigError, DataError
from common.core.files import write_csv_atomic, write_json_atomic
from common.core.paths import cache_root, resolve_data_root
from common.data.augment import build_transform
from common.data.loaders import make_loader
from common.data.tables import VIDEO_SUFFIXES
from common.engine import distributed
from common.engine.folds import assert_disjoint, group_folds
from common.engine.trainer import load_best, seed_everything, train_fold
from common.losses.objective import BinaryObjective, class_weights
from common.metrics.detection import detection_metrics, frame_and_video_metrics, plot_roc
from common.metrics.scores import log_loss
from common.models.network import load_backbone_init
from common.tasks.base import TASKS, Task
from common.video.blend import SelfBlendAugment
from common.video.calibration import (balanced_log_loss, evaluate_oof, reliability_plot, roc_auc,
                                      video_probabilities)
from common.video.crops import FaceCropDataset
from common.video.face_cache import CropReader, FaceCache, FaceExtractor, crop_size, stored_landmarks
from common.video.face_parts import FacePartDropout
from common.video.inference import FrameLogit, VideoPredictor, build_classifier, crop_logits, sigmoid

BLEND_MODES = ("none", "augment", "only")


class VideoData:
    """Training and test videos with their faces in the cache (shared by `train` and `detect`)."""

    def __init__(self, comp, cfg, root: Path):
        self.cfg, self.root, self.comp = cfg, root, comp
        self.listed = comp.read_train(root, cfg)
        if cfg.data.limit:
            self.listed = self.listed.iloc[: int(cfg.data.limit)]
        if self.listed.group.nunique() < int(cfg.train.folds):
            raise DataError(f"{root}: {self.listed.group.nunique()} groups of videos (originals) but "
                            f"train.folds={cfg.train.folds}")
        self.test, self.truth = comp.read_test(root), comp.read_truth(root)

    def build(self) -> "VideoData":
        """Every video's faces into the cache (resumable); unreadable training videos are left out."""
        cfg, root, train = self.cfg, self.root, self.listed
        self.cache = FaceCache(FaceExtractor.from_config(cfg), cache_root(cfg) / self.comp.name / "faces",
                               progress=cfg.progress, workers=cfg.faces.workers)
        started = time.time()
        self.errors = distributed.on_main(self.cache.build, list(train.path) + list(self.test.path))
        self.detect_seconds = time.time() - started
        for path, error in list(self.errors.items())[:5]:
            print(f"warning: {path}: {error}", flush=True)
        bad_train = train.path.isin(list(self.errors))
        if bad_train.any():
            print(f"warning: {int(bad_train.sum())} unreadable training video(s) left out", flush=True)
        self.skipped = int(bad_train.sum())
        self.train = train[~bad_train].reset_index(drop=True)
        if self.train.empty:
            raise DataError(f"{root}: no readable training video")
        parts, found, points = [], [], []
        for row, path in enumerate(self.train.path):  # one row per cached training crop
            meta = self.cache.meta(path)
            found.append(bool(meta.get("found_faces", True)))
            n = len(meta["frame_idx"])
            parts.append(pd.DataFrame({"video": row, "k": np.arange(n), "frame_idx": meta["frame_idx"]}))
            points.append(stored_landmarks(meta))
        self.train["found_faces"] = found
        self.crops = pd.concat(parts, ignore_index=True)
        self.landmarks = np.concatenate(points)  # [crops, 5, 2] in crop pixels, aligned with self.crops
        self.reader = CropReader([self.cache.crop_file(p) for p in self.train.path])
        return self

    def items(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(video row, crop index) pairs and labels of every crop of the given videos."""
        chosen = self.crops[self.crops.video.isin(rows)]
        return chosen[["video", "k"]].to_numpy(), self.train.label.to_numpy()[chosen.video.to_numpy()]

    def item_landmarks(self, rows: np.ndarray) -> np.ndarray:
        """The landmarks of `items(rows)`' crops, in the same order ([n, 5, 2], NaN where none)."""
        return self.landmarks[np.flatnonzero(self.crops.video.isin(rows).to_numpy())]


def detect(comp, cfg) -> VideoData:
    """`detect`: cache the face crops of every training and test video (resumable)."""
    Video.check(cfg)
    data = VideoData(comp, cfg, resolve_data_root(cfg, comp.name, comp.slug, comp.write_demo)).build()
    print(f"{comp.name}: {len(data.train) + data.skipped} training + {len(data.test)} test videos, faces cached in "
          f"{data.cache.directory} ({data.detect_seconds:.0f} s this time); detector "
          f"{data.cache.extractor.detector_name}; {data.train.found_faces.mean():.0%} of training videos with a "
          f"detected face; {len(data.errors)} unreadable", flush=True)
    return data


@TASKS.register("video")
class Video(Task):
    name, metric, lower_is_better = "video", "logloss", True
    fold_marker = "oof_frames.csv"
    default_sampler = "binary_balanced"
    samplers = ("random", "binary_balanced")
    id_column = "video"
    registry_keys = Task.registry_keys + ("infer.aggregation", "faces.detector", "calibrate.objective")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.train.class_weights and cfg.train.sampler != "random":
            raise ConfigError("train.class_weights=true balances the classes in the loss: use it with "
                              "train.sampler=random (the default sampler balances them already)")
        unused = [f"{k}={v}" for k, v, default in (("data.resize", cfg.data.resize, "stretch"),
                                                    ("data.normalize", cfg.data.normalize, "imagenet"),
                                                    ("data.boxes", cfg.data.boxes, None)) if v != default]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: the video task crops faces itself (faces.*) and normalises "
                              "with ImageNet's statistics; these image keys do not apply to it")
        if cfg.blend.mode not in BLEND_MODES:
            raise ConfigError(f"blend.mode={cfg.blend.mode}; choose from {', '.join(BLEND_MODES)}")
        grid = cfg.calibrate.eps_grid
        if not grid or any(not isinstance(e, (int, float)) or not 0 < e < 0.5 for e in grid):
            raise ConfigError(f"calibrate.eps_grid={grid}: clipping values in (0, 0.5); 0 would allow the certain "
                              "answers that log loss punishes without bound")
        FaceExtractor.from_config(cfg)  # frames, crop size, face mode, detector: errors before any folder is made

    def __init__(self, comp, cfg, root: Path, *, purpose: str):
        super().__init__(comp, cfg, root, purpose=purpose)
        self.device = distributed.init(cfg)
        if purpose == "train":
            self.data = VideoData(comp, cfg, self.root)
            self.test, self.truth = self.data.test, self.data.truth
        elif purpose == "files":  # predict images=DIR: the files come later (use_files)
            self.data, self.test, self.truth = None, None, None
        else:  # predict decodes and detects on the fly, as the Kaggle kernel does
            self.data, self.test, self.truth = None, comp.read_test(self.root), comp.read_truth(self.root)

    def prepare(self) -> None:
        if self.data is not None:
            self.data.build()

    # --- the engine's steps ----------------------------------------------------------------
    def fold_groups(self) -> np.ndarray:
        """The groups no fold may split: the original video, joined by estimated actor when
        `actors.group_folds` (`common.video.actors`; computed once per run)."""
        if getattr(self, "_fold_groups", None) is not None:
            return self._fold_groups
        train, cfg = self.data.train, self.cfg
        groups = train.group.to_numpy()
        actors = cfg.get("actors") or {}
        if actors.get("group_folds"):
            from common.video.actors import cluster_actors, merge_groups, video_embeddings

            real = np.flatnonzero(train.label.to_numpy() == 0)
            counts = self.data.crops.groupby("video").size()
            crops_of = lambda row: np.stack([self.data.reader(int(row), k) for k in range(int(counts[row]))])  # noqa: E731
            started = time.time()
            embeddings = video_embeddings(crops_of, real, actors["backbone"], actors.get("pretrained", "pypi"))
            cluster = cluster_actors(embeddings, float(actors["threshold"]))
            merged = merge_groups(groups, dict(zip(groups[real], cluster)))
            print(f"folds by actor: {len(set(cluster.tolist()))} actors estimated among {len(real)} real videos "
                  f"(actors.threshold={actors['threshold']}, {time.time() - started:.0f} s): "
                  f"{len(set(merged.tolist()))} fold groups instead of {len(set(groups.tolist()))} originals", flush=True)
            groups = merged
        self._fold_groups = groups
        return groups

    def split(self) -> np.ndarray:
        train, folds = self.data.train, int(self.cfg.train.folds)
        groups = self.fold_groups()
        if len(set(groups.tolist())) < folds:
            what = "groups of videos (originals joined by actor: a lower actors.threshold joins fewer, " \
                   "actors.group_folds=false joins none)" if self.cfg.get("actors", {}).get("group_folds") else "groups of videos (originals)"
            raise DataError(f"{self.root}: {len(set(groups.tolist()))} {what} but train.folds={folds}")
        return group_folds(train.label.to_numpy(), groups, folds, self.cfg.seed)

    def fold_table(self, folds) -> pd.DataFrame:
        train = self.data.train
        return pd.DataFrame({"video": train.video, "label": train.label, "group": train.group,
                             "fold_group": self.fold_groups(), "fold": folds})

    def describe(self) -> str:
        train = self.data.train
        return (f"{len(train)} training videos ({int(train.label.sum())} positive, {train.group.nunique()} groups), "
                f"{len(self.data.crops)} face crops, {len(self.test)} test videos")

    def predict_frames(self, model, rows: np.ndarray, tta: bool) -> pd.DataFrame:
        """Crop probabilities of the given videos' cached crops, one video at a time (bounded memory)."""
        cfg, train, parts = self.cfg, self.data.train, []
        for row in rows:
            faces = self.data.cache.load(train.path.iat[row])
            probs = sigmoid(crop_logits([model], faces.crops, device=self.device, batch_size=cfg.infer.batch_size,
                                        tta_flip=tta, amp=bool(cfg.train.amp)))
            parts.append(pd.DataFrame({"video": train.video.iat[row], "label": train.label.iat[row],
                                       "frame_idx": faces.frame_idx, "face_idx": faces.face_idx, "score": faces.score,
                                       "prob": probs}))
        return pd.concat(parts, ignore_index=True)

    def video_scores(self, frames: pd.DataFrame) -> dict:
        video = video_probabilities(frames, "mean", {})
        y = frames.groupby("video", sort=False).label.first().loc[video.index].to_numpy()
        return {"logloss": log_loss(y, video.to_numpy()), "balanced_logloss": balanced_log_loss(y, video.to_numpy()),
                "frame_logloss": log_loss(frames.label, frames.prob), "auc": roc_auc(y, video.to_numpy())}

    def train_fold(self, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
        cfg, labels = self.cfg, self.data.train.label.to_numpy()
        only_real = cfg.blend.mode == "only"
        train_rows = np.flatnonzero((folds != fold) & ((labels == 0) if only_real else True))
        val_rows = np.flatnonzero(folds == fold)
        assert_disjoint(train_rows, val_rows)
        if len(train_rows) == 0:
            raise DataError(f"fold {fold}: no training video" + (" with label REAL (blend.mode=only)" if only_real else ""))
        items, item_labels = self.data.items(train_rows)
        seed_everything(cfg.seed + fold)
        blend = SelfBlendAugment(p=cfg.blend.p, seed=cfg.seed + fold) if cfg.blend.mode != "none" else None
        part_p = float(cfg.augment.get("part_dropout", 0.0) or 0.0)
        dataset = FaceCropDataset(self.data.reader, items, item_labels, build_transform(cfg.augment.train,
                                                                                        crop_size(cfg)), blend,
                                  landmarks=self.data.item_landmarks(train_rows),
                                  part_dropout=FacePartDropout(part_p, seed=cfg.seed + 1000 + fold) if part_p else None)
        weights = class_weights(item_labels) if cfg.train.class_weights else (1.0, 1.0)
        loader = make_loader(cfg, dataset, item_labels, seed=cfg.seed + fold, default=self.default_sampler,
                             blend_p=blend.p if blend is not None else 0.0)
        model = build_classifier(cfg)
        if cfg.model.init:
            load_backbone_init(model, cfg.model.init)
        print(f"fold {fold}: {len(train_rows)} training videos ({len(items)} crops"
              f"{', real only + self-blends' if only_real else ''}), {len(val_rows)} validation videos", flush=True)
        train_fold(cfg, fold=fold, model=model, train_loader=loader,
                   loss_fn=BinaryObjective(cfg.train.label_smoothing, weights),
                   evaluate=lambda m: self.video_scores(self.predict_frames(m, val_rows, bool(cfg.train.eval_tta))),
                   fold_dir=fold_dir, log_path=log_path, device=self.device, monitor=cfg.calibrate.objective, mode="min")
        distributed.on_main(self._write_fold_answers, model, fold, val_rows, fold_dir)

    def _write_fold_answers(self, model, fold: int, val_rows, fold_dir: Path) -> None:
        frames = self.predict_frames(load_best(model, fold_dir, self.device), val_rows, bool(self.cfg.infer.tta_flip))
        frames.insert(2, "fold", fold)
        write_csv_atomic(frames, fold_dir / self.fold_marker)

    def tune(self, fold_dirs, folds, run: Path) -> dict:
        frames = pd.concat([pd.read_csv(d / self.fold_marker, dtype={"video": str}) for d in fold_dirs],
                           ignore_index=True)
        metrics, calibration = evaluate_oof(frames, self.cfg, run)
        calibration["prior"] = self.prior(frames)
        write_json_atomic(run / "calibration.json", calibration)
        metrics.update(self.ranking_metrics(frames, run, metrics["aggregation"]))
        data = self.data
        metrics.update(skipped_videos=data.skipped, unreadable_test_videos=sum(p in data.errors for p in data.test.path),
                       train_faces_found_share=float(data.train.found_faces.mean()),
                       detector=data.cache.extractor.detector_name, detect_minutes=round(data.detect_seconds / 60, 2))
        return metrics

    @staticmethod
    def ranking_metrics(frames: pd.DataFrame, run: Path, aggregation: str) -> dict:
        """What DeepfakeBench reports beside log loss: ROC AUC, EER and average precision of frames
        (a frame is its video's label) and of videos, out of fold, with the ROC of both in roc.png.
        Videos are ranked by their aggregated score before calibration (clipping makes ties)."""
        oof = pd.read_csv(run / "oof.csv", dtype={"video": str})
        column = f"p_{aggregation}" if f"p_{aggregation}" in oof else "prediction"
        found = frame_and_video_metrics(frames.video.astype(str), frames.prob, oof.label, oof[column],
                                        video_ids=oof.video)
        plot_roc(oof.label, oof[column], run / "roc.png", title="out-of-fold ROC",
                 extra={"frames": (frames.label, frames.prob)})
        return {f"oof_{k}": v for k, v in found.items()}

    def prior(self, frames: pd.DataFrame) -> float:
        """The answer for a video without any face: the constant that minimises the tuned objective
        on the out-of-fold videos (0.5 when both classes weigh half, else their share of fakes)."""
        if self.cfg.calibrate.objective == "balanced_logloss":
            return 0.5
        share = float(frames.groupby("video").label.first().mean())
        return float(np.clip(share, 0.01, 0.99))

    def predict(self, fold_dirs, metrics: dict, run: Path) -> np.ndarray:
        self.run = run
        if self.purpose != "train":
            predictor = VideoPredictor.load(run, fold_dirs, cfg=self.cfg, device=self.device, progress=self.cfg.progress)
            self.predictor = predictor
            return predictor.predict(self.test.path)
        calibration = json.loads((run / "calibration.json").read_text())
        models = [load_best(build_classifier(self.cfg, pretrained=False), d, self.device) for d in fold_dirs]
        predictor = VideoPredictor(self.cfg, models, calibration, device=self.device, progress=self.cfg.progress)
        self.predictor = predictor
        faces = [None if path in self.data.errors else self.data.cache.load(path) for path in self.test.path]
        if any(f is None for f in faces):
            warnings.warn(f"{sum(f is None for f in faces)} unreadable test video(s) answered 0.5", stacklevel=2)
        return predictor.predict_faces(faces, list(self.test.path))

    def after_submission(self, submission: Path) -> None:
        """Per-video detection counts beside the submission (`<name>.faces.csv`) and one line saying
        in how many sampled frames a face was found."""
        predictor = getattr(self, "predictor", None)
        if predictor is None or not predictor.records:
            return
        counts = Path(submission).with_suffix(".faces.csv")
        write_csv_atomic(predictor.detection_table(), counts)
        print(f"{predictor.detection_line()}; per video: {counts}", flush=True)

    files_suffixes = frozenset(VIDEO_SUFFIXES)
    export_output = "logits"

    @classmethod
    def fold_network(cls, cfg, fold_dir: Path):
        return FrameLogit(load_best(build_classifier(cfg, pretrained=False), fold_dir)).eval()

    def files_frame(self, answers) -> pd.DataFrame:
        return pd.DataFrame({"file": self.test.video, "p_fake": np.round(np.asarray(answers, dtype=float), 6),
                             "path": self.test.path})

    def score_test(self, answers, metrics: dict) -> dict:
        if self.truth is None:
            return {}
        truth = self.test_truth().to_numpy()
        if self.purpose == "train":
            reliability_plot(answers, truth, self.run / "reliability_test.png", "test videos (calibrated)")
        ranking = detection_metrics(truth, np.asarray(answers, dtype=float))
        return {"test_logloss": log_loss(truth, answers), "test_baseline_logloss": log_loss(truth, np.full(len(truth), 0.5)),
                "test_auc": ranking["auc"], "test_eer": ranking["eer"], "test_ap": ranking["ap"],
                "test_videos": len(truth)}

    def summary(self, metrics: dict) -> str:
        line = (f"OOF log loss {metrics['oof_logloss']:.4f} (class-balanced {metrics['oof_balanced_logloss']:.4f}) "
                f"against {metrics['baseline_logloss']:.4f} for a constant 0.5; aggregation '{metrics['aggregation']}', "
                f"temperature {metrics['temperature']:.3f}, clip eps {metrics['clip_eps']} (mean of frames, "
                f"uncalibrated: {metrics['oof_logloss_raw']:.4f})")
        if "oof_video_auc" in metrics:
            line += (f"\nOOF video AUC {metrics['oof_video_auc']:.3f}, EER {metrics['oof_video_eer']:.3f}, "
                     f"AP {metrics['oof_video_ap']:.3f}; frames AUC {metrics['oof_frame_auc']:.3f}, "
                     f"EER {metrics['oof_frame_eer']:.3f}, AP {metrics['oof_frame_ap']:.3f}")
        if "test_logloss" in metrics:
            line += (f"\ntest log loss {metrics['test_logloss']:.4f} (constant 0.5: "
                     f"{metrics['test_baseline_logloss']:.4f}), test AUC {metrics['test_auc']:.3f}, "
                     f"EER {metrics.get('test_eer', float('nan')):.3f}, AP {metrics.get('test_ap', float('nan')):.3f}")
        return line
