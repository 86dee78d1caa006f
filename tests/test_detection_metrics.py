"""Tests for common.metrics.detection: scikit-learn as the reference for AUC and AP, exact brute-force
threshold sweeps (fractions, no scikit-learn) for the EER, and the plot written as a PNG."""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import sklearn.metrics

from common.metrics.detection import (
    EER_RULES,
    detection_metrics,
    equal_error_rate,
    frame_and_video_metrics,
    plot_roc,
)

KEYS = ("frame_auc", "frame_eer", "frame_ap", "video_auc", "video_eer", "video_ap")


# ------------------------------------------------------------------------- brute-force references
def sweep(y, s):
    """Exact (FPR, FNR) of "fake when score >= t" for t = +inf, then every distinct score, highest first."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    thresholds = [math.inf] + sorted(set(s.tolist()), reverse=True)
    return [(Fraction(int((neg >= t).sum()), len(neg)), Fraction(int((pos < t).sum()), len(pos))) for t in thresholds]


def brute_nearest(y, s) -> float:
    """DeepfakeBench's rule over every threshold: FPR where |FNR - FPR| is smallest, first one on ties."""
    points = sweep(y, s)
    best = min(range(len(points)), key=lambda i: (abs(points[i][1] - points[i][0]), i))
    return float(points[best][0])


def brute_crossing(y, s) -> float:
    """Where the polyline through the sweep's points meets FPR = FNR, by exact geometry."""
    points = sweep(y, s)
    for (f0, n0), (f1, n1) in zip(points, points[1:]):
        d0, d1 = n0 - f0, n1 - f1
        if d0 == 0:
            return float(f0)
        if d0 > 0 >= d1:
            return float(f0 + d0 / (d0 - d1) * (f1 - f0))
    raise AssertionError("the curve always crosses FPR = FNR")


def brute_min_max(y, s) -> float:
    """min over thresholds of max(FPR, FNR): the crossing when no two scores tie."""
    return float(min(max(f, n) for f, n in sweep(y, s)))


def small_cases(n_cases: int = 150, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n_cases:
        n = int(rng.integers(2, 13))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = rng.integers(0, 4, n).astype(float) if ties else rng.permutation(n).astype(float) / n
        cases.append((y, s))
    return cases


# ------------------------------------------------------------------------------------------ EER
@pytest.mark.parametrize("ties", [True, False])
def test_nearest_rule_equals_brute_force_sweep(ties):
    for y, s in small_cases(ties=ties, seed=1 + ties):
        assert equal_error_rate(y, s, rule="nearest") == brute_nearest(y, s), (y, s)


@pytest.mark.parametrize("ties", [True, False])
def test_interpolated_rule_equals_exact_crossing(ties):
    for y, s in small_cases(ties=ties, seed=3 + ties):
        assert equal_error_rate(y, s) == pytest.approx(brute_crossing(y, s), abs=1e-15), (y, s)


def test_interpolated_without_ties_is_min_over_thresholds_of_max_error():
    for y, s in small_cases(ties=False, seed=5):
        assert equal_error_rate(y, s) == brute_min_max(y, s), (y, s)


def test_deepfakebench_rule_is_their_formula():
    for y, s in small_cases(ties=True, seed=6)[:60] + small_cases(ties=False, seed=7)[:60]:
        fpr, tpr, _ = sklearn.metrics.roc_curve(y, s, pos_label=1)
        fnr = 1 - tpr
        assert equal_error_rate(y, s, rule="deepfakebench") == fpr[np.nanargmin(np.absolute(fnr - fpr))]


def test_where_deepfakebench_drops_the_point_it_needs():
    # a constant score: the default curve keeps only FPR 0 and FPR 1, equally far from FPR = FNR
    y, s = [0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]
    assert equal_error_rate(y, s) == 0.5
    assert equal_error_rate(y, s, rule="nearest") == 0.0  # only the +inf and 0.5 thresholds exist either way
    assert equal_error_rate(y, s, rule="deepfakebench") == 0.0
    # four reals between two fakes: FPR = FNR = 0.5 on the horizontal run, which drop_intermediate removes
    y, s = [1, 0, 0, 0, 0, 1], [6, 5, 4, 3, 2, 1]
    assert equal_error_rate(y, s) == 0.5
    assert equal_error_rate(y, s, rule="nearest") == 0.5
    assert equal_error_rate(y, s, rule="deepfakebench") == 0.0


@pytest.mark.parametrize("rule", EER_RULES)
def test_eer_hand_cases(rule):
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], rule=rule) == 0.0  # perfect
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], rule=rule) == 1.0  # inverted
    assert equal_error_rate([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], rule=rule) == 0.5  # one real above a fake


