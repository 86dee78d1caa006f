"""The Humpback submission format: `Image,Id`, Id = exactly 5 distinct space-separated labels."""
from __future__ import annotations

import pandas as pd

from common.core.errors import DataError


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame | None = None, where: str = "submission") -> None:
    """Raise DataError naming the first problem: columns, rows and order, label count, duplicates."""
    if list(frame.columns) != ["Image", "Id"]:
        raise DataError(f"{where}: columns must be Image,Id, got {','.join(map(str, frame.columns))}")
    if sample is not None:
        if len(frame) != len(sample):
            raise DataError(f"{where}: {len(frame)} rows, sample_submission.csv has {len(sample)}")
        mismatch = (frame.Image.astype(str).to_numpy() != sample.Image.astype(str).to_numpy())
        if mismatch.any():
            i = int(mismatch.argmax())
            raise DataError(f"{where}: row {i + 1} is image {frame.Image.iloc[i]}, "
                            f"sample_submission.csv has {sample.Image.iloc[i]} (same images, same order required)")
    if frame.Image.duplicated().any():
        raise DataError(f"{where}: image {frame.Image[frame.Image.duplicated()].iloc[0]} appears twice")
    for image, ids in zip(frame.Image, frame.Id):
        labels = str(ids).split()
        if len(labels) != 5:
            raise DataError(f"{where}: image {image} has {len(labels)} labels, exactly 5 required")
        if len(set(labels)) != 5:
            raise DataError(f"{where}: image {image} repeats a label ({ids})")
