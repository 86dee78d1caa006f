"""Video -> faces -> P(class): the whole `detect`, `train` and `predict` flow for binary video labels.

1. `detect`: every video's face crops, computed once and cached on disk (`common.video.face_cache`).
2. Folds grouped by `group` (a fake and the real video it was made from share a fold, asserted
   by `common.engine.folds.group_folds`), stratified on the label.
3. Per fold, a frame classifier (`common.video.inference.FrameClassifier`) trained on crops with BCE and
   label smoothing; the minority class is over-sampled (or weighted); self-blended images
   (`common.video.blend`) can turn real crops into extra fakes, or be the only fakes (`blend.mode`).
   The per-epoch validation score is the held-out videos' log loss.
4. Out-of-fold frame probabilities -> one probability per video by each aggregation strategy;
   for each, a temperature on the logit and a clipping eps are tuned on OOF log loss, and the
   best strategy wins. All of it is saved to `calibration.json`, which inference applies as is.
5. Test videos: the fold models averaged, through the same `common.video.inference.VideoPredictor` that
   `predict` and the Kaggle kernel use.

A competition plugs in with: name, slug, write_demo(root), read_train(root, missing_original) ->
[video, path, label (0/1), group], read_test(root) -> [video, path], read_truth(root) ->
[video, label] | None, write_submission(videos, probabilities, path, root).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from common.metrics import plots
from common.data.augment import build_transform, register
from common.video.blend import SelfBlendAugment
from common.core.config import save_config
from common.core.errors import ConfigError, DataError
from common.video.face_cache import CropReader, FaceCache, FaceExtractor, crop_size
from common.engine.folds import assert_disjoint, group_folds
from common.video.inference import (AGGREGATIONS, DEFAULT_CALIBRATION, VideoPredictor, aggregate, aggregation_params,
                        build_classifier, calibrate, crop_logits, frame_probabilities, logit, predict_submission,
                        sigmoid)
from common.metrics.scores import log_loss
from common.models.network import load_backbone_init
from common.core.paths import cache_root, open_run, resolve_data_root, run_dir
from common.engine.trainer import load_best, pick_device, seed_everything, train_fold

BLEND_MODES = ("none", "augment", "only")
BALANCE_MODES = ("sampler", "weight", "none")


@register("face")
def face_augment(size) -> list:
    """Face crops: mirror and light only. No resampling (rotation, scaling), blur or noise: a fake
    is told apart by its texture (a generator's resampled, blended face), and interpolating a real
    crop would fake the very artefact the model must learn."""
    return [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=0.5)]


@register("face_geometric")
def face_geometric_augment(size) -> list:
    """`face` plus small pose changes (resampled): for real data, where faces are larger than the crop."""
    return face_augment(size) + [A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-8, 8),
                                          border_mode=cv2.BORDER_CONSTANT, p=0.5)]


# --- data -----------------------------------------------------------------------------------


class FaceCropDataset(Dataset):
    """Cached crops `(video, k)` with their video's label; optionally self-blended into fakes first."""

    def __init__(self, reader: CropReader, items: np.ndarray, labels: np.ndarray, transform,
                 blend: SelfBlendAugment | None = None):
        self.reader, self.items, self.labels = reader, np.asarray(items), np.asarray(labels, np.float32)
        self.transform, self.blend = transform, blend

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        video, k = (int(v) for v in self.items[i])
        image, label = self.reader(video, k), float(self.labels[i])
        if self.blend is not None and label == 0.0:  # only real faces become self-blended fakes
            out = self.blend(image=image)
            image, label = out["image"], float(out["label"])
        return self.transform(image=image)["image"], torch.tensor(label, dtype=torch.float32)


class BinaryObjective:
    """BCE on one logit with label smoothing (targets eps/2 and 1 - eps/2) and optional class weights."""

    def __init__(self, smoothing: float = 0.0, class_weights: tuple[float, float] = (1.0, 1.0)):
        self.smoothing, self.class_weights = float(smoothing), class_weights

    def __call__(self, output: dict, labels: torch.Tensor):
        labels = labels.float()
        target = labels * (1.0 - self.smoothing) + 0.5 * self.smoothing
        weight = torch.where(labels > 0.5, self.class_weights[1], self.class_weights[0])
        loss = F.binary_cross_entropy_with_logits(output["logits"].float(), target, weight=weight)
        return loss, {}


def class_weights(labels: np.ndarray) -> tuple[float, float]:
    """Weights that make both classes count equally: n / (2 n_class)."""
    n, positives = len(labels), float(np.sum(labels))
    if positives in (0, n):
        return 1.0, 1.0
    return n / (2 * (n - positives)), n / (2 * positives)


def balanced_sample_weights(labels: np.ndarray, blend_p: float = 0.0) -> np.ndarray:
    """Per-crop sampling weights that make batches half negative, half positive *after* self-blending.

    A negative crop is drawn with total share r and turned positive with probability blend_p, so
    r (1 - blend_p) = 1/2 gives r = 1 / (2 (1 - blend_p)) (all negatives when blend_p >= 1/2).
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    negative_share = min(1.0, 0.5 / (1.0 - blend_p)) if blend_p < 1 else 1.0
    if counts[1] == 0:
        negative_share = 1.0
    if counts[0] == 0:
        negative_share = 0.0
    share = np.array([negative_share, 1.0 - negative_share])
    return share[labels] / np.maximum(counts[labels], 1)


def make_train_loader(cfg, dataset: FaceCropDataset, balance: str, seed: int) -> DataLoader:
    """Shuffled crops; with `balance=sampler`, each class drawn equally often (with replacement),
    counting self-blended crops as positives."""
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                  pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0,
                  drop_last=len(dataset) > cfg.train.batch_size, generator=generator)
    if balance == "sampler":
        weights = balanced_sample_weights(dataset.labels, dataset.blend.p if dataset.blend is not None else 0.0)
        sampler = WeightedRandomSampler(torch.from_numpy(weights), num_samples=len(dataset), replacement=True,
                                        generator=generator)
        return DataLoader(dataset, sampler=sampler, **common)
    return DataLoader(dataset, shuffle=True, **common)


class VideoRun:
    """Data, folds and face cache shared by the folds of one run (and by `detect`)."""

    def __init__(self, comp, cfg, *, need_test: bool = True):
        self.comp, self.cfg = comp, cfg
        self.root = resolve_data_root(cfg, comp.name, comp.slug, comp.write_demo)
        train = comp.read_train(self.root, missing_original=cfg.video.get("missing_original", "error"))
        if cfg.data.get("limit"):
            train = train.iloc[: int(cfg.data.limit)]
        self.test = comp.read_test(self.root) if need_test else None
        self.truth = comp.read_truth(self.root) if need_test else None
        self.device = pick_device(cfg)
        self.cache = FaceCache(FaceExtractor.from_config(cfg), cache_root(cfg) / comp.name / "faces",
                               progress=cfg.progress, workers=cfg.faces.get("workers", 1))
        videos = list(train.path) + ([] if self.test is None else list(self.test.path))
        started = time.time()
        self.errors = self.cache.build(videos)
        self.detect_seconds = time.time() - started
        for path, error in list(self.errors.items())[:5]:
            print(f"warning: {path}: {error}", flush=True)
        bad_train = train.path.isin(list(self.errors))
        if bad_train.any():
            print(f"warning: {int(bad_train.sum())} unreadable training video(s) left out", flush=True)
        self.skipped = int(bad_train.sum())
        self.train = train[~bad_train].reset_index(drop=True)
        if self.train.empty:
            raise DataError(f"{self.root}: no readable training video")
        self.crops = self._crop_table()
        self.reader = CropReader([self.cache.crop_file(p) for p in self.train.path])

    def _crop_table(self) -> pd.DataFrame:
        """One row per cached training crop: video row, crop index, frame, face, detector score."""
        parts, found = [], []
        for row, path in enumerate(self.train.path):
            meta = self.cache.meta(path)
            n = len(meta["frame_idx"])
            found.append(bool(meta.get("found_faces", True)))
            parts.append(pd.DataFrame({"video": row, "k": np.arange(n), "frame_idx": meta["frame_idx"],
                                       "face_idx": meta["face_idx"], "score": meta["score"]}))
        self.train["found_faces"] = found
        return pd.concat(parts, ignore_index=True)

    def items(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(video row, crop index) pairs and labels of every crop of the given videos."""
        chosen = self.crops[self.crops.video.isin(rows)]
        return chosen[["video", "k"]].to_numpy(), self.train.label.to_numpy()[chosen.video.to_numpy()]


def detect(comp, cfg) -> VideoRun:
    """`detect`: cache the face crops of every training and test video (resumable)."""
    run = VideoRun(comp, cfg)
    faces = run.train.found_faces.mean()
    print(f"{comp.name}: {len(run.train) + run.skipped} training + {len(run.test)} test videos, faces cached in "
          f"{run.cache.directory} ({run.detect_seconds:.0f} s this time); detector {run.cache.extractor.detector_name}; "
          f"{faces:.0%} of training videos with a detected face; {len(run.errors)} unreadable", flush=True)
    return run


# --- post-processing tuned on out-of-fold predictions ---------------------------------------


def balanced_log_loss(y_true, p) -> float:
    """Log loss with both classes weighted equally: the score a set with half positives would give.

    Why: DFDC trains on about 5 fakes per real but scores on a test set about half fake, and the
    balanced sampler already trains at a 50/50 prior; tuning calibration on the raw out-of-fold
    mix would teach it the training prior instead. Equal to `log_loss` when the classes are balanced.
    """
    y, p = np.asarray(y_true), np.asarray(p, np.float64)
    if y.min() == y.max():
        return log_loss(y, p)
    return 0.5 * (log_loss(y[y == 1], p[y == 1]) + log_loss(y[y == 0], p[y == 0]))


OBJECTIVES = {"logloss": log_loss, "balanced_logloss": balanced_log_loss}


def fit_temperature(p, y, bounds: tuple[float, float] = (0.05, 20.0), loss=log_loss) -> float:
    """T minimising the log loss of sigmoid(logit(p) / T) (T < 1 sharpens, T > 1 softens)."""
    z = logit(p)
    result = minimize_scalar(lambda log_t: loss(y, sigmoid(z / math.exp(log_t))),
                             bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded")
    return float(math.exp(result.x))


def tune_clip_eps(p, y, grid, loss=log_loss) -> tuple[float, list[float]]:
    """The eps of `grid` with the lowest log loss after clipping to [eps, 1 - eps]; ties go to the
    larger eps (the safer bet on unseen data). Returns (eps, losses in grid order)."""
    p = np.asarray(p, np.float64)
    losses = [loss(y, np.clip(p, e, 1 - e)) for e in grid]
    best = min(losses)
    eps = max(e for e, value in zip(grid, losses) if value <= best + 1e-9 + 1e-7 * best)
    return float(eps), losses


def tune_postprocessing(raw: dict[str, np.ndarray], y: np.ndarray, cfg) -> tuple[dict, dict]:
    """For each aggregation: temperature, then eps, on OOF by `calibrate.objective`.
    Returns (chosen calibration, per-strategy table)."""
    y = np.asarray(y)
    loss = OBJECTIVES[cfg.calibrate.objective]
    grid = sorted(float(e) for e in cfg.calibrate.eps_grid)
    bounds = tuple(float(b) for b in cfg.calibrate.temperature_bounds)
    both_classes = 0 < y.sum() < len(y)
    if not both_classes:
        print("warning: out-of-fold videos hold one class only: no temperature, default clip eps", flush=True)
    table = {}
    for strategy, p in raw.items():
        temperature = fit_temperature(p, y, bounds, loss) if cfg.calibrate.temperature and both_classes else 1.0
        scaled = calibrate(p, temperature)
        eps, losses = tune_clip_eps(scaled, y, grid, loss) if both_classes else (DEFAULT_CALIBRATION["clip_eps"], None)
        table[strategy] = {"objective": loss(y, calibrate(p, temperature, eps)), "temperature": temperature,
                           "clip_eps": eps, "eps_losses": losses}
    wanted = cfg.infer.aggregation
    chosen = wanted if wanted != "auto" else min(table, key=lambda s: table[s]["objective"])
    calibration = {"aggregation": chosen, "temperature": table[chosen]["temperature"],
                   "clip_eps": table[chosen]["clip_eps"], "objective": cfg.calibrate.objective,
                   "aggregation_params": aggregation_params(cfg.infer)}
    return calibration, table


def video_probabilities(frames: pd.DataFrame, strategy: str, params: dict) -> pd.Series:
    """Crop rows (video, frame_idx, prob) -> one aggregated probability per video."""
    return frames.groupby("video", sort=False).apply(
        lambda g: aggregate(frame_probabilities(g.prob.to_numpy(), g.frame_idx.to_numpy()), strategy, **params),
        include_groups=False)


def reliability_plot(p, y, path: Path, title: str, n_bins: int = 10) -> None:
    """Predicted probability against the observed positive rate per bin, and how predictions spread."""
    import matplotlib.pyplot as plt

    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    filled = [b for b in range(n_bins) if np.any(which == b)]
    top.plot([p[which == b].mean() for b in filled], [y[which == b].mean() for b in filled], "o-",
             label="videos per bin")
    top.set_ylabel("observed share positive")
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.hist([p[y == 0], p[y == 1]], bins=edges, label=["negative", "positive"], stacked=True)
    bottom.set_xlabel("predicted probability")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- training -------------------------------------------------------------------------------


def _check_choices(cfg) -> None:
    if cfg.blend.mode not in BLEND_MODES:
        raise ConfigError(f"blend.mode={cfg.blend.mode}; choose from {', '.join(BLEND_MODES)}")
    if cfg.train.balance not in BALANCE_MODES:
        raise ConfigError(f"train.balance={cfg.train.balance}; choose from {', '.join(BALANCE_MODES)}")
    if cfg.infer.aggregation != "auto" and cfg.infer.aggregation not in AGGREGATIONS:
        raise ConfigError(f"infer.aggregation={cfg.infer.aggregation}; choose auto or one of {', '.join(AGGREGATIONS)}")
    if cfg.calibrate.objective not in OBJECTIVES:
        raise ConfigError(f"calibrate.objective={cfg.calibrate.objective}; choose from {', '.join(OBJECTIVES)}")
    FaceExtractor.from_config(cfg)  # frames, crop size, face mode, detector: errors before any folder is made


def train(comp, cfg) -> Path:
    run, cfg = open_run(comp, cfg, check=_check_choices)
    seed_everything(cfg.seed)
    started = time.time()
    state = VideoRun(comp, cfg)
    save_config(cfg, run / "config.yaml")
    labels, groups = state.train.label.to_numpy(), state.train.group.to_numpy()
    if len(set(groups)) < cfg.train.folds:
        raise DataError(f"{state.root}: {len(set(groups))} groups of videos (originals) but train.folds={cfg.train.folds}")
    folds = group_folds(labels, groups, cfg.train.folds, cfg.seed)
    pd.DataFrame({"video": state.train.video, "label": labels, "group": groups, "fold": folds}).to_csv(
        run / "folds.csv", index=False)
    run_folds = cfg.train.run_folds if cfg.train.run_folds is not None else list(range(cfg.train.folds))
    print(f"{comp.name}: {len(labels)} training videos ({int(labels.sum())} positive, {len(set(groups))} groups), "
          f"{len(state.crops)} face crops, {len(state.test)} test videos; data {state.root}; run {run}", flush=True)

    parts = []
    for fold in run_folds:
        fold_dir = run / f"fold{fold}"
        if (fold_dir / "oof_frames.csv").exists():
            print(f"fold {fold}: finished earlier, reusing its out-of-fold predictions", flush=True)
        else:
            train_one_fold(state, fold, folds, fold_dir, run / "log.csv")
        parts.append(pd.read_csv(fold_dir / "oof_frames.csv", dtype={"video": str}))
    metrics, calibration = evaluate_oof(pd.concat(parts, ignore_index=True), cfg, run)
    (run / "calibration.json").write_text(json.dumps(calibration, indent=2))
    metrics.update(skipped_videos=state.skipped, unreadable_test_videos=sum(p in state.errors for p in state.test.path),
                   train_faces_found_share=float(state.train.found_faces.mean()), detector=state.cache.extractor.detector_name,
                   detect_minutes=round(state.detect_seconds / 60, 2), data_root=str(state.root))

    probabilities = predict_test(state, run, calibration)
    sub_path = comp.write_submission(state.test.video.tolist(), probabilities, run / "submission.csv", state.root)
    if state.truth is not None:
        truth = state.truth.set_index("video").loc[state.test.video, "label"].to_numpy()
        metrics.update(test_logloss=log_loss(truth, probabilities),
                       test_baseline_logloss=log_loss(truth, np.full(len(truth), 0.5)),
                       test_auc=_auc(truth, probabilities), test_videos=len(truth))
        reliability_plot(probabilities, truth, run / "reliability_test.png", "test videos (calibrated)")
    metrics["train_minutes"] = round((time.time() - started) / 60, 2)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots.training_curves(run / "log.csv", run / "curves.png")
    print(f"\nOOF log loss {metrics['oof_logloss']:.4f} (class-balanced {metrics['oof_balanced_logloss']:.4f}) against "
          f"{metrics['baseline_logloss']:.4f} for a constant 0.5; aggregation '{calibration['aggregation']}', "
          f"temperature {calibration['temperature']:.3f}, clip eps {calibration['clip_eps']} (mean of frames, "
          f"uncalibrated: {metrics['oof_logloss_raw']:.4f})")
    if "test_logloss" in metrics:
        print(f"test log loss {metrics['test_logloss']:.4f} (constant 0.5: {metrics['test_baseline_logloss']:.4f}), "
              f"test AUC {metrics['test_auc']:.3f}")
    print(f"submission: {sub_path}\nrun directory: {run}  ({metrics['train_minutes']:.1f} min)", flush=True)
    return run


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _predict_frames(model, state: VideoRun, rows: np.ndarray, tta: bool) -> pd.DataFrame:
    """Crop probabilities of the given videos' cached crops, one video at a time (bounded memory)."""
    cfg, parts = state.cfg, []
    for row in rows:
        path = state.train.path.iat[row]
        faces = state.cache.load(path)
        probs = sigmoid(crop_logits([model], faces.crops, device=state.device, batch_size=cfg.infer.batch_size,
                                    tta_flip=tta))
        parts.append(pd.DataFrame({"video": state.train.video.iat[row], "label": state.train.label.iat[row],
                                   "frame_idx": faces.frame_idx, "face_idx": faces.face_idx, "score": faces.score,
                                   "prob": probs}))
    return pd.concat(parts, ignore_index=True)


def _video_scores(frames: pd.DataFrame) -> dict:
    video = video_probabilities(frames, "mean", {})
    y = frames.groupby("video", sort=False).label.first().loc[video.index].to_numpy()
    return {"logloss": log_loss(y, video.to_numpy()), "balanced_logloss": balanced_log_loss(y, video.to_numpy()),
            "frame_logloss": log_loss(frames.label, frames.prob), "auc": _auc(y, video.to_numpy())}


def train_one_fold(state: VideoRun, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
    cfg = state.cfg
    labels = state.train.label.to_numpy()
    only_real = cfg.blend.mode == "only"
    train_rows = np.flatnonzero((folds != fold) & ((labels == 0) if only_real else True))
    val_rows = np.flatnonzero(folds == fold)
    assert_disjoint(train_rows, val_rows)
    if len(train_rows) == 0:
        raise DataError(f"fold {fold}: no training video" + (" with label REAL (blend.mode=only)" if only_real else ""))
    items, item_labels = state.items(train_rows)
    seed_everything(cfg.seed + fold)
    blend = SelfBlendAugment(p=cfg.blend.p, seed=cfg.seed + fold) if cfg.blend.mode != "none" else None
    size = crop_size(cfg)
    dataset = FaceCropDataset(state.reader, items, item_labels, build_transform(cfg.augment.train, size), blend)
    balance = cfg.train.balance
    weights = class_weights(item_labels) if balance == "weight" else (1.0, 1.0)
    loader = make_train_loader(cfg, dataset, balance, seed=cfg.seed + fold)
    model = build_classifier(cfg)
    if cfg.model.get("init"):
        load_backbone_init(model, cfg.model.init)
    print(f"fold {fold}: {len(train_rows)} training videos ({len(items)} crops"
          f"{', real only + self-blends' if only_real else ''}), {len(val_rows)} validation videos", flush=True)

    def evaluate(m) -> dict:
        return _video_scores(_predict_frames(m, state, val_rows, tta=bool(cfg.train.eval_tta)))

    train_fold(cfg, fold=fold, model=model, train_loader=loader, loss_fn=BinaryObjective(cfg.train.label_smoothing, weights),
               evaluate=evaluate, fold_dir=fold_dir, log_path=log_path, device=state.device,
               monitor=cfg.calibrate.objective, mode="min")
    model = load_best(model, fold_dir, state.device)
    frames = _predict_frames(model, state, val_rows, tta=bool(cfg.infer.tta_flip))
    frames.insert(2, "fold", fold)
    frames.to_csv(fold_dir / "oof_frames.csv", index=False)  # written last: its presence marks the fold finished


def evaluate_oof(frames: pd.DataFrame, cfg, run: Path) -> tuple[dict, dict]:
    """Every aggregation strategy on the OOF frames, calibrated; the best one becomes the run's choice."""
    params = aggregation_params(cfg.infer)
    raw = {s: video_probabilities(frames, s, params) for s in AGGREGATIONS}
    videos = raw["mean"].index
    y = frames.groupby("video", sort=False).label.first().loc[videos].to_numpy()
    raw = {s: r.loc[videos].to_numpy() for s, r in raw.items()}
    calibration, table = tune_postprocessing(raw, y, cfg)
    final = calibrate(raw[calibration["aggregation"]], calibration["temperature"], calibration["clip_eps"])
    fold = frames.groupby("video", sort=False).fold.first().loc[videos].to_numpy()
    oof = pd.DataFrame({"video": videos, "label": y, "fold": fold, **{f"p_{s}": r for s, r in raw.items()},
                        "prediction": final})
    oof.to_csv(run / "oof.csv", index=False)
    metrics = {
        "oof_logloss": float(log_loss(y, final)),
        "oof_balanced_logloss": float(balanced_log_loss(y, final)),
        "baseline_logloss": float(log_loss(y, np.full(len(y), 0.5))),
        "oof_prior_logloss": float(log_loss(y, np.full(len(y), y.mean()))),
        "oof_logloss_raw": float(log_loss(y, raw["mean"])),
        **{f"oof_logloss_{s}": float(log_loss(y, calibrate(raw[s], t["temperature"], t["clip_eps"])))
           for s, t in table.items()},
        **{f"oof_{cfg.calibrate.objective}_{s}_tuned": float(t["objective"]) for s, t in table.items()},
        "aggregation": calibration["aggregation"],
        "temperature": calibration["temperature"],
        "clip_eps": calibration["clip_eps"],
        "oof_auc": _auc(y, final),
        "oof_accuracy": float(np.mean((final > 0.5) == (y == 1))),
        "oof_videos": int(len(y)),
        "oof_positive_share": float(y.mean()),
    }
    reliability_plot(final, y, run / "reliability.png", f"out-of-fold videos ({calibration['aggregation']}, calibrated)")
    losses = table[calibration["aggregation"]]["eps_losses"]
    if losses is not None:
        plots.threshold_curve(sorted(float(e) for e in cfg.calibrate.eps_grid), losses, calibration["clip_eps"],
                              metrics["baseline_logloss"], run / "logloss_vs_eps.png",
                              metric=f"OOF {cfg.calibrate.objective.replace('_', ' ')}",
                              what="clip eps: predictions in [eps, 1 - eps]")
    return metrics, calibration


def predict_test(state: VideoRun, run: Path, calibration: dict) -> np.ndarray:
    """The test videos' cached faces through every trained fold model and the tuned post-processing."""
    cfg = state.cfg
    models = [load_best(build_classifier(cfg, pretrained=False), d, state.device)
              for d in sorted(run.glob("fold*")) if (d / "best.pt").exists()]
    predictor = VideoPredictor(cfg, models, calibration, device=state.device, progress=cfg.progress)
    faces = [None if path in state.errors else state.cache.load(path) for path in state.test.path]
    if any(f is None for f in faces):
        warnings.warn(f"{sum(f is None for f in faces)} unreadable test video(s) answered 0.5", stacklevel=2)
    return predictor.predict_faces(faces)


def predict(comp, cfg) -> Path:
    """`predict run.name=NAME [data.root=DIR] [out=FILE]`: a finished run on (new) test videos, decoded
    and detected on the fly by `common.video.inference`, exactly as in the Kaggle kernel."""
    run = run_dir(cfg, comp.name, create=False)
    if not (run / "calibration.json").exists():
        raise DataError(f"{run}: no calibration.json (the run did not finish)")
    root = resolve_data_root(cfg, comp.name, comp.slug, comp.write_demo)
    out = Path(cfg.out) if cfg.get("out") else run / "predictions" / f"submission-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    sub = predict_submission(comp, run, root, out, device=pick_device(cfg), progress=cfg.progress)
    truth = comp.read_truth(root)
    if truth is not None:
        table = pd.read_csv(sub, dtype=str)  # columns: video name, probability
        y = truth.set_index("video").loc[table.iloc[:, 0], "label"].to_numpy()
        print(f"log loss against {root}/test_truth.csv: {log_loss(y, table.iloc[:, 1].astype(float)):.4f} (constant 0.5: "
              f"{log_loss(y, np.full(len(y), 0.5)):.4f})")
    print(f"submission: {sub}", flush=True)
    return sub
