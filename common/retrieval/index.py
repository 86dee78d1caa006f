"""Nearest-neighbour retrieval and open-set ranking on top of faiss.

Why: identification (whales) and recognition (landmarks) both reduce to "find the gallery images
most similar to each query, turn them into a ranked list of identities, and decide when the
answer is an identity we have never seen". This module does that once for every competition:

* :func:`build_index` picks the index by gallery size and device (exact inner product while it
  is affordable, IVF beyond; GPU when there is one), so callers never choose faiss classes;
* :func:`search` runs batched kNN with cosine similarity (vectors are L2-normalised);
* :func:`rank_classes` turns neighbours into identities scored by their best-matching image;
* the open set ("new_whale": insert_new_class, tune_threshold) is `common.retrieval.new_class`.
"""
from __future__ import annotations

import math
import warnings

import faiss
import numpy as np
import pandas as pd

__all__ = [
    "l2_normalize",
    "build_index",
    "search",
    "rank_classes",
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
    sims: np.ndarray, ids: np.ndarray, gallery_labels: np.ndarray, top: int = 5, with_ids: bool = False
):
    """Per query, the distinct gallery labels among its neighbours, best first.

    A label's score is the maximum similarity over that label's images among the neighbours.
    Returns ``(labels, scores)``: ``labels`` is a list of ``top`` labels per query and ``scores``
    a float array ``[n, top]`` in the same order (non-increasing); `with_ids` adds ``[n, top]`` gallery
    ids of each label's best neighbour (-1 for padding). When a query has fewer than
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
    sorted_ids = np.take_along_axis(ids, order, axis=1)
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
    out_ids = np.full((n_queries, top), -1, dtype=np.int64)
    out_ids[rows, slot[rows, cols]] = sorted_ids[rows, cols]

    names = np.append(np.asarray(uniques, dtype=object), None)  # code -1 -> None
    labels = names[out_codes].tolist()
    return (labels, out_scores, out_ids) if with_ids else (labels, out_scores)


def known(ranked) -> list[list[str]]:
    """`rank_classes`' labels without the padding (None) of queries whose neighbours hold fewer than
    `top` identities."""
    return [[label for label in row if label is not None] for row in ranked]
