"""Landmark Recognition 2020: the Kaggle file layout and the synthetic demo written in it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competitions.landmarks.demo import class_sizes, write_demo
from competitions.landmarks.layout import (format_prediction, image_path, list_images, read_sample_submission,
                                           read_train_csv, validate_submission)

SMALL = dict(n_landmarks=6, n_train=30, n_test=20, n_distractors=5, image_size=48, progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("landmarks") / "demo", **SMALL)


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "test_truth.csv", dtype=str, keep_default_na=False)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_image_path_nests_by_first_three_characters(tmp_path):
    assert image_path(tmp_path, "train", "17660ef415d37059") == tmp_path / "train/1/7/6/17660ef415d37059.jpg"
    with pytest.raises(ValueError, match="not alphanumeric"):
        image_path(tmp_path, "train", "../x")


def test_demo_has_the_exact_kaggle_layout(demo):
    train = read_train_csv(demo)
    assert list(pd.read_csv(demo / "train.csv").columns) == ["id", "landmark_id"]
    assert list(pd.read_csv(demo / "sample_submission.csv").columns) == ["id", "landmarks"]
    assert list(pd.read_csv(demo / "test_truth.csv").columns) == ["id", "landmarks"]
    assert list_images(demo, "train") == sorted(train["id"]) == list(train["id"])
    assert list_images(demo, "test") == list(read_sample_submission(demo)["id"])
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in train["id"])
    distractors = sorted((demo / "distractors").iterdir())
    assert len(distractors) == SMALL["n_distractors"] and all(p.suffix == ".jpg" for p in distractors)
    all_ids = list(train["id"]) + list(_truth(demo)["id"]) + [p.stem for p in distractors]
    assert len(set(all_ids)) == len(all_ids)


def test_demo_is_byte_for_byte_deterministic(demo, tmp_path):
    other = _all_bytes(write_demo(tmp_path / "again", **SMALL, seed=1))
    assert other["train.csv"] != _all_bytes(demo)["train.csv"]
    # rewriting the same folder replaces the other seed's files entirely
    assert _all_bytes(write_demo(tmp_path / "again", **SMALL)) == _all_bytes(demo)


def test_class_sizes_are_long_tailed():
    sizes = class_sizes(150, 1500, np.random.default_rng(0))
    assert sizes.sum() == 1500 and sizes.min() == 2 and sizes.max() == 50
    assert (sizes <= 3).sum() > 30  # a real tail, not a flat distribution
    with pytest.raises(ValueError, match="n_train"):
        class_sizes(10, 10, np.random.default_rng(0))


def test_demo_landmarks_are_sparse_ints_with_at_least_two_images(demo):
    counts = read_train_csv(demo)["landmark_id"].value_counts()
    assert len(counts) == SMALL["n_landmarks"] and counts.min() >= 2
    ids = np.sort(counts.index.to_numpy())
    assert ids.max() - ids.min() > len(ids)  # non-contiguous, like the real ids


def test_test_set_is_half_non_landmark_and_truth_matches_sample(demo):
    truth, sample = _truth(demo), read_sample_submission(demo)
    assert list(truth["id"]) == list(sample["id"])
    assert (sample["landmarks"] == "").all()
    assert (truth["landmarks"] == "").mean() == pytest.approx(0.5)
    known = set(read_train_csv(demo)["landmark_id"].astype(str))
    assert set(truth["landmarks"][truth["landmarks"] != ""]) <= known


def test_validate_submission_accepts_good_ones(demo):
    sample, truth = read_sample_submission(demo), _truth(demo)
    validate_submission(sample, sample)
    cells = [format_prediction(int(t), 0.75) if t else "" for t in truth["landmarks"]]
    good = pd.DataFrame({"id": truth["id"], "landmarks": cells})
    validate_submission(good, sample)
    validate_submission(good.assign(landmarks=[np.nan] + cells[1:]), sample)
    assert format_prediction(12, 0.5) == "12 0.500000"


@pytest.mark.parametrize("change, message", [
    (lambda df: df.rename(columns={"landmarks": "landmark"}), "columns"),
    (lambda df: df.iloc[:-1], "rows"),
    (lambda df: df.iloc[::-1].reset_index(drop=True), "same images, same order required"),
    (lambda df: df.assign(landmarks="12"), "malformed"),
    (lambda df: df.assign(landmarks="12 0.5 13 0.2"), "malformed"),
    (lambda df: df.assign(landmarks="abc 0.5"), "malformed"),
    (lambda df: df.assign(landmarks="12,0.5"), "malformed"),
])
def test_validate_submission_rejects_bad_ones(demo, change, message):
    sample = read_sample_submission(demo)
    good = sample.assign(landmarks=format_prediction(7, 0.1))
    with pytest.raises(ValueError, match=message):
        validate_submission(change(good), sample)


def test_format_prediction_rejects_bad_values():
    with pytest.raises(ValueError, match="not finite"):
        format_prediction(3, float("nan"))
    with pytest.raises(ValueError, match="non-negative integer"):
        format_prediction(-1, 0.5)


def test_read_train_csv_names_the_file_and_the_problem(demo, tmp_path):
    train = pd.read_csv(demo / "train.csv", dtype=str)
    train.drop(columns="landmark_id").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train\.csv.*missing column.*landmark_id"):
        read_train_csv(tmp_path)
    train.to_csv(tmp_path / "train.csv", index=False)  # images are not next to this copy
    with pytest.raises(ValueError, match=rf"train\.csv.*{len(train)} listed image\(s\) not found"):
        read_train_csv(tmp_path)
    assert len(read_train_csv(tmp_path, check_images=False)) == len(train)
    train.assign(landmark_id="x").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ValueError, match="is not an integer"):
        read_train_csv(tmp_path, check_images=False)
    with pytest.raises(ValueError, match="file not found"):
        read_sample_submission(tmp_path)


def test_list_images_rejects_misplaced_files(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "abc123.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="misplaced"):
        list_images(tmp_path, "test")
    with pytest.raises(ValueError, match="image folder not found"):
        list_images(tmp_path, "train")


def test_write_demo_never_overwrites_a_foreign_folder(demo, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a landmarks demo folder"):
        write_demo(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