def test_rules_agree_on_large_continuous_scores():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 3000)
    s = rng.normal(size=3000) + 1.2 * y
    values = [equal_error_rate(y, s, rule=r) for r in EER_RULES]
    assert max(values) - min(values) <= 2 / min(y.sum(), (1 - y).sum())
    assert 0.2 < values[0] < 0.35  # two unit normals 1.2 apart: EER = Phi(-0.6) = 0.274


# ------------------------------------------------------------------------ AUC, EER, AP together
def _cases():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.5, 0.2, 400) + 0.15 * y, 0, 1)
    return {
        "random": (y, p),
        "ties": (y, np.round(p, 1)),
        "perfect": (y, y * 0.5 + 0.25),
        "inverted": (y, 1 - y * 0.5 - 0.25),
        "constant": (y, np.full(400, 0.3)),
        "logits": (y, rng.normal(size=400) * 3 + y),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_detection_metrics_against_sklearn(case):
    y, s = _cases()[case]
    result = detection_metrics(y, s)
    assert set(result) == {"auc", "eer", "ap"}
    assert result["auc"] == pytest.approx(sklearn.metrics.roc_auc_score(y, s), abs=1e-12)
    assert result["ap"] == pytest.approx(sklearn.metrics.average_precision_score(y, s), abs=1e-12)
    assert result["eer"] == pytest.approx(brute_crossing(y, s), abs=1e-12)
    expected = {"perfect": (1.0, 0.0, 1.0), "inverted": (0.0, 1.0, None), "constant": (0.5, 0.5, float(y.mean()))}
    if case in expected:
        auc, eer, ap = expected[case]
        assert result["auc"] == auc and result["eer"] == eer
        assert ap is None or result["ap"] == pytest.approx(ap)


def test_probabilities_and_logits_give_the_same_metrics():
    y, p = _cases()["ties"]
    p = np.clip(p, 0.05, 0.95)
    assert detection_metrics(y, p) == pytest.approx(detection_metrics(y, np.log(p / (1 - p))), abs=1e-12)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_is_nan_without_warnings(label):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = detection_metrics([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
        assert all(math.isnan(v) for v in result.values()) and set(result) == {"auc", "eer", "ap"}
        for rule in EER_RULES:
            assert math.isnan(equal_error_rate([label] * 3, [0.1, 0.2, 0.3], rule=rule))


def test_accepted_input_forms():
    expected = detection_metrics([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5])
    assert detection_metrics(np.array([False, True, True, False]), np.array([[0.2], [0.7], [0.4], [0.5]])) == expected
    assert detection_metrics([0.0, 1.0, 1.0, 0.0], np.array([0.2, 0.7, 0.4, 0.5], dtype=np.float32)) == pytest.approx(expected)
    assert detection_metrics(np.array([0, 1, 1, 0], dtype=object), [0.2, 0.7, 0.4, 0.5]) == expected


@pytest.mark.parametrize("y, s, message", [
    ([0, 1, 1], [0.1, 0.2], "3 labels .* but 2 scores"),
    ([], [], "no samples"),
    ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 .*position 1 holds 2.0"),
    ([0, float("nan"), 1], [0.1, 0.2, 0.3], "only 0"),
    (["0", "1"], [0.1, 0.2], "must be numeric"),
    ([0, 1], ["a", "b"], "must be numeric"),
    ([0, 1, 1], [0.1, float("nan"), 0.3], "position 1 is nan"),
    ([0, 1, 1], [0.1, 0.2, float("inf")], "position 2 is inf"),
    ([0, 1], [[0.1, 0.9], [0.8, 0.2]], "1-D"),
    ("01", [0.1, 0.2], "the string"),
])
def test_detection_metrics_refuses_bad_input(y, s, message):
    with pytest.raises(ValueError, match=message):
        detection_metrics(y, s)


def test_unknown_eer_rule():
    with pytest.raises(ValueError, match="choose from interpolated, nearest, deepfakebench"):
        equal_error_rate([0, 1], [0.1, 0.2], rule="mean")
    with pytest.raises(ValueError, match="EER rule"):
        detection_metrics([0, 1], [0.1, 0.2], eer_rule="mean")


# ---------------------------------------------------------------------------- frame and video
def _videos():
    rng = np.random.default_rng(10)
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    frame_video = np.repeat(np.arange(8), rng.integers(1, 6, 8))
    frame_scores = np.clip(rng.normal(0.5, 0.2, frame_video.size) + 0.2 * labels[frame_video], 0, 1)
    video_scores = np.array([frame_scores[frame_video == v].mean() for v in range(8)])
    return frame_video, frame_scores, labels, video_scores


def test_frame_and_video_metrics_by_position():
    frame_video, frame_scores, labels, video_scores = _videos()
    result = frame_and_video_metrics(frame_video, frame_scores, labels, video_scores)
    assert tuple(result) == KEYS
    frames = detection_metrics(labels[frame_video], frame_scores)  # a frame's label is its video's
    videos = detection_metrics(labels, video_scores)
    assert result == {**{f"frame_{k}": v for k, v in frames.items()}, **{f"video_{k}": v for k, v in videos.items()}}
    assert result["frame_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels[frame_video], frame_scores))
    assert result["video_ap"] == pytest.approx(sklearn.metrics.average_precision_score(labels, video_scores))


def test_frame_and_video_metrics_by_id_in_any_order():
    frame_video, frame_scores, labels, video_scores = _videos()
    names = np.array([f"vid{v:02d}.mp4" for v in range(8)])
    order = np.random.default_rng(11).permutation(8)  # the video table in another order than the frames
    by_id = frame_and_video_metrics(list(names[frame_video]), frame_scores, labels[order], video_scores[order],
                                    video_ids=names[order])
    assert by_id == frame_and_video_metrics(frame_video, frame_scores, labels, video_scores)


def test_video_without_frames_counts_at_video_level_only():
    frame_video, frame_scores, labels, video_scores = _videos()
    keep = frame_video != 3
    result = frame_and_video_metrics(frame_video[keep], frame_scores[keep], labels, video_scores)
    assert result["video_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels, video_scores))
    assert result["frame_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels[frame_video[keep]], frame_scores[keep]))


def test_one_class_level_is_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = frame_and_video_metrics([0, 0, 1], [0.2, 0.4, 0.9], [1, 1], [0.3, 0.9])
    assert all(math.isnan(v) for v in result.values())
    # frames of fake videos only, while the real video has no frame: frame level NaN, video level defined
    result = frame_and_video_metrics([1, 1], [0.2, 0.4], [0, 1], [0.3, 0.9])
    assert math.isnan(result["frame_auc"]) and result["video_auc"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(frame_video=[0, 5]), "frame 1 belongs to video position 5, outside 0..2"),
    (dict(frame_video=[0.0, 1.0]), "integer positions"),
    (dict(frame_video=[0, 1, 2]), "3 frame_video entries but 2 frame_scores"),
    (dict(frame_video=[], frame_scores=[]), "no frames"),
    (dict(frame_video=["a", "z"], video_ids=["a", "b", "c"]), "frame 1's video 'z' is not among video_ids"),
    (dict(frame_video=["a", "b"], video_ids=["a", "b", "a"]), "'a' appears more than once"),
    (dict(frame_video=["a", "b"], video_ids=["a", "b"]), "2 video_ids but 3 video labels"),
    (dict(frame_scores=[0.1, float("nan")]), "frame_scores at position 1 is nan"),
    (dict(video_labels=[0, 1, 3]), "video_labels must contain only 0"),
    (dict(video_scores=[0.1, 0.2]), "3 labels \\(video_labels\\) but 2 scores \\(video_scores\\)"),
])
def test_frame_and_video_metrics_refuses_bad_input(kwargs, message):
    args = dict(frame_video=[0, 2], frame_scores=[0.3, 0.8], video_labels=[0, 1, 1], video_scores=[0.2, 0.7, 0.9])
    with pytest.raises(ValueError, match=message):
        frame_and_video_metrics(**{**args, **kwargs})


# -------------------------------------------------------------------------------------------- plot
@pytest.mark.parametrize("rule", EER_RULES)
def test_plot_roc_writes_a_png(tmp_path, rule):
    frame_video, frame_scores, labels, video_scores = _videos()
    path = tmp_path / "roc.png"
    plot_roc(labels, video_scores, path, title="out-of-fold ROC", eer_rule=rule,
             extra={"frames": (labels[frame_video], frame_scores), "one class": ([1, 1], [0.2, 0.3])})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_roc_refuses_bad_curves(tmp_path):
    with pytest.raises(ValueError, match="both the main curve and in extra"):
        plot_roc([0, 1], [0.1, 0.9], tmp_path / "a.png", extra={"videos": ([0, 1], [0.2, 0.8])})
    with pytest.raises(ValueError, match="must be a \\(y_true, score\\) pair"):
        plot_roc([0, 1], [0.1, 0.9], tmp_path / "a.png", extra={"frames": [0.2, 0.8, 0.1]})
    assert not (tmp_path / "a.png").exists()
