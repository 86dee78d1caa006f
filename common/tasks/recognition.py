"""Closed-set recognition by retrieval, with distractors: the whole `train` and `predict` flow.

The task: every query image either shows one of the known classes (answer: that class, with a
confidence) or shows none of them (any answer is wrong). Scored by GAP, which sorts all answers
by confidence, so a confident answer on an out-of-domain image costs more than a missing one.

How it is solved (after the Google Landmark Recognition 2020 winners):
  1. learn an embedding with a margin head (sub-center ArcFace, per-class dynamic margins), with
     rare classes sampled more often than their share (`recognition.balance`);
  2. answer a query by kNN over the training images (the gallery, faiss index chosen by size):
     the top-k neighbours vote for their class, weighted by similarity; the confidence is the
     winning class's vote;
  3. re-rank with a distractor set (any folder of out-of-domain images): a query that looks like
     a distractor loses confidence (`query_penalty` x its similarity to the distractor set), and a
     gallery image that looks like one votes less (`gallery_penalty` x its own similarity);
  4. tune k and the penalties on validation GAP over a small grid. Validation = held-out
     training images of every class (a class's only image always stays in training) plus
     distractor images held out of that fold's distractor set, so it mixes members and
     non-members like the test set does.

Embeddings of the gallery, the test set and the distractors are streamed to disk
(`common.engine.embedding_store`) once per fold model, so a fold, a crash or a `predict` on new data
resumes where it stopped. A competition plugs in with an object that has: name, slug,
config_path, write_demo(root), read_train(root) -> [image, label, path], read_test(root) ->
[image, path] (submission order), read_truth(root) -> [image, label or None] | None and
write_submission(images, labels, confidences, path, root).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from common.metrics import plots
from common.engine.build import build_model, build_objective, needs_pk_sampler, train_loader
from common.core.config import read_saved_config, save_config
from common.engine.embedding_store import EmbeddingStore, embed_to_store
from common.core.errors import ConfigError, DataError
from common.engine.folds import assert_disjoint, open_set_folds
from common.tasks.identification import OpenSetRun
from common.metrics.scores import gap
from common.core.paths import open_run, run_dir
from common.retrieval.index import build_index, search
from common.data.tables import list_images
from common.engine.trainer import load_best, seed_everything, train_fold

NO_CLASS = -1      # code of "no prediction" / "no neighbour"
NOT_A_CLASS = -2   # code of a true label that is no gallery class (a distractor's truth)


# =============================================================================================
# Folds: held-out members of every class, and held-out distractors
# =============================================================================================
def recognition_folds(labels: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold per image, or -1 for "always in training" (a class's only image).

    Classes are spread evenly over folds (common.engine.folds' stratified split), so a class with n >= 2
    images has at most ceil(n / n_folds) of them in any fold and at least one in every fold's
    training part: validation never asks for a class the fold model has not seen.
    """
    if n_folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for a validation split, got {n_folds}")
    labels = pd.Series(list(labels), dtype=object)
    folds = open_set_folds(labels, n_folds, seed, new_label=None)
    folds[(labels.map(labels.value_counts()) == 1).to_numpy()] = -1
    for fold in range(n_folds):
        unseen = set(labels[folds == fold]) - set(labels[folds != fold])
        if unseen:
            raise AssertionError(f"fold {fold}: class {sorted(unseen)[0]!r} has no training image")
    return folds


