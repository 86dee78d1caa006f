"""The DFDC submission format: `filename,label`, one row per test video, label = P(fake) in (0, 1).

Kaggle's log loss punishes a confident miss without bound (a label of exactly 0 or 1 on the
wrong video costs ``-log(1e-15) = 34.5``, enough to ruin the whole score), so the validator
refuses 0 and 1 themselves, as well as anything outside [0, 1] and NaN: clip to
``[eps, 1 - eps]`` before writing (`common.video.inference.calibrate` does).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from common.core.errors import DataError
from common.data.tables import check_rows_match_sample


def validate_submission(frame: pd.DataFrame, sample: pd.DataFrame | None = None, where: str = "submission") -> None:
    """Raise DataError naming the first problem: columns, rows and order, duplicates, probabilities."""
    if list(frame.columns) != ["filename", "label"]:
        raise DataError(f"{where}: columns must be filename,label, got {','.join(map(str, frame.columns))}")
    if sample is not None:
        check_rows_match_sample(frame, sample, "filename", where, "video")
    if frame.filename.duplicated().any():
        raise DataError(f"{where}: video {frame.filename[frame.filename.duplicated()].iloc[0]} appears twice")
    labels = pd.to_numeric(frame.label, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(labels) | (labels <= 0) | (labels >= 1)  # NaN fails every comparison: caught by isfinite
    if bad.any():
        i = int(bad.argmax())
        value = frame.label.iloc[i]
        value = value.item() if isinstance(value, np.generic) else value  # 1.0, not np.float64(1.0)
        why = ("exactly 0 or 1 (a confident miss costs without bound in log loss)"
               if labels[i] in (0.0, 1.0) else "not a probability")
        raise DataError(f"{where}: row {i + 1}: video {frame.filename.iloc[i]} has label {value!r}, {why}; "
                        f"a probability in [0, 1] strictly between 0 and 1 is required ({int(bad.sum())} bad row(s))")
