"""Humpback Whale Identification (Kaggle 2018-19): the data format, the demo data and the choices.

Everything else (folds, training, retrieval, the new_whale threshold) is the shared open-set
identification task, `common.tasks.identification`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common.core.competition import COMPETITIONS, Competition
from common.data.tables import image_table, read_truth_csv, test_images


class Whales(Competition):
    """train.csv `Image,Id` (Id `new_whale` = an animal seen once); train/, test/; submission `Image,Id`."""

    name, slug, task = "whales", "humpback-whale-identification", "identification"
    new_label = "new_whale"
    config_path = Path(__file__).parent / "config.yaml"

    def read_train(self, root: Path, cfg: Any = None) -> pd.DataFrame:
        """-> image, label, path; every listed image must exist."""
        table = image_table(Path(root) / "train.csv", ["Image", "Id"], "Image", Path(root) / "train")
        return pd.DataFrame({"image": table.Image.astype(str), "label": table.Id.astype(str), "path": table.path})

    def read_test(self, root: Path) -> pd.DataFrame:
        """-> image, path in sample_submission.csv's order (or sorted, without one)."""
        return test_images(root, "test", ["Image", "Id"])

    def read_truth(self, root: Path) -> pd.DataFrame | None:
        """The demo's test_truth.csv (`Image,Id`) -> image, label; None on Kaggle's data."""
        return read_truth_csv(root, ["Image", "Id"])

    def submission_frame(self, ids: Sequence[str], answers: Sequence[Sequence[str]]) -> pd.DataFrame:
        return pd.DataFrame({"Image": list(ids), "Id": [" ".join(a) for a in answers]})

    def validate_submission(self, frame: pd.DataFrame, sample: pd.DataFrame | None, where: str) -> None:
        from .submission import validate_submission

        validate_submission(frame, sample, where=where)

    def write_demo(self, root: Path) -> Path:
        from .demo import write_demo

        return write_demo(root)


COMPETITION = COMPETITIONS.register("whales")(Whales())
