"""Tests for common.retrieval.index: index choice, search correctness, class ranking and the open-set threshold."""
from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from common.metrics.scores import map_at_k
from common.retrieval.index import build_index, l2_normalize, rank_classes, search
from common.retrieval.new_class import insert_new_class, tune_threshold


@pytest.fixture(autouse=True, scope="module")
def _single_faiss_thread():
    """OpenMP threads spin-wait on a busy shared machine (k-means 30x slower); one thread is fast here."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def _clustered(n=5000, n_clusters=50, dim=32, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    assignment = rng.integers(0, n_clusters, n)
    return (centers[assignment] + spread * rng.normal(size=(n, dim))).astype(np.float32), assignment


# ------------------------------------------------------------------------------------ vectors and index
def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-7)
    with pytest.raises(ValueError):
        l2_normalize(np.ones(3))
    with pytest.raises(ValueError):
        l2_normalize(np.array([[np.nan, 1.0]]))


def test_flat_index_below_exact_max_is_exact():
    rng = np.random.default_rng(1)
    gallery, queries = rng.normal(size=(500, 16)), rng.normal(size=(40, 16))
    index = build_index(gallery, use_gpu=False)
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == 500
    sims, ids = search(index, queries, k=7, batch_size=16)  # several batches
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and sims.shape == (40, 7)
    expected = l2_normalize(queries) @ l2_normalize(gallery).T
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1)[:, :7])
    np.testing.assert_allclose(sims, np.take_along_axis(expected, ids, axis=1), atol=1e-5)
    sims_all, ids_all = search(index, queries, k=10_000)  # k clipped to the index size
    assert ids_all.shape == (40, 500)
    with pytest.raises(ValueError, match="dimension"):
        search(index, rng.normal(size=(2, 8)), k=3)
    with pytest.raises(ValueError):
        search(index, queries, k=0)


def test_ivf_above_exact_max_and_its_recall():
    data, _ = _clustered()
    gallery, queries = data[:4800], data[4800:]
    exact = build_index(gallery, use_gpu=False)
    ivf = build_index(gallery, exact_max=1000, nprobe=16, use_gpu=False)
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.ntotal == 4800
    assert ivf.nlist == 4800 // 39 and ivf.nprobe == 16
    _, exact_ids = search(exact, queries, k=10)
    sims, ivf_ids = search(ivf, queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, ivf_ids)])
    assert recall > 0.9, recall
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_ivfpq_and_options():
    data, _ = _clustered(n=2000, dim=16, seed=2)
    index = build_index(data, exact_max=1000, nlist=10, nprobe=4, pq_m=8, pq_nbits=6, use_gpu=False)
    assert isinstance(index, faiss.IndexIVFPQ) and index.nlist == 10 and index.nprobe == 4
    assert index.pq.M == 8 and index.pq.nbits == 6
    _, ids = search(index, data[:200], k=10)
    found_itself = np.mean([i in row for i, row in enumerate(ids)])
    assert found_itself > 0.8, found_itself  # compressed codes, but a vector still finds itself
    with pytest.raises(ValueError, match="pq_m"):
        build_index(data, exact_max=1000, pq_m=5, use_gpu=False)
    with pytest.raises(ValueError, match="use_gpu"):
        build_index(data, use_gpu="yes")
    with pytest.raises(ValueError, match="empty"):
        build_index(np.zeros((0, 4)))


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the CPU fallback")
def test_gpu_request_falls_back_to_cpu_without_gpu():
    data = np.random.default_rng(3).normal(size=(100, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(data, use_gpu=True)
    assert isinstance(index, faiss.IndexFlatIP) and any("no GPU" in str(w.message) for w in caught)
    assert isinstance(build_index(data), faiss.IndexFlatIP)  # "auto"


# ------------------------------------------------------------------------------------ rank_classes
def test_rank_classes_takes_max_per_label_and_pads():
    gallery_labels = np.array(["A", "B", "C", "A", "B"])
    sims = np.array([[0.8, 0.95, 0.7, 0.6, 0.9], [0.5, 0.4, -np.inf, 0.0, 0.0]], dtype=np.float32)
    ids = np.array([[1, 0, 4, 2, 3], [0, 3, -1, 0, 0]])
    # row 0: B(0.8, 0.7) A(0.95, 0.9) C(0.6) -> A .95, B .8, C .6 ; row 1: only A (-1 ignored)
    labels, scores = rank_classes(sims, ids, gallery_labels, top=4)
    assert labels == [["A", "B", "C", None], ["A", None, None, None]]
    np.testing.assert_allclose(scores[0, :3], [0.95, 0.8, 0.6])
    assert scores[0, 3] == -np.inf and scores[1, 0] == np.float32(0.5) and np.all(scores[1, 1:] == -np.inf)
    labels, scores = rank_classes(sims, ids, gallery_labels, top=1)
    assert labels == [["A"], ["A"]] and scores.shape == (2, 1)
    with pytest.raises(ValueError, match="out of range"):
        rank_classes(sims, ids + 10, gallery_labels)


def test_rank_classes_matches_dictionary_reference():
    rng = np.random.default_rng(4)
    gallery_labels = rng.choice([f"w{i}" for i in range(12)], size=300)
    sims = rng.random((200, 30)).astype(np.float32)
    ids = rng.integers(0, 300, (200, 30))
    labels, scores = rank_classes(sims, ids, gallery_labels, top=5)
    for row in range(200):
        best: dict[str, float] = {}
        for s, i in zip(sims[row], ids[row]):
            best[gallery_labels[i]] = max(best.get(gallery_labels[i], -np.inf), s)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:5]
        assert labels[row] == [name for name, _ in ranked]
        np.testing.assert_array_equal(scores[row], [s for _, s in ranked])


def test_rank_classes_keeps_integer_labels():
    labels, _ = rank_classes(np.array([[0.9, 0.1]]), np.array([[1, 0]]), np.array([7, 42]), top=2)
    assert labels == [[42, 7]]


# ------------------------------------------------------------------------------------ open set
def test_insert_new_class_positions():
    labels = [["a", "b", "c", "d", "e"]]
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    assert insert_new_class(labels, scores, 0.75) == [["a", "b", "new_whale", "c", "d"]]
    assert insert_new_class(labels, scores, 0.95) == [["new_whale", "a", "b", "c", "d"]]
    assert insert_new_class(labels, scores, 0.4) == [["a", "b", "c", "d", "e"]]  # all >= threshold: dropped
    assert insert_new_class(labels, scores, 0.8) == [["a", "b", "new_whale", "c", "d"]]  # equal stays ahead
    assert insert_new_class(labels, scores, 0.55, new_label="NEW", k=3) == [["a", "b", "c"]]


def test_insert_new_class_few_labels_and_existing_new_label():
    labels = [["a", "b", "c", None, None], ["a", "new_whale", "b", "c", "d"]]
    scores = np.array([[0.9, 0.8, 0.7, -np.inf, -np.inf], [0.9, 0.85, 0.8, 0.7, 0.6]])
    out = insert_new_class(labels, scores, 0.1)
    assert out[0] == ["a", "b", "c", "new_whale"]  # fewer than k known: new_label fills
    assert out[1] == ["a", "b", "c", "d", "new_whale"]  # the existing new_whale is dropped; 4 known: fills
    assert insert_new_class(labels, scores, 0.95)[1] == ["new_whale", "a", "b", "c", "d"]
    assert insert_new_class(labels, scores, 0.75)[1] == ["a", "b", "new_whale", "c", "d"]  # scores of the 4 known: .9 .8 .7 .6
    # padding stripped (labels shorter than scores) behaves like padding kept
    stripped = [["a", "b", "c"], labels[1]]
    assert insert_new_class(stripped, scores, 0.75) == insert_new_class(labels, scores, 0.75)
    assert tune_threshold(scores, stripped, ["c", "d"])[3].tolist() == tune_threshold(scores, labels, ["c", "d"])[3].tolist()
    with pytest.raises(ValueError):
        insert_new_class(labels, scores[:1], 0.5)
    with pytest.raises(ValueError, match="only 1 scores"):
        insert_new_class([["a", "b"]], np.array([[0.5]]), 0.5)


def _random_open_set(n=300, seed=5):
    rng = np.random.default_rng(seed)
    pool = [f"w{i}" for i in range(15)]
    labels, truth = [], []
    scores = np.sort(rng.choice(np.linspace(0, 1, 21), size=(n, 5)), axis=1)[:, ::-1].copy()  # ties on purpose
    for row in range(n):
        n_known = int(rng.integers(0, 6))
        row_labels = list(rng.choice(pool, size=n_known, replace=False)) + [None] * (5 - n_known)
        scores[row, n_known:] = -np.inf
        labels.append(row_labels)
        roll = rng.random()
        truth.append("new_whale" if roll < 0.3 else (row_labels[0] if roll < 0.6 and n_known else str(rng.choice(pool))))
    scores[rng.random(scores.shape) < 0.02] = np.nan  # NaN scores never count as "below"
    return labels, scores, truth


def test_tune_threshold_equals_brute_force_exactly():
    labels, scores, truth = _random_open_set()
    grid = np.concatenate([[-np.inf], np.linspace(-0.1, 1.1, 61), [np.inf]])
    for thresholds in (None, grid):
        best_t, best_map, ts, curve = tune_threshold(scores, labels, truth, thresholds=thresholds)
        assert np.all(np.diff(ts) >= 0) and len(curve) == len(ts)
        for t, value in zip(ts, curve):
            assert value == map_at_k(insert_new_class(labels, scores, t), truth, k=5), t
        assert best_map == curve.max() and best_t == ts[np.argmax(curve)]
    # the default candidates reach the best value of any threshold on the grid
    assert tune_threshold(scores, labels, truth)[1] >= tune_threshold(scores, labels, truth, grid)[1]


def test_tune_threshold_with_k_and_new_label_arguments():
    labels, scores, truth = _random_open_set(n=120, seed=6)
    truth = ["NEW" if t == "new_whale" else t for t in truth]
    _, _, ts, curve = tune_threshold(scores, labels, truth, new_label="NEW", k=3)
    for t, value in zip(ts, curve):
        assert value == map_at_k(insert_new_class(labels, scores, t, new_label="NEW", k=3), truth, k=3)


def test_tune_threshold_finds_the_separating_value():
    # known images have top scores >= 0.8, new ones <= 0.5: any threshold in (0.5, 0.8] is perfect
    labels = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]
    scores = np.array([[0.9, 0.2], [0.8, 0.1], [0.5, 0.4], [0.3, 0.2]])
    truth = ["a", "c", "new_whale", "new_whale"]
    best_t, best_map, _, _ = tune_threshold(scores, labels, truth)
    assert best_map == 1.0 and 0.5 < best_t <= 0.8
    with pytest.raises(ValueError):
        tune_threshold(scores, labels, truth[:2])
