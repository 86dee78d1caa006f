"""The Humpback submission format: `Image,Id`, Id = 1 to 5 distinct space-separated labels.

Kaggle scores MAP@5 and accepts fewer than 5 labels per image (a missing rank simply cannot
score); a query whose neighbours hold fewer than 5 identities is answered with what there is.
"""
from __future__ import annotations

import pandas as pd

from common.core.errors import DataError
from common.data.tables import check_rows_match_sample

MAX_LABELS = 5  # MAP@5: labels beyond the fifth are never scored, Kaggle refuses them


def _labels(ids) -> list[str]:
    """The space-separated labels of one cell; an empty cell (NaN after read_csv, '') has none."""
    if ids is None or (not isinstance(ids, str) and pd.isna(ids)):
        return []
    return str(ids).split()


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame | None = None, where: str = "submission") -> None:
    """Raise DataError naming the first problem: columns, rows and order, label count, duplicates.

    Each image needs between 1 and 5 distinct labels.
    """
    if list(frame.columns) != ["Image", "Id"]:
        raise DataError(f"{where}: columns must be Image,Id, got {','.join(map(str, frame.columns))}")
    if sample is not None:
        check_rows_match_sample(frame, sample, "Image", where, "image")
    if frame.Image.duplicated().any():
        raise DataError(f"{where}: image {frame.Image[frame.Image.duplicated()].iloc[0]} appears twice")
    for image, ids in zip(frame.Image, frame.Id):
        labels = _labels(ids)
        if not 1 <= len(labels) <= MAX_LABELS:
            raise DataError(f"{where}: image {image} has {len(labels)} labels, 1 to {MAX_LABELS} required")
        if len(set(labels)) != len(labels):
            raise DataError(f"{where}: image {image} repeats a label ({ids})")
