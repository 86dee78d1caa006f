"""The whales demo data must look exactly like Kaggle's files and be reproducible byte for byte."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import pandas as pd
import pytest

from common.core.errors import DataError
from competitions.whales.demo import NEW_WHALE, main, validate_demo, write_demo

SMALL = dict(n_identities=20, n_train=80, n_test=30, image_size=(96, 48), progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("whales") / "demo", seed=3, **SMALL)


def _tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (pd.read_csv(root / "train.csv"), pd.read_csv(root / "test_truth.csv"),
            pd.read_csv(root / "sample_submission.csv"))


def test_files_and_columns_match_kaggle(demo):
    train, truth, sample = _tables(demo)
    assert {p.name for p in demo.iterdir()} == {"train", "test", "train.csv", "test_truth.csv", "sample_submission.csv"}
    for table in (train, truth, sample):
        assert list(table.columns) == ["Image", "Id"]
        assert table.Image.str.fullmatch(r"[0-9a-f]{9}\.jpg").all()
    assert len(train) == 80 and len(truth) == len(sample) == 30
    assert train.Id.str.fullmatch(r"w_[0-9a-f]{7}|new_whale").all()
    assert sorted(p.name for p in (demo / "train").iterdir()) == sorted(train.Image)
    assert sorted(p.name for p in (demo / "test").iterdir()) == sorted(truth.Image)
    assert not set(train.Image) & set(truth.Image)
    image = cv2.imread(str(demo / "train" / train.Image[0]))
    assert image.shape == (48, 96, 3)


def test_sample_submission_is_new_whale_plus_four_most_frequent(demo):
    train, truth, sample = _tables(demo)
    assert list(sample.Image) == list(truth.Image)
    assert sample.Id.nunique() == 1
    labels = sample.Id[0].split(" ")
    counts = train[train.Id != NEW_WHALE].Id.value_counts()
    assert labels[0] == NEW_WHALE and len(labels) == 5 and len(set(labels)) == 5
    assert [counts[w] for w in labels[1:]] == sorted(counts, reverse=True)[:4]


def test_identity_structure_is_long_tailed_and_open_set(demo):
    train, truth, _ = _tables(demo)
    known = train[train.Id != NEW_WHALE].Id.value_counts()
    assert len(known) == 20
    assert (known == 1).sum() >= 3, "singletons are the hard, realistic case"
    assert known.max() >= 4
    assert (train.Id == NEW_WHALE).mean() == pytest.approx(0.35, abs=0.02)
    test_new = (truth.Id == NEW_WHALE).mean()
    assert 0.25 <= test_new <= 0.45
    assert set(truth.Id) - {NEW_WHALE} <= set(known.index)


def test_same_seed_same_bytes_other_seed_other_data(demo, tmp_path):
    again = write_demo(tmp_path / "again", seed=3, **SMALL)
    for name in ("train.csv", "test_truth.csv", "sample_submission.csv"):
        assert (again / name).read_bytes() == (demo / name).read_bytes()
    for split in ("train", "test"):
        for image in (demo / split).iterdir():
            assert (again / split / image.name).read_bytes() == image.read_bytes(), image.name
    other = write_demo(tmp_path / "other", seed=4, **SMALL)
    assert (other / "train.csv").read_bytes() != (demo / "train.csv").read_bytes()


def test_photos_of_one_whale_differ(demo):
    train, _, _ = _tables(demo)
    whale = train[train.Id != NEW_WHALE].Id.value_counts().index[0]
    first, second = train[train.Id == whale].Image[:2]
    assert (demo / "train" / first).read_bytes() != (demo / "train" / second).read_bytes()


def test_rewrite_removes_stale_images(tmp_path):
    root = write_demo(tmp_path, seed=1, **SMALL)
    (root / "train" / "stale.jpg").write_bytes(b"x")
    write_demo(root, seed=2, **SMALL)
    validate_demo(root)


def test_validate_names_the_broken_file(demo, tmp_path):
    root = write_demo(tmp_path, seed=3, **SMALL)
    next((root / "test").iterdir()).unlink()
    with pytest.raises(DataError, match="test_truth.csv"):
        validate_demo(root)


def test_too_few_images_for_identities_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_identities"):
        write_demo(tmp_path, n_identities=60, n_train=80, n_test=30, progress=False)


def test_cli_writes_and_reports(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--n-identities", "8", "--n-train", "20", "--n-test", "6", "--seed", "5"])
    out = capsys.readouterr().out
    assert re.search(r"20 images, 8 whales", out)
    validate_demo(tmp_path / "cli")
