"""The one engine's contracts: layering, registries, config checked before any run folder exists,
predict's override rule, and regressions of bugs found while reshaping the core."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.core.cli import main
from common.core.config import load_config, save_config
from common.core.errors import ConfigError, DataError
from common.core.registry import Registry
from common.tasks import TASKS
from common.tasks.engine import predict_config
from competitions import load

REPO = Path(__file__).resolve().parent.parent


class Payload:
    """Any object outside tensors, numbers and strings: loading it needs pickle."""


def test_common_never_imports_competitions():
    pattern = re.compile(r"^\s*(from|import)\s+competitions\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "common").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("module", ["bench.train", "bench.heads", "bench.pretrain", "bench.retrieval", "bench.deepfake",
                                    "bench.reid", "bench.oneshot"])
def test_every_benchmark_imports(module):
    import importlib

    assert callable(importlib.import_module(module).main)


def test_every_competition_follows_the_contract():
    for name in ("whales", "happywhale", "landmarks", "deepfake"):
        comp = load(name)
        assert comp.name == name and comp.task in TASKS and comp.config_path.is_file()
        for method in ("read_train", "read_test", "read_truth", "submission_frame", "validate_submission",
                       "write_submission", "write_demo"):
            assert callable(getattr(comp, method)), (name, method)
        assert load_config(comp.config_path, ["preset=smoke"]).competition == name


def test_registry_refuses_duplicates_and_explains_unknown_names():
    registry = Registry("test colour", keys=("paint.colour",), also=("none",))
    registry.add("red", 1)
    registry.add("green", 2)
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.add("red", 3)
    with pytest.raises(ConfigError, match=r"unknown test colour 'gren' \(paint.colour=gren\); did you mean 'green'\? "
                                          r"Choices: green, red, none"):
        registry.get("gren")
    registry.check_value("none", "paint.colour")  # an extra word the key accepts
    assert list(registry) == ["red", "green"] and registry["green"] == 2


BAD_VALUES = {
    "whales": ["model.head=arcfac", "model.loss=tripplet", "augment.train=heavy", "train.sampler=balanced",
               "model.backbone=resnet_18", "train.optimizer=adamm", "train.scheduler=cosin", "train.epochs=0",
               "train.epochs=abc", "data.image_size=[5,5]", "data.image_size=5", "train.folds=1",
               "train.run_folds=[5]", "train.lr=-1", "train.batch_size=0", "infer.neighbours=0",
               "model.embedding_dim=0", "loss.miner=hardest"],
    "landmarks": ["recognition.epoch_eval=every", "recognition.val_distractor_share=1.5"],
    "deepfake": ["calibrate.eps_grid=[0,0.01]", "infer.aggregation=vote", "faces.detector=mtcnn",
                 "calibrate.objective=brier", "blend.mode=sometimes"],
}


@pytest.mark.parametrize("name,value", [(n, v) for n, values in BAD_VALUES.items() for v in values])
def test_bad_values_are_refused_before_any_folder_exists(name, value, tmp_path, capsys):
    comp = load(name)
    code = main(comp, ["train", value, f"run.root={tmp_path / 'runs'}", "run.name=x", f"data.root={tmp_path / 'nodata'}",
                       f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_pretrain_refuses_an_unknown_pretext_task_before_any_folder(tmp_path, capsys):
    assert main(load("whales"), ["pretrain", "ssl.method=colorize", f"run.root={tmp_path / 'runs'}"]) == 2
    assert "unknown pretext task 'colorize'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def _finished_run(tmp_path: Path, name: str = "whales") -> tuple:
    comp = load(name)
    run = tmp_path / name / "r1"
    run.mkdir(parents=True)
    save_config(load_config(comp.config_path, ["run.name=r1", "infer.tta_flip=true"]), run / "config.yaml")
    return comp, run


def test_predict_keeps_the_saved_config_and_allows_only_inference_switches(tmp_path):
    comp, run = _finished_run(tmp_path)
    cls = TASKS.get(comp.task)
    cfg = load_config(comp.config_path, [f"run.root={tmp_path}", "run.name=r1", "infer.new_whale=false",
                                         "infer.batch_size=8", f"data.root={tmp_path}"])
    saved = predict_config(cls, cfg, run)
    assert saved.infer.tta_flip is True  # the run's own setting, not the YAML's (false for whales)
    assert saved.infer.new_whale is False and saved.infer.batch_size == 8 and saved.data.root == str(tmp_path)
    for refused in ("infer.tta_flip=false", "data.image_size=[32,64]", "model.head=cosface", "preset=smoke"):
        cfg = load_config(comp.config_path, [f"run.root={tmp_path}", "run.name=r1", refused])
        with pytest.raises(ConfigError, match=f"refused: {refused.split('=')[0]}"):
            predict_config(cls, cfg, run)


def test_predict_of_an_unfinished_run_is_a_clear_error(tmp_path, capsys):
    comp, _ = _finished_run(tmp_path)
    assert main(comp, ["predict", f"run.root={tmp_path}", "run.name=r1"]) == 2
    assert "metrics.json: missing" in capsys.readouterr().err


def test_video_predictor_loads_the_runs_folds_only(tmp_path):
    """Regression: predict used every fold*/best.pt, also folds another run_folds left behind."""
    from common.video.inference import VideoPredictor, build_classifier

    comp = load("deepfake")
    run = tmp_path / "run"
    cfg = load_config(comp.config_path, ["model.backbone=resnet10t", "train.run_folds=[1]"])
    for fold in (0, 1):
        (run / f"fold{fold}").mkdir(parents=True)
        torch.save({"model": build_classifier(cfg, pretrained=False).state_dict()}, run / f"fold{fold}" / "best.pt")
    save_config(cfg, run / "config.yaml")
    assert len(VideoPredictor.load(run).models) == 1
    assert len(VideoPredictor.load(run, [run / "fold0", run / "fold1"]).models) == 2
    (run / "fold1" / "best.pt").unlink()
    with pytest.raises(DataError, match="fold1/best.pt"):
        VideoPredictor.load(run)


def test_checkpoints_that_need_pickle_are_refused(tmp_path):
    from common.core.files import load_checkpoint

    torch.save({"model": {}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")


def test_embedding_uses_the_training_precision(monkeypatch):
    """Regression: embedding ran under fp16 autocast whatever training used (bf16 where supported)."""
    import common.engine.embed as embed
    from common.engine import precision

    assert precision.autocast_dtype("cpu") is None and precision.autocast_dtype("cuda", enabled=False) is None
    seen = []
    real = embed.autocast
    monkeypatch.setattr(embed, "autocast", lambda device, enabled: seen.append((str(device), enabled)) or real(device, enabled))

    class Model(torch.nn.Module):
        def embed(self, x):
            return x.flatten(1)

    data = torch.utils.data.TensorDataset(torch.ones(3, 2), torch.zeros(3))
    out = embed.extract_embeddings(Model(), data, batch_size=2, progress=False, amp=False)
    assert out.shape == (3, 2) and seen == [("cpu", False)] * 2


def test_identification_with_fewer_than_five_identities_in_a_gallery(tmp_path, capsys):
    """Regression: a query whose neighbours hold fewer than 5 identities crashed after training."""
    from competitions.whales.demo import write_demo

    root = write_demo(tmp_path / "data", n_identities=4, n_train=24, n_test=8, progress=False)
    comp = load("whales")
    assert main(comp, ["train", "preset=smoke", f"data.root={root}", f"run.root={tmp_path}", "run.name=few",
                       "infer.new_whale=false",
                       "progress=false", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    sub = pd.read_csv(tmp_path / "whales" / "few" / "submission.csv")
    counts = sub.Id.str.split().map(len)
    assert counts.between(1, 5).all() and (counts < 5).any()
    assert "test MAP@5" in capsys.readouterr().out


def test_class_balanced_and_binary_balanced_samplers_are_sharded_and_reproducible(monkeypatch):
    from common.data.loaders import SAMPLERS, make_loader
    from common.engine import distributed

    cfg = load_config(load("landmarks").config_path, ["train.batch_size=8", "data.num_workers=0"])
    labels = np.array([0] * 4 + [1] * 60)
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    assert {"random", "pk", "class_balanced", "binary_balanced"} <= set(SAMPLERS)
    for sampler in ("class_balanced", "binary_balanced", "random"):
        first = [b[0].tolist() for b in make_loader(cfg, data, labels, seed=3, sampler=sampler)]
        again = [b[0].tolist() for b in make_loader(cfg, data, labels, seed=3, sampler=sampler)]
        assert first == again and all(len(b) == 8 for b in first)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda: 1)
        half = [b[0].tolist() for b in make_loader(cfg, data, labels, seed=3, sampler=sampler)]
        monkeypatch.undo()
        assert half == [b[1::2] for b in first]  # rank 1 of 2: its slice of every global batch


def test_augmentations_follow_the_seed_in_the_main_process():
    """albumentations 2 ignores torch/numpy seeds; with num_workers=0 the loader seeds the pipeline
    itself, so two runs with one seed see the same augmented images (and another seed others)."""
    from common.data.augment import build_transform
    from common.data.images import ImageDataset
    from common.data.loaders import make_loader

    cfg = load_config(load("whales").config_path, ["train.batch_size=4", "data.num_workers=0"])
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(8)]
    labels = np.arange(8) % 2

    def batches(seed: int) -> list[torch.Tensor]:
        dataset = ImageDataset(images, np.arange(8), labels, build_transform("strong", (32, 32)))
        return [b[0] for b in make_loader(cfg, dataset, labels, seed=seed, sampler="random")]

    first, again, other = batches(3), batches(3), batches(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch, capsys):
    from common.engine import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(load("whales"), ["train", "nproc=2", "gpus=1", "run.root=/nonexistent"]) == 2
    assert "nproc=2 processes need 2 GPUs" in capsys.readouterr().err
    assert distributed.world_size() == 1
