"""Deepfake-detection metrics as the field reports them (DeepfakeBench): ROC AUC, equal error rate
and average precision, at frame level and at video level, and the ROC plot that shows them.

Why a module of our own: DFDC scores log loss, which rewards calibration; papers and DeepfakeBench
compare detectors by ranking metrics, which ignore it: ROC AUC, the equal error rate (EER) and
average precision (AP), each at frame level (every face crop scored alone, labelled with its
video's label) and at video level (one score per video). Putting these next to the log loss makes
a run comparable with published numbers, and separates "ranks fakes above reals" from "is
calibrated".

Conventions: label 1 = fake = the positive class, 0 = real; a higher score means more likely fake.
Scores may be any finite real number (probabilities, logits, distances with the sign flipped): the
three metrics depend only on the order of the scores, so P(fake) and its logit give the same
values. NaN and inf are refused, as are labels other than 0 and 1. When only one class is present
the three metrics are undefined and come back as NaN, silently (no scikit-learn warning): a fold or
a test split without fakes is a fact to report, not an error.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "EER_RULES",
    "equal_error_rate",
    "detection_metrics",
    "frame_and_video_metrics",
    "plot_roc",
]

EER_RULES = ("interpolated", "nearest", "deepfakebench")
METRIC_KEYS = ("auc", "eer", "ap")


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _vector(x, where: str, name: str) -> np.ndarray:
    """A 1-D array; an (n, 1) column (a model's output) is accepted as n values."""
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{where}: {name} must be a sequence of values, got the string {x!r}")
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{where}: {name} must be 1-D (one value per sample), got shape {a.shape}")
    return a


def _numeric(a: np.ndarray, where: str, name: str) -> np.ndarray:
    """Float64 values of a numeric (or bool) array; strings are refused rather than parsed."""
    if a.dtype.kind == "O" and not any(isinstance(v, (str, bytes)) for v in a):
        try:
            return a.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {name} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float64)


def _labels(y_true, where: str, name: str = "y_true") -> np.ndarray:
    y = _numeric(_vector(y_true, where, name), where, name)
    bad = ~np.isin(y, (0.0, 1.0))  # NaN is not in {0, 1} either
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {name} must contain only 0 (real) and 1 (fake); position {i} holds "
                         f"{float(y[i])!r} ({int(bad.sum())} such value(s))")
    return y.astype(np.int64)


def _scores(score, where: str, name: str = "score") -> np.ndarray:
    s = _numeric(_vector(score, where, name), where, name)
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {name} at position {i} is {float(s[i])!r}: scores must be finite "
                         f"({int(bad.sum())} non-finite value(s))")
    return s


def _pair(y_true, score, where: str, names: tuple[str, str] = ("y_true", "score")) -> tuple[np.ndarray, np.ndarray]:
    y, s = _labels(y_true, where, names[0]), _scores(score, where, names[1])
    if y.size != s.size:
        raise ValueError(f"{where}: {y.size} labels ({names[0]}) but {s.size} scores ({names[1]})")
    if y.size == 0:
        raise ValueError(f"{where}: no samples")
    return y, s


def _plain(value):
    """A numpy scalar as the Python value it holds, for error messages ('z', not np.str_('z'))."""
    return value.item() if isinstance(value, np.generic) else value


def _check_rule(rule: str, where: str) -> None:
    if rule not in EER_RULES:
        raise ValueError(f"{where}: EER rule {rule!r}; choose from {', '.join(EER_RULES)}")


def _one_class(y: np.ndarray) -> bool:
    return not 0 < int(y.sum()) < y.size


