"""Happywhale: the demo looks exactly like Kaggle's files, the readers and the validator refuse bad input
naming the file, species spelling slips are normalised with a note, and the config loads."""
from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd
import pytest

from common.core.competition import COMPETITIONS
from common.core.config import load_config
from common.core.errors import DataError
from competitions.happywhale import COMPETITION, SPECIES_FIXES, HappyWhale
from competitions.happywhale.demo import NEW_INDIVIDUAL, SPECIES, main, validate_demo, write_demo

SMALL = dict(n_identities=12, n_train=40, n_test=16, image_size=(64, 32), progress=False)
TRAIN_COLUMNS = ["image", "species", "individual_id"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("happywhale") / "demo", seed=3, **SMALL)


def _read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def _tiny_root(tmp_path: Path, rows: list[tuple[str, str, str]], columns=TRAIN_COLUMNS) -> Path:
    """A hand-made data root: train.csv from rows, an (empty) image file per row."""
    (tmp_path / "train_images").mkdir()
    for row in rows:
        (tmp_path / "train_images" / row[0]).write_bytes(b"")
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


# --- the demo ---------------------------------------------------------------------------------------

def test_demo_files_columns_and_names_match_kaggle(demo):
    train, truth, sample = (_read(demo, n) for n in ("train.csv", "test_truth.csv", "sample_submission.csv"))
    assert {p.name for p in demo.iterdir()} == {"train_images", "test_images", "train.csv", "test_truth.csv",
                                               "sample_submission.csv"}
    assert list(train.columns) == TRAIN_COLUMNS
    assert list(truth.columns) == ["image", "individual_id"]
    assert list(sample.columns) == ["image", "predictions"]
    for table in (train, truth, sample):
        assert table.image.str.fullmatch(r"[0-9a-f]{14}\.jpg").all()
    assert train.individual_id.str.fullmatch(r"[0-9a-f]{12}").all(), "train has no unknown label"
    assert truth.individual_id.str.fullmatch(r"[0-9a-f]{12}|new_individual").all()
    assert len(train) == 40 and len(truth) == len(sample) == 16 and train.individual_id.nunique() == 12
    assert sorted(p.name for p in (demo / "train_images").iterdir()) == sorted(train.image)
    assert sorted(p.name for p in (demo / "test_images").iterdir()) == sorted(truth.image)
    assert list(train.image) == sorted(train.image)
    assert cv2.imread(str(demo / "train_images" / train.image[0])).shape == (32, 64, 3)


def test_demo_species_include_every_raw_spelling(demo):
    species = set(_read(demo, "train.csv").species)
    assert set(SPECIES_FIXES) <= species, "each misspelt/merged name must occur so normalisation is exercised"
    assert {SPECIES_FIXES.get(s, s) for s in species} == set(SPECIES)


def test_demo_test_set_is_open_and_sample_is_new_individual_plus_four_most_frequent(demo):
    train, truth, sample = (_read(demo, n) for n in ("train.csv", "test_truth.csv", "sample_submission.csv"))
    assert (truth.individual_id == NEW_INDIVIDUAL).any() and (truth.individual_id != NEW_INDIVIDUAL).any()
    assert set(truth.individual_id) - {NEW_INDIVIDUAL} <= set(train.individual_id)
    assert list(sample.image) == list(truth.image) and sample.predictions.nunique() == 1
    labels = sample.predictions[0].split(" ")
    counts = train.individual_id.value_counts()
    assert labels[0] == NEW_INDIVIDUAL and len(set(labels)) == 5
    assert [counts[i] for i in labels[1:]] == sorted(counts, reverse=True)[:4]


def test_demo_same_seed_same_bytes_other_seed_other_data(demo, tmp_path):
    again = write_demo(tmp_path / "again", seed=3, **SMALL)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (again / name).read_bytes() == (demo / name).read_bytes(), name
    other = write_demo(tmp_path / "other", seed=4, **SMALL)
    assert (other / "train.csv").read_bytes() != (demo / "train.csv").read_bytes()


