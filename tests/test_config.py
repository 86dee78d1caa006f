import pytest
import yaml

from common.core.config import load_config, save_config, read_saved_config
from common.core.errors import ConfigError
from competitions.whales import COMPETITION

CONFIG_PATH = COMPETITION.config_path


def test_defaults_competition_and_overrides_merge():
    cfg = load_config(CONFIG_PATH, ["train.lr=3e-4", "head.m=0.3", "infer.new_whale=false", "data.image_size=[32,64]"])
    assert cfg.competition == "whales"
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)  # "3e-4" is a string in YAML 1.1
    assert cfg.head.m == 0.3
    assert cfg.infer.new_whale is False
    assert cfg.data.image_size == [32, 64]
    assert cfg.infer.tta_flip is False  # the competition's choice wins over defaults.yaml (true there)
    assert cfg.model.backbone == "small_cnn"


def test_preset_applies_then_command_line_wins():
    cfg = load_config(CONFIG_PATH, ["preset=smoke", "train.epochs=5"])
    assert cfg.preset == "smoke"
    assert cfg.train.folds == 2 and cfg.train.run_folds == [0]
    assert cfg.train.epochs == 5


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*train.epochs"):
        load_config(CONFIG_PATH, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        load_config(CONFIG_PATH, ["nonsense=1"])


def test_unknown_preset_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(CONFIG_PATH, ["preset=huge"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(CONFIG_PATH, ["train.epochs"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(CONFIG_PATH, ["train=3"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIG_PATH, ["preset=smoke", "run.name=abc"])
    save_config(cfg, tmp_path / "config.yaml")
    again = read_saved_config(tmp_path / "config.yaml")
    assert again == cfg
    assert "presets" not in yaml.safe_load((tmp_path / "config.yaml").read_text())


def test_a_run_saved_before_a_key_existed_gets_its_default_and_keeps_its_own_values():
    from common.core.config import Config, fill_missing

    saved = Config({"train": {"epochs": 3}, "infer": {"neighbours": 7}})
    current = Config({"train": {"epochs": 10, "full_fit": False}, "infer": {"neighbours": 100, "verify": "none"},
                      "tracking": "none"})
    assert sorted(fill_missing(saved, current)) == ["infer.verify", "tracking", "train.full_fit"]
    assert saved.train.epochs == 3 and saved.infer.neighbours == 7 and saved.train.full_fit is False
    assert fill_missing(saved, current) == []


def test_the_whale_reid_preset_resolves_to_the_real_photo_recipe():
    from common.core.config import load_config
    from common.core.validate import validate_config
    from common.models.input_config import resolve_input_config
    from common.tasks import TASKS

    import competitions.whales as whales

    cfg = resolve_input_config(load_config(whales.COMPETITION.config_path, ["preset=reid"]), "predict")
    validate_config(cfg, TASKS.get(whales.COMPETITION.task))
    assert cfg.data.image_size == [224, 224] and cfg.data.resize == "pad" and cfg.model.pretrained == "pypi"
    assert cfg.infer.verify == "sift" and cfg.train.ema is True
