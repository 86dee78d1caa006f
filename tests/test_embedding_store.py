"""common.engine.embedding_store: chunked float16 writes, resume after a crash, staleness, bounded chunks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from common.engine.embedding_store import EmbeddingStore, embed_to_store, fill_store
from common.core.errors import DataError


def _ids(n):
    return [f"img{i:05d}" for i in range(n)]


def _vectors(n, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_chunked_writes_fill_a_float16_memmap_with_an_id_index(tmp_path):
    data = _vectors(10)
    store = EmbeddingStore(tmp_path / "gallery", _ids(10), dim=4, chunk_size=3)
    assert store.pending_chunks() == [(0, 3), (3, 6), (6, 9), (9, 10)]
    for start, stop in store.pending_chunks():
        store.write(start, data[start:stop])
    assert store.complete and store.pending_chunks() == []
    assert (tmp_path / "gallery.f16").stat().st_size == 10 * 4 * 2  # float16 on disk
    assert (tmp_path / "gallery.ids").read_text().splitlines() == _ids(10)
    array = store.array()
    assert isinstance(array, np.memmap) and array.dtype == np.float16 and array.shape == (10, 4)
    np.testing.assert_array_equal(array, data.astype(np.float16))
    chunks = list(store.iter_chunks(4))
    assert [start for start, _ in chunks] == [0, 4, 8] and all(c.dtype == np.float32 for _, c in chunks)
    reopened = EmbeddingStore.open(tmp_path / "gallery")
    assert reopened.complete and reopened.ids == _ids(10)
    np.testing.assert_array_equal(reopened.array(), array)


def test_writes_must_come_in_order_with_the_right_shape(tmp_path):
    store = EmbeddingStore(tmp_path / "s", _ids(7), dim=4, chunk_size=3)
    with pytest.raises(ValueError, match="in order"):
        store.write(3, _vectors(3))
    with pytest.raises(ValueError, match="expected 3"):
        store.write(0, _vectors(2))
    with pytest.raises(ValueError, match="shape"):
        store.write(0, _vectors(3, dim=5))
    bad = _vectors(3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write(0, bad)
    assert store.rows_done == 0
    with pytest.raises(DataError, match="incomplete"):
        store.array()


def test_restart_continues_from_the_last_complete_chunk(tmp_path):
    data = _vectors(11)
    calls = []

    def crashing(start, stop):
        calls.append((start, stop))
        if start >= 6:
            raise RuntimeError("power cut")
        return data[start:stop]

    store = EmbeddingStore(tmp_path / "s", _ids(11), dim=4, chunk_size=3, key="model-a")
    with pytest.raises(RuntimeError):
        fill_store(store, crashing)
    assert json.loads((tmp_path / "s.json").read_text())["rows_done"] == 6

    calls.clear()
    again = EmbeddingStore(tmp_path / "s", _ids(11), dim=4, chunk_size=3, key="model-a")
    assert again.rows_done == 6
    fill_store(again, lambda start, stop: calls.append((start, stop)) or data[start:stop])
    assert calls == [(6, 9), (9, 11)]  # the first two chunks were not recomputed
    np.testing.assert_array_equal(again.array(), data.astype(np.float16))


@pytest.mark.parametrize("change", ["key", "ids", "dim"])
def test_a_store_from_another_model_or_data_starts_over(tmp_path, change):
    store = EmbeddingStore(tmp_path / "s", _ids(6), dim=4, chunk_size=3, key="model-a")
    fill_store(store, lambda a, b: _vectors(b - a))
    args = {"ids": _ids(6), "dim": 4, "key": "model-a"}
    args[change] = {"key": "model-b", "ids": _ids(5) + ["other"], "dim": 8}[change]
    fresh = EmbeddingStore(tmp_path / "s", args["ids"], dim=args["dim"], chunk_size=3, key=args["key"])
    assert fresh.rows_done == 0 and not fresh.complete


def test_requests_are_bounded_by_the_chunk_size_whatever_n(tmp_path):
    """Peak memory is one chunk: the embedding function is never asked for more rows."""
    for n in (5, 100, 2000):
        asked = []
        store = EmbeddingStore(tmp_path / f"n{n}", _ids(n), dim=2, chunk_size=64)
        fill_store(store, lambda a, b: asked.append(b - a) or np.zeros((b - a, 2), np.float32))
        assert max(asked) == min(n, 64) and sum(asked) == n
        assert max(len(chunk) for _, chunk in store.iter_chunks()) <= 64


class _Images(Dataset):
    """Tiny 'images'; can be told to fail at one index, like a corrupt file met halfway."""

    def __init__(self, n, fail_at=None):
        self.x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        self.fail_at = fail_at
        self.seen = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise OSError("disk hiccup")
        self.seen.append(i)
        return self.x[i], -1


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(48, 8)

    def embed(self, images):
        return self.proj(images.flatten(1))


def test_embed_to_store_resumes_and_matches_a_one_shot_run(tmp_path):
    model = _Embedder()
    ids = _ids(23)
    with pytest.raises(OSError):
        embed_to_store(model, _Images(23, fail_at=17), ids, tmp_path / "e", dim=8, chunk_size=5, batch_size=2,
                       key="ckpt-1", progress=False)
    assert EmbeddingStore.open(tmp_path / "e").rows_done == 15
    resumed_data = _Images(23)
    store = embed_to_store(model, resumed_data, ids, tmp_path / "e", dim=8, chunk_size=5, batch_size=2,
                           key="ckpt-1", progress=False)
    assert sorted(resumed_data.seen) == list(range(15, 23))  # only the unfinished chunks were embedded
    one_shot = embed_to_store(model, _Images(23), ids, tmp_path / "f", dim=8, chunk_size=100, progress=False)
    np.testing.assert_array_equal(store.array(), one_shot.array())
    norms = np.linalg.norm(store.array().astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # L2-normalised by common.engine.embed, then float16


def test_empty_store_and_missing_store(tmp_path):
    empty = EmbeddingStore(tmp_path / "empty", [], dim=4)
    assert empty.complete and empty.array().shape == (0, 4)
    with pytest.raises(DataError, match="no embedding store"):
        EmbeddingStore.open(tmp_path / "absent")
