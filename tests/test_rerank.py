"""Tests for common.retrieval.rerank: αQE, DBA and k-reciprocal re-ranking against plain loop references."""
from __future__ import annotations

import numpy as np
import pytest

from common.retrieval.rerank import database_augmentation, k_reciprocal_rerank, query_expansion


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _normalise(v):
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------
# Loop references, written from the papers
# --------------------------------------------------------------------------------------------
def _reference_expansion(queries, gallery, k, alpha, skip_self=False):
    out = []
    for i, q in enumerate(queries.astype(np.float64)):
        sims = [(float(q @ g), j) for j, g in enumerate(gallery.astype(np.float64)) if not (skip_self and j == i)]
        sims.sort(key=lambda pair: -pair[0])
        total = q.copy()
        for sim, j in sims[:k]:
            total = total + max(sim, 0.0) ** alpha * gallery[j]
        out.append(_normalise(total))
    return np.array(out)


def _reference_k_reciprocal(queries, gallery, k1, k2, lam):
    x = np.concatenate([queries, gallery]).astype(np.float64)
    n, n_q = len(x), len(queries)
    dist = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    dist = dist / dist.max(axis=1, keepdims=True)
    rank = [list(np.argsort(dist[i], kind="stable")) for i in range(n)]

    def reciprocal(i, k):
        return {j for j in rank[i][:k + 1] if i in rank[j][:k + 1]}

    half = int(np.around(k1 / 2.0))
    V = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        grown = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                grown |= rc
        for j in grown:
            V[i, j] = np.exp(-dist[i, j])
        V[i] /= V[i].sum()
    if k2 > 1:
        V = np.array([np.mean([V[j] for j in rank[i][:k2]], axis=0) for i in range(n)])
    out = np.zeros((n_q, n - n_q))
    for i in range(n_q):
        for j in range(n_q, n):
            mins = sum(min(V[i, l], V[j, l]) for l in range(n))
            maxs = sum(max(V[i, l], V[j, l]) for l in range(n))
            out[i, j - n_q] = (1 - lam) * (1 - mins / maxs) + lam * dist[i, j]
    return out


# --------------------------------------------------------------------------------------------
# αQE and DBA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,alpha", [(1, 3.0), (2, 3.0), (5, 1.0), (3, 0.0), (15, 3.0)])  # 15: negative sims too
def test_query_expansion_matches_loop_reference(k, alpha):
    q, g = _unit(7, 8, 0), _unit(15, 8, 1)
    out = query_expansion(q, g, k=k, alpha=alpha)
    assert out.shape == (7, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_expansion(q, g, k, alpha), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("k,alpha", [(1, 3.0), (2, 3.0), (4, 1.0), (3, 0.0), (14, 2.0)])  # 14: negative sims too
def test_database_augmentation_matches_loop_reference(k, alpha):
    g = _unit(15, 8, 2)
    out = database_augmentation(g, k=k, alpha=alpha)
    np.testing.assert_allclose(out, _reference_expansion(g, g, k, alpha, skip_self=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_database_augmentation_counts_itself_once():
    g = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)]], dtype=np.float32)  # cos = 0.5
    out = database_augmentation(g, k=1, alpha=1.0)
    np.testing.assert_allclose(out[0], _normalise(g[0] + 0.5 * g[1]), atol=1e-6)
    np.testing.assert_allclose(out[1], _normalise(g[1] + 0.5 * g[0]), atol=1e-6)


