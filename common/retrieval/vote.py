"""kNN voting with distractor re-ranking: the retrieval post-processor of landmark recognition.

One `Neighbours` object holds, for every query, what the vote and the re-ranking need (the top-k
gallery similarities and classes, and distractor similarities of the query and of each neighbour),
computed once with faiss; the vote and its tuning grid are pure numpy on it (tested on
constructed embeddings). After the Google Landmark Recognition 2020 winners: the top-k neighbours
vote for their class weighted by similarity; a query that looks like a distractor loses
confidence (`query_penalty` x its similarity to the distractor set), and a gallery image that
looks like one votes less (`gallery_penalty` x its own similarity).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from common.retrieval.index import build_index, search

NO_CLASS = -1      # code of "no prediction" / "no neighbour"
NOT_A_CLASS = -2   # code of a true label that is no gallery class (a distractor's truth)


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
