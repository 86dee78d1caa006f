"""Closed-set recognition by retrieval, with distractors (Google Landmark Recognition 2020). GAP.

The task: every query image either shows one of the known classes (answer: that class, with a
confidence) or shows none of them (any answer is wrong). GAP sorts all answers by confidence, so
a confident answer on an out-of-domain image costs more than a missing one.

How it is solved (after the GLR2020 winners):
  1. learn an embedding with a margin head (sub-center ArcFace, per-class dynamic margins), with
     rare classes sampled more often than their share (`train.sampler=class_balanced`);
  2. answer a query by a kNN vote over the training images (`common.retrieval.vote`);
  3. re-rank with a distractor set (any folder of out-of-domain images, `recognition.distractors`);
  4. tune k and the penalties on validation GAP over a small grid. Validation = held-out training
     images of every class (a class's only image always stays in training) plus distractors held
     out of that fold's distractor set, so it mixes members and non-members like the test set.

Embeddings of the gallery, the test set and the distractors are streamed to disk
(`common.engine.embedding_store`) once per fold model, so a fold, a crash or a `predict` on new
data resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from common.core.errors import ConfigError, DataError
from common.core.files import write_csv_atomic, write_text_atomic
from common.core.registry import Registry
from common.data.image_set import ImageSet
from common.data.loaders import make_loader
from common.data.tables import resolve_distractors
from common.engine import distributed
from common.engine.embedding_store import EmbeddingStore, checkpoint_key, embed_to_store, stored_distractors
from common.engine.folds import assert_disjoint, distractor_split, recognition_folds
from common.engine.trainer import load_best, seed_everything, train_fold
from common.losses.objective import build_objective
from common.metrics import plots
from common.metrics.scores import gap
from common.models.factory import build_model
from common.retrieval.vote import (NOT_A_CLASS, Neighbours, VoteSettings, best_settings, find_neighbours, gap_of_codes,
                                   predictions, tune_vote, vote)
from common.tasks.base import TASKS, EmbeddingTask

EPOCH_EVALUATIONS = Registry("epoch evaluation", keys=("recognition.epoch_eval",))


def score(labels: Sequence, confidences: np.ndarray, truth: Sequence, ids: Sequence | None = None) -> float:
    """The reported number: common.metrics.scores.gap itself (ties by query id when `ids` are given,
    as Kaggle breaks them; out-of-fold queries, where a distractor can be a query of several
    folds, keep their order)."""
    return gap(list(labels), np.asarray(confidences, np.float64), list(truth), ids=ids)


def trivial_baseline(train_labels: Sequence, truth: Sequence, ids: Sequence | None = None) -> float:
    """GAP with no model: the most frequent training class for every image, one confidence for all."""
    most_frequent = pd.Series(list(train_labels)).value_counts().index[0]
    return score([most_frequent] * len(truth), np.ones(len(truth)), truth, ids)


@dataclass
class FoldData:
    """Rows of one fold: gallery (training part), validation queries (members + distractors)."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    distractor_queries: np.ndarray      # indices into the distractor list
    distractor_reference: np.ndarray
    classes: list
    y: np.ndarray                       # class index of each training row
    query_rows: np.ndarray              # image-cache rows: val members, then distractor queries
    query_truth: list                   # class label, None for a distractor
    query_truth_codes: np.ndarray       # class index, NOT_A_CLASS for a distractor


# --- per-epoch validation (chooses best.pt), by name: recognition.epoch_eval -------------------
@EPOCH_EVALUATIONS.register("head")
def head_evaluation(state: "Recognition", fold: FoldData) -> Callable:
    """GAP of the head's own answer (nearest class centre): cheap, no gallery to embed each epoch."""
    truth = fold.query_truth_codes

    def evaluate(model) -> dict:
        if model.head is None or not hasattr(model.head, "cosine"):
            raise ConfigError("recognition.epoch_eval=head needs a cosine margin head; use recognition.epoch_eval=knn")
        emb = state.embed(model, fold.query_rows, "validate", bool(state.cfg.train.eval_tta))
        with torch.no_grad():
            cos = model.head.cosine(torch.from_numpy(emb).to(state.device)).float().cpu().numpy()
        return {"gap": gap_of_codes(cos.argmax(1), cos.max(1), truth)}

    return evaluate


