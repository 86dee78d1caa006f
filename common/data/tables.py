"""Reading a competition's CSV files and folders with errors that name the file and the problem."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from common.core.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def read_csv_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV (ids kept as strings) and insist on the columns a competition's format requires."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column {', '.join(missing)} (found {', '.join(table.columns) or 'none'})")
    if table.empty:
        raise DataError(f"{path}: no rows")
    return table


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder, sorted; DataError when the folder is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    found = sorted(p for p in pattern if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"{folder}: empty folder (no images)")
    for path in found:
        check_utf8_name(path)
    return found


def files_table(spec: str | Path, id_column: str = "image", suffixes=IMAGE_SUFFIXES) -> pd.DataFrame:
    """`predict images=` / `embed images=`: a folder (searched recursively) or one file, as a table of
    `id_column` (the name relative to the folder, or the file's name) and `path`, sorted by name.
    DataError, naming the path, for a missing path, a file of another kind or a folder without any."""
    path = Path(spec).expanduser()
    kinds = ", ".join(sorted(suffixes))
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise DataError(f"{path}: not a file this command reads (expected one of {kinds})")
        check_utf8_name(path)
        return pd.DataFrame({id_column: [path.name], "path": [str(path.resolve())]})
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not found:
        raise DataError(f"{path}: empty folder (no {kinds} files in it or below)")
    for file in found:
        check_utf8_name(file)
    return pd.DataFrame({id_column: [p.relative_to(path).as_posix() for p in found],
                         "path": [str(p.resolve()) for p in found]})


def check_utf8_name(path: Path) -> None:
    """A file name that is not UTF-8 cannot be written to a submission: say which, by its bytes."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path.parent}: file name {os.fsencode(path.name)!r} is not valid UTF-8; rename it") from None


def confined(folder: Path, name: str, where: str) -> Path:
    """`folder/name`, refusing a name that leaves `folder` (an absolute path, or `..` parts): a
    competition file must not make the toolkit read outside its data root."""
    name = str(name)
    normal = os.path.normpath(name)
    if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
        raise DataError(f"{where}: {name!r} points outside {folder}")
    return Path(folder) / name


def resolve_distractors(cfg, root: Path) -> tuple[Path | None, list[Path]]:
    """The folder `recognition.distractors` (relative to the data root, or absolute) and its images.

    A missing default folder just switches distractors off (real data has none); a folder the
    user named explicitly (absolute path) must exist.
    """
    setting = cfg.recognition.distractors
    if setting in (None, "", False, "none"):
        return None, []
    folder = Path(str(setting)).expanduser()
    explicit = folder.is_absolute()
    folder = folder if explicit else root / folder
    if not folder.is_dir():
        if explicit:
            raise DataError(f"recognition.distractors={folder}: folder not found")
        print(f"no distractor folder {folder}: validation has no non-member queries and re-ranking is off "
              f"(set recognition.distractors=DIR to any folder of out-of-domain images)", flush=True)
        return None, []
    return folder, list_images(folder, recursive=True)


def image_table(csv: Path, columns: Sequence[str], image_column: str, folder: Path) -> pd.DataFrame:
    """A CSV listing images: the columns it must have, no image twice, every image present in
    `folder`; adds `path`. Errors name the CSV."""
    from common.data.images import check_files_exist

    table = read_csv_columns(csv, list(columns))
    names = table[image_column].astype(str)
    if names.duplicated().any():
        raise DataError(f"{csv}: image {names[names.duplicated()].iloc[0]} listed twice")
    table["path"] = [str(confined(folder, name, f"{csv}, row {i + 2}")) for i, name in enumerate(names)]
    check_files_exist(table.path, csv)
    return table


def test_images(root: Path, folder: str, sample_columns: Sequence[str]) -> pd.DataFrame:
    """Test images (`image, path`) in sample_submission.csv's order, or sorted without one; a missing
    or empty folder is an error naming it."""
    found = list_images(Path(root) / folder)
    sample = Path(root) / "sample_submission.csv"
    if not sample.exists():
        return pd.DataFrame({"image": [p.name for p in found], "path": [str(p) for p in found]})
    table = image_table(sample, sample_columns, sample_columns[0], Path(root) / folder)
    return pd.DataFrame({"image": table[sample_columns[0]].astype(str), "path": table.path})


def check_rows_match_sample(frame: pd.DataFrame, sample: pd.DataFrame, column: str, where: str, what: str) -> None:
    """The sample submission's rows, in its order, as Kaggle's scorers of these competitions expect."""
    if len(frame) != len(sample):
        raise DataError(f"{where}: {len(frame)} rows, sample_submission.csv has {len(sample)}")
    mismatch = frame[column].astype(str).to_numpy() != sample[column].astype(str).to_numpy()
    if mismatch.any():
        i = int(mismatch.argmax())
        raise DataError(f"{where}: row {i + 1} is {what} {frame[column].iloc[i]}, sample_submission.csv has "
                        f"{sample[column].iloc[i]} (same {what}s, same order required)")


def read_truth_csv(root: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    """The demo's test_truth.csv as `image, label` (columns: the id's, the label's); None without one."""
    path = Path(root) / "test_truth.csv"
    if not path.exists():
        return None
    table = read_csv_columns(path, list(columns))
    return pd.DataFrame({"image": table[columns[0]].astype(str), "label": table[columns[1]].astype(str)})
