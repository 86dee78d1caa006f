"""Retrieval post-processing between the embeddings and the ranked identities, chosen on OOF answers.

Why: on real photos a fine-tuned embedding alone is a weak judge (the animal fills a small part of
the frame, few images per identity). Three cheap corrections are standard in re-identification
and landmark retrieval, and one expensive but strong one:

* embedding-level post-processors (`POSTPROCESSORS`, applied in registration order):
  `dba` (database-side augmentation), `query_expansion` (alpha-QE) and `kreciprocal`
  (k-reciprocal re-ranking), from `common.retrieval.rerank`;
* a shortlist re-scorer, registered last so it sees their shortlist: `learned_rerank`, the model's
  relation head (`loss.distance=learned`) re-scoring each query's kNN shortlist by P(same identity)
  mixed with the similarity (`common.retrieval.learned`); it needs the fold's `FoldAnswers.relation`;
* spatial verification (`infer.verify=sift|orb|akaze`): the top `infer.verify_k` gallery images
  of each query re-scored by RANSAC inliers of local features (`common.retrieval.verify`), fused
  with the global similarity by a logistic regression on [similarity, log(1 + inliers)] fitted on
  the out-of-fold pairs (`Fusion`), so that the fused score is a calibrated P(same identity) and
  the unknown-class threshold / GAP confidence is tuned on it.

Every post-processor that is switched on (`infer.<name>: true`) has its parameters chosen on the
out-of-fold answers from `infer.tune_grid.<name>`, greedily in registration order, with "off" as a
candidate: one that does not help on OOF is switched off there, and the choice is saved with the
run (`postprocess.json`) so that test prediction applies exactly what was tuned.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np

from common.core.registry import Registry
from common.retrieval.index import build_index, known, l2_normalize, rank_classes, search
from common.retrieval.learned import RelationScorer, learned_rerank
from common.retrieval.new_class import tune_threshold
from common.retrieval.rerank import database_augmentation, k_reciprocal_rerank, query_expansion

POSTPROCESSORS = Registry("retrieval post-processor")
# k-reciprocal keeps several dense [n, n] matrices (n = queries + gallery): refused beyond this
KRECIPROCAL_MAX_ITEMS = 20000


class Processed(NamedTuple):
    """What a post-processor hands on: the (possibly changed) vectors, and a full query x gallery
    similarity matrix when it replaced the cosine (k-reciprocal), else None."""
    query: np.ndarray
    gallery: np.ndarray
    similarity: np.ndarray | None


@POSTPROCESSORS.register("dba")
def _dba(query, gallery, k: int, alpha: float) -> Processed:
    return Processed(query, database_augmentation(gallery, k, alpha), None)


@POSTPROCESSORS.register("query_expansion")
def _query_expansion(query, gallery, k: int, alpha: float) -> Processed:
    return Processed(query_expansion(query, gallery, k, alpha), gallery, None)


@POSTPROCESSORS.register("kreciprocal")
def _kreciprocal(query, gallery, k1: int, k2: int, lambda_value: float) -> Processed:
    # distances are in [0, 1] (row-normalised original distance mixed with Jaccard): 1 - d ranks the same
    distance = k_reciprocal_rerank(query, gallery, k1, k2, lambda_value, max_items=KRECIPROCAL_MAX_ITEMS)
    return Processed(query, gallery, 1.0 - distance)


@POSTPROCESSORS.register("learned_rerank")
def _learned_rerank(sims, ids, query, gallery, relation: RelationScorer, mix: float):
    """A shortlist re-scorer: (sims, ids) -> (sims, ids); `query`, `gallery` are the embeddings the
    relation head was trained on (before any QE/DBA changed them)."""
    return learned_rerank(sims, ids, query, gallery, relation, mix)


_learned_rerank.rescores_shortlist = True  # shortlist() runs it on the kNN shortlist, after the others
SHORTLIST_STAGE = {name for name, step in POSTPROCESSORS.items() if getattr(step, "rescores_shortlist", False)}

Step = tuple[str, dict]  # (post-processor name, its parameters)


def describe(steps: Sequence[Step]) -> str:
    return "; ".join(f"{name} " + " ".join(f"{k}={v}" for k, v in params.items()) for name, params in steps) or "none"


def shortlist(query: np.ndarray, gallery: np.ndarray, depth: int, steps: Sequence[Step] = (),
              relation: RelationScorer | None = None):
    """The `depth` most similar gallery images of each query after the post-processing `steps`:
    (similarities [n, depth] best first, gallery ids [n, depth], -1 where the gallery is smaller).
    `relation`: the relation heads a `learned_rerank` step scores with (required by that step)."""
    query, gallery, similarity = l2_normalize(query), l2_normalize(gallery), None
    plain = (query, gallery)
    for name, params in steps:
        if name not in SHORTLIST_STAGE:
            query, gallery, replaced = POSTPROCESSORS[name](query, gallery, **params)
            similarity = replaced if replaced is not None else similarity
    if similarity is None:
        sims, ids = search(build_index(gallery), query, depth)
    else:
        depth = min(depth, similarity.shape[1])
        ids = np.argsort(-similarity, axis=1, kind="stable")[:, :depth]
        sims, ids = np.take_along_axis(similarity, ids, axis=1).astype(np.float32), ids.astype(np.int64)
    for name, params in steps:
        if name in SHORTLIST_STAGE:
            if relation is None:
                raise ValueError(f"post-processing step {name} needs the models' relation heads (loss.distance=learned)")
            sims, ids = POSTPROCESSORS[name](sims, ids, *plain, relation=relation, **params)
    return sims, ids


def candidates(grid: dict) -> list[dict]:
    """Every combination of a post-processor's grid, e.g. {k: [1, 2], alpha: [3.0]} -> 2 settings."""
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


