"""Retrieval post-processors on L2-normalised embeddings: αQE, DBA and k-reciprocal re-ranking.

Why: a query's nearest gallery image is often wrong in open-set identification because a single
similarity is noisy (pose, occlusion, a distractor that happens to sit close by). These methods
use the neighbourhood structure of the embedding space to correct it, without retraining:

* :func:`query_expansion` (αQE, Radenović, Tolias & Chum, TPAMI 2018) pulls each query towards
  its confident top-k gallery neighbours, so it also matches their other views;
* :func:`database_augmentation` (DBA) does the same to each gallery vector, smoothing the
  gallery so that every identity is represented by its neighbourhood rather than one image;
* :func:`k_reciprocal_rerank` (Zhong, Zheng, Cao & Li, CVPR 2017) re-scores query-gallery pairs
  by how much their *k-reciprocal* neighbourhoods overlap: a distractor that is close to a query
  but whose own neighbours are another identity is pushed down.

All inputs are rows of vectors ``[n, d]``; they are L2-normalised here (a no-op on embeddings
that already are), so similarities are cosines and squared distances are ``2 - 2 cos``.
"""
from __future__ import annotations

import numpy as np

from common.retrieval.index import l2_normalize

__all__ = ["query_expansion", "database_augmentation", "k_reciprocal_rerank"]


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d] of vectors, got shape {arr.shape}")
    return l2_normalize(arr)