def test_expansion_edge_cases():
    q, g = _unit(7, 8, 3), _unit(15, 8, 4)
    np.testing.assert_array_equal(query_expansion(q, g, k=0), q)
    np.testing.assert_array_equal(database_augmentation(g, k=0), g)
    # k beyond the gallery is clipped; DBA has one neighbour fewer (itself)
    np.testing.assert_allclose(query_expansion(q, g, k=100), query_expansion(q, g, k=15), atol=1e-6)
    np.testing.assert_allclose(database_augmentation(g, k=100), database_augmentation(g, k=14), atol=1e-6)
    # a huge alpha keeps only the query; alpha = 0 is the plain mean of query and its top-k
    np.testing.assert_allclose(query_expansion(q, g, k=3, alpha=200.0), q, atol=1e-5)
    top = np.argsort(-(q @ g.T), axis=1)[:, :3]
    mean = q + g[top].sum(axis=1)
    np.testing.assert_allclose(query_expansion(q, g, k=3, alpha=0.0),
                               mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    # orthogonal neighbours carry no weight
    eye = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(database_augmentation(eye, k=2), eye, atol=1e-7)
    # non-normalised input is normalised first
    np.testing.assert_allclose(query_expansion(3 * q, 2 * g, k=2), query_expansion(q, g, k=2), atol=1e-6)


# --------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.3), (3, 4, 0.0), (6, 3, 0.7), (50, 6, 0.3)])
def test_k_reciprocal_matches_loop_reference(k1, k2, lam):
    # clustered data so that reciprocal sets and the 2/3 expansion both do something
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 8))
    x = centres[rng.integers(0, 6, 40)] + 0.5 * rng.normal(size=(40, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q, g = x[:10], x[10:]
    out = k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert out.shape == (10, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_k_reciprocal(q, g, k1, k2, lam), atol=1e-5)


def _edge_of_cluster_case():
    """One query at 40 deg. Identity A: 15 images at 0-12 deg, its true match at the edge (12 deg,
    28 away). A distractor at 64 deg (24 away: first by cosine) whose neighbourhood is identity B,
    40 images packed at 70-109 deg. Returns query, gallery, match id, distractor id."""
    rng = np.random.default_rng(0)
    a = np.linspace(0.0, 12.0, 15) + rng.uniform(-0.3, 0.3, 15)
    a[-1] = 12.0
    b = 70.0 + np.arange(40) + rng.uniform(-0.3, 0.3, 40)
    angles = np.radians(np.concatenate([a, [64.0], b]))
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    query = np.array([[np.cos(np.radians(40.0)), np.sin(np.radians(40.0))]], dtype=np.float32)
    return query, gallery, 14, 15


def test_k_reciprocal_puts_edge_match_first():
    query, gallery, match, distractor = _edge_of_cluster_case()
    cosine_order = np.argsort(-(query @ gallery.T)[0])
    assert list(cosine_order[:2]) == [distractor, match]
    assert list(np.argsort(k_reciprocal_rerank(query, gallery, lambda_value=1.0)[0])[:2]) == [distractor, match]
    for k2 in (6, 1):  # with and without local query expansion
        order = list(np.argsort(k_reciprocal_rerank(query, gallery, k1=20, k2=k2, lambda_value=0.3)[0]))
        assert order[0] == match
        assert order.index(distractor) > 1  # its neighbourhood is B: it falls behind A's images


def test_k_reciprocal_lambda_one_is_original_ordering():
    q, g = _unit(10, 16, 6), _unit(60, 16, 7)
    final = k_reciprocal_rerank(q, g, lambda_value=1.0)
    np.testing.assert_array_equal(np.argsort(final, axis=1), np.argsort(-(q @ g.T), axis=1))
    expected = (2 - 2 * (q @ g.T)) / (2 - 2 * (q @ np.concatenate([q, g]).T)).max(axis=1, keepdims=True)
    np.testing.assert_allclose(final, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,message", [
    (lambda q, g: query_expansion(q[0], g), "query must be a 2-D array"),
    (lambda q, g: query_expansion(q, g[None]), "gallery must be a 2-D array"),
    (lambda q, g: query_expansion(q, g[:, :4]), "query has dimension 8 but gallery has dimension 4"),
    (lambda q, g: query_expansion(q, g[:0]), "gallery is empty"),
    (lambda q, g: query_expansion(q, g, k=-1), "k must be an integer >= 0"),
    (lambda q, g: query_expansion(q, g, alpha=-1.0), "alpha must be >= 0"),
    (lambda q, g: database_augmentation(g[0]), "gallery must be a 2-D array"),
    (lambda q, g: database_augmentation(g, k=1.5), "k must be an integer >= 0"),
    (lambda q, g: k_reciprocal_rerank(q[0], g), "query must be a 2-D array"),
    (lambda q, g: k_reciprocal_rerank(q, g[:, :4]), "query has dimension 8 but gallery has dimension 4"),
    (lambda q, g: k_reciprocal_rerank(q, g, k1=0), "k1 and k2 must be integers >= 1"),
    (lambda q, g: k_reciprocal_rerank(q, g, lambda_value=1.5), "lambda_value must be in"),
    (lambda q, g: k_reciprocal_rerank(q, g, max_items=20), "n_query \\+ n_gallery = 22 exceeds max_items=20"),
])
def test_bad_inputs_raise(call, message):
    q, g = _unit(7, 8, 8), _unit(15, 8, 9)
    with pytest.raises(ValueError, match=message):
        call(q, g)