@dataclass
class FoldAnswers:
    """One fold's held-out queries against its gallery (the fold's training images), as embeddings."""
    query: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    truth: list[str]
    query_paths: list[str] = field(default_factory=list)
    gallery_paths: list[str] = field(default_factory=list)
    relation: RelationScorer | None = None  # the fold model's relation head (loss.distance=learned), for learned_rerank


def score(folds: Sequence[FoldAnswers], shortlists: Sequence[tuple[np.ndarray, np.ndarray]], new_label: str,
          closed: bool = False) -> float:
    """OOF MAP@5 of all folds' shortlists at once, with the unknown-class threshold tuned on them."""
    labels, scores, truth = [], [], []
    for fold, (sims, ids) in zip(folds, shortlists):
        ranked, s = rank_classes(sims, ids, fold.gallery_labels)
        labels += known(ranked)
        scores.append(s)
        truth += fold.truth
    if closed:
        from common.metrics.scores import map_at_k
        return float(map_at_k(labels, truth))
    return float(tune_threshold(np.concatenate(scores), labels, truth, new_label=new_label)[1])


def tune_steps(folds: Sequence[FoldAnswers], infer, new_label: str, depth: int, test_items: int,
               log: Callable[[str], None] = print) -> tuple[list[Step], list[dict]]:
    """The post-processing chosen on OOF: for each switched-on post-processor in order, the best of
    "off" and its grid given the ones chosen before. Returns (steps, table rows of what was tried)."""
    steps: list[Step] = []
    best = score(folds, [shortlist(f.query, f.gallery, depth) for f in folds], new_label)
    tried = [{"postprocess": "none", "oof_map5": best}]
    log(f"post-processing on OOF: none -> MAP@5 {best:.4f}")
    for name in POSTPROCESSORS:
        if not infer.get(name, False):
            continue
        if name in SHORTLIST_STAGE and any(f.relation is None for f in folds):
            log(f"post-processing: {name} skipped: the models have no relation head (loss.distance=learned), "
                "or their embeddings were joined (an ensemble of runs)")
            continue
        if name == "kreciprocal":
            largest = max(len(f.query) + len(f.gallery) for f in folds)
            if max(largest, test_items) > KRECIPROCAL_MAX_ITEMS:
                log(f"post-processing: kreciprocal skipped: {max(largest, test_items)} query + gallery images "
                    f"exceed {KRECIPROCAL_MAX_ITEMS} (its dense n x n matrices)")
                continue
        chosen = None
        for params in candidates(infer.tune_grid[name]):
            trial = [*steps, (name, params)]
            value = score(folds, [shortlist(f.query, f.gallery, depth, trial, f.relation) for f in folds], new_label)
            tried.append({"postprocess": describe(trial), "oof_map5": value})
            log(f"post-processing on OOF: {describe(trial)} -> MAP@5 {value:.4f}")
            if value > best + 1e-9:
                best, chosen = value, params
        if chosen is None:
            log(f"post-processing: {name} does not help on OOF; off")
        else:
            steps.append((name, chosen))
    return steps, tried


