"""Open-set identification by retrieval: the whole `train` and `predict` flow.

Per fold: learn an embedding with a margin head (and/or a pair loss), then answer each held-out
image by kNN over the fold's training images: identities ranked by their best similarity, the
unknown class (`new_whale`) inserted at the first rank whose score falls below a threshold.
The threshold is tuned on all out-of-fold answers at once, then applied to the test set, where
the fold models' embeddings are concatenated (cosine of the concatenation = mean cosine).

A competition plugs in with an object that has: name, slug, new_label, config_path, and
write_demo(root), read_train(root) -> [image, label, path], read_test(root) -> [image, path],
read_truth(root) -> [image, label] | None, write_submission(images, ranked, path, root).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.engine import distributed
from common.metrics import plots
from common.data.augment import build_transform
from common.engine.build import build_model, build_objective, train_loader
from common.core.config import read_saved_config, save_config
from common.data.images import ImageCache, ImageDataset
from common.engine.embed import extract_embeddings
from common.core.errors import DataError
from common.engine.folds import assert_disjoint, open_set_folds, open_set_truth
from common.metrics.scores import map_at_k, roc_curve_pairs, verification_metrics
from common.core.paths import cache_root, open_run, resolve_data_root, run_dir
from common.retrieval.index import build_index, insert_new_class, rank_classes, search, tune_threshold
from common.engine.trainer import load_best, pick_device, seed_everything, train_fold


def trivial_baseline(train_labels, truth, new_label: str, k: int = 5) -> float:
    """The answer with no model: the unknown class, then the most frequent identities."""
    frequent = pd.Series(list(train_labels))
    frequent = frequent[frequent != new_label].value_counts().index[: k - 1].tolist()
    return map_at_k([[new_label, *frequent]] * len(truth), list(truth), k)


def rank_against_gallery(gallery_emb, gallery_labels, query_emb, neighbours: int, k: int = 5):
    """Top-k identities (by max similarity) and their scores for every query."""
    index = build_index(gallery_emb)
    sims, ids = search(index, query_emb, neighbours)
    return rank_classes(sims, ids, np.asarray(gallery_labels, dtype=object), top=k)


def score_ranking(labels, scores, truth, new_label: str) -> dict:
    """MAP@5 with the threshold tuned here, and closed-set MAP@5 (never answering the unknown class)."""
    threshold, best, _, _ = tune_threshold(scores, labels, truth, new_label=new_label)
    return {"map5": float(best), "map5_closed": float(map_at_k(labels, list(truth))), "threshold": float(threshold)}


class OpenSetRun:
    """State shared by the folds of one `train` run."""

    def __init__(self, comp, cfg):
        self.comp, self.cfg = comp, cfg
        self.root = resolve_data_root(cfg, comp.name, comp.slug, comp.write_demo)
        self.train_df = comp.read_train(self.root)
        if cfg.data.get("limit"):
            self.train_df = self.train_df.iloc[: int(cfg.data.limit)].reset_index(drop=True)
        self.test_df = comp.read_test(self.root)
        self.truth = comp.read_truth(self.root)
        self.device = pick_device(cfg)
        size = tuple(cfg.data.image_size)
        paths = list(self.train_df.path) + list(self.test_df.path) + [str(p) for p in self.extra_images()]
        if not distributed.is_main():  # the main process decodes; the others then open its cache
            distributed.barrier()
        self.images = ImageCache(paths, size, cache_root(cfg) / comp.name, progress=cfg.progress)
        if distributed.is_main():
            distributed.barrier()
        self.n_train = len(self.train_df)
        self.train_tf = build_transform(cfg.augment.train, size)
        self.valid_tf = build_transform(cfg.augment.valid, size)

    def extra_images(self) -> list:
        """Images cached after train and test (a subclass adds e.g. distractors)."""
        return []

    def dataset(self, rows, labels=None, train=False) -> ImageDataset:
        return ImageDataset(self.images, rows, labels, self.train_tf if train else self.valid_tf)

    def embed(self, model, rows, desc, tta: bool | None = None) -> np.ndarray:
        cfg = self.cfg
        tta = cfg.infer.tta_flip if tta is None else tta
        return extract_embeddings(model, self.dataset(rows), batch_size=cfg.infer.batch_size, device=self.device,
                                  tta_flip=tta, num_workers=0, desc=desc, progress=cfg.progress)


def train(comp, cfg) -> Path:
    run, cfg = open_run(comp, cfg)
    main = distributed.is_main()
    seed_everything(cfg.seed)
    state = OpenSetRun(comp, cfg)
    new_label = comp.new_label
    labels = state.train_df.label.to_numpy(dtype=object)
    folds = open_set_folds(labels, cfg.train.folds, cfg.seed, new_label)
    if main:
        save_config(cfg, run / "config.yaml")
        pd.DataFrame({"image": state.train_df.image, "label": labels, "fold": folds}).to_csv(run / "folds.csv", index=False)
    run_folds = cfg.train.run_folds if cfg.train.run_folds is not None else list(range(cfg.train.folds))
    print(f"{comp.name}: {len(labels)} train images, {len(set(labels)) - 1} identities, "
          f"{len(state.test_df)} test images; data {state.root}; run {run}", flush=True)

    oof_parts = []
    started = time.time()
    for fold in run_folds:
        fold_dir = run / f"fold{fold}"
        if (fold_dir / "oof.csv").exists():
            print(f"fold {fold}: finished earlier, reusing its out-of-fold answers", flush=True)
        else:
            train_one_fold(state, fold, folds, fold_dir, run / "log.csv")
        distributed.barrier()
        oof_parts.append(pd.read_csv(fold_dir / "oof.csv", keep_default_na=False))
    oof = pd.concat(oof_parts, ignore_index=True)
    metrics = evaluate_oof(oof, labels, folds, run_folds, new_label, run) if main else None
    metrics = distributed.broadcast(metrics)
    metrics["train_minutes"] = round((time.time() - started) / 60, 2)
    metrics["data_root"] = str(state.root)
    metrics["processes"] = distributed.world_size()

    ranked = predict_test(state, [run / f"fold{f}" for f in run_folds], metrics["threshold"])
    if not main:
        return run
    oof.to_csv(run / "oof.csv", index=False)
    sub_path = run / "submission.csv"
    comp.write_submission(state.test_df.image.tolist(), ranked, sub_path, state.root)
    if state.truth is not None:
        truth = state.truth.set_index("image").loc[state.test_df.image, "label"].tolist()
        metrics["test_map5"] = map_at_k(ranked, truth)
        metrics["test_baseline_map5"] = trivial_baseline(labels, truth, new_label)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots.training_curves(run / "log.csv", run / "curves.png")
    print(f"\nOOF MAP@5 {metrics['oof_map5']:.4f} at new_whale threshold {metrics['threshold']:.3f} "
          f"(closed-set {metrics['oof_map5_closed']:.4f}, trivial baseline {metrics['oof_baseline_map5']:.4f})")
    if "test_map5" in metrics:
        print(f"test MAP@5 {metrics['test_map5']:.4f} (trivial baseline {metrics['test_baseline_map5']:.4f})")
    print(f"submission: {sub_path}\nrun directory: {run}", flush=True)
    return run


def train_one_fold(state: OpenSetRun, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
    cfg, new_label = state.cfg, state.comp.new_label
    labels = state.train_df.label.to_numpy(dtype=object)
    train_rows = np.flatnonzero((folds != fold) & (labels != new_label))
    val_rows = np.flatnonzero(folds == fold)
    assert_disjoint(train_rows, val_rows)
    classes = sorted(set(labels[train_rows]))
    class_index = {c: i for i, c in enumerate(classes)}
    y = np.array([class_index[c] for c in labels[train_rows]])
    truth = open_set_truth(labels[val_rows], labels[train_rows], new_label)
    fold_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (fold_dir / "classes.json").write_text(json.dumps(classes))
    seed_everything(cfg.seed + fold)
    model = build_model(cfg, len(classes), class_counts=np.bincount(y, minlength=len(classes)).tolist())
    loader = train_loader(cfg, state.dataset(train_rows, y, train=True), y, seed=cfg.seed + fold)

    def evaluate(m) -> dict:
        tta = bool(cfg.train.eval_tta)
        gallery = state.embed(m, train_rows, "embed gallery", tta)
        query = state.embed(m, val_rows, "embed validation", tta)
        ranked, scores = rank_against_gallery(gallery, labels[train_rows], query, cfg.infer.neighbours)
        return score_ranking(ranked, scores, truth, new_label)

    train_fold(cfg, fold=fold, model=model, train_loader=loader, loss_fn=build_objective(cfg), evaluate=evaluate,
               fold_dir=fold_dir, log_path=log_path, device=state.device, monitor="map5")
    model = load_best(model, fold_dir, state.device)
    gallery = state.embed(model, train_rows, "embed gallery")
    query = state.embed(model, val_rows, "embed validation")
    if not distributed.is_main():
        return
    ranked, scores = rank_against_gallery(gallery, labels[train_rows], query, cfg.infer.neighbours)
    np.save(fold_dir / "val_embeddings.npy", query.astype(np.float16))
    frame = pd.DataFrame({"image": state.train_df.image.to_numpy()[val_rows], "label": labels[val_rows],
                          "truth": truth, "fold": fold,
                          "ranked": [" ".join(r) for r in ranked]})
    for r in range(scores.shape[1]):
        frame[f"score{r + 1}"] = scores[:, r]
    frame.to_csv(fold_dir / "oof.csv", index=False)  # written last: its presence marks the fold finished


def _ranking_from_oof(oof: pd.DataFrame):
    ranked = [r.split(" ") if r else [] for r in oof.ranked.astype(str).replace("nan", "")]
    scores = oof[[c for c in oof.columns if c.startswith("score")]].to_numpy(dtype=np.float64)
    return ranked, scores


def evaluate_oof(oof: pd.DataFrame, labels, folds, run_folds, new_label: str, run: Path) -> dict:
    ranked, scores = _ranking_from_oof(oof)
    truth = oof.truth.tolist()
    threshold, best, grid, curve = tune_threshold(scores, ranked, truth, new_label=new_label)
    final = insert_new_class(ranked, scores, threshold, new_label=new_label)
    oof["prediction"] = [" ".join(p) for p in final]
    train_for_baseline = labels[~np.isin(folds, run_folds)] if len(run_folds) < folds.max() + 1 else labels
    metrics = {
        "oof_map5": float(best),
        "threshold": float(threshold),
        "oof_map5_closed": float(map_at_k(ranked, truth)),
        "oof_baseline_map5": trivial_baseline(train_for_baseline, truth, new_label),
        "oof_images": len(truth),
        "oof_new_share": float(np.mean(np.asarray(truth) == new_label)),
    }
    embeddings = np.concatenate([np.load(run / f"fold{f}" / "val_embeddings.npy") for f in run_folds]).astype(np.float32)
    known = oof.label.to_numpy(dtype=object) != new_label
    if known.sum() > 2:
        verification = verification_metrics(embeddings[known], oof.label.to_numpy(dtype=object)[known])
        metrics.update({f"verify_{k}": v for k, v in verification.items() if np.isscalar(v)})
        fpr, tpr, _ = roc_curve_pairs(embeddings[known], oof.label.to_numpy(dtype=object)[known])
        plots.roc_curve_plot(fpr, tpr, verification["roc_auc"], run / "roc.png")
        plots.similarity_histograms(embeddings[known], oof.label.to_numpy(dtype=object)[known],
                                    run / "similarity_hist.png")
    plots.threshold_curve(grid, curve, threshold, metrics["oof_baseline_map5"], run / "map5_vs_threshold.png")
    return metrics


def predict_test(state: OpenSetRun, fold_dirs: list[Path], threshold: float | None, new_whale: bool = True):
    """Rank the test images against all known train images with every fold model (ensembled)."""
    cfg, new_label = state.cfg, state.comp.new_label
    labels = state.train_df.label.to_numpy(dtype=object)
    gallery_rows = np.flatnonzero(labels != new_label)
    if len(gallery_rows) == 0:
        raise DataError(f"{state.root}/train.csv: no image with a known identity to search against")
    test_rows = np.arange(state.n_train, state.n_train + len(state.test_df))
    gallery_parts, query_parts = [], []
    for fold_dir in fold_dirs:
        n_classes = len(json.loads((fold_dir / "classes.json").read_text()))
        # placeholder counts: dynamic per-class margins are a buffer, restored from the checkpoint
        model = load_best(build_model(_no_init(cfg), n_classes, class_counts=[1] * n_classes), fold_dir, state.device)
        gallery_parts.append(state.embed(model, gallery_rows, f"{fold_dir.name}: embed gallery"))
        query_parts.append(state.embed(model, test_rows, f"{fold_dir.name}: embed test"))
    gallery = np.concatenate(gallery_parts, axis=1) / np.sqrt(len(fold_dirs))
    query = np.concatenate(query_parts, axis=1) / np.sqrt(len(fold_dirs))
    ranked, scores = rank_against_gallery(gallery, labels[gallery_rows], query, cfg.infer.neighbours)
    if new_whale and cfg.infer.new_whale:
        return insert_new_class(ranked, scores, threshold, new_label=new_label)
    return [[label for label in r if label is not None][:5] for r in ranked]


def _no_init(cfg):
    """Loading a finished model needs neither pretrained weights nor an init checkpoint."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.model.pretrained = False
    cfg.model.init = None
    return cfg


