"""The synthetic Deepfake Detection Challenge data: exact layout, determinism, usable faces and fakes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.video.faces import HaarDetector
from common.video.frames import read_frames, video_info
from competitions.deepfake.demo import TEST_DIR, TRAIN_DIR, main, write_demo

SMALL = dict(n_real=3, fakes_per_real=3, n_test=6, n_frames=12, progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("deepfake_demo"), seed=0, **SMALL)


def _metadata(root: Path) -> dict:
    return json.loads((root / TRAIN_DIR / "metadata.json").read_text())


def test_layout_and_metadata_match_kaggle(demo):
    assert sorted(p.name for p in demo.iterdir()) == sorted(["sample_submission.csv", TEST_DIR, "test_truth.csv", TRAIN_DIR])
    metadata = _metadata(demo)
    train_files = sorted(p.name for p in (demo / TRAIN_DIR).glob("*.mp4"))
    assert sorted(metadata) == train_files and len(train_files) == 3 + 3 * 3
    for name, entry in metadata.items():
        assert re.fullmatch(r"[a-z]{10}\.mp4", name)
        assert list(entry) == ["label", "split", "original"]
        assert entry["split"] == "train" and entry["label"] in ("REAL", "FAKE")
        if entry["label"] == "REAL":
            assert entry["original"] is None  # JSON null, as in the Kaggle file
        else:  # every fake names an existing real video
            assert metadata[entry["original"]]["label"] == "REAL"
            assert (demo / TRAIN_DIR / entry["original"]).is_file()
    fakes_per_real = pd.Series([e["original"] for e in metadata.values() if e["original"]]).value_counts()
    assert len(fakes_per_real) == 3 and (fakes_per_real == 3).all()


def test_submission_and_truth_files(demo):
    test_files = sorted(p.name for p in (demo / TEST_DIR).glob("*.mp4"))
    sample = pd.read_csv(demo / "sample_submission.csv")
    truth = pd.read_csv(demo / "test_truth.csv")
    assert list(sample.columns) == ["filename", "label"] == list(truth.columns)
    assert sample.filename.tolist() == test_files == truth.filename.tolist()
    assert (sample.label == 0.5).all()
    assert sorted(truth.label.unique()) == [0, 1] and truth.label.sum() == 3
    assert not set(test_files) & set(_metadata(demo))


def test_same_seed_same_files_other_seed_other_names(demo, tmp_path):
    again = write_demo(tmp_path / "again", seed=0, **SMALL)
    for name in (f"{TRAIN_DIR}/metadata.json", "sample_submission.csv", "test_truth.csv"):
        assert (again / name).read_bytes() == (demo / name).read_bytes(), name
    for video in sorted(demo.glob("*/*.mp4")):  # H.264 encoding is deterministic too
        assert (again / video.parent.name / video.name).read_bytes() == video.read_bytes(), video.name
    other = write_demo(tmp_path / "other", seed=1, n_real=1, fakes_per_real=1, n_test=2, n_frames=4, progress=False)
    assert not set(_metadata(other)) & set(_metadata(demo))


def test_videos_decode_with_the_expected_shape(demo):
    for path in sorted(demo.glob("*/*.mp4")):
        info = video_info(path)
        assert (info["frames"], info["width"], info["height"]) == (12, 160, 120)
        assert read_frames(path, 12).shape == (12, 120, 160, 3)


def test_haar_finds_the_synthetic_faces(demo):
    detector = HaarDetector()
    hits = [len(detector.detect(frame)) > 0 for path in sorted(demo.glob("*/*.mp4")) for frame in read_frames(path, 6)]
    assert np.mean(hits) >= 0.8  # about 0.95-1.0 on the default set


def test_fakes_differ_from_their_original_inside_the_face_only(demo):
    metadata = _metadata(demo)
    detector = HaarDetector()
    for fake, entry in metadata.items():
        if entry["label"] != "FAKE":
            continue
        real_frames = read_frames(demo / TRAIN_DIR / entry["original"], 3).astype(np.float32)
        fake_frames = read_frames(demo / TRAIN_DIR / fake, 3).astype(np.float32)
        box = detector.detect(real_frames[0].astype(np.uint8))
        assert len(box), f"no face in {entry['original']}"
        x1, y1, x2, y2 = box[0, :4].astype(int)
        diff = np.abs(fake_frames - real_frames).mean(axis=(0, 3))
        face, inner_face = np.zeros(diff.shape, bool), np.zeros(diff.shape, bool)
        face[y1:y2, x1:x2] = True
        w, h = x2 - x1, y2 - y1
        inner_face[y1 + h // 4 : y2 - h // 4, x1 + w // 4 : x2 - w // 4] = True
        # outside the face only compression noise differs; inside, a clear but bounded change
        assert diff[inner_face].mean() > 3 * diff[~face].mean() + 1, fake
        assert diff[inner_face].mean() < 60, fake


def test_rewrite_removes_stale_videos_and_cli_works(tmp_path, capsys):
    stale = tmp_path / "demo" / TRAIN_DIR / "stale.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    main([str(tmp_path / "demo"), "--n-real", "1", "--fakes-per-real", "2", "--n-test", "2", "--n-frames", "4"])
    assert not stale.exists()
    assert len(_metadata(tmp_path / "demo")) == 3
    assert "2 FAKE" in capsys.readouterr().out


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_real"):
        write_demo(tmp_path, n_real=0, progress=False)