@EPOCH_EVALUATIONS.register("knn")
def knn_evaluation(state: "Recognition", fold: FoldData) -> Callable:
    """GAP of the kNN vote over the fold's gallery (what prediction does, minus re-ranking)."""
    cfg = state.cfg

    def evaluate(model) -> dict:
        tta = bool(cfg.train.eval_tta)
        gallery = state.embed(model, fold.train_rows, "embed gallery", tta)
        queries = state.embed(model, fold.query_rows, "validate", tta)
        nb = find_neighbours(gallery, state.labels[fold.train_rows], queries, k=int(cfg.recognition.neighbours),
                             topm=0, index_params=cfg.recognition.index)
        pred, conf = vote(nb, VoteSettings())
        return {"gap": gap_of_codes(pred, conf, nb.code_of(fold.query_truth))}

    return evaluate


@TASKS.register("recognition")
class Recognition(EmbeddingTask):
    name, metric = "recognition", "gap"
    default_sampler = "class_balanced"
    registry_keys = EmbeddingTask.registry_keys + ("recognition.epoch_eval",)
    predict_overrides = ("recognition.rerank", "recognition.distractors")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        share = cfg.recognition.val_distractor_share
        if not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ConfigError(f"recognition.val_distractor_share={share!r}: must lie in [0, 1)")

    def __init__(self, comp, cfg, root: Path, *, purpose: str):
        super().__init__(comp, cfg, root, purpose=purpose)
        self.train_df = comp.read_train(self.root, cfg)
        if cfg.data.limit and purpose == "train":
            self.train_df = self.train_df.iloc[: int(cfg.data.limit)].reset_index(drop=True)
        if self.train_df.empty:
            raise DataError(f"{self.root}: no training image to search against")
        if purpose == "files":  # the files come later (use_files); the data root needs no test folder
            self.test, self.truth = pd.DataFrame({"image": [], "path": []}), None
        else:
            self.test, self.truth = comp.read_test(self.root), comp.read_truth(self.root)
        self.device = distributed.init(cfg)
        self.distractor_dir, self.distractors = resolve_distractors(cfg, self.root)
        self.labels = self.train_df.label.astype(str).to_numpy(dtype=object)
        if purpose == "train" and (pd.Series(self.labels).value_counts() < 2).all():
            raise DataError(f"{self.root}/train.csv: every class has a single image; validation needs classes "
                            "with two or more (one stays in training, one is asked)")
        self.ids = {"train": self.train_df.image.astype(str).tolist(), "test": self.test.image.astype(str).tolist(),
                    "distractors": [p.relative_to(self.distractor_dir).as_posix() for p in self.distractors]}

    def use_files(self, table: pd.DataFrame) -> None:
        super().use_files(table)
        self.ids["test"] = self.test.image.astype(str).tolist()

    def files_frame(self, answers) -> pd.DataFrame:
        return pd.DataFrame({"file": self.test.image, "prediction": [label or "" for label, _ in answers],
                             "confidence": [round(float(c), 6) for _, c in answers], "path": self.test.path})

    def embed_test(self, fold_dirs, run: Path) -> np.ndarray:
        parts = [self.embed(self.fold_model(self.cfg, d, self.device), self.rows["test"], f"{d.name}: embed images") for d in fold_dirs]
        return np.concatenate(parts, axis=1) / np.sqrt(len(parts))

    def prepare(self) -> None:
        self.images = ImageSet(self.cfg, self.comp.name, self.train_df, self.test, self.distractors)
        self.rows = {"train": self.images.rows["train"], "test": self.images.rows["test"],
                     "distractors": self.images.rows["extra"]}

    def embed(self, model, rows, desc: str, tta: bool | None = None) -> np.ndarray:
        return self.images.embed(model, rows, self.device, desc, tta)

    def embed_all(self, model, directory: Path, key: str,
                  parts: Sequence[str] = ("train", "test", "distractors")) -> dict[str, EmbeddingStore]:
        """Embeddings of one model (train, test, distractor images), streamed to `directory` (resumable)."""
        cfg = self.cfg
        return {part: embed_to_store(
            model, self.images.dataset(self.rows[part]), self.ids[part], directory / part, dim=cfg.model.embedding_dim,
            key=key, chunk_size=int(cfg.recognition.chunk_size), batch_size=cfg.infer.batch_size, device=self.device,
            tta_flip=bool(cfg.infer.tta_flip), desc=f"embed {part}", progress=cfg.progress) for part in parts}

    # --- the engine's steps ----------------------------------------------------------------
    def split(self) -> np.ndarray:
        return recognition_folds(self.labels, int(self.cfg.train.folds), self.cfg.seed)

    def fold_table(self, folds) -> pd.DataFrame:
        return pd.DataFrame({"image": self.train_df.image, "label": self.labels, "fold": folds})

    def describe(self) -> str:
        return (f"{len(self.labels)} train images, {len(set(self.labels))} classes, {len(self.test)} test images, "
                f"{len(self.distractors)} distractors")

    def fold_data(self, folds: np.ndarray, fold: int) -> FoldData:
        cfg = self.cfg
        train_rows, val_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        assert_disjoint(train_rows, val_rows)
        classes = sorted(set(self.labels[train_rows]))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[c] for c in self.labels[train_rows]], dtype=np.int64)
        queries, reference = distractor_split(len(self.distractors), fold,
                                              float(cfg.recognition.val_distractor_share), cfg.seed)
        query_rows = np.concatenate([val_rows, self.rows["distractors"][queries]])
        truth = list(self.labels[val_rows]) + [None] * len(queries)
        codes = np.array([index[t] if t is not None else NOT_A_CLASS for t in truth], dtype=np.int64)
        return FoldData(train_rows, val_rows, queries, reference, classes, y, query_rows, truth, codes)

    def train_fold(self, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
        """Train, pick the best epoch, embed everything once, and store the validation neighbours."""
        cfg, data = self.cfg, self.fold_data(folds, fold)
        fold_dir.mkdir(parents=True, exist_ok=True)
        counts = np.bincount(data.y, minlength=len(data.classes))
        if distributed.is_main():
            write_text_atomic(fold_dir / "classes.json", json.dumps({"classes": data.classes, "counts": counts.tolist()}))
        seed_everything(cfg.seed + fold)
        model = build_model(cfg, len(data.classes), class_counts=counts.tolist())
        loader = make_loader(cfg, self.images.dataset(data.train_rows, data.y, train=True), data.y,
                             seed=cfg.seed + fold, default=self.default_sampler)
        evaluate = EPOCH_EVALUATIONS.get(cfg.recognition.epoch_eval)(self, data)
        train_fold(cfg, fold=fold, model=model, train_loader=loader, loss_fn=build_objective(cfg), evaluate=evaluate,
                   fold_dir=fold_dir, log_path=log_path, device=self.device, monitor="gap")
        distributed.on_main(self._write_fold_answers, model, data, fold, fold_dir)

    def _write_fold_answers(self, model, data: FoldData, fold: int, fold_dir: Path) -> None:
        cfg = self.cfg
        model = load_best(model, fold_dir, self.device)
        stores = self.embed_all(model, fold_dir / "embeddings", checkpoint_key(fold_dir, cfg))
        train_emb, distractor_emb = stores["train"].array(), stores["distractors"].array()
        queries = np.concatenate([train_emb[data.val_rows], distractor_emb[data.distractor_queries]])
        nb = find_neighbours(train_emb[data.train_rows], self.labels[data.train_rows], queries,
                             distractor_emb[data.distractor_reference], k=int(cfg.recognition.neighbours),
                             topm=int(cfg.recognition.distractor_topm), index_params=cfg.recognition.index)
        nb.save(fold_dir / "neighbours.npz")
        images = list(self.train_df.image.to_numpy()[data.val_rows]) + [self.ids["distractors"][i]
                                                                         for i in data.distractor_queries]
        kind = ["member"] * len(data.val_rows) + ["distractor"] * len(data.distractor_queries)
        frame = pd.DataFrame({"image": images, "kind": kind, "truth": [t or "" for t in data.query_truth], "fold": fold})
        write_csv_atomic(frame, fold_dir / self.fold_marker)

    def tune(self, fold_dirs, folds, run: Path) -> dict:
        """Tune the vote on all out-of-fold queries; write oof.csv, the grid and the plots."""
        cfg = self.cfg
        oof = pd.concat([pd.read_csv(d / "oof.csv", dtype=str, keep_default_na=False) for d in fold_dirs],
                        ignore_index=True)
        nb = Neighbours.concat([Neighbours.load(d / "neighbours.npz") for d in fold_dirs])
        truth = [t if t else None for t in oof.truth]
        rerank = bool(cfg.recognition.rerank) and nb.query_distractor.shape[1] > 0
        table = tune_vote(nb, truth, cfg.recognition.grid, rerank)
        write_csv_atomic(table, run / "vote_grid.csv")
        plain, chosen = best_settings(table, rerank=False), best_settings(table, rerank=rerank)
        plain_labels, plain_conf = predictions(nb, plain)
        labels, conf = predictions(nb, chosen)
        oof["prediction"], oof["confidence"] = [lab or "" for lab in plain_labels], plain_conf
        oof["prediction_rerank"], oof["confidence_rerank"] = [lab or "" for lab in labels], conf
        write_csv_atomic(oof, run / "oof.csv")
        metrics = {"oof_gap": score(plain_labels, plain_conf, truth),
                   "oof_baseline_gap": trivial_baseline(self.labels, truth),
                   "oof_images": len(oof), "oof_distractor_share": float(np.mean(oof.kind == "distractor")),
                   "vote": asdict(plain), "rerank_enabled": rerank}
        if rerank:
            metrics["oof_gap_rerank"] = score(labels, conf, truth)
            metrics["rerank"] = asdict(chosen)
            plots.penalty_curve(table, chosen, metrics["oof_baseline_gap"], run / "gap_vs_query_penalty.png")
        panels = [("without re-ranking", plain_conf, plain_labels)] + ([("with re-ranking", conf, labels)] if rerank else [])
        plots.confidence_histograms([(title, c, np.array([p == t for p, t in zip(lab, truth)]))
                                     for title, c, lab in panels],
                                    (oof.kind == "distractor").to_numpy(), run / "confidence_hist.png")
        members = (oof.kind == "member").to_numpy()
        if members.sum() > 2:
            member_emb = np.concatenate([self._oof_member_embeddings(d) for d in fold_dirs])
            plots.similarity_histograms(member_emb, oof.truth[members].to_numpy(dtype=object),
                                        run / "similarity_hist.png")
        return metrics

    @staticmethod
    def _oof_member_embeddings(fold_dir: Path) -> np.ndarray:
        members = pd.read_csv(fold_dir / "oof.csv", dtype=str, keep_default_na=False).query("kind == 'member'")
        store = EmbeddingStore.open(fold_dir / "embeddings" / "train")
        row_of = {image: i for i, image in enumerate(store.ids)}
        return np.asarray(store.array()[[row_of[i] for i in members.image]], dtype=np.float32)

    def _store_dir(self, fold_dir: Path, run: Path) -> Path:
        """Embeddings computed by train live in the fold; predict's under predict_embeddings/<data root>."""
        if self.purpose == "train":  # predict never rewrites a fold's stores (the kernel ships its distractors)
            return fold_dir / "embeddings"
        where = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        return run / "predict_embeddings" / where / fold_dir.name

    def test_neighbours(self, fold_dirs, run: Path, metrics: dict) -> Neighbours:
        """Test queries against the whole training set, with every fold model (embeddings concatenated:
        the cosine of the concatenation is the mean cosine of the folds).

        Distractors come from the data root's distractor folder, else from the embeddings `train`
        stored in each fold (so a run re-ranks on data that has no distractors, e.g. Kaggle's).
        """
        cfg = self.cfg
        parts = ["train", "test"] + (["distractors"] if self.distractors else [])
        joined: dict[str, list] = {p: [] for p in ("train", "test", "distractors")}
        for fold_dir in fold_dirs:
            directory, key = self._store_dir(fold_dir, run), checkpoint_key(fold_dir, cfg)
            stores = {p: EmbeddingStore(directory / p, self.ids[p], cfg.model.embedding_dim,
                                        chunk_size=int(cfg.recognition.chunk_size), key=key) for p in parts}
            if not all(s.complete for s in stores.values()):
                stores = self.embed_all(self.fold_model(self.cfg, fold_dir, self.device), directory, key, parts)
            if not self.distractors and (stored := stored_distractors(fold_dir, key)) is not None:
                stores["distractors"] = stored
            for part, store in stores.items():
                joined[part].append(store.array())
        if 0 < len(joined["distractors"]) < len(fold_dirs):
            print(f"warning: only {len(joined['distractors'])} of {len(fold_dirs)} folds have distractor embeddings: "
                  "predicting without distractor re-ranking", flush=True)
        arrays = {p: None if len(a) < len(fold_dirs) else a[0] if len(a) == 1
                  else np.concatenate(a, axis=1).astype(np.float32) / np.sqrt(len(a)) for p, a in joined.items()}
        return find_neighbours(arrays["train"], self.labels, arrays["test"], arrays["distractors"],
                               k=int(cfg.recognition.neighbours), topm=int(cfg.recognition.distractor_topm),
                               index_params=cfg.recognition.index)

    def predict(self, fold_dirs, metrics: dict, run: Path) -> list[tuple]:
        nb = distributed.on_main(self.test_neighbours, fold_dirs, run, metrics)
        rerank = bool(self.cfg.recognition.rerank) and "rerank" in metrics  # recognition.rerank=false: plain vote
        settings = VoteSettings(**(metrics["rerank"] if rerank else metrics["vote"]))
        if settings.reranks and nb.query_distractor.shape[1] == 0:
            print("no distractor embeddings (no distractor folder, none stored in the run): predicting without "
                  "re-ranking", flush=True)
            settings = VoteSettings(**metrics["vote"])
        self.test_nb, self.test_settings = nb, settings
        labels, confidences = predictions(nb, settings)
        return list(zip(labels, confidences))

    def score_test(self, answers, metrics: dict) -> dict:
        """GAP on the test set when the data root has its truth (the demo does), with and without re-ranking."""
        out = {"gallery_index": self.test_nb.index}
        if self.truth is None:
            return out
        truth_by_image = dict(zip(self.truth.image.astype(str), self.truth.label))
        truth = [truth_by_image.get(i) for i in self.ids["test"]]
        truth = [t if t is not None and not (isinstance(t, float) and np.isnan(t)) and str(t) != "" else None
                 for t in truth]
        ids = self.ids["test"]
        out["test_gap_plain"] = score(*predictions(self.test_nb, VoteSettings(**metrics["vote"])), truth, ids)
        out["test_gap"] = score([a[0] for a in answers], np.array([a[1] for a in answers]), truth, ids)
        out["test_baseline_gap"] = trivial_baseline(self.labels, truth, ids)
        out["test_images"] = len(truth)
        out["test_non_member_share"] = float(np.mean([t is None for t in truth]))
        return out

    def summary(self, metrics: dict) -> str:
        line = f"OOF GAP {metrics['oof_gap']:.4f} without re-ranking (k={metrics['vote']['k']})"
        if "oof_gap_rerank" in metrics:
            r = metrics["rerank"]
            line += (f", {metrics['oof_gap_rerank']:.4f} with re-ranking (k={r['k']}, top-{r['topm']} distractors, "
                     f"query penalty {r['query_penalty']}, gallery penalty {r['gallery_penalty']})")
        else:
            line += ", re-ranking off"
        line += f"; trivial baseline {metrics['oof_baseline_gap']:.4f}"
        if "test_gap" in metrics:
            line += (f"\ntest GAP {metrics['test_gap']:.4f} (without re-ranking {metrics['test_gap_plain']:.4f}, "
                     f"trivial baseline {metrics['test_baseline_gap']:.4f})")
        return line