def distractor_split(n: int, fold: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which distractors are validation queries in `fold` and which form its reference set.

    A random `share` of them (different per fold) are queries whose right answer is "none of
    the classes"; the rest are the set the re-ranking compares against. Disjoint, so a query
    never meets itself in the reference set.
    """
    if not 0 <= share < 1:
        raise ConfigError(f"recognition.val_distractor_share must lie in [0, 1), got {share}")
    order = np.random.default_rng([seed, fold]).permutation(n)
    n_queries = int(round(share * n))
    return np.sort(order[:n_queries]), np.sort(order[n_queries:])


# =============================================================================================
# Neighbours and the vote (pure numpy: tested on constructed embeddings)
# =============================================================================================
@dataclass
class Neighbours:
    """Everything the vote and the re-ranking need about each query, computed once.

    sims [n, K]: cosine to the K nearest gallery images, best first (-inf where none);
    codes [n, K]: their class as an index into `classes` (NO_CLASS where none);
    gallery_distractor [n, K, M]: each neighbour's M highest cosines to the distractor set;
    query_distractor [n, M]: the query's M highest cosines to the distractor set (M = 0: no set);
    index: the faiss index class that searched the gallery (not saved).
    """

    sims: np.ndarray
    codes: np.ndarray
    classes: np.ndarray
    gallery_distractor: np.ndarray
    query_distractor: np.ndarray
    index: str = ""

    def __len__(self) -> int:
        return len(self.sims)

    def labels(self) -> np.ndarray:
        names = np.append(np.asarray(self.classes, dtype=object), "")
        return names[np.where(self.codes >= 0, self.codes, len(self.classes))].astype(str)

    def code_of(self, labels: Sequence) -> np.ndarray:
        """Codes of true labels: NOT_A_CLASS for None / '' / a label no gallery image has."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(lab, NOT_A_CLASS) if _is_label(lab) else NOT_A_CLASS for lab in labels],
                        dtype=np.int64)

    def save(self, path: Path) -> None:
        np.savez(path, sims=self.sims, labels=self.labels(), gallery_distractor=self.gallery_distractor,
                 query_distractor=self.query_distractor)

    @classmethod
    def from_labels(cls, sims, labels, gallery_distractor, query_distractor) -> "Neighbours":
        labels = np.asarray(labels).astype(str)
        classes = np.unique(labels[labels != ""])
        codes = np.where(labels != "", np.searchsorted(classes, labels), NO_CLASS).astype(np.int64)
        return cls(np.asarray(sims, np.float32), codes, classes, np.asarray(gallery_distractor, np.float32),
                   np.asarray(query_distractor, np.float32))

    @classmethod
    def load(cls, path: Path) -> "Neighbours":
        with np.load(path) as f:
            return cls.from_labels(f["sims"], f["labels"], f["gallery_distractor"], f["query_distractor"])

    @classmethod
    def concat(cls, parts: Sequence["Neighbours"]) -> "Neighbours":
        """Queries of several folds (each fold has its own gallery) in one object."""
        return cls.from_labels(np.concatenate([p.sims for p in parts]), np.concatenate([p.labels() for p in parts]),
                               np.concatenate([p.gallery_distractor for p in parts]),
                               np.concatenate([p.query_distractor for p in parts]))


