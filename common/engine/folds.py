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

from common.core.errors import ConfigError

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


def recognition_folds(labels: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """Recognition folds: per image, or -1 for "always in training" (a class's only image).

    Classes are spread evenly over folds (common.engine.folds' stratified split), so a class with n >= 2
    images has at most ceil(n / n_folds) of them in any fold and at least one in every fold's
    training part: validation never asks for a class the fold model has not seen.
    """
    if n_folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for a validation split, got {n_folds}")
    labels = pd.Series(list(labels), dtype=object)
    folds = open_set_folds(labels, n_folds, seed, new_label=None)
    folds[(labels.map(labels.value_counts()) == 1).to_numpy()] = -1
    for fold in range(n_folds):
        unseen = set(labels[folds == fold]) - set(labels[folds != fold])
        if unseen:
            raise AssertionError(f"fold {fold}: class {sorted(unseen)[0]!r} has no training image")
    return folds


def distractor_split(n: int, fold: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which distractors are validation queries in `fold` and which form its reference set.

    A random `share` of them (different per fold) are queries whose right answer is "none of
    the classes"; the rest are the set the re-ranking compares against. Disjoint, so a query
    never meets itself in the reference set.
    """
    if not 0 <= share < 1:
        raise ConfigError(f"recognition.val_distractor_share must lie in [0, 1), got {share}")
    order = np.random.default_rng([seed, fold]).permutation(n)
    n_queries = int(round(share * n))
    return np.sort(order[:n_queries]), np.sort(order[n_queries:])


def run_folds(cfg) -> list[int]:
    """The folds a run trains and predicts with: `train.run_folds`, or all of them."""
    return list(cfg.train.run_folds) if cfg.train.run_folds is not None else list(range(cfg.train.folds))
