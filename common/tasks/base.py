"""The Task interface: what the one engine (`common.tasks.engine`) asks of identification,
recognition and video classification.

A task is constructed on the tables of one run (checking them) and answers, in the engine's order:
prepare (caches) -> split -> train one fold -> (out-of-fold answers written by each fold) -> tune
post-processing on them -> predict the test set -> score the test set (when the data root has its
truth). The engine owns everything around that: the run folder, the saved config, the fold loop and its resume rule,
processes, the submission, metrics.json and the summary. A new task registers itself in TASKS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from common.core.errors import ConfigError
from common.core.registry import Registry, is_none

TASKS = Registry("task")


class Task:
    name: ClassVar[str]
    metric: ClassVar[str]                     # the headline metric in metrics.json: oof_<metric>, test_<metric>
    lower_is_better: ClassVar[bool] = False
    fold_marker: ClassVar[str] = "oof.csv"    # written last by train_fold: its presence marks the fold finished
    default_sampler: ClassVar[str] = "random"  # `train.sampler=auto` means this (or pk for a pair loss)
    samplers: ClassVar[tuple[str, ...]] = ("random", "pk", "class_balanced")  # the ones that fit its labels
    fold_files: ClassVar[tuple[str, ...]] = ("best.pt",)  # what predict needs of each trained fold
    # config keys whose values name registry entries this task uses (checked before a run folder exists)
    registry_keys: ClassVar[tuple[str, ...]] = ("augment.train", "augment.valid", "train.sampler")
    # keys `predict` may change in a finished run's saved config, besides the engine's own
    predict_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, comp, cfg, root: Path, *, purpose: str):
        """Read the competition's tables and refuse data the task cannot learn from (DataError), before
        any run folder exists. `purpose`: "train" (train and test data) or "predict" (what predicting a
        test set needs)."""
        self.comp, self.cfg, self.root, self.purpose = comp, cfg, Path(root), purpose

    def prepare(self) -> None:
        """Decode and cache what the steps need (images, face crops), once the run folder exists."""

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse bad choices of this task's own keys with a ConfigError (no data read yet)."""
        if cfg.train.sampler not in ("auto", *cls.samplers):
            raise ConfigError(f"train.sampler={cfg.train.sampler} does not fit the {cls.name} task; "
                              f"choose auto, {', '.join(cls.samplers)}")

    def split(self) -> np.ndarray:
        """The fold of every training item (-1: always in training)."""
        raise NotImplementedError

    def fold_table(self, folds: np.ndarray) -> pd.DataFrame:
        """folds.csv: one row per training item."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line about the data, printed at the start of `train`."""
        return ""

    def train_fold(self, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
        """Train one fold (on every process) and write its out-of-fold answers, `fold_marker` last."""
        raise NotImplementedError

    def tune(self, fold_dirs: Sequence[Path], folds: np.ndarray, run: Path) -> dict:
        """Tune post-processing on all out-of-fold answers; write oof.csv and plots into `run`.
        Returns metrics.json's content so far, including what `predict` needs (e.g. the threshold)."""
        raise NotImplementedError

    def predict(self, fold_dirs: Sequence[Path], metrics: dict, run: Path) -> Any:
        """The test answers that `comp.write_submission` takes, with the fold models ensembled."""
        raise NotImplementedError

    id_column: ClassVar[str] = "image"  # the test table's id column (`self.test`), also the truth's

    def test_ids(self) -> list[str]:
        return self.test[self.id_column].astype(str).tolist()

    def test_truth(self) -> pd.Series | None:
        """The truth's labels in test order (None when the data root has no truth)."""
        if self.truth is None:
            return None
        return self.truth.set_index(self.id_column).loc[self.test[self.id_column], "label"]

    def score_test(self, answers: Any, metrics: dict) -> dict:
        """test_<metric> and the trivial baseline when the data root has the truth; {} otherwise."""
        return {}

    def summary(self, metrics: dict) -> str:
        raise NotImplementedError


class EmbeddingTask(Task):
    """What identification and recognition share: a margin head and/or a pair loss on embeddings,
    and a classes.json beside each fold's model."""

    registry_keys = Task.registry_keys + ("model.head", "model.loss", "loss.distance", "loss.miner")
    fold_files = ("best.pt", "classes.json")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if is_none(cfg.model.head) and is_none(cfg.model.loss):
            raise ConfigError("model.head=none needs a pair loss (model.loss=triplet|contrastive|ntxent)")