# --------------------------------------------------------------------------------------------
# EER
# --------------------------------------------------------------------------------------------
def _roc_eer(y: np.ndarray, s: np.ndarray, rule: str):
    """(eer, (fpr, tpr) of the EER point, fpr curve, tpr curve) for checked inputs with both classes."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=rule == "deepfakebench")
    if rule == "deepfakebench":  # DeepfakeBench's training/metrics/utils.py, operation for operation
        fnr = 1 - tpr
        i = int(np.nanargmin(np.absolute(fnr - fpr)))
        return float(fpr[i]), (float(fpr[i]), float(tpr[i])), fpr, tpr
    n_pos = int(y.sum())
    n_neg = int(y.size) - n_pos
    fp = np.rint(fpr * n_neg).astype(np.int64)  # the counts behind the rates, exactly
    tp = np.rint(tpr * n_pos).astype(np.int64)
    # (fnr - fpr) * n_pos * n_neg in integers: exact, so ties are real ties. It falls from
    # n_pos * n_neg at the (0, 0) point (threshold +inf) to -n_pos * n_neg at (1, 1).
    gap = n_neg * (n_pos - tp) - n_pos * fp
    if rule == "nearest":
        i = int(np.argmin(np.abs(gap)))  # the first of equal gaps: the highest threshold
        return float(fpr[i]), (float(fpr[i]), float(tpr[i])), fpr, tpr
    j = int(np.flatnonzero(gap <= 0)[0])  # >= 1: gap[0] > 0
    if gap[j] == 0:
        return float(fpr[j]), (float(fpr[j]), float(tpr[j])), fpr, tpr
    i = j - 1
    g_i, g_j = int(gap[i]), int(gap[j])  # g_i > 0 > g_j; the crossing is g_i / (g_i - g_j) of the way
    span = g_i - g_j
    eer = (int(fp[i]) * span + g_i * (int(fp[j]) - int(fp[i]))) / (span * n_neg)  # int / int: rounded once
    point_tpr = (int(tp[i]) * span + g_i * (int(tp[j]) - int(tp[i]))) / (span * n_pos)
    return eer, (eer, point_tpr), fpr, tpr


def equal_error_rate(y_true, score, *, rule: str = "interpolated") -> float:
    """The equal error rate: the error rate where the false positive rate (reals called fake) equals
    the false negative rate (fakes missed), read off the ROC curve of ``sklearn.metrics.roc_curve``.
    Lower is better: 0 for a perfect ranking, 0.5 for a constant score, 1 for a perfectly inverted one.

    The ROC curve has one point per distinct score (plus the all-real point at threshold +inf), so
    FPR = FNR usually falls between two points; ``rule`` says what is reported then:

    * ``"interpolated"`` (default): the exact crossing of the curve with FPR = FNR (= 1 - TPR),
      interpolated linearly between the two points around it, as the ROC curve (and its AUC) is
      drawn; the FPR there, which equals the FNR. For scores without ties it equals
      ``min over thresholds t of max(FPR(t), FNR(t))``.
    * ``"nearest"``: DeepfakeBench's definition, ``fnr = 1 - tpr; eer = fpr[nanargmin(|fnr - fpr|)]``:
      the FPR of the curve point where FPR and FNR are closest, without averaging it with that
      point's FNR. Every distinct score is a candidate threshold (``drop_intermediate=False``),
      equal distances are compared exactly (integer counts) and the first one wins (the highest
      threshold, as ``nanargmin`` does), so it equals a brute-force sweep over all thresholds.
    * ``"deepfakebench"``: DeepfakeBench's number bit for bit (training/metrics/utils.py,
      ``get_test_metrics``): the same rule on ``roc_curve``'s default curve, whose
      ``drop_intermediate=True`` removes collinear points. The point it needs can be among them: a
      constant score gives 0.0 (the two points left, FPR 0 and FPR 1, are equally far and the first
      wins), and a run of reals scored between two fakes can move the answer by the run's length.
      Use it only to compare with published DeepfakeBench tables.

    The three agree to about one sample's weight (1 / n of the smaller class) on real data.
    NaN when ``y_true`` holds one class only. ``y_true``: 0/1 labels (1 = fake); ``score``: any
    finite reals, higher = more likely fake.
    """
    where = "equal_error_rate"
    _check_rule(rule, where)
    y, s = _pair(y_true, score, where)
    return math.nan if _one_class(y) else _roc_eer(y, s, rule)[0]


# --------------------------------------------------------------------------------------------
# AUC, EER, AP
# --------------------------------------------------------------------------------------------
def _metrics(y: np.ndarray, s: np.ndarray, rule: str) -> dict:
    if _one_class(y):
        return dict.fromkeys(METRIC_KEYS, math.nan)
    return {"auc": float(roc_auc_score(y, s)), "eer": _roc_eer(y, s, rule)[0],
            "ap": float(average_precision_score(y, s))}


def detection_metrics(y_true, score, *, eer_rule: str = "interpolated") -> dict:
    """``{"auc", "eer", "ap"}`` of scores against 0/1 labels (1 = fake, the positive class).

    ``auc``: ``sklearn.metrics.roc_auc_score``; ``eer``: :func:`equal_error_rate` with ``eer_rule``;
    ``ap``: ``sklearn.metrics.average_precision_score`` (AP of the fake class: the precision-recall
    curve's step sum, no interpolation). Each is NaN, without a warning, when one class is absent.
    Raises ``ValueError`` for different lengths, no samples, labels other than 0/1 and non-finite
    scores.
    """
    where = "detection_metrics"
    _check_rule(eer_rule, where)
    y, s = _pair(y_true, score, where)
    return _metrics(y, s, eer_rule)


def _frame_rows(frame_video, video_ids, n_videos: int, where: str) -> np.ndarray:
    """The position in the video arrays of each frame's video."""
    videos = _vector(frame_video, where, "frame_video")
    if video_ids is None:
        if videos.dtype.kind not in "iu" and videos.size:
            raise ValueError(f"{where}: frame_video must hold integer positions into video_labels when video_ids "
                             f"is not given (got dtype {videos.dtype}); pass video_ids to match by id")
        rows = videos.astype(np.int64)
        bad = (rows < 0) | (rows >= n_videos)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: frame {i} belongs to video position {rows[i]}, outside 0..{n_videos - 1} "
                             f"({int(bad.sum())} such frame(s))")
        return rows
    index = pd.Index(_vector(video_ids, where, "video_ids"))
    if len(index) != n_videos:
        raise ValueError(f"{where}: {len(index)} video_ids but {n_videos} video labels")
    if not index.is_unique:
        raise ValueError(f"{where}: video id {_plain(index[index.duplicated()][0])!r} appears more than once in video_ids")
    rows = index.get_indexer(videos)
    missing = rows < 0
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise ValueError(f"{where}: frame {i}'s video {_plain(videos[i])!r} is not among video_ids "
                         f"({int(missing.sum())} frame(s) with an unknown video)")
    return rows


