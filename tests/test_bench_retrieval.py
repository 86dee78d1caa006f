"""bench.retrieval at tiny sizes: the data is clustered, recall is measured right, the table is written."""
from __future__ import annotations

import numpy as np
import pytest

from bench.retrieval import (Geometry, class_sizes, clustered_vectors, main, parse_options, queries_like,
                                    recall_at)


def test_class_sizes_are_long_tailed_and_sum_to_n():
    sizes = class_sizes(10_000, mean_class=20, max_class=300, rng=np.random.default_rng(0))
    assert sizes.sum() == 10_000 and len(sizes) == 500
    assert sizes.min() >= 2 and sizes.max() == 300 and np.median(sizes) < 20


def test_vectors_are_unit_and_clustered_by_view_then_class():
    geometry = Geometry(mean_class=20, view_size=5)
    vectors, views, centres = clustered_vectors(3000, 64, seed=1, geometry=geometry)
    assert vectors.shape == (3000, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again, _, _ = clustered_vectors(3000, 64, seed=1, geometry=geometry)
    np.testing.assert_array_equal(vectors, again)  # deterministic per seed
    queries = queries_like(centres, views, 50, seed=1, geometry=geometry)
    nearest = np.argmax(queries @ vectors.T, axis=1)
    query_views = np.argmax(queries @ centres.T, axis=1)
    assert np.mean(views[nearest] == query_views) > 0.9  # a query's nearest image is from its own view


def test_recall_at_k():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[1, 3, 9], [5, 4, 7]])
    assert recall_at(found, exact, 1) == 0.5  # second query: first neighbour differs
    assert recall_at(found, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_options_are_checked():
    assert parse_options(["sizes=1000,2000", "nprobe=[2, 4]"])["sizes"] == [1000, 2000]
    assert main(["sizes=1000", "bogus=1"]) == 2


def test_tiny_bench_writes_the_markdown_table(tmp_path, capsys):
    out = tmp_path / "retrieval.md"
    code = main(["sizes=4000", "dim=32", "queries=100", "nlist=64", "nprobe=1,64", "pq_m=8", "repeats=1", "threads=1",
                 f"out={out}"])
    assert code == 0
    text = out.read_text()
    assert "| gallery | index | nprobe | build s | queries/s | vs exact | recall@1 | recall@10 | memory MiB |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 4,000")]
    assert len(rows) == 4  # exact, IVF at two nprobe, IVF-PQ
    assert "exact (IndexFlatIP)" in rows[0] and "IVF-Flat nlist=64" in rows[1] and "IVF-PQ8" in rows[3]
    recall1 = [float(r.split("|")[7]) for r in rows]
    assert recall1[0] == 1.0 and recall1[2] == 1.0  # nprobe 64 = every list: as exact as exact search
    assert recall1[1] < 1.0  # one list of 64 misses some neighbours
    assert "Target" in text