class Fusion:
    """P(same identity | global similarity, local inliers): logistic regression on
    [similarity, log(1 + inliers)], fitted on out-of-fold (query, gallery image) pairs.

    Why a model and not a hand-set bonus: the two scores live on unrelated scales that depend on the
    embedding, the data and the feature method; fitted on OOF pairs they become one calibrated score
    whose threshold for the unknown class is then tuned like the cosine's was."""

    def __init__(self, coef: Sequence[float], intercept: float):
        self.coef, self.intercept = [float(c) for c in coef], float(intercept)

    @staticmethod
    def features(similarity: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(similarity, np.float64).ravel(), np.log1p(np.asarray(inliers, np.float64).ravel())],
                        axis=1)

    @classmethod
    def fit(cls, similarity: np.ndarray, inliers: np.ndarray, same: np.ndarray) -> "Fusion":
        from sklearn.linear_model import LogisticRegression

        same = np.asarray(same, bool).ravel()
        if same.all() or not same.any():
            raise ValueError(f"fusion needs same and different pairs; got {int(same.sum())} of {same.size} same")
        model = LogisticRegression(C=10.0, max_iter=1000).fit(cls.features(similarity, inliers), same)
        return cls(model.coef_[0], model.intercept_[0])

    def __call__(self, similarity: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        z = self.features(similarity, inliers) @ np.asarray(self.coef) + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).reshape(np.shape(similarity)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"coef": self.coef, "intercept": self.intercept}

    def __repr__(self) -> str:
        a, b = self.coef
        return f"sigmoid({a:.2f} * similarity + {b:.2f} * log(1 + inliers) + {self.intercept:.2f})"


def workers(cfg) -> int:
    return int(cfg.threads) if cfg.threads else (os.cpu_count() or 1)


def verify(cfg, cache_dir, query_paths, gallery_paths, ids: np.ndarray, desc: str) -> np.ndarray:
    """Inlier counts [n, depth] of each query's first `infer.verify_k` shortlisted gallery images
    (0 beyond them): features computed once per image into the on-disk cache, then matched."""
    from common.retrieval.verify import FeatureCache, verify_shortlist

    infer = cfg.infer
    k = min(int(infer.verify_k), ids.shape[1])
    cache = FeatureCache(cache_dir, infer.verify, int(infer.verify_features), int(infer.verify_side))
    needed = sorted({int(g) for g in ids[:, :k].ravel() if g >= 0})
    root = bool(infer.get("verify_root", False)) and infer.verify == "sift"  # runs saved before the key: plain
    print(f"{desc}: {infer.verify}{' (RootSIFT)' if root else ''} verification of {len(query_paths)} queries "
          f"x top {k} ({len(needed)} gallery images)", flush=True)
    cache.fill([*query_paths, *(gallery_paths[g] for g in needed)], progress=cfg.progress, workers=workers(cfg))
    inliers = np.zeros(ids.shape, np.int32)
    inliers[:, :k] = verify_shortlist(query_paths, gallery_paths, ids[:, :k], cache, progress=cfg.progress,
                                      workers=workers(cfg), root=root)
    return inliers


def same_identity(ids: np.ndarray, gallery_labels: np.ndarray, truth: Sequence[str]) -> np.ndarray:
    labels = np.asarray(gallery_labels, dtype=object)[np.where(ids >= 0, ids, 0)]
    return (labels == np.asarray(truth, dtype=object)[:, None]) & (ids >= 0)
