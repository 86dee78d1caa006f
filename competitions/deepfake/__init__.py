"""Deepfake Detection Challenge (Kaggle 2019-20): the data format, the demo data and the choices.

Everything else is shared: face crops cached once (`common.video.face_cache`), the video classification
flow (`common.tasks.video`: folds grouped by original video, frame classifier, per-video
aggregation, calibration tuned on out-of-fold log loss), the one inference path used by `predict`
and by the offline Kaggle kernel (`common.video.inference`), and the kernel folder (`common.kaggle.kernel`).

The competition object follows `common.core.competition.Competition` (task `video`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.core.competition import COMPETITIONS, Competition
from common.data.images import check_files_exist
from common.core.errors import ConfigError, DataError
from common.data.tables import confined, read_csv_columns

NAME = "deepfake"
SLUG = "deepfake-detection-challenge"
CONFIG_PATH = Path(__file__).parent / "config.yaml"
TEST_DIR = "test_videos"
LABELS = {"REAL": 0, "FAKE": 1}
MISSING_ORIGINAL = ("error", "keep")


def _read_metadata(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty mapping of video file name -> {{label, split, original}}")
    return data


class Deepfake(Competition):
    """<folder>/metadata.json + mp4s for training, test_videos/, submission `filename,label` (P(FAKE))."""

    name, slug, task = NAME, SLUG, "video"
    config_path = CONFIG_PATH
    weight_files = ("config.yaml", "metrics.json", "calibration.json", "fold*/best.pt")
    commands = {"detect": "common.tasks.video:detect"}  # fill the face cache alone

    def write_demo(self, root) -> Path:
        from .demo import write_demo

        return write_demo(root)

    def read_train(self, root: Path, cfg: Any = None) -> pd.DataFrame:
        """Every `<folder>/metadata.json` under root (train_sample_videos/, dfdc_train_part_<k>/).

        Returns columns video, path, label (1 = FAKE), original, group: a fake is grouped with the
        real video it was made from, so the two never fall in different folds. A fake whose
        `original` is not listed in any metadata.json is an error (`missing_original=error`), or is
        kept and grouped under the missing original's name (`keep`; Kaggle's 400-video sample lacks
        many originals).
        """
        missing_original = cfg.video.missing_original if cfg is not None else "error"
        if missing_original not in MISSING_ORIGINAL:
            raise ConfigError(f"video.missing_original={missing_original!r}; choose from {', '.join(MISSING_ORIGINAL)}")
        files = sorted(p for p in Path(root).glob("*/metadata.json") if p.parent.name != TEST_DIR)
        if not files:
            raise DataError(f"{root}: no training folder with a metadata.json (expected train_sample_videos/ "
                            "or dfdc_train_part_<k>/ as in the Kaggle download)")
        rows, listed_in = [], {}
        for meta_path in files:
            for video, entry in _read_metadata(meta_path).items():
                if video in listed_in:
                    raise DataError(f"{meta_path}: video {video} is also listed in {listed_in[video]}")
                label = entry.get("label") if isinstance(entry, dict) else None
                if label not in LABELS:
                    raise DataError(f"{meta_path}: video {video} has label {label!r}; expected REAL or FAKE")
                original = entry.get("original") if label == "FAKE" else None
                listed_in[video] = meta_path
                rows.append({"video": video, "path": str(confined(meta_path.parent, video, f"{meta_path}, key {video!r}")),
                             "label": LABELS[label],
                             "original": original or ""})
        frame = pd.DataFrame(rows)
        missing = frame[(frame.original != "") & ~frame.original.isin(frame.video)]
        if len(missing) and missing_original == "error":
            first = missing.iloc[0]
            raise DataError(f"{listed_in[first.video]}: fake {first.video} names original {first.original}, which no "
                            f"metadata.json lists ({len(missing)} fakes affected); add the original's folder, or pass "
                            "video.missing_original=keep to group such fakes under the missing name")
        frame["group"] = np.where(frame.original != "", frame.original, frame.video)
        check_files_exist(frame.path, files[0] if len(files) == 1 else f"{root}/*/metadata.json")
        return frame

    def read_test(self, root: Path) -> pd.DataFrame:
        """Test videos in sample_submission.csv's order (or sorted, without one)."""
        folder = Path(root) / TEST_DIR
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
        sample = Path(root) / "sample_submission.csv"
        if sample.exists():
            listed = read_csv_columns(sample, ["filename", "label"]).filename.astype(str)
            if listed.duplicated().any():
                raise DataError(f"{sample}: video {listed[listed.duplicated()].iloc[0]} listed twice")
            names = listed.tolist()
        else:
            names = sorted(p.name for p in folder.glob("*.mp4"))
        if not names:
            raise DataError(f"{folder}: no .mp4 videos")
        frame = pd.DataFrame({"video": names, "path": [str(folder / n) for n in names]})
        check_files_exist(frame.path, sample if sample.exists() else folder)
        return frame

    def read_truth(self, root: Path) -> pd.DataFrame | None:
        """test_truth.csv (`filename,label`, 1 = fake) of the demo data; None on Kaggle's data."""
        path = Path(root) / "test_truth.csv"
        if not path.exists():
            return None
        table = read_csv_columns(path, ["filename", "label"])
        labels = pd.to_numeric(table.label, errors="coerce")
        if not labels.isin([0, 1]).all():
            raise DataError(f"{path}: label must be 0 or 1")
        return pd.DataFrame({"video": table.filename.astype(str), "label": labels.astype(int)})

    def submission_frame(self, ids: Sequence[str], answers: Sequence[float]) -> pd.DataFrame:
        return pd.DataFrame({"filename": list(ids), "label": np.asarray(answers, dtype=np.float64)})

    def validate_submission(self, frame: pd.DataFrame, sample: pd.DataFrame | None, where: str) -> None:
        from .submission import validate_submission

        validate_submission(frame, sample, where=where)


COMPETITION = COMPETITIONS.register("deepfake")(Deepfake())
