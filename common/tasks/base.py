"""The Task interface: what the one engine (`common.tasks.engine`) asks of identification,
recognition and video classification.

A task is constructed on the tables of one run (checking them) and answers, in the engine's order:
prepare (caches) -> split -> train one fold -> (out-of-fold answers written by each fold) -> tune
post-processing on them -> predict the test set -> score the test set (when the data root has its
truth). The engine owns everything around that: the run folder, the saved config, the fold loop and its resume rule,
processes, the submission, metrics.json and the summary. A new task registers itself in TASKS.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from common.core.errors import ConfigError
from common.core.registry import Registry, is_none
from common.data.tables import IMAGE_SUFFIXES

TASKS = Registry("task")


class Task:
    name: ClassVar[str]
    metric: ClassVar[str]                     # the headline metric in metrics.json: oof_<metric>, test_<metric>
    lower_is_better: ClassVar[bool] = False
    fold_marker: ClassVar[str] = "oof.csv"    # written last by train_fold: its presence marks the fold finished
    default_sampler: ClassVar[str] = "random"  # `train.sampler=auto` means this (or pk for a pair loss)
    samplers: ClassVar[tuple[str, ...]] = ("random", "pk", "class_balanced")  # the ones that fit its labels
    retrieval_postprocessing: ClassVar[bool] = False  # infer.dba / query_expansion / kreciprocal / verify apply
    full_fit: ClassVar[bool] = False  # train.full_fit: train_full after the folds
    ensembles: ClassVar[bool] = False  # predict run.name=a,b,c: ensemble(members, out)
    pseudo_rounds: ClassVar[bool] = False  # pseudo.rounds: pseudo_labels(run), add_pseudo_labels(frame)
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
        if cfg.train.full_fit and not cls.full_fit:
            raise ConfigError(f"train.full_fit=true: not built for the {cls.name} task yet (identification has it)")
        if cfg.pseudo.rounds and not cls.pseudo_rounds:
            raise ConfigError(f"pseudo.rounds={cfg.pseudo.rounds}: not built for the {cls.name} task yet (identification has it)")
        if not cls.retrieval_postprocessing:
            on = [f"infer.{k}" for k in ("dba", "query_expansion", "kreciprocal") if cfg.infer[k]]
            on += ["infer.verify"] if cfg.infer.verify != "none" else []
            if on:
                raise ConfigError(f"{', '.join(on)}: the {cls.name} task does not use retrieval post-processing "
                                  "(identification does: whales, happywhale)")

    def train_full(self, fold_dirs, run: Path) -> None:
        """`train.full_fit`: a final model on all training data after the folds (tasks with `full_fit`)."""
        raise NotImplementedError

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

    # --- any folder or file (`predict images=`, `embed images=`): purpose "files" ------------
    files_suffixes: ClassVar[frozenset[str]] = frozenset(IMAGE_SUFFIXES)  # what `images=` lists

    def use_files(self, table: pd.DataFrame) -> None:
        """Answer these files (`id_column`, path) instead of the competition's test set; no truth."""
        self.test, self.truth = table.reset_index(drop=True), None

    def files_frame(self, answers: Any) -> pd.DataFrame:
        """One row per file of `use_files`, from `predict`'s answers: what `predict images=` writes."""
        raise NotImplementedError

    # --- export: a trained fold as a plain network ------------------------------------------
    export_output: ClassVar[str] = "output"  # the ONNX output's name

    @classmethod
    def fold_network(cls, cfg, fold_dir: Path):
        """A trained fold as an nn.Module from normalised NCHW float images to what the task answers
        from (L2-normalised embeddings, one logit per image), on the CPU: what `export` writes."""
        raise NotImplementedError

    @classmethod
    def input_size(cls, cfg) -> tuple[int, int]:
        """(height, width) of the network's input images."""
        return tuple(int(v) for v in cfg.data.image_size)

    def embed_test(self, fold_dirs: Sequence[Path], run: Path) -> np.ndarray:
        """L2-normalised embeddings of the test items (the fold models' concatenated): `embed`."""
        raise ConfigError(f"the {self.name} task has no embedding to export; `predict images=` answers files")

    def summary(self, metrics: dict) -> str:
        raise NotImplementedError

    def after_submission(self, submission: Path) -> None:
        """Anything a task writes beside a submission it answered (the video task: face counts)."""


class EmbeddingTask(Task):
    """What identification and recognition share: a margin head and/or a pair loss on embeddings,
    and a classes.json beside each fold's model."""

    registry_keys = Task.registry_keys + ("model.head", "model.loss", "loss.distance", "loss.miner")
    fold_files = ("best.pt", "classes.json")

    export_output = "embeddings"

    @classmethod
    def fold_model(cls, cfg, fold_dir: Path, device="cpu"):
        """A fold's best model, rebuilt from its classes.json (no pretrained weights or init needed)."""
        from common.engine.trainer import load_best
        from common.models.factory import build_model, without_init

        info = json.loads((fold_dir / "classes.json").read_text())
        classes = info["classes"] if isinstance(info, dict) else info
        # placeholder counts without them: dynamic per-class margins are a buffer, restored from the checkpoint
        counts = info.get("counts") if isinstance(info, dict) else None
        model = build_model(without_init(cfg), len(classes), class_counts=counts or [1] * len(classes))
        return load_best(model, fold_dir, device)

    @classmethod
    def fold_network(cls, cfg, fold_dir: Path):
        from common.models.network import NormalisedEmbedding

        return NormalisedEmbedding(cls.fold_model(cfg, fold_dir)).eval()

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if is_none(cfg.model.head) and is_none(cfg.model.loss):
            raise ConfigError("model.head=none needs a pair loss (model.loss=triplet|contrastive|ntxent)")