def frame_and_video_metrics(frame_video, frame_scores, video_labels, video_scores, *, video_ids=None,
                            eer_rule: str = "interpolated") -> dict:
    """AUC, EER and AP at frame level and at video level, as one flat dict:
    ``frame_auc, frame_eer, frame_ap, video_auc, video_eer, video_ap``.

    * ``video_labels``, ``video_scores``: one 0/1 label (1 = fake) and one score per video (e.g. the
      aggregated, calibrated P(fake)); the video-level metrics are :func:`detection_metrics` of these.
    * ``frame_video``, ``frame_scores``: one entry per scored frame (face crop): the video it comes
      from and its score. A frame's label is its video's label. ``frame_video`` holds positions into
      the video arrays (integers ``0..n_videos - 1``), or, when ``video_ids`` (one id per video, in
      the order of ``video_labels``) is given, those ids (e.g. the video file names).

    Videos without frames still count at video level. Each level's metrics are NaN when that level
    has one class only. Raises ``ValueError`` for a frame whose video is unknown, duplicated video
    ids, mismatched lengths, labels other than 0/1 or non-finite scores.
    """
    where = "frame_and_video_metrics"
    _check_rule(eer_rule, where)
    video_y, video_s = _pair(video_labels, video_scores, where, ("video_labels", "video_scores"))
    frame_s = _scores(frame_scores, where, "frame_scores")
    rows = _frame_rows(frame_video, video_ids, video_y.size, where)
    if rows.size != frame_s.size:
        raise ValueError(f"{where}: {rows.size} frame_video entries but {frame_s.size} frame_scores")
    if rows.size == 0:
        raise ValueError(f"{where}: no frames")
    out = {f"frame_{k}": v for k, v in _metrics(video_y[rows], frame_s, eer_rule).items()}
    out.update({f"video_{k}": v for k, v in _metrics(video_y, video_s, eer_rule).items()})
    return out


# --------------------------------------------------------------------------------------------
# ROC plot
# --------------------------------------------------------------------------------------------
def plot_roc(y_true, score, path: Path, title: str = "ROC", extra: Mapping | None = None, *,
             name: str = "videos", eer_rule: str = "interpolated") -> None:
    """ROC curves on linear axes with each curve's AUC and its EER point marked (where the curve
    meets the FPR = FNR line), saved as a PNG at ``path``.

    The main curve is ``(y_true, score)``, named ``name`` in the legend; ``extra`` adds curves on the
    same axes, ``{name: (y_true, score)}``, e.g. ``{"frames": (frame_labels, frame_scores)}`` next to
    the videos. A curve whose labels hold one class is listed in the legend as such, not drawn.
    (``common.metrics.plots.roc_curve_plot`` is the verification ROC: one curve, log FAR axis for the
    low-FAR regime, no EER; this one reuses that module's Agg backend and saving.)
    """
    from common.metrics import plots  # matplotlib (Agg) only when a plot is drawn

    where = "plot_roc"
    _check_rule(eer_rule, where)
    extra = dict(extra or {})
    if name in extra:
        raise ValueError(f"{where}: curve name {name!r} is both the main curve and in extra")
    curves = {name: _pair(y_true, score, where)}
    for label, pair in extra.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{where}: extra[{label!r}] must be a (y_true, score) pair")
        curves[label] = _pair(pair[0], pair[1], f"{where} (extra {label!r})")

    fig, ax = plots.plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="chance")
    ax.plot([0, 1], [1, 0], "--", color="lightgrey", linewidth=1, label="FPR = FNR")
    for k, (label, (y, s)) in enumerate(curves.items()):
        color = f"C{k}"
        if _one_class(y):
            ax.plot([], [], color=color, label=f"{label} (n={y.size}): one class only, no ROC")
            continue
        eer, (px, py), fpr, tpr = _roc_eer(y, s, eer_rule)
        ax.plot(fpr, tpr, color=color,
                label=f"{label} (n={y.size}): AUC {roc_auc_score(y, s):.4f}, EER {eer:.4f}")
        ax.plot([px], [py], "o", color=color, markerfacecolor="none", markersize=8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (reals called fake)")
    ax.set_ylabel("true positive rate (fakes caught)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    plots._save(fig, Path(path))
