"""Google Landmark Recognition 2020 (Kaggle): the data format, the demo data and the choices.

Everything else (folds, training, kNN vote, non-landmark re-ranking, GAP) is the shared
closed-set recognition flow in `common.tasks.recognition`. The file layout itself lives in
`layout.py`, the synthetic demo in `demo.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from common.core.cli import lazy_command
from common.data.images import check_files_exist
from common.data.tables import read_csv_columns

from . import layout

NAME = "landmarks"
SLUG = "landmark-recognition-2020"
CONFIG_PATH = Path(__file__).parent / "config.yaml"
TRUTH_CSV = "test_truth.csv"  # the demo's answers (same columns as the submission); Kaggle keeps its own
# What `kernel` ships of a finished run: the models, and each fold's distractor embeddings, so the
# kernel re-ranks although Kaggle's data has no distractor folder.
WEIGHT_FILES = ("config.yaml", "metrics.json", "fold*/best.pt", "fold*/classes.json", "fold*/embeddings/distractors.*")


class Landmarks:
    name, slug, config_path = NAME, SLUG, CONFIG_PATH

    @staticmethod
    def write_demo(root) -> Path:
        from .demo import write_demo

        return write_demo(root)

    @staticmethod
    def read_train(root: Path) -> pd.DataFrame:
        """train.csv (id,landmark_id) -> columns image, label (str), path; every image must exist."""
        table = layout.read_train_csv(root)
        return pd.DataFrame({"image": table["id"].astype(str), "label": table["landmark_id"].astype(str),
                             "path": [str(p) for p in table["path"]]})

    @staticmethod
    def read_test(root: Path) -> pd.DataFrame:
        """Test images in sample_submission.csv's order (sorted ids of test/ without one)."""
        root = Path(root)
        sample = root / layout.SAMPLE_SUBMISSION_CSV
        ids = layout.read_sample_submission(root)["id"].tolist() if sample.exists() else layout.list_images(root, "test")
        paths = [str(layout.image_path(root, "test", i)) for i in ids]
        check_files_exist(paths, sample if sample.exists() else root / "test")
        return pd.DataFrame({"image": ids, "path": paths})

    @staticmethod
    def read_truth(root: Path) -> pd.DataFrame | None:
        """test_truth.csv (demo data): label None for an image that shows no landmark."""
        path = Path(root) / TRUTH_CSV
        if not path.exists():
            return None
        table = read_csv_columns(path, ["id", "landmarks"])
        return pd.DataFrame({"image": table["id"], "label": [v.split()[0] if v.strip() else None for v in table.landmarks]})

    @staticmethod
    def write_submission(images: Sequence[str], labels: Sequence, confidences: Sequence[float], path: Path,
                         root: Path) -> Path:
        """`id,landmarks` with "<landmark_id> <confidence>" (empty = no landmark), checked against the sample."""
        cells = ["" if label is None else layout.format_prediction(int(label), float(conf))
                 for label, conf in zip(labels, np.asarray(confidences, dtype=np.float64))]
        frame = pd.DataFrame({"id": list(images), "landmarks": cells})
        sample = Path(root) / layout.SAMPLE_SUBMISSION_CSV
        expected = layout.read_sample_submission(root) if sample.exists() else frame.assign(landmarks="")
        layout.validate_submission(frame, expected)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return Path(path)


COMPETITION = Landmarks()


COMMANDS = {
    "demo-data": lazy_command("common.core.cli:demo_data"),
    "train": lazy_command("common.tasks.recognition:train", takes_args=False),
    "predict": lazy_command("common.tasks.recognition:predict", takes_args=False),
}
