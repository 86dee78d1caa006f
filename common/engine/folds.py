"""Fold splitters that respect what validation must look like for each task.

Open-set identification: every validation fold must hold known animals (seen in that fold's
training part) AND images whose right answer is the unknown class (identities absent from the
training part, and the unknown-labelled images themselves). Stratifying on identity, with all
singletons pooled into one stratum and all unknowns into another, does exactly that: identities
with several images are spread over folds, singletons and unknowns are spread evenly.
Group-aware: rows sharing a group (a fake and its original video) never straddle folds.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

SINGLETON = "__singleton__"


def open_set_folds(labels: Sequence[str], n_folds: int, seed: int = 0, new_label: str = "new_whale") -> np.ndarray:
    """Fold index per row for open-set identification (see module docstring)."""
    labels = pd.Series(list(labels), dtype=object)
    counts = labels.map(labels.value_counts())
    strata = labels.where((counts > 1) | (labels == new_label), SINGLETON)
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # identities with fewer images than folds are expected
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), strata)):
            folds[val] = k
    return folds


def open_set_truth(labels: Sequence[str], gallery_labels: Sequence[str], new_label: str = "new_whale") -> np.ndarray:
    """What a validation image should be answered: its identity if the gallery has it, else new_label."""
    labels = np.asarray(labels, dtype=object)
    known = set(gallery_labels) - {new_label}
    return np.array([lab if lab in known else new_label for lab in labels], dtype=object)


def group_folds(labels: Sequence, groups: Sequence, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row, stratified on label and never splitting a group."""
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[val] = k
    assert_groups_within_folds(folds, groups)
    return folds


def assert_groups_within_folds(folds: Sequence[int], groups: Sequence) -> None:
    """Leak check: every group lives in exactly one fold."""
    per_group = pd.DataFrame({"fold": folds, "group": groups}).groupby("group")["fold"].nunique()
    leaking = per_group[per_group > 1]
    if len(leaking):
        raise AssertionError(f"fold leak: group {leaking.index[0]!r} spans {leaking.iloc[0]} folds")


def assert_disjoint(train_idx: Sequence[int], val_idx: Sequence[int]) -> None:
    overlap = set(np.asarray(train_idx).tolist()) & set(np.asarray(val_idx).tolist())
    if overlap:
        raise AssertionError(f"fold leak: {len(overlap)} rows in both train and validation")
