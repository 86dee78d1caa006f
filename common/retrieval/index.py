"""Nearest-neighbour retrieval and open-set ranking on top of faiss.

Why: identification (whales) and recognition (landmarks) both reduce to "find the gallery images
most similar to each query, turn them into a ranked list of identities, and decide when the
answer is an identity we have never seen". This module does that once for every competition:

* :func:`build_index` picks the index by gallery size and device (exact inner product while it
  is affordable, IVF beyond; GPU when there is one), so callers never choose faiss classes;
* :func:`search` runs batched kNN with cosine similarity (vectors are L2-normalised);
* :func:`rank_classes` turns neighbours into identities scored by their best-matching image;
* :func:`insert_new_class` and :func:`tune_threshold` handle the open set ("new_whale"): the
  new label is inserted where the known scores fall below a threshold, and the threshold is
  tuned for MAP@k on out-of-fold data, vectorised over all candidate thresholds at once.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import faiss
import numpy as np
import pandas as pd

__all__ = [
    "l2_normalize",
    "build_index",
    "search",
    "rank_classes",
    "insert_new_class",
    "tune_threshold",
]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (what faiss wants). Zero rows stay zero."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array [n, d] of vectors, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vectors contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms > 0, norms, np.float32(1.0)), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Index construction and search
# --------------------------------------------------------------------------------------------
def _want_gpu(use_gpu: bool | str) -> bool:
    """Resolve ``use_gpu`` ("auto", True, False) against the GPUs faiss can see."""
    if use_gpu not in ("auto", True, False):
        raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
    if use_gpu is False:
        return False
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus == 0 and use_gpu is True:
        warnings.warn("use_gpu=True but faiss sees no GPU; building a CPU index instead", stacklevel=3)
    return n_gpus > 0


def _default_nlist(n: int) -> int:
    """About 4*sqrt(n) inverted lists, but at least 39 training points per list (faiss's minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def _untrained_ivf(d: int, nlist: int, pq_m: int | None, pq_nbits: int) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(d)
    if pq_m is None:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if d % pq_m != 0:
            raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, pq_nbits, faiss.METRIC_INNER_PRODUCT)
    return index


def _cloner_options(pq_m: int | None, shard: bool) -> faiss.GpuMultipleClonerOptions:
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = pq_m is not None  # float16 lookup tables let IVFPQ fit in GPU shared memory
    return options


