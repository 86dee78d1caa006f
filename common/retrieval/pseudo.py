"""Pseudo-labels for open-set identification: confident test answers join the next round's training set.

Why: the test set of a re-identification competition holds many more photos of the known animals
(Happywhale's 1st place gained most from rounds of this). A test image whose first answer is very
likely right can train the next model and widen the gallery; a wrong one teaches the wrong animal, so
the confidence cut is set on the out-of-fold answers, where the truth is known: the lowest first-answer
score at which the OOF answers above it are right at least `precision` of the time (never-seen OOF
animals count as errors there, as they would in the test set).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def confidence_threshold(first_scores: Sequence[float], correct: Sequence[bool],
                         precision: float) -> tuple[float, float, int] | None:
    """(threshold, OOF precision above it, OOF answers above it) for the largest set of top-scored
    answers whose precision is at least `precision`; None when even the most confident answer misses."""
    scores = np.asarray(first_scores, np.float64)
    hits = np.asarray(correct, bool)
    keep = np.isfinite(scores)
    scores, hits = scores[keep], hits[keep]
    if not len(scores):
        return None
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    cumulative = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    # a cut between equal scores is impossible: only the last row of each run of ties is a candidate
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    ok = np.flatnonzero((cumulative >= precision) & last_of_tie)
    if not len(ok):
        return None
    k = int(ok[-1])
    return float(scores[k]), float(cumulative[k]), k + 1


def select(images: Sequence[str], paths: Sequence[str], ranked: Sequence[Sequence[str]], scores: np.ndarray,
           threshold: float) -> pd.DataFrame:
    """image, label, score, path of the test images whose first known answer scores >= threshold."""
    first = np.array([row[0] if row else None for row in ranked], dtype=object)
    score = np.asarray(scores, np.float64)[:, 0]
    chosen = np.flatnonzero((score >= threshold) & (first != None))  # noqa: E711 - element-wise on objects
    return pd.DataFrame({"image": np.asarray(images, dtype=object)[chosen], "label": first[chosen],
                         "score": score[chosen], "path": np.asarray(paths, dtype=object)[chosen]})
