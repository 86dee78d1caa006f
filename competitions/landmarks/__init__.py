"""Google Landmark Recognition 2020 (Kaggle): the data format, the demo data and the choices.

Everything else (folds, training, kNN vote, non-landmark re-ranking, GAP) is the shared
closed-set recognition flow in `common.tasks.recognition`. The file layout itself lives in
`layout.py`, the synthetic demo in `demo.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common.core.competition import COMPETITIONS, Competition
from common.core.errors import DataError
from common.data.images import check_files_exist
from common.data.tables import read_csv_columns

from . import layout

TRUTH_CSV = "test_truth.csv"  # the demo's answers (same columns as the submission); Kaggle keeps its own


class Landmarks(Competition):
    """train.csv `id,landmark_id`, train/a/b/c/<id>.jpg, test/, submission `id,landmarks` (layout.py)."""

    name, slug, task = "landmarks", "landmark-recognition-2020", "recognition"
    config_path = Path(__file__).parent / "config.yaml"
    # a kernel also needs each fold's distractor embeddings: Kaggle's data has no distractor folder
    weight_files = Competition.weight_files + ("fold*/embeddings/distractors.*",)

    def read_train(self, root: Path, cfg: Any = None) -> pd.DataFrame:
        """train.csv (id,landmark_id) -> columns image, label (str), path; every image must exist."""
        table = layout.read_train_csv(root)
        return pd.DataFrame({"image": table["id"].astype(str), "label": table["landmark_id"].astype(str),
                             "path": [str(p) for p in table["path"]]})

    def read_test(self, root: Path) -> pd.DataFrame:
        """Test images in sample_submission.csv's order (sorted ids of test/ without one)."""
        root = Path(root)
        sample = root / layout.SAMPLE_SUBMISSION_CSV
        ids = layout.read_sample_submission(root)["id"].tolist() if sample.exists() else layout.list_images(root, "test")
        if not ids:
            raise DataError(f"{sample if sample.exists() else root / 'test'}: no test image")
        paths = [str(layout.image_path(root, "test", i)) for i in ids]
        check_files_exist(paths, sample if sample.exists() else root / "test")
        return pd.DataFrame({"image": ids, "path": paths})

    def read_truth(self, root: Path) -> pd.DataFrame | None:
        """test_truth.csv (demo data): label None for an image that shows no landmark."""
        path = Path(root) / TRUTH_CSV
        if not path.exists():
            return None
        table = read_csv_columns(path, ["id", "landmarks"])
        return pd.DataFrame({"image": table["id"], "label": [v.split()[0] if v.strip() else None for v in table.landmarks]})

    def sample_submission(self, root: Path) -> pd.DataFrame | None:
        return layout.read_sample_submission(root) if (Path(root) / layout.SAMPLE_SUBMISSION_CSV).exists() else None

    def submission_frame(self, ids: Sequence[str], answers: Sequence[tuple]) -> pd.DataFrame:
        """`id,landmarks` with "<landmark_id> <confidence>" (empty = no landmark)."""
        cells = ["" if label is None else layout.format_prediction(label, float(conf)) for label, conf in answers]
        return pd.DataFrame({"id": list(ids), "landmarks": cells})

    def validate_submission(self, frame: pd.DataFrame, sample: pd.DataFrame | None, where: str) -> None:
        try:
            layout.validate_submission(frame, sample if sample is not None else frame.assign(landmarks=""))
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    def write_demo(self, root: Path) -> Path:
        from .demo import write_demo

        return write_demo(root)


COMPETITION = COMPETITIONS.register("landmarks")(Landmarks())
