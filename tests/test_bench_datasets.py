"""ORL faces and Omniglot arranged as whale-format open-set datasets (bench.datasets).

Every written image is traced back to its source by content (pixels for ORL, file bytes for
Omniglot), so the checks do not trust the writer's own bookkeeping.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from bench.datasets import write_omniglot_whale_format, write_orl_whale_format
from common.core.errors import DataError
from competitions.whales import COMPETITION

NEW = "new_whale"


def _pixels_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _orl_sources(orl: Path) -> dict[str, str]:
    """Pixel hash -> subject folder name (s1..s40)."""
    found = {}
    for path in sorted(orl.glob("s*/*.pgm")):
        found[_pixels_key(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))] = path.parent.name
    assert len(found) == 400, "ORL images are expected to be pixel-distinct"
    return found


def _omniglot_sources(zip_path: Path) -> dict[str, tuple[str, int]]:
    """File-bytes hash -> (alphabet/characterNN, drawer)."""
    found = {}
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            if member.endswith(".png"):
                parts = member.split("/")
                drawer = int(parts[-1].split("_")[1].split(".")[0])
                found[hashlib.sha1(archive.read(member)).hexdigest()] = (f"{parts[-3]}/{parts[-2]}", drawer)
    return found


def _traced(root: Path, split: str, table: pd.DataFrame, key) -> pd.DataFrame:
    """Add the source of every listed image (via `key(path)`), checking the folder holds exactly those images."""
    assert sorted(p.name for p in (root / split).iterdir()) == sorted(table.Image)
    return table.assign(source=[key(root / split / name) for name in table.Image])


def _check_whale_layout(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The competition's own readers accept the folder; returns (train.csv, test_truth.csv)."""
    train, test, truth = COMPETITION.read_train(root), COMPETITION.read_test(root), COMPETITION.read_truth(root)
    assert truth is not None and sorted(truth.image) == sorted(test.image)
    assert {"train.csv", "sample_submission.csv", "test_truth.csv", "train", "test"} <= {p.name for p in root.iterdir()}
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sample.columns) == ["Image", "Id"]
    assert all(len(ids.split()) == 5 and ids.split()[0] == NEW for ids in sample.Id)
    assert set(sample.Id.iloc[0].split()[1:]) <= set(train.label)
    assert all(name.endswith(".png") and len(name) == len("012345678.png") for name in [*train.image, *test.image])
    return pd.read_csv(root / "train.csv", dtype=str), pd.read_csv(root / "test_truth.csv", dtype=str)


def _folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_orl_layout_and_open_set_split(shared_data, tmp_path):
    orl = shared_data / "orl_faces"
    root = write_orl_whale_format(orl, tmp_path / "orl")  # defaults: 10 held out, 5 train photos each
    assert root == tmp_path / "orl"
    train, truth = _check_whale_layout(root)
    sources = _orl_sources(orl)
    key = lambda path: sources[_pixels_key(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))]
    train, truth = _traced(root, "train", train, key), _traced(root, "test", truth, key)
    assert len(train) + len(truth) == 400 and not set(train.Image) & set(truth.Image)

    known = set(train.Id) - {NEW}
    assert len(known) == 30
    for subject, rows in train[train.Id != NEW].groupby("source"):
        assert set(rows.Id) == {f"s{int(subject[1:]):02d}"} and len(rows) == 5
    held_out = set(sources.values()) - set(train[train.Id != NEW].source)
    assert len(held_out) == 10
    assert not {f"s{int(s[1:]):02d}" for s in held_out} & set(train.Id)  # never under their own Id
    # Held-out people have 5 photos in train as new_whale, like known ones under their Id: same new share.
    assert set(train[train.Id == NEW].source) == held_out and (train.Id == NEW).sum() == 50
    assert (truth[truth.source.isin(held_out)].Id == NEW).all() and truth.source.isin(held_out).sum() == 50
    known_test = truth[~truth.source.isin(held_out)]
    assert len(known_test) == 150 and (known_test.Id == known_test.source.map(lambda s: f"s{int(s[1:]):02d}")).all()


def test_orl_is_deterministic_and_seeded(shared_data, tmp_path):
    orl = shared_data / "orl_faces"
    first = _folder_digest(write_orl_whale_format(orl, tmp_path / "a", seed=3))
    assert first == _folder_digest(write_orl_whale_format(orl, tmp_path / "b", seed=3))
    # Same folder, another seed: replaced by a different split, nothing left of the previous one.
    other = write_orl_whale_format(orl, tmp_path / "b", seed=4)
    assert set(pd.read_csv(other / "train.csv").Id) != set(pd.read_csv(tmp_path / "a" / "train.csv").Id)
    listed = {f"{split}/{name}" for split, csv in (("train", "train.csv"), ("test", "test_truth.csv"))
              for name in pd.read_csv(other / csv).Image}
    assert {p for p in _folder_digest(other) if "/" in p} == listed


