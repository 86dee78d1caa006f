"""Competition metrics, written to match the Kaggle definitions exactly.

Why a module of our own: the leaderboard number is what we optimise, so the out-of-fold score we
tune thresholds on must be computed the same way Kaggle computes it (MAP@5 with its duplicate
rule, GAP with its treatment of non-landmark images, log loss with clipping). The verification
metrics (ROC AUC, TAR@FAR) are not a leaderboard score; they describe how well an embedding
separates same-identity pairs from different-identity pairs, independently of any gallery.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve

__all__ = [
    "average_precision_at_k",
    "map_at_k",
    "gap",
    "log_loss",
    "pair_scores",
    "roc_curve_pairs",
    "verification_metrics",
]


# --------------------------------------------------------------------------------------------
# MAP@k (Humpback Whale Identification)
# --------------------------------------------------------------------------------------------
def average_precision_at_k(predicted: Sequence, actual, k: int = 5) -> float:
    """Kaggle ``apk`` for one image with a single true label.

    The score is ``1 / rank`` of the first occurrence of ``actual`` within the first ``k``
    predictions, 0 if it is absent. A repeated label still occupies a rank but never scores
    again (``['a', 'a', 'b']`` with truth ``'b'`` scores 1/3). Fewer than ``k`` predictions are
    allowed; an empty list scores 0.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(predicted, str):
        raise ValueError(f"predicted must be a sequence of labels, got the string {predicted!r}")
    for rank, label in enumerate(list(predicted)[:k], start=1):
        if label == actual:
            return 1.0 / rank
    return 0.0


def map_at_k(predictions: Sequence[Sequence[str]], truth: Sequence[str], k: int = 5) -> float:
    """Mean of :func:`average_precision_at_k` over images (Kaggle MAP@k)."""
    if len(predictions) != len(truth):
        raise ValueError(f"map_at_k: {len(predictions)} prediction lists but {len(truth)} true labels")
    if len(truth) == 0:
        raise ValueError("map_at_k: no images to score")
    per_image = np.array([average_precision_at_k(p, t, k) for p, t in zip(predictions, truth)])
    return float(np.mean(per_image))


# --------------------------------------------------------------------------------------------
# GAP (Google Landmark Recognition)
# --------------------------------------------------------------------------------------------
def is_missing(value) -> bool:
    """True for None, NaN (any float type), pandas NA and the empty string."""
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like values are not labels we know how to read
        return False


def _id_ranks(ids: Sequence, n: int) -> np.ndarray:
    """The ascending-order rank of every query id (ids distinct and present, one per image)."""
    if isinstance(ids, str) or len(ids) != n:
        raise ValueError(f"gap: ids must hold one id per image ({n}), got {len(ids)}")
    values = np.empty(n, dtype=object)
    values[:] = list(ids)
    missing = [i for i, v in enumerate(values) if is_missing(v)]
    if missing:
        raise ValueError(f"gap: query id at position {missing[0]} is missing ({values[missing[0]]!r})")
    try:
        uniques, ranks = np.unique(values, return_inverse=True)
    except TypeError as exc:  # e.g. a mix of strings and numbers
        raise ValueError(f"gap: query ids cannot be ordered ({exc})") from None
    if len(uniques) != n:
        counts = np.bincount(ranks.ravel(), minlength=len(uniques))
        first = int(np.flatnonzero(counts[ranks.ravel()] > 1)[0])
        raise ValueError(f"gap: query id {values[first]!r} appears more than once")
    return ranks.ravel()


def gap(pred_labels: Sequence, confidences: Sequence[float], true_labels: Sequence, *, ids: Sequence | None = None) -> float:
    """Global Average Precision (micro AP) of the Landmark Recognition challenge.

    Each image gets at most one prediction ``(label, confidence)``. All predictions are sorted by
    confidence, descending, and ``GAP = (1/M) * sum_i P(i) * rel(i)`` where ``P(i)`` is the
    precision of the first ``i`` predictions, ``rel(i)`` is 1 when prediction ``i`` is correct,
    and ``M`` is the number of images whose true label is a landmark.

    * A true label of None / NaN / '' marks a non-landmark image: any prediction on it is wrong
      and takes a rank (lowers the precision of everything ranked below it).
    * A missing prediction (label None / NaN / '') costs nothing, but a landmark image without a
      prediction still counts in ``M``.
    * Ties in confidence are broken by query id, ascending, when ``ids`` (one id per image, e.g.
      the submission's ``id`` column) is given: Kaggle's convention, as written in Google's
      reference ``GlobalAveragePrecision`` (tensorflow/models, delf/.../metrics.py: "first by score
      (descending); then by key (ascending)"). Ids must be distinct and not missing, and compare
      as Python values do (strings by code point, numbers numerically). Without ``ids`` the
      image's position is the tiebreak (stable sort), which equals Kaggle's rule when the images
      are listed in ascending id order.
    """
    n = len(true_labels)
    if len(pred_labels) != n or len(confidences) != n:
        raise ValueError(
            f"gap: lengths differ (pred_labels={len(pred_labels)}, confidences={len(confidences)}, "
            f"true_labels={n})"
        )
    truth_is_landmark = np.array([not is_missing(t) for t in true_labels], dtype=bool)
    n_landmark_images = int(truth_is_landmark.sum())
    if n_landmark_images == 0:
        raise ValueError("gap: no image has a landmark true label, GAP is undefined (M = 0)")

    has_prediction = np.array([not is_missing(p) for p in pred_labels], dtype=bool)
    rows = np.flatnonzero(has_prediction)
    conf = np.asarray(confidences, dtype=np.float64)[rows]
    if not np.all(np.isfinite(conf)):
        bad = int(np.flatnonzero(~np.isfinite(conf))[0])
        raise ValueError(f"gap: prediction at position {rows[bad]} has a non-finite confidence {conf[bad]}")
    correct = np.array(
        [truth_is_landmark[i] and pred_labels[i] == true_labels[i] for i in rows], dtype=np.float64
    )
    if ids is None:
        order = np.argsort(-conf, kind="stable")
    else:
        order = np.lexsort((_id_ranks(ids, n)[rows], -conf))  # last key first: confidence, then id
    correct = correct[order]
    precision_at_rank = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float(np.sum(precision_at_rank * correct) / n_landmark_images)


