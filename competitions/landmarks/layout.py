"""File layout of Kaggle's Google Landmark Recognition 2020 data, and checks on it.

Why a module of its own: the real data (1.5 M training images) and the synthetic demo
(`demo.py`) share one layout, so readers, writers and validators must agree on it in a
single place.  The layout is::

    train.csv                 id,landmark_id      (one row per training image)
    train/a/b/c/abc....jpg    images, nested by the first three characters of the id
    test/a/b/c/abc....jpg
    sample_submission.csv     id,landmarks        (landmarks: "<landmark_id> <confidence>")

Every problem found raises `DataError` (a `ValueError`) whose message names the file and
what is wrong with it, so a user with a half-downloaded folder knows what to fix.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.errors import DataError
from common.data.tables import check_rows_match_sample

TRAIN_CSV = "train.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TRAIN_COLUMNS = ("id", "landmark_id")
SUBMISSION_COLUMNS = ("id", "landmarks")
_ID_PATTERN = re.compile(r"^[0-9a-zA-Z]{3,}$")
# "<non-negative int> <float>", e.g. "138982 0.87" or "7 1e-05"
_PREDICTION_PATTERN = r"\d+ [-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def image_path(root: str | Path, split: str, image_id: str) -> Path:
    """Path of one image: ``root/split/a/b/c/abc....jpg`` for id ``abc...``."""
    image_id = str(image_id)
    if not _ID_PATTERN.match(image_id):
        raise DataError(f"image id {image_id!r} is not alphanumeric with at least 3 characters")
    return Path(root) / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def list_images(root: str | Path, split: str) -> list[str]:
    """Sorted ids of every ``.jpg`` under ``root/split`` (checking each sits in its folder)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    ids = []
    for path in folder.rglob("*.jpg"):
        if path != image_path(root, split, path.stem):
            raise DataError(f"{path}: misplaced image, expected at {image_path(root, split, path.stem)}")
        ids.append(path.stem)
    return sorted(ids)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(columns)}, found {list(df.columns)}")
    if df["id"].duplicated().any():
        raise DataError(f"{path}: duplicated ids, e.g. {df['id'][df['id'].duplicated()].iloc[0]!r}")
    return df


def read_train_csv(root: str | Path, *, check_images: bool = True) -> pd.DataFrame:
    """``train.csv`` as a table ``id`` (str), ``landmark_id`` (int), ``path`` (Path).

    `check_images` stats every image (slow-ish on the full 1.5 M-image set) and fails on
    the first ones that are absent.
    """
    csv = Path(root) / TRAIN_CSV
    df = _read_csv(csv, TRAIN_COLUMNS)
    bad = ~df["landmark_id"].str.fullmatch(r"\d+")
    if bad.any():
        row = df[bad].iloc[0]
        raise DataError(f"{csv}: landmark_id {row['landmark_id']!r} of image {row['id']} is not an integer")
    df["landmark_id"] = df["landmark_id"].astype("int64")
    df["path"] = [image_path(root, "train", i) for i in df["id"]]
    if check_images:
        absent = [p for p in df["path"] if not p.is_file()]
        if absent:
            raise DataError(f"{csv}: {len(absent)} listed image(s) not found, e.g. {absent[0]}")
    return df


def read_sample_submission(root: str | Path) -> pd.DataFrame:
    """``sample_submission.csv`` as strings (empty ``landmarks`` stays ``""``; an id listed twice is an error)."""
    return _read_csv(Path(root) / SAMPLE_SUBMISSION_CSV, SUBMISSION_COLUMNS)


def _landmark_int(landmark_id) -> int:
    """``landmark_id`` as a non-negative int, or `DataError` naming it.

    Accepted: integers (Python or numpy), integral finite floats (``7.0``) and decimal digit
    strings (``"7"``). Anything else (``3.5``, ``"abc"``, None, NaN, a bool) is refused.
    """
    value = None
    if isinstance(landmark_id, (bool, np.bool_)):
        value = None
    elif isinstance(landmark_id, (int, np.integer)):
        value = int(landmark_id)
    elif isinstance(landmark_id, (float, np.floating)):
        if math.isfinite(landmark_id) and float(landmark_id).is_integer():
            value = int(landmark_id)
    elif isinstance(landmark_id, str):
        if re.fullmatch(r"\d+", landmark_id.strip()):
            value = int(landmark_id.strip())
    if value is None or value < 0:
        raise DataError(f"landmark id {landmark_id!r} is not a non-negative integer")
    return value


def _confidence_text(confidence) -> str:
    """The shortest decimal text that reads back as exactly ``confidence``, at least 6 decimals.

    Distinct values stay distinct (and keep their order) in the file, which GAP ranks by: a
    fixed ``%.6f`` would merge values that differ beyond the 6th decimal into ties. numpy's
    "unique" digits are those of the value's own type (float32 or float64); positional notation
    (never an exponent) keeps the cell readable by any parser.
    """
    value = confidence if isinstance(confidence, np.floating) else np.float64(confidence)
    return np.format_float_positional(value, unique=True, trim="k", min_digits=6)


def format_prediction(landmark_id: int, confidence: float) -> str:
    """One submission cell: ``"<landmark_id> <confidence>"``.

    The confidence is written round-trip exact (``float(text) == confidence``; see
    `_confidence_text`), e.g. ``"12 0.500000"``, ``"12 0.12345678"``. A landmark id that is not a
    non-negative integer, or a confidence that is not a finite number, raises `DataError`.
    """
    value = _landmark_int(landmark_id)
    try:
        finite = math.isfinite(confidence)
    except TypeError:
        finite = False
    if not finite or isinstance(confidence, (bool, np.bool_)):
        raise DataError(f"confidence {confidence!r} for landmark {value} is not finite (a number is required)")
    return f"{value} {_confidence_text(confidence)}"


def validate_submission(df: pd.DataFrame, sample_df: pd.DataFrame) -> None:
    """Raise `DataError` unless `df` has unique ids, the sample's ids in its order and well-formed cells.

    A cell is empty (or NaN: no landmark predicted) or exactly one ``"<int> <float>"`` pair.
    Duplicate ids are refused whatever `sample_df` is (a writer without a sample file passes
    the frame's own ids as `sample_df`).
    """
    if list(df.columns) != list(SUBMISSION_COLUMNS):
        raise DataError(f"submission: columns {list(df.columns)}, expected {list(SUBMISSION_COLUMNS)}")
    duplicated = df["id"].astype(str).duplicated(keep="first").to_numpy().nonzero()[0]
    if len(duplicated):
        i = duplicated[0]
        first = (df["id"].astype(str).to_numpy() == str(df["id"].iloc[i])).nonzero()[0][0]
        raise DataError(f"submission: {len(duplicated)} duplicated id(s), first {str(df['id'].iloc[i])!r} "
                        f"at rows {first} and {i}; each image must appear once")
    check_rows_match_sample(df, sample_df, "id", "submission", "image")
    ids = df["id"].astype(str).to_numpy()
    cells = df["landmarks"]
    filled = cells.notna() & (cells.astype(str).str.strip() != "")
    bad = filled & ~cells.astype(str).str.strip().str.fullmatch(_PREDICTION_PATTERN)
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise DataError(f"submission: {int(bad.sum())} malformed landmarks cell(s), first at row {i} "
                        f"(id {ids[i]}): {cells.iloc[i]!r}; expected empty or '<landmark_id> <confidence>'")