def predict(comp, cfg) -> Path:
    """`predict run.name=NAME [data.root=DIR] [out=FILE] [infer.new_whale=false]`: reuse a finished run."""
    overrides = {"data": dict(cfg.data), "infer": dict(cfg.infer), "out": cfg.get("out"), "progress": cfg.progress}
    run = run_dir(cfg, comp.name, create=False)
    saved = read_saved_config(run / "config.yaml")
    saved.data.root, saved.data.cache_dir = overrides["data"].get("root"), overrides["data"].get("cache_dir")
    saved.data.limit = None
    saved.infer.update(overrides["infer"])
    saved.progress = overrides["progress"]
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    if saved.infer.new_whale and "threshold" not in metrics:
        raise DataError(f"{run}/metrics.json: no tuned threshold (the run did not finish); use infer.new_whale=false")
    state = OpenSetRun(comp, saved)
    fold_dirs = sorted(d for d in run.glob("fold*") if (d / "best.pt").exists())
    if not fold_dirs:
        raise DataError(f"{run}: no trained fold (fold*/best.pt)")
    ranked = predict_test(state, fold_dirs, metrics.get("threshold"), new_whale=bool(saved.infer.new_whale))
    out = Path(overrides["out"]) if overrides["out"] else run / "predictions" / f"submission-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    comp.write_submission(state.test_df.image.tolist(), ranked, out, state.root)
    if state.truth is not None:
        truth = state.truth.set_index("image").loc[state.test_df.image, "label"].tolist()
        print(f"MAP@5 against {state.root}/test_truth.csv: {map_at_k(ranked, truth):.4f} "
              f"(trivial baseline {trivial_baseline(state.train_df.label, truth, comp.new_label):.4f})")
    print(f"submission: {out}", flush=True)
    return out