# --------------------------------------------------------------------------------------------
# Log loss (Deepfake Detection Challenge)
# --------------------------------------------------------------------------------------------
def log_loss(y_true, p, eps: float = 1e-15) -> float:
    """Binary log loss as scored by DFDC: probabilities are clipped to ``[eps, 1 - eps]``.

    ``y_true`` holds 0/1 labels (1 = fake), ``p`` the predicted probability of 1. Only values
    inside ``[0, 1]`` are clipped (as Kaggle does, so 0 and 1 cost ``-log(eps)`` when wrong); a
    value outside ``[0, 1]``, NaN or inf is not a probability and raises ``ValueError`` (clipping
    it would hide a bug upstream, e.g. a logit passed where a probability belongs).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    prob = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != prob.shape:
        raise ValueError(f"log_loss: {y.size} labels but {prob.size} probabilities")
    if y.size == 0:
        raise ValueError("log_loss: no samples")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("log_loss: y_true must contain only 0 and 1")
    if np.isnan(prob).any():
        raise ValueError(f"log_loss: probability at position {int(np.flatnonzero(np.isnan(prob))[0])} is NaN")
    outside = (prob < 0.0) | (prob > 1.0)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"log_loss: probability {float(prob[i])!r} at position {i} is outside [0, 1] "
                         f"({int(outside.sum())} such value(s))")
    prob = np.clip(prob, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(prob) + (1.0 - y) * np.log(1.0 - prob)))


# --------------------------------------------------------------------------------------------
# Verification (same / different pairs)
# --------------------------------------------------------------------------------------------
def _far_key(target: float) -> str:
    """``1e-2 -> 'tar_at_far_1e-2'``; the key names used in metrics.json."""
    return "tar_at_far_" + np.format_float_scientific(target, trim="-", exp_digits=1)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _row_dot(emb: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Cosine similarity of pairs (i, j) of normalised rows, in chunks to bound memory."""
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("nd,nd->n", emb[i[sl]], emb[j[sl]])
    return out


def _sample_positive_pairs(codes: np.ndarray, n_pairs: int, rng: np.random.Generator):
    """Uniform sample (with replacement) of same-label pairs."""
    members = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pairs_per_class = counts * (counts - 1) // 2
    cum_pairs = np.cumsum(pairs_per_class)
    picks = rng.integers(0, cum_pairs[-1], size=n_pairs)
    cls = np.searchsorted(cum_pairs, picks, side="right")
    size = counts[cls]
    a = rng.integers(0, size)
    b = rng.integers(0, size - 1)
    b = b + (b >= a)
    i, j = members[starts[cls] + a], members[starts[cls] + b]
    return np.minimum(i, j), np.maximum(i, j)


def _all_positive_pairs(codes: np.ndarray):
    """Every same-label pair (i < j), one small triu per class (loop over classes, not pairs)."""
    members = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    firsts, seconds = [], []
    for start, count in zip(starts[counts > 1], counts[counts > 1]):
        a, b = np.triu_indices(count, k=1)
        firsts.append(members[start + a])
        seconds.append(members[start + b])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    return np.minimum(i, j), np.maximum(i, j)


def _sample_negative_pairs(codes: np.ndarray, n_pairs: int, rng: np.random.Generator):
    """Uniform sample (with replacement) of different-label pairs, by rejection."""
    n = len(codes)
    firsts, seconds, have = [], [], 0
    while have < n_pairs:
        draw = min(max(2 * (n_pairs - have), 1024), 10_000_000)
        i = rng.integers(0, n, size=draw)
        j = rng.integers(0, n - 1, size=draw)
        j = j + (j >= i)
        keep = codes[i] != codes[j]
        firsts.append(np.minimum(i, j)[keep])
        seconds.append(np.maximum(i, j)[keep])
        have += int(keep.sum())
    return np.concatenate(firsts)[:n_pairs], np.concatenate(seconds)[:n_pairs]


