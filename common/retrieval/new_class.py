"""The unknown class in a ranked answer (new_whale, new_individual): where to insert it, and the
threshold that maximises MAP@k on out-of-fold answers, vectorised over every candidate threshold
(each distinct score, plus -inf "never ahead of a known label" and +inf "always first")."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from common.metrics.scores import is_missing as _is_padding  # None (rank_classes' padding), NaN, NA, ''


def _known_entries(row_labels: Sequence, row_scores: Sequence[float], new_label: str, k: int):
    """The first ``k`` distinct known labels of a row and their scores.

    A label list shorter than its score row (padding stripped, e.g. after a CSV round trip) is
    fine: the extra scores are ignored.

    Padding (None, NaN, pandas NA, '': see :func:`_is_padding`) and any ``new_label`` already
    present are dropped: where the new label goes is decided by the threshold alone. NaN scores
    are treated as +inf (never "below threshold").
    """
    if len(row_labels) > len(row_scores):  # fewer labels is fine: padding may have been stripped
        raise ValueError(f"a row has {len(row_labels)} labels but only {len(row_scores)} scores")
    labels, scores, seen = [], [], set()
    for label, score in zip(row_labels, row_scores):
        if _is_padding(label) or label == new_label or label in seen:
            continue
        seen.add(label)
        labels.append(label)
        scores.append(math.inf if math.isnan(score) else float(score))
        if len(labels) == k:
            break
    return labels, scores


def _insertion_position(scores: list[float], threshold: float) -> int:
    """Index of the first score strictly below ``threshold`` (``len(scores)`` if none)."""
    for position, score in enumerate(scores):
        if score < threshold:
            return position
    return len(scores)


def insert_new_class(
    labels: list[list[str]], scores: np.ndarray, threshold: float, new_label: str = "new_whale", k: int = 5
) -> list[list[str]]:
    """Insert ``new_label`` before the first known label whose score is below ``threshold``.

    Per query: the known labels (padding ``None`` / NaN / '' and any existing ``new_label``
    removed, first occurrence kept) are cut to ``k``; ``new_label`` goes at the first rank whose
    score is ``< threshold``. If all ``k`` known scores are ``>= threshold``, ``new_label`` is
    dropped; if there are fewer than ``k`` known labels and none is below the threshold,
    ``new_label`` fills the next free rank. Every list holds real labels only (never the padding
    of :func:`rank_classes`), distinct, between 1 and ``k`` of them: exactly ``k`` when at least
    ``k`` known labels exist, ``known + 1`` otherwise (a query whose neighbours hold fewer than
    ``k`` identities gets a shorter answer, which Kaggle's MAP@5 accepts). ``threshold=+inf``
    puts ``new_label`` ahead of every finite score; ``-inf`` never puts it ahead of a known label.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} label lists but {len(scores)} score rows")
    result = []
    for row_labels, row_scores in zip(labels, scores):
        known, known_scores = _known_entries(row_labels, row_scores, new_label, k)
        position = _insertion_position(known_scores, threshold)
        if position < k:
            known.insert(position, new_label)
        result.append(known[:k])
    return result


def _default_thresholds(prefix_min: np.ndarray, max_candidates: int = 2048) -> np.ndarray:
    """Candidate thresholds that cover every distinct outcome (or quantiles when too many).

    A threshold ``t`` puts ``new_label`` before the first known score ``< t``, so the outcome
    only changes when ``t`` crosses a score: it is constant on ``(s_{j-1}, s_j]`` between
    consecutive distinct finite scores, where ``s_j`` stands for the interval. The two ends are
    the exact extremes: ``-inf`` ("never ahead of a known label"; it differs from the smallest
    score when a known label scores ``-inf``) and ``+inf`` ("ahead of every finite score", the
    outcome of every ``t`` above the largest score, and the one that still holds on new data
    whose scores are larger).
    """
    finite = np.unique(prefix_min[np.isfinite(prefix_min)])
    if finite.size > max_candidates - 2:
        finite = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, max_candidates - 2)))
    return np.concatenate([[-np.inf], finite, [np.inf]])


def tune_threshold(
    scores: np.ndarray,
    labels: list[list[str]],
    truth: Sequence[str],
    thresholds: np.ndarray | None = None,
    new_label: str = "new_whale",
    k: int = 5,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """MAP@k of :func:`insert_new_class` for every threshold at once; returns the best.

    Returns ``(best_threshold, best_map, thresholds, map_curve)`` with thresholds sorted
    ascending; ties in MAP go to the smallest threshold. By default the thresholds are ``-inf``,
    every distinct finite score that can matter and ``+inf`` (the finite ones replaced by
    quantiles when there are more than 2046), so the best value on this data is exact: every
    threshold, infinite ones included, gives the MAP of one of the candidates.

    How it is vectorised: per image, ``r`` is the 0-based rank of the true label among the known
    labels (or absent) and ``p(t)`` the insertion rank of ``new_label`` = the number of leading
    known scores ``>= t`` = the count of the running minimum of the scores that is ``>= t``
    (compared for all thresholds by broadcasting). The true label then sits at rank ``p`` if it
    is ``new_label`` (scoring only when ``p < k``), else at ``r + (p <= r)``. The result equals
    ``map_at_k(insert_new_class(labels, scores, t), truth, k)`` exactly for every ``t``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(labels)
    if len(scores) != n or len(truth) != n:
        raise ValueError(f"tune_threshold: {n} label lists, {len(scores)} score rows, {len(truth)} truths")
    if n == 0:
        raise ValueError("tune_threshold: no images")

    # Per image, once: known scores (first k, padded with NaN) and the rank of the truth.
    known_scores = np.full((n, k), np.nan)
    n_known = np.zeros(n, dtype=np.int64)
    true_rank = np.full(n, k, dtype=np.int64)  # k means "not among the first k known labels"
    truth_is_new = np.zeros(n, dtype=bool)
    for i, (row_labels, row_scores, true_label) in enumerate(zip(labels, scores, truth)):
        known, row_known_scores = _known_entries(row_labels, row_scores, new_label, k)
        known_scores[i, : len(known)] = row_known_scores
        n_known[i] = len(known)
        truth_is_new[i] = true_label == new_label
        if not truth_is_new[i] and true_label in known:
            true_rank[i] = known.index(true_label)
    # Running minimum: p(t) = number of leading scores >= t. NaN padding never counts.
    prefix_min = np.fmin.accumulate(known_scores, axis=1)
    prefix_min[np.arange(k)[None, :] >= n_known[:, None]] = np.nan

    if thresholds is None:
        thresholds = _default_thresholds(prefix_min)
    thresholds = np.sort(np.asarray(thresholds, dtype=np.float64).ravel())
    if thresholds.size == 0:
        raise ValueError("tune_threshold: empty thresholds")

    # [T, n] per-image precision, computed in threshold chunks to bound memory (n * k * chunk).
    chunk = max(1, 20_000_000 // (n * k))
    map_curve = np.empty(thresholds.size)
    for start in range(0, thresholds.size, chunk):
        t = thresholds[start : start + chunk]
        position = (prefix_min[None, :, :] >= t[:, None, None]).sum(axis=2)  # [T, n]
        rank_of_truth = np.where(
            truth_is_new[None, :], position, true_rank[None, :] + (position <= true_rank[None, :])
        )
        precision = np.where(rank_of_truth < k, 1.0 / (rank_of_truth + 1), 0.0)
        map_curve[start : start + chunk] = precision.mean(axis=1)

    best = int(np.argmax(map_curve))
    return float(thresholds[best]), float(map_curve[best]), thresholds, map_curve