def _is_label(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != ""


@dataclass(frozen=True)
class VoteSettings:
    """k neighbours vote; `topm` distractor similarities are averaged into a distractor score;
    the penalties multiply it (0 = no re-ranking)."""

    k: int = 5
    topm: int = 1
    query_penalty: float = 0.0
    gallery_penalty: float = 0.0

    @property
    def reranks(self) -> bool:
        return bool(self.query_penalty or self.gallery_penalty)


def distractor_score(top_sims: np.ndarray, topm: int) -> np.ndarray:
    """Mean of the `topm` highest similarities to the distractor set (last axis, best first).

    Missing entries (-inf: fewer distractors found) are skipped; no distractor set scores 0.
    """
    top_sims = np.asarray(top_sims, dtype=np.float32)
    if top_sims.shape[-1] == 0 or topm < 1:
        return np.zeros(top_sims.shape[:-1], np.float32)
    part = top_sims[..., :topm]
    finite = np.isfinite(part)
    total = np.where(finite, part, 0).sum(-1)
    return np.where(finite.any(-1), total / np.maximum(finite.sum(-1), 1), 0).astype(np.float32)


def vote(nb: Neighbours, settings: VoteSettings, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class code (NO_CLASS when no neighbour) and confidence for every query.

    Each of the top-k neighbours votes for its class with weight max(0, cosine - gallery_penalty x
    its distractor score); the class with the largest total wins (ties: the class of the better
    neighbour) and the confidence is that total / k - query_penalty x the query's distractor score.
    """
    k = max(1, min(int(settings.k), nb.sims.shape[1]))
    sims = nb.sims[:, :k]
    if settings.gallery_penalty:
        sims = sims - settings.gallery_penalty * distractor_score(nb.gallery_distractor[:, :k], settings.topm)
    codes = nb.codes[:, :k]
    weights = np.where(codes >= 0, np.clip(sims, 0.0, None), 0.0).astype(np.float32)  # -inf -> 0
    pred = np.full(len(nb), NO_CLASS, np.int64)
    conf = np.zeros(len(nb), np.float32)
    for start in range(0, len(nb), chunk):  # [rows, k, k] "same class" mask: bounded memory
        c, w = codes[start:start + chunk], weights[start:start + chunk]
        class_total = ((c[:, :, None] == c[:, None, :]) * w[:, None, :]).sum(-1)  # total of neighbour j's class
        best = np.argmax(class_total, axis=1)
        rows = np.arange(len(c))
        pred[start:start + chunk] = c[rows, best]
        conf[start:start + chunk] = class_total[rows, best] / k
    if settings.query_penalty:
        conf = conf - settings.query_penalty * distractor_score(nb.query_distractor, settings.topm)
    return pred, conf


def gap_of_codes(pred: np.ndarray, conf: np.ndarray, truth: np.ndarray) -> float:
    """common.metrics.scores.gap on integer codes, vectorised for the tuning grid (tests check they agree).

    pred NO_CLASS = no prediction; truth < 0 = a non-member (any prediction on it is wrong).
    """
    n_members = int((truth >= 0).sum())
    if n_members == 0:
        raise ValueError("gap: no query belongs to a class, GAP is undefined")
    has = pred >= 0
    order = np.argsort(-conf[has].astype(np.float64), kind="stable")
    correct = (pred[has] == truth[has])[order]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float(np.sum(precision * correct) / n_members)


def settings_grid(grid: Mapping, rerank: bool, n_neighbours: int) -> list[VoteSettings]:
    """The candidate settings: every k, and with re-ranking every (topm, penalties) combination."""
    ks = sorted({min(int(k), n_neighbours) for k in grid["k"]})
    if not rerank:
        return [VoteSettings(k=k) for k in ks]
    out = []
    for k, topm, qp, gp in itertools.product(ks, grid["topm"], [0.0, *grid["query_penalty"]],
                                             [0.0, *grid["gallery_penalty"]]):
        settings = VoteSettings(k, int(topm) if (qp or gp) else 1, float(qp), float(gp))
        if settings not in out:
            out.append(settings)
    return out


def tune_vote(nb: Neighbours, truth: Sequence, grid: Mapping, rerank: bool) -> pd.DataFrame:
    """GAP of every candidate setting on validation queries, best first (ties: the simpler one)."""
    truth_codes = nb.code_of(truth)
    rows = []
    for settings in settings_grid(grid, rerank, nb.sims.shape[1]):
        pred, conf = vote(nb, settings)
        rows.append({**asdict(settings), "gap": gap_of_codes(pred, conf, truth_codes)})
    table = pd.DataFrame(rows)
    return table.sort_values("gap", ascending=False, kind="stable").reset_index(drop=True)


def best_settings(table: pd.DataFrame, rerank: bool) -> VoteSettings:
    rows = table if rerank else table[(table.query_penalty == 0) & (table.gallery_penalty == 0)]
    best = rows.iloc[0]
    return VoteSettings(int(best.k), int(best.topm), float(best.query_penalty), float(best.gallery_penalty))


def predictions(nb: Neighbours, settings: VoteSettings) -> tuple[list, np.ndarray]:
    """Class labels (None = no prediction) and confidences."""
    pred, conf = vote(nb, settings)
    names = np.append(np.asarray(nb.classes, dtype=object), None)
    return names[np.where(pred >= 0, pred, len(nb.classes))].tolist(), conf


def score(labels: Sequence, confidences: np.ndarray, truth: Sequence) -> float:
    """The reported number: common.metrics.scores.gap itself."""
    return gap(list(labels), np.asarray(confidences, np.float64), list(truth))


def trivial_baseline(train_labels: Sequence, truth: Sequence) -> float:
    """GAP with no model: the most frequent training class for every image, one confidence for all."""
    most_frequent = pd.Series(list(train_labels)).value_counts().index[0]
    return score([most_frequent] * len(truth), np.ones(len(truth)), truth)


# =============================================================================================
# From embeddings to Neighbours (faiss via common.retrieval.index)
# =============================================================================================
def _search_in_chunks(index, queries, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN of a (possibly memory-mapped float16) query array, one chunk in float32 at a time."""
    sims = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(queries), chunk):
        block = np.asarray(queries[start:start + chunk], dtype=np.float32)
        s, i = search(index, block, k)
        sims[start:start + len(block), :s.shape[1]], ids[start:start + len(block), :s.shape[1]] = s, i
    return sims, ids


def find_neighbours(gallery, gallery_labels: Sequence, queries, reference=None, *, k: int, topm: int,
                    index_params: Mapping | None = None, chunk: int = 65536) -> Neighbours:
    """Top-k gallery neighbours of every query and the distractor similarities the re-ranking uses.

    `gallery`, `queries` and `reference` are [n, d] arrays (memmaps are read chunk by chunk);
    the gallery index comes from common.retrieval.index.build_index with `index_params` (exact up to
    `exact_max`, IVF / IVF-PQ beyond). `reference` (the distractor set) may be None or empty.
    """
    params = dict(index_params or {})
    gallery_labels = np.asarray(gallery_labels, dtype=object).astype(str)
    index = build_index(gallery, **params)  # l2_normalize inside makes the one float32 copy
    sims, ids = _search_in_chunks(index, queries, k, chunk)
    labels = np.where(ids >= 0, gallery_labels[np.where(ids >= 0, ids, 0)], "")
    if reference is None or len(reference) == 0 or topm < 1:
        nb = Neighbours.from_labels(sims, labels, np.zeros(sims.shape + (0,), np.float32),
                                    np.zeros((len(sims), 0), np.float32))
    else:
        reference_index = build_index(reference, **params)
        query_distractor, _ = _search_in_chunks(reference_index, queries, topm, chunk)
        gallery_top, _ = _search_in_chunks(reference_index, gallery, topm, chunk)  # [n_gallery, M]
        gallery_distractor = np.where((ids >= 0)[..., None], gallery_top[np.where(ids >= 0, ids, 0)], -np.inf)
        nb = Neighbours.from_labels(sims, labels, gallery_distractor, query_distractor)
    nb.index = type(index).__name__
    return nb


# =============================================================================================
# The run: data, images, models, embeddings
# =============================================================================================
def resolve_distractors(cfg, root: Path) -> tuple[Path | None, list[Path]]:
    """The folder `recognition.distractors` (relative to the data root, or absolute) and its images.

    A missing default folder just switches distractors off (real data has none); a folder the
    user named explicitly (absolute path) must exist.
    """
    setting = cfg.recognition.get("distractors")
    if setting in (None, "", False, "none"):
        return None, []
    folder = Path(str(setting)).expanduser()
    explicit = folder.is_absolute()
    folder = folder if explicit else root / folder
    if not folder.is_dir():
        if explicit:
            raise DataError(f"recognition.distractors={folder}: folder not found")
        print(f"no distractor folder {folder}: validation has no non-member queries and re-ranking is off "
              f"(set recognition.distractors=DIR to any folder of out-of-domain images)", flush=True)
        return None, []
    return folder, list_images(folder, recursive=True)


class RecognitionRun(OpenSetRun):
    """The data of one `train` or `predict`: tables, the image cache (train, test, then distractors),
    transforms, the device."""

    def extra_images(self) -> list:
        self.distractor_dir, self.distractors = resolve_distractors(self.cfg, self.root)
        return self.distractors

    def __init__(self, comp, cfg):
        super().__init__(comp, cfg)
        n_train, n_test = len(self.train_df), len(self.test_df)
        self.rows = {"train": np.arange(n_train), "test": np.arange(n_train, n_train + n_test),
                     "distractors": np.arange(n_train + n_test, len(self.images))}
        self.ids = {"train": self.train_df.image.astype(str).tolist(), "test": self.test_df.image.astype(str).tolist(),
                    "distractors": [p.relative_to(self.distractor_dir).as_posix() for p in self.distractors]}
        self.labels = self.train_df.label.astype(str).to_numpy(dtype=object)

    def embed(self, model, rows, desc: str, tta: bool) -> np.ndarray:
        from common.engine.embed import extract_embeddings

        return extract_embeddings(model, self.dataset(rows), batch_size=self.cfg.infer.batch_size, device=self.device,
                                  tta_flip=tta, desc=desc, progress=self.cfg.progress)

    def embed_all(self, model, directory: Path, key: str,
                  parts: Sequence[str] = ("train", "test", "distractors")) -> dict[str, EmbeddingStore]:
        """Embeddings of one model (train, test, distractor images), streamed to `directory` (resumable)."""
        cfg = self.cfg
        return {part: embed_to_store(
            model, self.dataset(self.rows[part]), self.ids[part], directory / part, dim=cfg.model.embedding_dim,
            key=key, chunk_size=int(cfg.recognition.chunk_size), batch_size=cfg.infer.batch_size, device=self.device,
            tta_flip=bool(cfg.infer.tta_flip), desc=f"embed {part}", progress=cfg.progress) for part in parts}


def _checkpoint_key(fold_dir: Path, cfg) -> str:
    """Identifies what produced an embedding: the checkpoint's content (so a copied run, e.g. a Kaggle
    weights dataset, still matches its stored embeddings), TTA and the image size."""
    digest = hashlib.sha1()
    with open(fold_dir / "best.pt", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{digest.hexdigest()[:16]}|tta={bool(cfg.infer.tta_flip)}|size={list(cfg.data.image_size)}"


def _stored_distractors(fold_dir: Path, key: str) -> EmbeddingStore | None:
    """The distractor embeddings `train` left in a fold, if they came from this very checkpoint."""
    stem = fold_dir / "embeddings" / "distractors"
    if not stem.with_suffix(".json").exists():
        return None
    store = EmbeddingStore.open(stem)
    return store if store.complete and store.key == key and len(store) else None


def class_balanced_loader(cfg, dataset, y: np.ndarray, seed: int) -> DataLoader:
    """Batches where a class of n images is drawn in proportion to n^(1 - balance).

    balance = 0 is plain shuffling (common.engine.build.train_loader), 1 gives every class the same
    share; in between, rare classes are seen often enough without repeating them endlessly.
    """
    power = float(cfg.recognition.get("balance", 0.0))
    if power <= 0 or needs_pk_sampler(cfg):
        return train_loader(cfg, dataset, y, seed)
    counts = np.bincount(y)
    weights = torch.as_tensor(counts[y].astype(np.float64) ** -power)
    sampler = WeightedRandomSampler(weights, num_samples=len(y), replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                      drop_last=len(dataset) > cfg.train.batch_size, num_workers=cfg.data.num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0)


def _rebuild_model(cfg, fold_dir: Path, device):
    """A fold's best model, rebuilt from classes.json (no pretrained weights or init needed)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.pretrained, cfg.model.init = False, None
    info = json.loads((fold_dir / "classes.json").read_text())
    model = build_model(cfg, len(info["classes"]), class_counts=info["counts"])
    return load_best(model, fold_dir, device)


# ---------------------------------------------------------------------------------------------
# Per-epoch validation (chooses best.pt): a registry, so a competition picks by name
# ---------------------------------------------------------------------------------------------
def _head_evaluation(state: RecognitionRun, fold: "FoldData") -> Callable:
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


def _knn_evaluation(state: RecognitionRun, fold: "FoldData") -> Callable:
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


EPOCH_EVALUATIONS: dict[str, Callable] = {"head": _head_evaluation, "knn": _knn_evaluation}


# =============================================================================================
# train
# =============================================================================================
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


def fold_data(state: RecognitionRun, folds: np.ndarray, fold: int) -> FoldData:
    cfg = state.cfg
    train_rows, val_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    assert_disjoint(train_rows, val_rows)
    classes = sorted(set(state.labels[train_rows]))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in state.labels[train_rows]], dtype=np.int64)
    queries, reference = distractor_split(len(state.distractors), fold, float(cfg.recognition.val_distractor_share),
                                          cfg.seed)
    query_rows = np.concatenate([val_rows, state.rows["distractors"][queries]])
    truth = list(state.labels[val_rows]) + [None] * len(queries)
    codes = np.array([index[t] if t is not None else NOT_A_CLASS for t in truth], dtype=np.int64)
    return FoldData(train_rows, val_rows, queries, reference, classes, y, query_rows, truth, codes)


def train(comp, cfg) -> Path:
    run, cfg = open_run(comp, cfg)
    seed_everything(cfg.seed)
    state = RecognitionRun(comp, cfg)
    save_config(cfg, run / "config.yaml")
    folds = recognition_folds(state.labels, int(cfg.train.folds), cfg.seed)
    pd.DataFrame({"image": state.train_df.image, "label": state.labels, "fold": folds}).to_csv(run / "folds.csv",
                                                                                              index=False)
    run_folds = cfg.train.run_folds if cfg.train.run_folds is not None else list(range(cfg.train.folds))
    print(f"{comp.name}: {len(state.labels)} train images, {len(set(state.labels))} classes, "
          f"{len(state.test_df)} test images, {len(state.distractors)} distractors; data {state.root}; run {run}",
          flush=True)

    started = time.time()
    for fold in run_folds:
        fold_dir = run / f"fold{fold}"
        if (fold_dir / "oof.csv").exists():
            print(f"fold {fold}: finished earlier, reusing its out-of-fold answers", flush=True)
        else:
            train_one_fold(state, fold_data(state, folds, fold), fold, fold_dir, run / "log.csv")
    fold_dirs = [run / f"fold{f}" for f in run_folds]
    metrics, settings = evaluate_oof(state, fold_dirs, run)

    test_nb = neighbours_of_test(state, fold_dirs, {d.name: d / "embeddings" for d in fold_dirs})
    labels, confidences = predictions(test_nb, settings)
    sub_path = comp.write_submission(state.test_df.image.tolist(), labels, confidences, run / "submission.csv",
                                     state.root)
    metrics.update(score_test(state, test_nb, settings, metrics))
    metrics["gallery_index"] = test_nb.index
    metrics["train_minutes"] = round((time.time() - started) / 60, 2)
    metrics["data_root"] = str(state.root)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots.training_curves(run / "log.csv", run / "curves.png")
    print_summary(metrics)
    print(f"submission: {sub_path}\nrun directory: {run}", flush=True)
    return run


def train_one_fold(state: RecognitionRun, fold: FoldData, k: int, fold_dir: Path, log_path: Path) -> None:
    """Train, pick the best epoch, embed everything once, and store the validation neighbours."""
    cfg = state.cfg
    fold_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(fold.y, minlength=len(fold.classes))
    (fold_dir / "classes.json").write_text(json.dumps({"classes": fold.classes, "counts": counts.tolist()}))
    seed_everything(cfg.seed + k)
    model = build_model(cfg, len(fold.classes), class_counts=counts.tolist())
    loader = class_balanced_loader(cfg, state.dataset(fold.train_rows, fold.y, train=True), fold.y, cfg.seed + k)
    mode = cfg.recognition.epoch_eval
    if mode not in EPOCH_EVALUATIONS:
        raise ConfigError(f"recognition.epoch_eval={mode}: choose one of {', '.join(EPOCH_EVALUATIONS)}")
    train_fold(cfg, fold=k, model=model, train_loader=loader, loss_fn=build_objective(cfg),
               evaluate=EPOCH_EVALUATIONS[mode](state, fold), fold_dir=fold_dir, log_path=log_path,
               device=state.device, monitor="gap")
    model = load_best(model, fold_dir, state.device)
    stores = state.embed_all(model, fold_dir / "embeddings", _checkpoint_key(fold_dir, cfg))
    train_emb, distractor_emb = stores["train"].array(), stores["distractors"].array()
    queries = np.concatenate([train_emb[fold.val_rows], distractor_emb[fold.distractor_queries]])
    nb = find_neighbours(train_emb[fold.train_rows], state.labels[fold.train_rows], queries,
                         distractor_emb[fold.distractor_reference], k=int(cfg.recognition.neighbours),
                         topm=int(cfg.recognition.distractor_topm), index_params=cfg.recognition.index)
    nb.save(fold_dir / "neighbours.npz")
    images = list(state.train_df.image.to_numpy()[fold.val_rows]) + [state.ids["distractors"][i]
                                                                      for i in fold.distractor_queries]
    kind = ["member"] * len(fold.val_rows) + ["distractor"] * len(fold.distractor_queries)
    frame = pd.DataFrame({"image": images, "kind": kind, "truth": [t or "" for t in fold.query_truth], "fold": k})
    frame.to_csv(fold_dir / "oof.csv", index=False)  # written last: its presence marks the fold finished


def evaluate_oof(state: RecognitionRun, fold_dirs: list[Path], run: Path):
    """Tune the vote on all out-of-fold queries; write oof.csv, the grid and the plots."""
    cfg = state.cfg
    oof = pd.concat([pd.read_csv(d / "oof.csv", dtype=str, keep_default_na=False) for d in fold_dirs],
                    ignore_index=True)
    nb = Neighbours.concat([Neighbours.load(d / "neighbours.npz") for d in fold_dirs])
    truth = [t if t else None for t in oof.truth]
    has_distractors = nb.query_distractor.shape[1] > 0
    rerank = bool(cfg.recognition.rerank) and has_distractors
    table = tune_vote(nb, truth, cfg.recognition.grid, rerank)
    table.to_csv(run / "vote_grid.csv", index=False)
    plain = best_settings(table, rerank=False)
    chosen = best_settings(table, rerank=rerank)
    plain_labels, plain_conf = predictions(nb, plain)
    labels, conf = predictions(nb, chosen)
    oof["prediction"], oof["confidence"] = [lab or "" for lab in plain_labels], plain_conf
    oof["prediction_rerank"], oof["confidence_rerank"] = [lab or "" for lab in labels], conf
    oof.to_csv(run / "oof.csv", index=False)

    metrics = {
        "oof_gap": score(plain_labels, plain_conf, truth),
        "oof_baseline_gap": trivial_baseline(state.labels, truth),
        "oof_images": len(oof),
        "oof_distractor_share": float(np.mean(oof.kind == "distractor")),
        "vote": asdict(plain),
        "rerank_enabled": rerank,
    }
    if rerank:
        metrics["oof_gap_rerank"] = score(labels, conf, truth)
        metrics["rerank"] = asdict(chosen)
        _plot_penalty_curve(table, chosen, metrics["oof_baseline_gap"], run / "gap_vs_query_penalty.png")
    panels = [("without re-ranking", plain_conf, plain_labels)] + ([("with re-ranking", conf, labels)] if rerank else [])
    confidence_histograms([(title, c, np.array([p == t for p, t in zip(lab, truth)])) for title, c, lab in panels],
                          (oof.kind == "distractor").to_numpy(), run / "confidence_hist.png")
    members = oof.kind == "member"
    if members.sum() > 2:
        member_emb = np.concatenate([_oof_member_embeddings(state, d) for d in fold_dirs])
        plots.similarity_histograms(member_emb, oof.truth[members].to_numpy(dtype=object), run / "similarity_hist.png")
    return metrics, chosen


def _oof_member_embeddings(state: RecognitionRun, fold_dir: Path) -> np.ndarray:
    members = pd.read_csv(fold_dir / "oof.csv", dtype=str, keep_default_na=False).query("kind == 'member'")
    store = EmbeddingStore.open(fold_dir / "embeddings" / "train")
    row_of = {image: i for i, image in enumerate(store.ids)}
    return np.asarray(store.array()[[row_of[i] for i in members.image]], dtype=np.float32)


def neighbours_of_test(state: RecognitionRun, fold_dirs: list[Path], store_dirs: Mapping[str, Path]) -> Neighbours:
    """Test queries against the whole training set, with every fold model (embeddings concatenated:
    the cosine of the concatenation is the mean cosine of the folds).

    Distractors come from the data root's distractor folder, else from the embeddings `train`
    stored in each fold (so a run re-ranks on data that has no distractors, e.g. Kaggle's).
    """
    cfg = state.cfg
    if len(state.labels) == 0:
        raise DataError(f"{state.root}: no training image to search against")
    parts = ["train", "test"] + (["distractors"] if state.distractors else [])
    joined: dict[str, list] = {p: [] for p in ("train", "test", "distractors")}
    for fold_dir in fold_dirs:
        directory, key = store_dirs[fold_dir.name], _checkpoint_key(fold_dir, cfg)
        stores = {p: EmbeddingStore(directory / p, state.ids[p], cfg.model.embedding_dim,
                                    chunk_size=int(cfg.recognition.chunk_size), key=key) for p in parts}
        if not all(s.complete for s in stores.values()):
            stores = state.embed_all(_rebuild_model(cfg, fold_dir, state.device), directory, key, parts)
        if not state.distractors and (stored := _stored_distractors(fold_dir, key)) is not None:
            stores["distractors"] = stored
        for part, store in stores.items():
            joined[part].append(store.array())
    arrays = {p: None if len(a) < len(fold_dirs) else a[0] if len(a) == 1
              else np.concatenate(a, axis=1).astype(np.float32) / np.sqrt(len(a)) for p, a in joined.items()}
    return find_neighbours(arrays["train"], state.labels, arrays["test"], arrays["distractors"],
                           k=int(cfg.recognition.neighbours), topm=int(cfg.recognition.distractor_topm),
                           index_params=cfg.recognition.index)


def score_test(state: RecognitionRun, nb: Neighbours, settings: VoteSettings, oof_metrics: Mapping) -> dict:
    """GAP on the test set when the data root has its truth (the demo does), with and without re-ranking."""
    if state.truth is None:
        return {}
    truth_by_image = dict(zip(state.truth.image.astype(str), state.truth.label))
    truth = [truth_by_image.get(i) for i in state.test_df.image.astype(str)]
    truth = [t if _is_label(t) else None for t in truth]
    plain = VoteSettings(**oof_metrics["vote"])
    out = {"test_gap_plain": score(*predictions(nb, plain), truth)}
    out["test_gap"] = score(*predictions(nb, settings), truth)
    out["test_baseline_gap"] = trivial_baseline(state.labels, truth)
    out["test_images"] = len(truth)
    out["test_non_member_share"] = float(np.mean([t is None for t in truth]))
    return out


def print_summary(metrics: Mapping) -> None:
    line = f"\nOOF GAP {metrics['oof_gap']:.4f} without re-ranking (k={metrics['vote']['k']})"
    if "oof_gap_rerank" in metrics:
        r = metrics["rerank"]
        line += (f", {metrics['oof_gap_rerank']:.4f} with re-ranking (k={r['k']}, top-{r['topm']} distractors, "
                 f"query penalty {r['query_penalty']}, gallery penalty {r['gallery_penalty']})")
    else:
        line += ", re-ranking off"
    print(line + f"; trivial baseline {metrics['oof_baseline_gap']:.4f}")
    if "test_gap" in metrics:
        print(f"test GAP {metrics['test_gap']:.4f} (without re-ranking {metrics['test_gap_plain']:.4f}, "
              f"trivial baseline {metrics['test_baseline_gap']:.4f})")


# =============================================================================================
# Plots of this flow
# =============================================================================================
def _plot_penalty_curve(table: pd.DataFrame, chosen: VoteSettings, baseline: float, path: Path) -> None:
    no_penalty = (table.query_penalty == 0) & (table.gallery_penalty == 0)
    same = table[(table.k == chosen.k) & (table.gallery_penalty == chosen.gallery_penalty)
                 & ((table.topm == chosen.topm) | no_penalty)].sort_values("query_penalty")
    plots.threshold_curve(same.query_penalty.to_numpy(), same.gap.to_numpy(), chosen.query_penalty, baseline, path,
                          metric="GAP", what=f"query penalty x distractor similarity (k={chosen.k}, "
                                             f"gallery penalty {chosen.gallery_penalty})")


def confidence_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], is_distractor: np.ndarray,
                          path: Path) -> None:
    """Per panel (title, confidences, answer is right): confidence of right answers, wrong answers on
    members and answers on distractors. GAP wants the first group above the other two; re-ranking
    should push the distractors down."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, conf, correct) in zip(axes[0], panels):
        groups = [("right class", correct & ~is_distractor), ("wrong class", ~correct & ~is_distractor),
                  ("distractor", is_distractor)]
        bins = np.linspace(float(np.min(conf)), float(np.max(conf)) + 1e-6, 40)
        for name, mask in groups:
            if mask.any():
                ax.hist(conf[mask], bins=bins, alpha=0.55, label=f"{name} ({mask.sum()})")
        ax.set_title(f"OOF confidence {title}")
        ax.set_xlabel("confidence")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =============================================================================================
# predict
# =============================================================================================
def predict(comp, cfg) -> Path:
    """`predict run.name=NAME [data.root=DIR] [out=FILE] [recognition.rerank=false]`: a finished run on
    (possibly other) data, with the vote settings tuned by its `train`."""
    overrides = {"data": dict(cfg.data), "infer": dict(cfg.infer), "out": cfg.get("out"), "progress": cfg.progress,
                 "recognition": dict(cfg.recognition)}
    run = run_dir(cfg, comp.name, create=False)
    saved = read_saved_config(run / "config.yaml")
    saved.data.root, saved.data.cache_dir = overrides["data"].get("root"), overrides["data"].get("cache_dir")
    saved.data.limit = None
    saved.infer.batch_size = overrides["infer"]["batch_size"]
    saved.recognition.distractors = overrides["recognition"]["distractors"]
    saved.progress = overrides["progress"]
    metrics_path = run / "metrics.json"
    if not metrics_path.exists():
        raise DataError(f"{metrics_path}: missing (the run did not finish, so it has no tuned vote settings)")
    metrics = json.loads(metrics_path.read_text())
    rerank = bool(overrides["recognition"]["rerank"]) and "rerank" in metrics  # recognition.rerank=false: plain vote
    settings = VoteSettings(**(metrics["rerank"] if rerank else metrics["vote"]))
    fold_dirs = sorted(d for d in run.glob("fold*") if (d / "best.pt").exists() and (d / "classes.json").exists())
    if not fold_dirs:
        raise DataError(f"{run}: no trained fold (fold*/best.pt)")
    state = RecognitionRun(comp, saved)
    where = hashlib.sha1(str(state.root).encode()).hexdigest()[:12]
    cache = run / "predict_embeddings" / where
    nb = neighbours_of_test(state, fold_dirs, {d.name: cache / d.name for d in fold_dirs})
    if settings.reranks and nb.query_distractor.shape[1] == 0:
        print("no distractor embeddings (no distractor folder, none stored in the run): predicting without "
              "re-ranking", flush=True)
        settings = VoteSettings(**metrics["vote"])
    labels, confidences = predictions(nb, settings)
    out = Path(overrides["out"]) if overrides["out"] else (
        run / "predictions" / f"submission-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    comp.write_submission(state.test_df.image.tolist(), labels, confidences, out, state.root)
    found = score_test(state, nb, settings, metrics)
    if found:
        print(f"GAP against {state.root}'s truth: {found['test_gap']:.4f} (without re-ranking "
              f"{found['test_gap_plain']:.4f}, trivial baseline {found['test_baseline_gap']:.4f})")
    print(f"submission: {out}", flush=True)
    return out