def _pair(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, g = _matrix(query, "query"), _matrix(gallery, "gallery")
    if len(g) == 0:
        raise ValueError("gallery is empty")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query has dimension {q.shape[1]} but gallery has dimension {g.shape[1]}")
    return q, g


def _check_expansion(k: int, alpha: float) -> None:
    if int(k) != k or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")


def _ranked(scores: np.ndarray, width: int) -> np.ndarray:
    """Column ids of the ``width`` smallest entries of each row of ``scores``, smallest first."""
    if width >= scores.shape[1]:
        return np.argsort(scores, axis=1, kind="stable")
    part = np.argpartition(scores, width - 1, axis=1)[:, :width]
    order = np.argsort(np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _expand(q: np.ndarray, g: np.ndarray, k: int, alpha: float, exclude_self: bool,
            chunk: int = 1024) -> np.ndarray:
    """``q_i + sum_j max(s_ij, 0)**alpha g_j`` over the top-k gallery neighbours j, L2-normalised."""
    k = min(int(k), len(g) - int(exclude_self))
    out = q.copy()
    if k <= 0:
        return out
    for start in range(0, len(q), chunk):  # brute-force sims, a chunk of rows at a time
        sims = q[start:start + chunk] @ g.T
        if exclude_self:
            rows = np.arange(len(sims))
            sims[rows, rows + start] = -np.inf
        ids = _ranked(-sims, k)
        weights = np.maximum(np.take_along_axis(sims, ids, axis=1), 0) ** np.float32(alpha)
        for t in range(k):
            out[start:start + chunk] += weights[:, t:t + 1] * g[ids[:, t]]
    return l2_normalize(out)


def query_expansion(query: np.ndarray, gallery: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """α-weighted query expansion: each query becomes ``normalise(q + sum_j w_j g_j)``.

    Why: a query that matches one view of an identity well and its other views poorly gets closer
    to all of them once it absorbs its confident neighbours. The j are its ``k`` most similar
    gallery vectors (``k`` is clipped to the gallery size), ``w_j = max(cos(q, g_j), 0) ** alpha``
    and the query itself has weight 1. Large ``alpha`` trusts only near-duplicates; ``alpha=0`` is
    plain average query expansion. ``k=0`` returns the queries unchanged (a float32 copy, not
    re-normalised), so switching expansion off is an exact no-op.
    Returns float32 ``[n_query, d]`` unit rows; exact brute-force similarities.
    """
    _check_expansion(k, alpha)
    q, g = _pair(query, gallery)
    if k == 0:
        return np.array(query, dtype=np.float32)
    return _expand(q, g, k, alpha, exclude_self=False)


def database_augmentation(gallery: np.ndarray, k: int = 2, alpha: float = 3.0) -> np.ndarray:
    """DBA: each gallery vector becomes ``normalise(g_i + sum_j w_j g_j)``, as in :func:`query_expansion`.

    Why: expanding the gallery the same way as the queries makes each identity's images agree with
    each other, so an identity is found through any of its views; apply it before αQE so both sides
    live in the same smoothed space. The j are the ``k`` most similar *other* gallery vectors
    (``k`` is clipped to ``n - 1``): the vector itself is its own nearest neighbour and is counted
    once, with weight 1. ``w_j = max(cos(g_i, g_j), 0) ** alpha``. ``k=0`` returns the gallery
    unchanged (a float32 copy). Returns float32 ``[n_gallery, d]`` unit rows.
    """
    _check_expansion(k, alpha)
    g = _matrix(gallery, "gallery")
    if len(g) == 0:
        raise ValueError("gallery is empty")
    if k == 0:
        return np.array(gallery, dtype=np.float32)
    return _expand(g, g, k, alpha, exclude_self=True)


def _reciprocal(forward: np.ndarray) -> np.ndarray:
    """Boolean ``[n, n]``: j is among i's forward neighbours and i among j's."""
    n = len(forward)
    near = np.zeros((n, n), dtype=bool)
    near[np.arange(n)[:, None], forward] = True
    return near & near.T


def _expanded_sets(forward: np.ndarray, half_forward: np.ndarray) -> np.ndarray:
    """Boolean ``[n, n]``: the k-reciprocal set of each item, grown by the half-size (k1/2)
    reciprocal set of each of its members that shares more than 2/3 of its items with it."""
    recip, recip_half = _reciprocal(forward), _reciprocal(half_forward)
    rows = np.arange(len(forward))[:, None, None]
    is_member = np.take_along_axis(recip, forward, axis=1)          # [n, K]: candidate c = forward[i, a]
    members = half_forward[forward]                                 # [n, K, H]: c's half-forward ids
    in_half = recip_half[forward[:, :, None], members]              # ... that are in c's half set
    in_own = recip[rows, members]                                   # ... that are in i's set
    overlap, size = (in_half & in_own).sum(axis=2), in_half.sum(axis=2)
    accept = is_member & (overlap > 2.0 / 3.0 * size)
    add = accept[:, :, None] & in_half
    expanded = recip.copy()
    expanded[np.broadcast_to(rows, add.shape)[add], members[add]] = True
    return expanded


def k_reciprocal_rerank(query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, max_items: int = 20000) -> np.ndarray:
    """k-reciprocal re-ranking: the final query-gallery distance matrix ``[n_query, n_gallery]``.

    Why: plain cosine ranks a close distractor above a true match at the edge of its identity's
    cluster. Two images are more likely the same identity when each is among the other's k
    nearest neighbours (k-reciprocal) and their neighbourhoods overlap; the Jaccard distance of
    those neighbourhoods, mixed with the original distance, corrects such rankings (lower = more
    similar). Queries and gallery form one neighbourhood graph, as in the authors' reference code:

    * original distance ``d = 2 - 2 cos`` (squared Euclidean of unit vectors), each row divided
      by its maximum;
    * ``R(i)``: the k-reciprocal neighbours of i among its ``k1 + 1`` nearest (i included), grown
      by the ``round(k1/2)``-reciprocal set of each member that has > 2/3 of its items in ``R(i)``;
    * ``V_i = exp(-d_ij)`` on ``R(i)``, normalised to sum 1, then (``k2 > 1``) averaged over i's
      ``k2`` nearest items (local query expansion);
    * ``jaccard_ij = 1 - sum min(V_i, V_j) / sum max(V_i, V_j)``;
    * returned: ``(1 - lambda_value) * jaccard + lambda_value * d`` (``lambda_value=1`` is the
      original distance ordering).

    Cost: several dense ``[n, n]`` float32 / bool matrices with ``n = n_query + n_gallery``
    (about 10 bytes x n^2 at the peak: 100 MB at n = 3000, 4 GB at 20000) and an
    ``O(n^2 d)`` matmul; a few thousand items take seconds on one core. ``n > max_items`` raises
    ValueError instead of exhausting memory; re-rank a shortlist for larger sets.
    """
    q, g = _pair(query, gallery)
    if int(k1) != k1 or k1 < 1 or int(k2) != k2 or k2 < 1:
        raise ValueError(f"k1 and k2 must be integers >= 1, got k1={k1!r}, k2={k2!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    n_q, n = len(q), len(q) + len(g)
    if n > max_items:
        raise ValueError(f"k_reciprocal_rerank needs O(n^2) memory: n_query + n_gallery = {n} exceeds "
                         f"max_items={max_items}; re-rank a shortlist or raise max_items")
    x = np.concatenate([q, g])
    dist = x @ x.T
    dist *= -2.0
    dist += 2.0
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)

    k1, k2, half = int(k1), int(k2), int(np.around(k1 / 2.0))
    rank = _ranked(dist, min(n, max(k1 + 1, k2)))
    expanded = _expanded_sets(rank[:, :k1 + 1], rank[:, :half + 1])
    v = np.exp(-dist)
    v[~expanded] = 0.0
    v /= v.sum(axis=1, keepdims=True)
    del expanded
    if k2 > 1:
        width = min(k2, n)
        v_qe = v[rank[:, 0]]
        for t in range(1, width):
            v_qe += v[rank[:, t]]
        v = v_qe / np.float32(width)
        del v_qe

    gallery_cols = np.ascontiguousarray(v[n_q:].T)                 # [n, n_gallery]: item l -> V_j[l]
    jaccard = np.empty((n_q, n - n_q), dtype=np.float32)
    for i in range(n_q):                                           # V rows are sparse: only i's support
        support = np.flatnonzero(v[i])
        mins = np.minimum(gallery_cols[support], v[i, support, None]).sum(axis=0)
        jaccard[i] = 1.0 - mins / (2.0 - mins)                     # rows of V sum to 1: max-sum = 2 - min-sum
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:n_q, n_q:]
