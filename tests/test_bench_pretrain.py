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


def test_frozen_test_top1_reads_the_init_it_is_given(shared_data, tmp_path):
    """Test images against train images on frozen features: far above chance (1/30) for random
    features of aligned ORL faces, and model.init is the backbone it measures."""
    import pytest
    import torch

    from common.core.errors import ConfigError
    from common.models.network import create_backbone

    make, _ = pretrain.DATASETS["orl"]
    root = make(tmp_path / "data")
    keys = list(pretrain.INITS["random"]["keys"])
    random_top1 = pretrain.frozen_test_top1(pretrain.whale_config(root, tmp_path, "orl", "a", keys, []))
    assert 0.3 < random_top1 <= 1.0
    state = create_backbone("efficientnet_lite0", False).state_dict()  # all zero: every image looks alike
    torch.save({f"backbone.{k}": torch.zeros_like(v) for k, v in state.items()}, tmp_path / "blank.pt")
    blank = pretrain.whale_config(root, tmp_path, "orl", "b", [*keys, f"model.init={tmp_path / 'blank.pt'}"], [])
    assert pretrain.frozen_test_top1(blank) < 0.1
    with pytest.raises(ConfigError, match="model.init"):
        pretrain.frozen_test_top1(pretrain.whale_config(root, tmp_path, "orl", "c",
                                                        [*keys, f"model.init={tmp_path / 'none.pt'}"], []))


def test_seeds_are_parsed_and_the_summary_gives_mean_and_std():
    options, overrides = pretrain.parse_options(["seeds=1,2,3", "inits=random,rotation", "train.epochs=2"])
    assert options["seeds"] == [1, 2, 3] and options["inits"] == ["random", "rotation"]
    assert overrides == ["train.epochs=2"]
    rows = [{"dataset": "orl", "init": "random", "status": "ok", "test_map5": v, "top1": 0.5, "knn_top1": None}
            for v in (0.4, 0.5, 0.6)]
    rows.append({"dataset": "orl", "init": "rotation", "status": "ValueError: boom"})
    table = pretrain.summary_table(rows, ["orl"], ["random", "rotation"])
    assert "| random | 0.500 ± 0.100 / 0.500 ± 0.000 (–; –) [3 seeds] |" in table
    assert "| rotation | – |" in table  # a failed row is no result


def test_every_pretext_method_is_a_row_and_a_bad_seed_is_refused():
    from common.ssl.pretext import PRETEXT
    import pytest
    from common.core.errors import ConfigError

    assert set(pretrain.SSL_METHODS) == set(PRETEXT)
    assert {"nyala", "omniglot2"} <= set(pretrain.DATASETS)
    with pytest.raises(ConfigError, match="seeds="):
        pretrain.parse_options(["seeds=a,b"])


def test_pretext_from_random_weights_gets_its_own_lr_which_a_user_key_still_overrides(tmp_path):
    def ssl_lr(init, overrides):
        spec = pretrain.INITS[init]
        return pretrain.whale_config(tmp_path, tmp_path, "omniglot", "x", list(spec["keys"]), overrides,
                                     spec.get("budget", [])).ssl.lr

    assert ssl_lr("simclr", []) == 0.003
    assert ssl_lr("imagenet+simclr", []) == 0.001  # the BUDGET's: adapting ImageNet weights
    assert ssl_lr("simclr", ["ssl.lr=0.01"]) == 0.01


def test_the_table_says_which_epoch_the_fine_tune_kept(tmp_path):
    import json

    (tmp_path / "fold0").mkdir()
    assert pretrain.kept_epochs(tmp_path) is None
    (tmp_path / "fold0" / "done.json").write_text(json.dumps({"fold": 0, "best_epoch": 0, "map5": 0.4}))
    assert pretrain.kept_epochs(tmp_path) == "0"
    table = pretrain.markdown_table([{"dataset": "orl", "init": "random", "seed": 42, "test_map5": 0.4,
                                      "best_epoch": "0", "status": "ok"}])
    header, _, row = table.splitlines()
    assert "kept epoch" in header
    assert row.split(" | ")[header.split(" | ").index("kept epoch")] == "0"
