"""Humpback Whale Identification (Kaggle 2018-19): the data format, the demo data and the choices.

Everything else (folds, training, retrieval, thresholding) is the shared open-set identification
flow in `common.tasks.identification`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.core.cli import lazy_command
from common.data.images import check_files_exist
from common.core.errors import DataError
from common.data.tables import read_csv_columns, list_images

NAME = "whales"
SLUG = "humpback-whale-identification"
NEW_LABEL = "new_whale"
CONFIG_PATH = Path(__file__).parent / "config.yaml"


class Whales:
    name, slug, new_label, config_path = NAME, SLUG, NEW_LABEL, CONFIG_PATH

    @staticmethod
    def write_demo(root) -> Path:
        from .demo import write_demo

        return write_demo(root)

    @staticmethod
    def read_train(root: Path) -> pd.DataFrame:
        """train.csv (Image,Id) -> columns image, label, path; every listed image must exist."""
        table = read_csv_columns(root / "train.csv", ["Image", "Id"])
        if table.Image.duplicated().any():
            raise DataError(f"{root / 'train.csv'}: image {table.Image[table.Image.duplicated()].iloc[0]} listed twice")
        frame = pd.DataFrame({"image": table.Image.astype(str), "label": table.Id.astype(str)})
        frame["path"] = [str(root / "train" / name) for name in frame.image]
        check_files_exist(frame.path, root / "train.csv")
        return frame

    @staticmethod
    def read_test(root: Path) -> pd.DataFrame:
        """Test images in sample_submission.csv's order (or sorted, without one)."""
        test_dir = root / "test"
        found = list_images(test_dir)
        sample = root / "sample_submission.csv"
        if sample.exists():
            names = read_csv_columns(sample, ["Image", "Id"]).Image.astype(str).tolist()
            frame = pd.DataFrame({"image": names, "path": [str(test_dir / n) for n in names]})
            check_files_exist(frame.path, sample)
        else:
            frame = pd.DataFrame({"image": [p.name for p in found], "path": [str(p) for p in found]})
        return frame

    @staticmethod
    def read_truth(root: Path) -> pd.DataFrame | None:
        path = root / "test_truth.csv"
        if not path.exists():
            return None
        table = read_csv_columns(path, ["Image", "Id"])
        return pd.DataFrame({"image": table.Image.astype(str), "label": table.Id.astype(str)})

    @staticmethod
    def write_submission(images: list[str], ranked: list[list[str]], path: Path, root: Path) -> Path:
        from .submission import validate_submission

        frame = pd.DataFrame({"Image": images, "Id": [" ".join(r) for r in ranked]})
        sample = root / "sample_submission.csv"
        validate_submission(frame, pd.read_csv(sample) if sample.exists() else None, where=str(path))
        frame.to_csv(path, index=False)
        return path


COMPETITION = Whales()


COMMANDS = {
    "demo-data": lazy_command("common.core.cli:demo_data"),
    "train": lazy_command("common.tasks.identification:train", takes_args=False),
    "predict": lazy_command("common.tasks.identification:predict", takes_args=False),
    "pretrain": lazy_command("common.ssl.pretrain:pretrain_command"),
}
DISTRIBUTED_COMMANDS = {"train"}