def test_omniglot_layout_unseen_drawers_and_held_out_characters(shared_data, tmp_path):
    zip_path = shared_data / "omniglot" / "images_background_small1.zip"
    root = write_omniglot_whale_format(zip_path, tmp_path / "omni", n_characters=20, train_drawers=6,
                                       test_drawers=3, held_out_fraction=0.3, new_whale_train=1, seed=0)
    train, truth = _check_whale_layout(root)
    sources = _omniglot_sources(zip_path)
    key = lambda path: sources[hashlib.sha1(path.read_bytes()).hexdigest()]
    train, truth = _traced(root, "train", train, key), _traced(root, "test", truth, key)
    char = lambda s: s[0].replace("/", "_")

    labelled = train[train.Id != NEW]
    assert (labelled.Id == labelled.source.map(char)).all()
    known = set(labelled.Id)
    held_out = {char(s) for s in truth.source} - known
    assert (len(known), len(held_out)) == (14, 6)
    assert not held_out & set(train.Id)
    assert {char(s) for s in train[train.Id == NEW].source} == held_out and (train.Id == NEW).sum() == 6
    assert labelled.groupby("Id").size().eq(6).all()
    # Test drawers are people training never saw, the same 3 for every character.
    train_drawers = {s[1] for s in train.source}
    test_drawers = {s[1] for s in truth.source}
    assert len(train_drawers) == 6 and len(test_drawers) == 3 and not train_drawers & test_drawers
    assert len(truth) == 20 * 3
    for ident, source in zip(truth.Id, truth.source):
        assert ident == (NEW if char(source) in held_out else char(source))
    assert _folder_digest(root) == _folder_digest(
        write_omniglot_whale_format(zip_path, tmp_path / "again", n_characters=20, train_drawers=6,
                                    test_drawers=3, held_out_fraction=0.3, new_whale_train=1, seed=0))


def test_omniglot_unlabeled_rest_holds_every_other_character_and_nothing_of_the_task(shared_data, tmp_path):
    """unlabeled_rest: all 20 drawings of each character that is not an identity of the task (pretext
    images that are neither train nor test images), the task itself unchanged."""
    zip_path = shared_data / "omniglot" / "images_background_small1.zip"
    args = dict(n_characters=20, train_drawers=6, test_drawers=3, held_out_fraction=0.3, new_whale_train=1, seed=0)
    plain = write_omniglot_whale_format(zip_path, tmp_path / "plain", **args)
    root = write_omniglot_whale_format(zip_path, tmp_path / "rest", **args, unlabeled_rest=True)
    assert not (plain / "unlabeled").exists()
    digest = _folder_digest(root)
    assert {k: v for k, v in digest.items() if not k.startswith("unlabeled/") and k != ".arrangement.json"} == \
        {k: v for k, v in _folder_digest(plain).items() if k != ".arrangement.json"}
    sources = _omniglot_sources(zip_path)
    task = {sources[hashlib.sha1(p.read_bytes()).hexdigest()][0] for split in ("train", "test")
            for p in (root / split).iterdir()}
    rest = [sources[hashlib.sha1(p.read_bytes()).hexdigest()] for p in (root / "unlabeled").iterdir()]
    characters = {source[0] for source in sources.values()}
    assert len(task) == 20 and {c for c, _ in rest} == characters - task
    assert len(rest) == len(set(rest)) == 20 * len(characters - task)


def test_missing_sources_and_bad_arguments_are_data_errors(shared_data, tmp_path):
    with pytest.raises(DataError, match="not found"):
        write_orl_whale_format(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        write_omniglot_whale_format(tmp_path / "nothing.zip", tmp_path / "out")
    with pytest.raises(DataError, match="train_per_subject"):
        write_orl_whale_format(shared_data / "orl_faces", tmp_path / "out", train_per_subject=10)
    with pytest.raises(DataError, match="train_drawers"):
        write_omniglot_whale_format(shared_data / "omniglot" / "images_background_small1.zip", tmp_path / "out",
                                    train_drawers=15, test_drawers=10)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_orl_whale_format(shared_data / "orl_faces", tmp_path / "busy")
    assert (tmp_path / "busy" / "precious.txt").read_text() == "keep me"