def test_demo_validation_and_cli(demo, tmp_path, capsys):
    validate_demo(demo)
    with pytest.raises(ValueError, match="n_identities"):
        write_demo(tmp_path / "few", n_identities=5, n_train=20, n_test=8, progress=False)
    root = main([str(tmp_path / "cli"), "--n-identities", "10", "--n-train", "11", "--n-test", "3"])
    assert "11 images, 10 individuals" in capsys.readouterr().out
    (root / "train_images" / _read(root, "train.csv").image[0]).unlink()
    with pytest.raises(DataError, match="train.csv"):
        validate_demo(root)


# --- readers ----------------------------------------------------------------------------------------

def test_read_train_normalises_species_with_one_note(demo, tmp_path, capsys):
    frame = COMPETITION.read_train(demo, None)
    assert list(frame.columns) == ["image", "label", "path", "species"]
    assert set(frame.species) == set(SPECIES)
    assert all(Path(p).is_file() for p in frame.path)
    rows = [("a.jpg", "bottlenose_dolpin", "111111111111"), ("b.jpg", "globis", "222222222222"),
            ("c.jpg", "pilot_whale", "222222222222"), ("d.jpg", "humpback_whale", "333333333333"),
            ("e.jpg", "kiler_whale", "444444444444")]
    capsys.readouterr()
    frame = COMPETITION.read_train(_tiny_root(tmp_path, rows), None)
    assert list(frame.species) == ["bottlenose_dolphin", "short_finned_pilot_whale", "short_finned_pilot_whale",
                                   "humpback_whale", "killer_whale"]
    assert list(frame.label) == [r[2] for r in rows]
    note = capsys.readouterr().out.strip().splitlines()
    assert len(note) == 1 and "train.csv" in note[0] and "4 rows" in note[0]
    for text in ("bottlenose_dolpin -> bottlenose_dolphin (1)", "kiler_whale -> killer_whale (1)",
                 "globis -> short_finned_pilot_whale (1)", "pilot_whale -> short_finned_pilot_whale (1)"):
        assert text in note[0]


def test_read_train_is_silent_when_nothing_is_renamed(tmp_path, capsys):
    COMPETITION.read_train(_tiny_root(tmp_path, [("a.jpg", "beluga_whale", "111111111111")]), None)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("case, message", [
    ("missing column", "missing column individual_id"),
    ("missing image", "does not exist"),
    ("duplicate image", "listed twice"),
    ("unknown label", "real individual"),
])
def test_read_train_errors_name_the_file(tmp_path, case, message):
    rows = [("a.jpg", "beluga", "111111111111"), ("b.jpg", "beluga", "222222222222")]
    if case == "missing column":
        root = _tiny_root(tmp_path, [r[:2] for r in rows], columns=["image", "species"])
    else:
        root = _tiny_root(tmp_path, rows)
        table = _read(root, "train.csv")
        if case == "missing image":
            (root / "train_images" / "b.jpg").unlink()
        elif case == "duplicate image":
            pd.concat([table, table.iloc[:1]]).to_csv(root / "train.csv", index=False)
        else:
            table.assign(individual_id=["111111111111", NEW_INDIVIDUAL]).to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=message) as error:
        COMPETITION.read_train(root, None)
    assert str(root / "train.csv") in str(error.value)


def test_read_test_follows_the_sample_or_sorts_the_folder(tmp_path):
    (tmp_path / "test_images").mkdir()
    names = ["c.jpg", "a.jpg", "b.jpg"]
    for name in names:
        (tmp_path / "test_images" / name).write_bytes(b"")
    assert list(COMPETITION.read_test(tmp_path).image) == ["a.jpg", "b.jpg", "c.jpg"]
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"image": names, "predictions": NEW_INDIVIDUAL}).to_csv(sample, index=False)
    frame = COMPETITION.read_test(tmp_path)
    assert list(frame.image) == names and list(frame.path) == [str(tmp_path / "test_images" / n) for n in names]
    for table, message in [(pd.DataFrame({"image": names}), "missing column predictions"),
                           (pd.DataFrame({"image": names + ["a.jpg"], "predictions": "x"}), "listed twice"),
                           (pd.DataFrame({"image": names + ["d.jpg"], "predictions": "x"}), "does not exist")]:
        table.to_csv(sample, index=False)
        with pytest.raises(DataError, match=message) as error:
            COMPETITION.read_test(tmp_path)
        assert str(sample) in str(error.value)


