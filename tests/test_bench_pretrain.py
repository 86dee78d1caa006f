"""`bench pretrain`'s frozen-feature kNN row runs through the whale task (it once imported a class the
engine no longer has, and every random/ImageNet row of the table became an ImportError)."""
from __future__ import annotations

from bench import pretrain


def test_frozen_knn_of_random_features_on_orl(shared_data, tmp_path):
    make, _ = pretrain.DATASETS["orl"]
    root = make(tmp_path / "data")
    cfg = pretrain.whale_config(root, tmp_path, "orl", "knn", list(pretrain.INITS["random"]["keys"]), [])
    found = pretrain.frozen_knn(cfg)
    assert found["knn_queries"] > 0
    assert 0.0 <= found["knn_top1"] <= 1.0 and 0.0 <= found["knn_map5"] <= 1.0
