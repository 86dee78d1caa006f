"""Image preparation before the cache: data.resize=pad, data.image_size=auto, data.normalize=auto,
data.boxes / data.box_margin (crop to a bounding box)."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import competitions.whales as whales
from common.core.config import load_config
from common.core.errors import ConfigError, DataError
from common.data.boxes import boxes_for, crop_region, read_boxes
from common.data.images import PAD_COLOUR, ImageCache, content_hash, fit_image, load_rgb
from common.models.input_config import (IMAGENET_MEAN, IMAGENET_STD, backbone_mean_std, normalization,
                                        resolve_input_config)

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)

GREEN, RED, BLUE = (0, 200, 0), (220, 20, 20), (20, 20, 230)


def _write(path: Path, img: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))  # PNG: lossless
    return path


def _wide_image(tmp_path: Path, name: str = "wide.png") -> Path:
    """200 wide x 100 high, green, a red rectangle in the middle."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[:] = GREEN
    img[30:70, 60:140] = RED
    return _write(tmp_path / name, img)


def _cached(paths, size, **kwargs) -> np.ndarray:
    return np.asarray(ImageCache(paths, size, None, workers=1, progress=False, **kwargs).array)


def _whales_cfg(*overrides):
    return load_config(whales.COMPETITION.config_path, list(overrides))


# --- data.resize ---------------------------------------------------------------------------------