def test_read_truth(demo, tmp_path):
    truth = COMPETITION.read_truth(demo)
    assert list(truth.columns) == ["image", "label"] and (truth.label == NEW_INDIVIDUAL).any()
    assert list(truth.image) == list(COMPETITION.read_test(demo).image)
    assert COMPETITION.read_truth(tmp_path) is None


# --- submission -------------------------------------------------------------------------------------

SAMPLE = pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg"], "predictions": "new_individual x y z w"})


def test_validator_accepts_fewer_than_five_labels_in_any_order():
    frame = COMPETITION.submission_frame(["c.jpg", "a.jpg", "b.jpg"],
                                         [["x"], ["new_individual", "x", "y"], ["a", "b", "c", "d", "e"]])
    assert list(frame.columns) == ["image", "predictions"] and frame.predictions[1] == "new_individual x y"
    COMPETITION.validate_submission(frame, SAMPLE, where="sub.csv")
    COMPETITION.validate_submission(frame, None, where="sub.csv")


@pytest.mark.parametrize("change, message", [
    (lambda f: f.rename(columns={"predictions": "Id"}), "columns must be image,predictions"),
    (lambda f: f.iloc[:2], "missing"),
    (lambda f: pd.concat([f, pd.DataFrame({"image": ["d.jpg"], "predictions": ["x"]})]), "not in sample"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "appears twice"),
    (lambda f: f.assign(predictions=["x", "  ", "y"]), "no prediction"),
    (lambda f: f.assign(predictions=["x", None, "y"]), "no prediction"),
    (lambda f: f.assign(predictions=["a b c d e f", "x", "y"]), "6 labels"),
    (lambda f: f.assign(predictions=["a b a", "x", "y"]), "repeats a label"),
])
def test_validator_refuses_each_bad_case_naming_the_file(change, message):
    frame = COMPETITION.submission_frame(["a.jpg", "b.jpg", "c.jpg"], [["x"], ["y"], ["z"]])
    with pytest.raises(DataError, match=message) as error:
        COMPETITION.validate_submission(change(frame), SAMPLE, where="out/sub.csv")
    assert str(error.value).startswith("out/sub.csv:")


def test_write_submission_checks_against_the_demo_sample(demo, tmp_path):
    ids = COMPETITION.read_test(demo).image.tolist()
    path = COMPETITION.write_submission(ids, [[NEW_INDIVIDUAL, "abc"]] * len(ids), tmp_path / "sub.csv", demo)
    assert list(_read(path.parent, path.name).columns) == ["image", "predictions"]
    with pytest.raises(DataError, match="missing"):
        COMPETITION.write_submission(ids[1:], [["abc"]] * (len(ids) - 1), tmp_path / "bad.csv", demo)
    assert not (tmp_path / "bad.csv").exists()


# --- registration and config ------------------------------------------------------------------------

def test_registered_with_the_contract():
    assert COMPETITIONS.get("happywhale") is COMPETITION and isinstance(COMPETITION, HappyWhale)
    assert (COMPETITION.name, COMPETITION.slug, COMPETITION.task) == ("happywhale", "happy-whale-and-dolphin",
                                                                      "identification")
    assert COMPETITION.new_label == NEW_INDIVIDUAL == "new_individual"


def test_config_loads_with_and_without_the_smoke_preset():
    cfg = load_config(COMPETITION.config_path)
    assert cfg.competition == "happywhale" and cfg.data.image_size == [64, 128]
    assert (cfg.model.backbone, cfg.model.head, cfg.train.folds, cfg.train.epochs) == ("small_cnn", "arcface", 3, 10)
    assert cfg.infer.new_whale is True and cfg.infer.tta_flip is False
    smoke = load_config(COMPETITION.config_path, ["preset=smoke"])
    assert smoke.preset == "smoke" and smoke.train.epochs == 2 and smoke.data.image_size == [48, 96]