def build_index(
    gallery: np.ndarray,
    *,
    exact_max: int = 200_000,
    nlist: int | None = None,
    nprobe: int = 16,
    pq_m: int | None = None,
    pq_nbits: int = 8,
    use_gpu: bool | str = "auto",
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """A faiss inner-product index over the L2-normalised gallery (so scores are cosine similarities).

    * ``len(gallery) <= exact_max``: exact ``IndexFlatIP``.
    * above: ``IndexIVFFlat`` (or ``IndexIVFPQ`` with ``pq_m`` sub-quantisers of ``pq_nbits`` bits
      when ``pq_m`` is given), with ``nlist`` lists (default about ``4*sqrt(n)``) trained on a random
      sample of ``train_size`` vectors (default ``min(n, 256*nlist)``), searched with ``nprobe``.
    * GPU: when ``use_gpu`` is "auto" or True and faiss sees GPUs, the index is cloned with
      ``faiss.index_cpu_to_all_gpus`` (sharded across GPUs when there are several; IVF is
      trained on the first GPU before sharding so every shard shares one quantiser). GPU search
      supports k <= 2048. ``use_gpu=True`` without a GPU warns and builds a CPU index.

    Ids returned by :func:`search` are row positions in ``gallery``.
    """
    vectors = l2_normalize(gallery)
    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot build an index over an empty gallery")
    gpu = _want_gpu(use_gpu)
    n_gpus = faiss.get_num_gpus() if gpu else 0

    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
        if gpu:
            index = faiss.index_cpu_to_all_gpus(index, co=_cloner_options(None, shard=n_gpus > 1))
        index.add(vectors)
        return index

    nlist = _default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in [1, {n}] for a gallery of {n} vectors, got {nlist}")
    train_size = min(n, 256 * nlist) if train_size is None else min(n, int(train_size))
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, size=train_size, replace=False))]

    index = _untrained_ivf(d, nlist, pq_m, pq_nbits)
    if gpu:
        resources = faiss.StandardGpuResources()
        trainer = faiss.index_cpu_to_gpu(resources, 0, index, _cloner_options(pq_m, shard=False))
        trainer.train(sample)
        index = faiss.index_gpu_to_cpu(trainer)
        index = faiss.index_cpu_to_all_gpus(index, co=_cloner_options(pq_m, shard=n_gpus > 1))
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", min(nprobe, nlist))
    else:
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    index.add(vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Batched kNN: ``(sims float32 [n, k], ids int64 [n, k])``, best first.

    Queries are L2-normalised here, so sims are cosine similarities. ``k`` is clipped to the
    index size. An IVF index can find fewer than ``k`` neighbours in the lists it probes; those
    slots get id -1 and similarity -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index.ntotal == 0:
        raise ValueError("the index is empty")
    vectors = l2_normalize(queries)
    if vectors.shape[1] != index.d:
        raise ValueError(f"queries have dimension {vectors.shape[1]} but the index has {index.d}")
    k = min(int(k), int(index.ntotal))
    sims = np.empty((len(vectors), k), dtype=np.float32)
    ids = np.empty((len(vectors), k), dtype=np.int64)
    for start in range(0, len(vectors), batch_size):
        stop = start + batch_size
        sims[start:stop], ids[start:stop] = index.search(vectors[start:stop], k)
    sims[ids < 0] = -np.inf
    return sims, ids


# --------------------------------------------------------------------------------------------
# From neighbours to ranked identities
# --------------------------------------------------------------------------------------------
def rank_classes(
    sims: np.ndarray, ids: np.ndarray, gallery_labels: np.ndarray, top: int = 5
) -> tuple[list[list[str]], np.ndarray]:
    """Per query, the distinct gallery labels among its neighbours, best first.

    A label's score is the maximum similarity over that label's images among the neighbours.
    Returns ``(labels, scores)``: ``labels`` is a list of ``top`` labels per query and ``scores``
    a float array ``[n, top]`` in the same order (non-increasing). When a query has fewer than
    ``top`` distinct labels the lists are padded with label ``None`` and score ``-inf``.
    Neighbours with id -1 (not found) are ignored. Vectorised over queries and neighbours.
    """
    sims = np.asarray(sims, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if sims.shape != ids.shape or sims.ndim != 2:
        raise ValueError(f"sims and ids must be 2-D arrays of the same shape, got {sims.shape} and {ids.shape}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    gallery_labels = np.asarray(gallery_labels, dtype=object)
    if ids.size and ids.max() >= len(gallery_labels):
        raise ValueError(f"neighbour id {ids.max()} is out of range for {len(gallery_labels)} gallery labels")
    codes, uniques = pd.factorize(pd.Series(gallery_labels, dtype=object))
    if (codes < 0).any():
        raise ValueError("gallery_labels contain missing values (None/NaN)")
    n_queries, n_neighbours = ids.shape

    valid = ids >= 0
    label_code = np.where(valid, codes[np.where(valid, ids, 0)], -1)
    # Best neighbour first; invalid neighbours last.
    order = np.argsort(np.where(valid, -sims, np.inf), axis=1, kind="stable")
    label_code = np.take_along_axis(label_code, order, axis=1)
    sorted_sims = np.take_along_axis(sims, order, axis=1)
    valid = np.take_along_axis(valid, order, axis=1)

    # First occurrence of each label in a row = its best neighbour = its max similarity.
    by_label = np.argsort(label_code, axis=1, kind="stable")  # stable: keeps best-first within a label
    grouped = np.take_along_axis(label_code, by_label, axis=1)
    first_in_group = np.ones_like(grouped, dtype=bool)
    first_in_group[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    is_first = np.empty_like(first_in_group)
    np.put_along_axis(is_first, by_label, first_in_group, axis=1)
    is_first &= valid

    # Scatter the first `top` first-occurrences of each row into [n, top].
    slot = np.cumsum(is_first, axis=1) - 1
    keep = is_first & (slot < top)
    rows, cols = np.nonzero(keep)
    out_codes = np.full((n_queries, top), -1, dtype=np.int64)
    out_scores = np.full((n_queries, top), -np.inf, dtype=np.float32)
    out_codes[rows, slot[rows, cols]] = label_code[rows, cols]
    out_scores[rows, slot[rows, cols]] = sorted_sims[rows, cols]

    names = np.append(np.asarray(uniques, dtype=object), None)  # code -1 -> None
    labels = names[out_codes].tolist()
    return labels, out_scores


# --------------------------------------------------------------------------------------------
# Open set: the "new identity" label
# --------------------------------------------------------------------------------------------
def _is_padding(label) -> bool:
    """True for what stands in for "no label": None (rank_classes' padding), NaN / pandas NA (the
    same padding after a DataFrame round trip) and the empty string."""
    if label is None:
        return True
    if isinstance(label, str):
        return label == ""
    try:
        return bool(pd.isna(label))
    except (TypeError, ValueError):  # array-like: not a label we know how to read, keep it
        return False


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