def test_pad_keeps_the_aspect_ratio_and_centres_on_the_pad_colour(tmp_path):
    path = _wide_image(tmp_path)
    out = _cached([path], (64, 64), resize="pad")[0]
    # 200x100 into 64x64: scale 0.32 -> 64 wide, 32 high, rows 16..47
    assert np.all(out[:16] == PAD_COLOUR) and np.all(out[48:] == PAD_COLOUR)
    content = cv2.resize(load_rgb(path), (64, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out[16:48], content)
    assert np.all(out[16:48, 0] == GREEN) and np.all(out[32, 24:40] == RED)  # the rectangle keeps its shape
    assert tuple(out[30, 32]) == RED and tuple(out[17, 2]) == GREEN
    # a tall image pads left and right instead
    tall = _write(tmp_path / "tall.png", np.ascontiguousarray(load_rgb(path).transpose(1, 0, 2)))
    out = _cached([tall], (64, 64), resize="pad")[0]
    assert np.all(out[:, :16] == PAD_COLOUR) and np.all(out[:, 48:] == PAD_COLOUR)
    assert np.array_equal(out[:, 16:48], cv2.resize(load_rgb(tall), (32, 64), interpolation=cv2.INTER_AREA))
    # a non-square target: 200x100 into 48x64 (h, w) is limited by the width -> 64x32, rows 8..39
    assert fit_image(load_rgb(path), (48, 64), "pad")[8:40].tolist() == content.tolist()


def test_stretch_is_unchanged_and_keeps_its_cache_key(tmp_path):
    paths = [_wide_image(tmp_path, "a.png"), _write(tmp_path / "b.png", np.full((37, 53, 3), 90, np.uint8))]
    out = _cached(paths, (32, 48))
    for i, p in enumerate(paths):
        assert np.array_equal(out[i], cv2.resize(load_rgb(p), (48, 32), interpolation=cv2.INTER_AREA))
    h = hashlib.sha1(repr((32, 48)).encode())  # the key as it was before data.resize / data.boxes existed
    for p in paths:
        h.update(f"{p}|{content_hash(p)}\n".encode())
    old = h.hexdigest()[:20]
    key = lambda **kw: ImageCache(paths, (32, 48), None, workers=1, progress=False, **kw)._key()  # noqa: E731
    assert key() == old and key(resize="stretch") == old and key(boxes=[None, None]) == old
    assert key(resize="pad") != old
    cache = tmp_path / "cache"
    ImageCache(paths, (32, 48), cache, workers=1, progress=False)
    assert (cache / f"{old}.u8").is_file() and (cache / f"{old}.json").is_file()


# --- data.image_size=auto, data.normalize=auto -----------------------------------------------------

@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2", "resnet18"])
def test_image_size_auto_is_the_backbones_pretrained_input_size(backbone):
    from timm.models import get_pretrained_cfg

    _, height, width = get_pretrained_cfg(backbone).input_size
    cfg = resolve_input_config(_whales_cfg("data.image_size=auto", f"model.backbone={backbone}"), "train")
    assert cfg.data.image_size == [height, width]
    assert cfg.data.image_size == {"efficientnet_lite0": [224, 224], "efficientnet_lite2": [260, 260],
                                   "resnet18": [224, 224]}[backbone]
    assert cfg.command_line_keys  # resolved in place: predict/resume still see the command line's keys


def test_image_size_auto_without_a_pretrained_config_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.image_size=auto.*small_cnn"):
        resolve_input_config(_whales_cfg("data.image_size=auto", "model.backbone=small_cnn"), "train")
    with pytest.raises(ConfigError, match=r"data\.image_size=auto.*not a timm model"):
        resolve_input_config(_whales_cfg("data.image_size=auto", "model.backbone=resnet_18"), "train")
    # predict/export work from the run's saved (concrete) config: the command line's auto may stay
    cfg = resolve_input_config(_whales_cfg("data.image_size=auto", "model.backbone=small_cnn"), "predict")
    assert cfg.data.image_size == "auto"
    # a concrete size is left alone
    assert resolve_input_config(_whales_cfg(), "train").data.image_size == [64, 128]


def test_the_cli_resolves_auto_before_validation_and_the_command_sees_it(monkeypatch):
    from common.core import cli
    from common.core.validate import validate_config
    from common.tasks import TASKS

    seen = []
    monkeypatch.setattr(cli, "run_command", lambda spec, comp, cfg, args=(): seen.append(cfg))
    assert cli.main(whales.COMPETITION, ["train", "data.image_size=auto", "model.backbone=efficientnet_lite0"]) == 0
    (cfg,) = seen
    assert cfg.data.image_size == [224, 224] and "data.image_size" in cfg.command_line_keys
    validate_config(cfg, TASKS.get("identification"))
    assert cli.main(whales.COMPETITION, ["train", "data.image_size=auto"]) == 2  # whales' small_cnn


def test_normalize_auto_is_the_backbones_mean_and_std():
    from timm.models import get_pretrained_cfg

    lite0 = get_pretrained_cfg("efficientnet_lite0")
    assert backbone_mean_std("efficientnet_lite0") == (tuple(lite0.mean), tuple(lite0.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    assert backbone_mean_std("vit_tiny_patch16_224") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_mean_std("small_cnn") == (IMAGENET_MEAN, IMAGENET_STD)  # no pretrained config: ImageNet's
    auto = _whales_cfg("data.normalize=auto", "model.backbone=vit_tiny_patch16_224")
    assert normalization(auto) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization(_whales_cfg("model.backbone=vit_tiny_patch16_224")) == (IMAGENET_MEAN, IMAGENET_STD)
    del auto.data["normalize"]  # a run saved before the key existed
    assert normalization(auto) == (IMAGENET_MEAN, IMAGENET_STD)


def test_image_set_normalises_with_the_configured_mean_and_std(tmp_path):
    from common.data.image_set import ImageSet

    path = _write(tmp_path / "grey.png", np.full((20, 30, 3), 153, np.uint8))
    table = pd.DataFrame({"image": ["grey.png"], "path": [str(path)]})
    for backbone, normalize, mean, std in [("vit_tiny_patch16_224", "auto", 0.5, 0.5),
                                           ("vit_tiny_patch16_224", "imagenet", IMAGENET_MEAN[0], IMAGENET_STD[0])]:
        cfg = _whales_cfg(f"model.backbone={backbone}", f"data.normalize={normalize}", "data.image_size=[16,16]",
                          f"data.cache_dir={tmp_path / 'cache'}", "progress=false")
        images = ImageSet(cfg, "whales", table, table.iloc[:0])
        x = images.dataset([0])[0][0]
        assert x.shape == (3, 16, 16)
        assert float(x[0, 0, 0]) == pytest.approx((153 / 255 - mean) / std, abs=1e-5)


# --- data.boxes ----------------------------------------------------------------------------------

def _boxes_csv(tmp_path: Path, rows, name: str = "boxes.csv", header: str = "image,x0,y0,x1,y1") -> Path:
    file = tmp_path / name
    file.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return file


def test_crop_region_grows_by_the_margin_and_clips_at_the_borders():
    assert crop_region((50, 20, 150, 60), 0.0, 200, 100) == (50, 20, 150, 60)
    assert crop_region((50, 20, 150, 60), 0.1, 200, 100) == (40, 16, 160, 64)  # 10% of 100 wide, 40 high
    assert crop_region((0, 0, 100, 50), 0.2, 200, 100) == (0, 0, 120, 60)  # clipped at the top-left
    assert crop_region((150, 50, 250, 120), 0.1, 200, 100) == (140, 43, 200, 100)  # and at the bottom-right
    assert crop_region((10.4, 5.6, 20.2, 9.1), 0.0, 200, 100) == (10, 5, 21, 10)  # outwards to whole pixels
    with pytest.raises(DataError, match=r"boxes\.csv: the box of img\.jpg .*outside the image, which is 200x100"):
        crop_region((210, 10, 260, 50), 0.1, 200, 100, image="img.jpg", source="boxes.csv")


def test_the_cache_holds_the_crop_with_its_margin(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    img[:] = GREEN
    img[20:60, 50:150] = BLUE  # the marked box: x 50..150, y 20..60
    img[20, 50] = RED  # a marked corner, to see the crop is not flipped or shifted
    path = _write(tmp_path / "marked.png", img)
    exact = _cached([path], (40, 100), boxes=[(50, 20, 150, 60)], box_margin=0.0)[0]
    assert np.array_equal(exact, img[20:60, 50:150]) and tuple(exact[0, 0]) == RED
    grown = _cached([path], (48, 120), boxes=[(50, 20, 150, 60)], box_margin=0.1)[0]
    assert np.array_equal(grown, img[16:64, 40:160])  # 10 px more left/right, 4 px more top/bottom
    assert np.all(grown[:4] == GREEN) and np.all(grown[4:44, 10:110] == img[20:60, 50:150])
    padded = _cached([path], (64, 64), resize="pad", boxes=[(50, 20, 150, 60)], box_margin=0.0)[0]
    assert np.all(padded[:16] == PAD_COLOUR) and np.all(padded[48:] == PAD_COLOUR)  # 100x40 crop -> 64x26 (rows 19..44)
    assert np.all(padded[20:44, 1:63] == BLUE)
    clipped = _cached([path], (60, 120), boxes=[(0, 0, 100, 50)], box_margin=0.2)[0]
    assert np.array_equal(clipped, img[0:60, 0:120])
    whole = _cached([path, path], (50, 100), boxes=[None, (50, 20, 150, 60)], box_margin=0.0)
    assert np.array_equal(whole[0], cv2.resize(img, (100, 50), interpolation=cv2.INTER_AREA))


def test_several_rows_of_one_image_are_its_union_and_names_match_by_file_name(tmp_path):
    file = _boxes_csv(tmp_path, [("a.jpg", 10, 20, 30, 40), ("a.jpg", 25, 5, 60, 35), ("train/b.jpg", 1, 2, 3, 4),
                                 ("c", 0, 0, 5, 5), ("unused.jpg", 0, 0, 9, 9)])
    table = read_boxes(file)
    assert table["a.jpg"] == (10, 5, 60, 40) and table["b.jpg"] == (1, 2, 3, 4)
    paths = ["/data/train/a.jpg", "/data/test/b.jpg", "/data/train/c.jpg", "/data/train/d.jpg"]
    boxes, unused = boxes_for(table, paths, ["a.jpg", "b.jpg", "c", None])
    assert boxes == [(10, 5, 60, 40), (1, 2, 3, 4), (0, 0, 5, 5), None]  # c: by the table's own image id
    assert unused == 1


def test_the_cache_key_changes_with_a_box_and_its_margin(tmp_path):
    paths = [_wide_image(tmp_path, "a.png"), _wide_image(tmp_path, "b.png")]

    def key(boxes, margin=0.1):
        return ImageCache(paths, (32, 32), None, workers=1, progress=False, boxes=boxes, box_margin=margin)._key()

    base = key([(10, 10, 90, 60), None])
    assert key([(10, 10, 90, 60), None]) == base
    assert key([(10, 10, 90, 61), None]) != base
    assert key([(10, 10, 90, 60), None], margin=0.2) != base
    assert key([(10, 10, 90, 60), (0, 0, 5, 5)]) != base
    assert key([None, None]) == key(None) != base
    assert key(None, margin=0.3) == key(None)  # the margin matters only where there is a box


@pytest.mark.parametrize("case, rows, header, message", [
    ("missing columns", [("a.jpg", 1, 2, 3)], "image,x0,y0,x1", r"missing column y1"),
    ("non-numeric", [("a.jpg", 1, 2, 3, 4), ("b.jpg", 1, "two", 3, 4)], None, r"row 3 \(image b\.jpg\): y0='two' is not a number"),
    ("empty value", [("a.jpg", 1, 2, "", 4)], None, r"row 2 \(image a\.jpg\): x1='' is not a number"),
    ("inverted x", [("a.jpg", 30, 2, 10, 4)], None, r"row 2 \(image a\.jpg\): inverted or empty box"),
    ("inverted y", [("a.jpg", 1, 9, 3, 4)], None, r"row 2 \(image a\.jpg\): inverted or empty box"),
    ("empty box", [("a.jpg", 3, 2, 3, 4)], None, r"row 2 \(image a\.jpg\): inverted or empty box"),
    ("left of the image", [("a.jpg", -30, 2, -10, 4)], None, r"row 2 \(image a\.jpg\).*entirely outside"),
])
def test_bad_boxes_csv_is_a_data_error_naming_the_file_and_row(tmp_path, case, rows, header, message):
    file = _boxes_csv(tmp_path, rows, header=header or "image,x0,y0,x1,y1")
    with pytest.raises(DataError, match=re.escape(str(file)) + ".*" + message):
        read_boxes(file)


def test_a_missing_boxes_file_or_a_box_outside_its_image_is_a_data_error(tmp_path):
    from common.data.image_set import ImageSet

    with pytest.raises(DataError, match=r"data\.boxes=.*nope\.csv: file not found"):
        read_boxes(tmp_path / "nope.csv")
    path = _wide_image(tmp_path, "a.png")
    table = pd.DataFrame({"image": ["a.png"], "path": [str(path)]})
    cache = tmp_path / "cache"

    def image_set(file):
        cfg = _whales_cfg(f"data.boxes={file}", f"data.cache_dir={cache}", "progress=false", "data.image_size=[16,16]")
        return ImageSet(resolve_input_config(cfg, "train"), "whales", table, table.iloc[:0])

    with pytest.raises(DataError, match="nope.csv"):
        image_set(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="inverted"):
        image_set(_boxes_csv(tmp_path, [("a.png", 30, 2, 10, 4)], name="bad.csv"))
    assert not cache.exists()  # refused before any cache entry
    outside = _boxes_csv(tmp_path, [("a.png", 250, 10, 300, 50)], name="outside.csv")
    with pytest.raises(DataError, match=rf"{re.escape(outside.name)}: the box of .*a\.png .*outside the image, which is 200x100"):
        image_set(outside)


def test_image_set_crops_train_and_test_alike_and_says_how_many_are_whole(tmp_path, capsys):
    from common.data.image_set import ImageSet

    img = np.zeros((100, 200, 3), np.uint8)
    img[:] = GREEN
    img[20:60, 50:150] = BLUE
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    train_dir.mkdir(), test_dir.mkdir()
    paths = [_write(train_dir / "t1.png", img), _write(train_dir / "t2.png", img), _write(test_dir / "q1.png", img)]
    file = _boxes_csv(tmp_path, [("t1.png", 50, 20, 150, 60), ("test/q1.png", 50, 20, 150, 60)])
    cfg = _whales_cfg(f"data.boxes={file}", "data.box_margin=0", f"data.cache_dir={tmp_path / 'cache'}",
                      "progress=false", "data.image_size=[20,50]")
    train = pd.DataFrame({"image": ["t1.png", "t2.png"], "path": list(map(str, paths[:2]))})
    test = pd.DataFrame({"image": ["q1.png"], "path": [str(paths[2])]})
    images = ImageSet(cfg, "whales", train, test)
    assert "2 of 3 images cropped to their box (margin 0.0), 1 without a row used whole" in capsys.readouterr().out
    assert np.all(images.images[0] == BLUE) and np.all(images.images[2] == BLUE)
    assert np.array_equal(images.images[1], cv2.resize(img, (50, 20), interpolation=cv2.INTER_AREA))


def test_a_bad_boxes_csv_is_refused_before_the_run_folder(tmp_path, capsys):
    from common.core.cli import main

    bad = _boxes_csv(tmp_path, [("a.jpg", 1, 2, 3)], header="image,x0,y0,x1")
    runs = tmp_path / "runs"
    code = main(whales.COMPETITION, ["train", "preset=smoke", f"data.boxes={bad}", f"run.root={runs}",
                                     f"data.cache_dir={runs / 'cache'}", "run.name=x", "progress=false"])
    assert code == 2
    assert f"{bad}: missing column y1" in capsys.readouterr().err
    assert not runs.exists()


# --- end to end ------------------------------------------------------------------------------------

def test_smoke_train_with_pad_and_boxes_then_predict(tmp_path):
    """./run.sh whales train with data.resize=pad and data.boxes, on a small demo; then predict from the
    run's saved config (concrete, with the same preparation: it reuses the cache entry)."""
    from competitions.whales.demo import write_demo

    root = write_demo(tmp_path / "demo", n_identities=12, n_train=48, n_test=16, progress=False)
    files = sorted((root / "train").glob("*.jpg")) + sorted((root / "test").glob("*.jpg"))
    rows = []
    for i, f in enumerate(files):  # the demo photos are 256x128 (2:1, as the smoke size 48x96)
        if i % 8:  # every 8th image has no row: used whole
            rows.append((f.name, 16, 8, 176, 120))  # 160x112: padded left and right
        if i % 8 and i % 5 == 0:
            rows.append((f.name, 0, 0, 100, 60))  # a second row: the union, 176x120
    boxes = _boxes_csv(tmp_path, rows)
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    common = [f"data.root={root}", f"run.root={runs}", "run.name=s", "progress=false", "threads=1",
              "data.num_workers=0", f"data.cache_dir={cache}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(REPO / "run.sh"), "whales", "train", "preset=smoke", "data.resize=pad",
                           f"data.boxes={boxes}", "data.box_margin=0.05", *common],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    whole = sum(1 for i in range(len(files)) if i % 8 == 0)
    assert f"{len(files) - whole} of {len(files)} images cropped to their box (margin 0.05), {whole} without" in done.stdout
    saved = yaml.safe_load((runs / "whales" / "s" / "config.yaml").read_text())
    assert saved["data"]["resize"] == "pad" and saved["data"]["boxes"] == str(boxes)
    assert saved["data"]["box_margin"] == 0.05 and saved["data"]["image_size"] == [48, 96]
    entries = sorted(cache.rglob("*.u8"))
    assert len(entries) == 1
    array = np.memmap(entries[0], np.uint8, "r").reshape(len(files), 48, 96, 3)
    order = [*pd.read_csv(root / "train.csv").Image, *pd.read_csv(root / "sample_submission.csv").Image]
    boxed = {f.name for i, f in enumerate(files) if i % 8}
    # a boxed crop (about 176x124 with the margin) is padded to 48x96 left and right; a whole 2:1 photo is not
    padded = [bool(np.all(array[row, :, :10] == PAD_COLOUR) and np.all(array[row, :, -10:] == PAD_COLOUR))
              for row in range(len(order))]
    assert padded == [name in boxed for name in order]
    from common.core.cli import main

    out = tmp_path / "pred.csv"
    assert main(whales.COMPETITION, ["predict", *common, f"out={out}"]) == 0
    assert len(pd.read_csv(out)) == 16
    assert sorted(cache.rglob("*.u8")) == entries  # the same preparation, the same entry