def pair_scores(
    embeddings: np.ndarray, labels: Sequence, *, max_pairs: int = 2_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cosine similarity and same-label flag of image pairs ``i < j``.

    Up to ``max_pairs`` pairs in total, every pair is used (numpy ``triu_indices``, no Python loop
    over pairs). Beyond that, positives are all kept if there are at most ``max_pairs`` of them
    (else sampled), and ``max_pairs`` negatives are sampled uniformly with replacement using
    ``seed``; ``info['subsampled']`` says so.

    Returns ``(scores float32, is_same bool, info)`` with info keys ``n_images``,
    ``n_pos_pairs_total``, ``n_neg_pairs_total``, ``subsampled``.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [n, d], got shape {emb.shape}")
    if len(labels) != len(emb):
        raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels")
    if not np.all(np.isfinite(emb)):
        raise ValueError("embeddings contain NaN or inf")
    emb = _normalize_rows(emb)
    codes, _ = pd.factorize(pd.Series(list(labels), dtype=object))
    if (codes < 0).any():
        raise ValueError("labels contain missing values (None/NaN)")
    n = len(emb)
    counts = np.bincount(codes) if n else np.zeros(0, np.int64)
    n_total = n * (n - 1) // 2
    n_pos_total = int(np.sum(counts * (counts - 1) // 2))
    n_neg_total = n_total - n_pos_total
    if n_pos_total == 0 or n_neg_total == 0:
        raise ValueError(
            f"need both same-label and different-label pairs (got {n_pos_total} positive, "
            f"{n_neg_total} negative pairs from {n} images)"
        )

    if n_total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        scores = (emb @ emb.T)[i, j].astype(np.float32)
        is_same = codes[i] == codes[j]
        subsampled = False
    else:
        rng = np.random.default_rng(seed)
        if n_pos_total <= max_pairs:
            pi, pj = _all_positive_pairs(codes)
        else:
            pi, pj = _sample_positive_pairs(codes, max_pairs, rng)
        ni, nj = _sample_negative_pairs(codes, max_pairs, rng)
        i, j = np.concatenate([pi, ni]), np.concatenate([pj, nj])
        scores = _row_dot(emb, i, j)
        is_same = np.concatenate([np.ones(len(pi), bool), np.zeros(len(ni), bool)])
        subsampled = True
    info = {
        "n_images": n,
        "n_pos_pairs_total": n_pos_total,
        "n_neg_pairs_total": n_neg_total,
        "subsampled": subsampled,
    }
    return scores, is_same, info


def roc_curve_pairs(
    embeddings: np.ndarray, labels: Sequence, *, max_pairs: int = 2_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of the same/different pair ROC, for plotting (see :func:`pair_scores`)."""
    scores, is_same, _ = pair_scores(embeddings, labels, max_pairs=max_pairs, seed=seed)
    return roc_curve(is_same, scores)


def verification_metrics(
    embeddings: np.ndarray,
    labels: Sequence,
    far_targets=(1e-2, 1e-3),
    *,
    max_pairs: int = 2_000_000,
    seed: int = 0,
) -> dict:
    """How well cosine similarity of L2-normalised embeddings separates same-label pairs.

    Keys: ``roc_auc``; ``tar_at_far_<t>`` for each target (e.g. ``tar_at_far_1e-2``): the best
    true-accept rate among thresholds whose false-accept rate is <= t, i.e. the operating point
    at the lowest threshold that still keeps FAR within the target; ``best_accuracy`` and
    ``best_threshold`` (pairs with similarity >= threshold are called "same"; accuracy is
    measured on the evaluated pairs, so it depends on their positive/negative balance);
    ``n_pos_pairs``, ``n_neg_pairs`` (pairs evaluated), ``n_pos_pairs_total``,
    ``n_neg_pairs_total``, ``n_images`` and ``subsampled`` (True when pairs were sampled
    because there were more than ``max_pairs``; see :func:`pair_scores`).
    """
    scores, is_same, info = pair_scores(embeddings, labels, max_pairs=max_pairs, seed=seed)
    # drop_intermediate=False: a collinear point dropped for plotting could be the best one under a FAR cap.
    fpr, tpr, thresholds = roc_curve(is_same, scores, drop_intermediate=False)
    n_pos, n_neg = int(is_same.sum()), int((~is_same).sum())
    result: dict = {"roc_auc": float(auc(fpr, tpr))}  # the full curve: same value as roc_auc_score, one sort fewer
    for target in far_targets:
        within = fpr <= target
        result[_far_key(target)] = float(tpr[within].max())  # fpr[0] == 0, so never empty
    accuracy = (tpr * n_pos + (1.0 - fpr) * n_neg) / (n_pos + n_neg)
    best = int(np.argmax(accuracy))
    threshold = float(thresholds[best])
    if not math.isfinite(threshold):  # sklearn's first threshold is +inf ("nothing is same")
        threshold = float(np.nextafter(np.float32(scores.max()), np.float32(np.inf)))
    result.update(
        best_accuracy=float(accuracy[best]),
        best_threshold=threshold,
        n_pos_pairs=n_pos,
        n_neg_pairs=n_neg,
        **info,
    )
    return result
