"""The competition contract: what a folder under `competitions/` provides, and nothing more.

A competition says how its files look (read_train / read_test / read_truth), how its submission is
written and checked (write_submission / validate_submission), what its demo data looks like
(write_demo) and which choices it makes (its YAML). Which *task* solves it (a name in
`common.tasks.TASKS`: identification, recognition, video) is one of those choices; the task does all
the work, so adding a competition never touches the engine. `common/` never imports
`competitions/`: a competition registers itself in COMPETITIONS when its package is imported.

Tables the readers return, by task (extra columns are allowed and kept):
  identification, recognition: train `image, label, path`; test `image, path` (submission order);
                               truth `image, label` (recognition: label None = no class)
  video:                       train `video, path, label (0/1), group`; test `video, path`;
                               truth `video, label`
Answers handed to write_submission(ids, answers, path, root), by task:
  identification: ranked labels per image (1 to 5 of them; fewer is allowed, as on Kaggle)
  recognition:    (label or None, confidence) per image
  video:          P(positive) per video
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import pandas as pd

from common.core.registry import Registry

COMPETITIONS = Registry("competition")


class Competition:
    """Base class of every competition object (one instance per competition, registered by name)."""

    name: ClassVar[str]
    slug: ClassVar[str]               # the Kaggle competition's URL name
    task: ClassVar[str]               # a name in common.tasks.TASKS
    config_path: ClassVar[Path]
    new_label: ClassVar[str | None] = None   # identification: the unknown class (new_whale, new_individual)
    # files of a finished run that a Kaggle kernel needs (its weights dataset)
    weight_files: ClassVar[tuple[str, ...]] = ("config.yaml", "metrics.json", "fold*/best.pt", "fold*/classes.json")
    # commands beyond the generic ones, as "module:function" called fn(comp, cfg, args)
    commands: ClassVar[dict[str, str]] = {}

    def read_train(self, root: Path, cfg: Any) -> pd.DataFrame:
        raise NotImplementedError

    def read_test(self, root: Path) -> pd.DataFrame:
        raise NotImplementedError

    def read_truth(self, root: Path) -> pd.DataFrame | None:
        """The test answers when the data root has them (the demo data does); None otherwise."""
        return None

    def submission_frame(self, ids: Sequence[str], answers: Sequence) -> pd.DataFrame:
        """The submission as a table in Kaggle's columns."""
        raise NotImplementedError

    def validate_submission(self, frame: pd.DataFrame, sample: pd.DataFrame | None, where: str) -> None:
        """Raise DataError naming `where` when `frame` is not a valid submission (checked against the sample)."""
        raise NotImplementedError

    def sample_submission(self, root: Path) -> pd.DataFrame | None:
        sample = Path(root) / "sample_submission.csv"
        return pd.read_csv(sample, dtype=str, keep_default_na=False) if sample.exists() else None

    def write_submission(self, ids: Sequence[str], answers: Sequence, path: Path, root: Path) -> Path:
        """Validated against the data root's sample submission, then written atomically."""
        from common.core.files import write_csv_atomic

        frame = self.submission_frame(ids, answers)
        self.validate_submission(frame, self.sample_submission(root), where=str(path))
        write_csv_atomic(frame, path)
        return Path(path)

    def write_demo(self, root: Path) -> Path:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<competition {self.name}: {self.slug}, task {self.task}>"
