"""Tests for common.metrics.scores: hand-computed Kaggle cases plus independent reference implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics

from common.metrics.scores import (
    average_precision_at_k,
    gap,
    log_loss,
    map_at_k,
    pair_scores,
    roc_curve_pairs,
    verification_metrics,
)


# ------------------------------------------------------------------------------------ MAP@k
@pytest.mark.parametrize(
    "predicted, actual, expected",
    [
        (["a", "b", "c", "d", "e"], "a", 1.0),  # perfect
        (["x", "a", "c", "d", "e"], "a", 1 / 2),  # rank 2
        (["x", "y", "a", "d", "e"], "a", 1 / 3),  # rank 3
        (["x", "y", "z", "w", "a"], "a", 1 / 5),  # rank 5
        (["x", "y", "z", "w", "v", "a"], "a", 0.0),  # rank 6 is beyond k
        (["x", "y", "z", "w", "v"], "a", 0.0),  # absent
        (["a", "a", "b"], "b", 1 / 3),  # a duplicate occupies a rank
        (["b", "b", "c"], "b", 1.0),  # a repeated true label scores only once
        (["x", "b"], "b", 1 / 2),  # fewer than k labels
        ([], "b", 0.0),  # empty prediction
    ],
)
def test_average_precision_hand_cases(predicted, actual, expected):
    assert average_precision_at_k(predicted, actual, k=5) == pytest.approx(expected, abs=1e-15)


def test_map_is_mean_over_images_and_validates():
    predictions = [["a", "b"], ["x", "b"], ["x", "y", "z"], []]
    truth = ["a", "b", "q", "a"]
    assert map_at_k(predictions, truth) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert map_at_k([["x", "a"]], ["a"], k=1) == 0.0
    with pytest.raises(ValueError):
        map_at_k([["a"]], ["a", "b"])
    with pytest.raises(ValueError):
        map_at_k([], [])
    with pytest.raises(ValueError):
        average_precision_at_k("abc", "a")  # a string is not a list of labels


def _kaggle_apk(actual, predicted, k=5):
    """The ml_metrics `apk` used by Kaggle, copied verbatim in spirit (single true label)."""
    if len(predicted) > k:
        predicted = predicted[:k]
    score, num_hits = 0.0, 0.0
    for i, p in enumerate(predicted):
        if p in actual and p not in predicted[:i]:
            num_hits += 1.0
            score += num_hits / (i + 1.0)
    return score / min(len(actual), k)


def test_map_matches_kaggle_apk_on_random_lists():
    rng = np.random.default_rng(0)
    pool = list("abcdefg")
    for _ in range(300):
        predicted = list(rng.choice(pool, size=rng.integers(0, 8)))
        actual = str(rng.choice(pool))
        assert average_precision_at_k(predicted, actual) == pytest.approx(_kaggle_apk([actual], predicted))


# ------------------------------------------------------------------------------------ GAP
def test_gap_hand_case_with_non_landmark_and_missing_prediction():
    # sorted by confidence: right (P=1), wrong, wrong on a non-landmark; img3 has no prediction.
    # M = 3 landmark images (img1, img2, img3) -> GAP = 1/3.
    preds = ["a", "b", None, "c"]
    conf = [0.9, 0.8, 0.1, 0.5]
    truth = ["a", "a", "b", None]
    assert gap(preds, conf, truth) == pytest.approx(1 / 3)


def test_gap_prediction_on_non_landmark_takes_a_rank():
    truth = [None, "a"]
    assert gap(["x", "a"], [0.9, 0.5], truth) == pytest.approx(0.5)  # wrong ranked first
    assert gap(["x", "a"], [0.1, 0.5], truth) == pytest.approx(1.0)  # wrong ranked last costs nothing
    assert gap([None, "a"], [0.9, 0.5], truth) == pytest.approx(1.0)  # no prediction, no cost


def test_gap_precision_sequence_and_missing_values():
    # ranks: right, wrong, right, wrong, right ; M = 4 -> (1 + 2/3 + 3/5) / 4
    preds = ["a", "x", "c", "y", "e"]
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    truth = ["a", "b", "c", "d", "e"]
    truth_with_non_landmark = ["a", float("nan"), "c", "", "e"]
    assert gap(preds, conf, truth) == pytest.approx((1 + 2 / 3 + 3 / 5) / 5)
    assert gap(preds, conf, truth_with_non_landmark) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # a NaN prediction is "no prediction"; the landmark image still counts in M
    assert gap([np.nan, "b"], [0.9, 0.8], ["a", "b"]) == pytest.approx(0.5)
    assert gap([None, None], [0.0, 0.0], ["a", "b"]) == 0.0
    assert gap([1, 2], [0.9, 0.8], [1, 3]) == pytest.approx(0.5)  # integer landmark ids


def test_gap_ties_keep_input_order():
    truth = ["a", "b"]
    assert gap(["x", "b"], [0.5, 0.5], truth) == pytest.approx(0.25)  # wrong first
    assert gap(["b", "x"], [0.5, 0.5], ["b", "a"]) == pytest.approx(0.5)  # right first


def test_gap_rejects_bad_input():
    with pytest.raises(ValueError, match="M = 0"):
        gap(["a"], [0.5], [None])
    with pytest.raises(ValueError, match="lengths"):
        gap(["a"], [0.5, 0.1], ["a"])
    with pytest.raises(ValueError, match="confidence"):
        gap(["a", "b"], [0.5, float("nan")], ["a", "b"])


def test_gap_never_drops_when_wrong_predictions_move_below_right_ones():
    rng = np.random.default_rng(1)
    changed = 0
    for _ in range(200):
        n = int(rng.integers(2, 30))
        truth = [None if rng.random() < 0.2 else int(rng.integers(0, 5)) for _ in range(n)]
        preds = [None if rng.random() < 0.2 else int(rng.integers(0, 5)) for _ in range(n)]
        if all(t is None for t in truth):
            truth[0] = 0
        conf = rng.random(n)
        wrong = np.array([p is not None and p != t for p, t in zip(preds, truth)])
        pushed = np.where(wrong, conf - 10.0, conf)
        before, after = gap(preds, conf, truth), gap(preds, pushed, truth)
        assert after >= before - 1e-12
        changed += after > before + 1e-12
    assert changed > 50  # the property is exercised, not vacuous


# ------------------------------------------------------------------------------------ log loss
def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0.01, 0.99, 500)
    assert log_loss(y, p) == pytest.approx(sklearn.metrics.log_loss(y, p), rel=1e-12)


def test_log_loss_clips_and_validates():
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))
    assert log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-15))
    assert log_loss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert log_loss([0, 1], [0.5, 0.5]) == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        log_loss([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        log_loss([0, 1], [0.5])
    with pytest.raises(ValueError):
        log_loss([], [])


# ------------------------------------------------------------------------------------ verification
def _clustered(n_classes=20, per_class=8, dim=32, noise=0.05, seed=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = centers[labels] + noise * rng.normal(size=(len(labels), dim))
    return emb.astype(np.float32), labels


def test_verification_separable_embeddings_score_perfectly():
    emb, labels = _clustered()
    result = verification_metrics(emb, [f"id{c}" for c in labels])
    n = len(labels)
    assert result["roc_auc"] > 0.999
    assert result["tar_at_far_1e-2"] > 0.99 and result["tar_at_far_1e-3"] > 0.99
    assert result["best_accuracy"] > 0.999
    assert result["n_pos_pairs"] == 20 * 8 * 7 // 2
    assert result["n_pos_pairs"] + result["n_neg_pairs"] == n * (n - 1) // 2
    assert result["subsampled"] is False


def test_verification_random_embeddings_are_chance():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(400, 32))
    labels = rng.integers(0, 40, 400)
    result = verification_metrics(emb, labels)
    assert 0.45 < result["roc_auc"] < 0.55
    assert result["tar_at_far_1e-2"] < 0.05


def test_verification_matches_brute_force_threshold_scan():
    emb, labels = _clustered(n_classes=6, per_class=10, dim=8, noise=1.0, seed=5)
    result = verification_metrics(emb, labels, far_targets=(1e-2, 5e-2))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    i, j = np.triu_indices(len(labels), k=1)
    scores, same = sims[i, j], labels[i] == labels[j]
    assert result["roc_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(same, scores), abs=1e-6)
    thresholds = np.append(np.unique(scores), np.inf)
    tar = np.array([(scores[same] >= t).mean() for t in thresholds])
    far = np.array([(scores[~same] >= t).mean() for t in thresholds])
    accuracy = np.array([((scores >= t) == same).mean() for t in thresholds])
    assert result["tar_at_far_1e-2"] == pytest.approx(tar[far <= 1e-2].max(), abs=1e-6)
    assert result["tar_at_far_5e-2"] == pytest.approx(tar[far <= 5e-2].max(), abs=1e-6)
    assert result["best_accuracy"] == pytest.approx(accuracy.max(), abs=1e-9)
    assert ((scores >= result["best_threshold"]) == same).mean() == pytest.approx(accuracy.max(), abs=1e-9)


def test_pair_scores_subsamples_above_cap():
    emb, labels = _clustered(n_classes=3, per_class=60, dim=16, seed=6)
    n_total = 180 * 179 // 2
    scores, same, info = pair_scores(emb, labels, max_pairs=1000, seed=0)
    assert info["subsampled"] and info["n_pos_pairs_total"] == 3 * 60 * 59 // 2
    assert info["n_neg_pairs_total"] == n_total - info["n_pos_pairs_total"]
    assert same.sum() == 1000 and (~same).sum() == 1000  # both kinds capped and sampled
    result = verification_metrics(emb, labels, max_pairs=1000)
    assert result["subsampled"] and result["roc_auc"] > 0.999
    # same seed -> same sample
    again, _, _ = pair_scores(emb, labels, max_pairs=1000, seed=0)
    np.testing.assert_array_equal(scores, again)


def test_pair_scores_all_positives_kept_when_few():
    emb, labels = _clustered(n_classes=50, per_class=3, dim=16, seed=7)
    scores, same, info = pair_scores(emb, labels, max_pairs=500)
    assert info["subsampled"] and same.sum() == 50 * 3 == info["n_pos_pairs_total"]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.all(scores[same] > 0.99)  # noise 0.05: same-class cosines are near 1
    assert abs(float(np.mean(scores[~same]))) < 0.1
    assert np.allclose(np.sort(scores[same]), np.sort([unit[a] @ unit[b] for a in range(150) for b in range(a + 1, 150) if labels[a] == labels[b]]), atol=1e-5)


def test_roc_curve_pairs_and_errors():
    emb, labels = _clustered(n_classes=5, per_class=5, seed=8)
    fpr, tpr, thresholds = roc_curve_pairs(emb, labels)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) <= 0)
    with pytest.raises(ValueError, match="same-label"):
        verification_metrics(emb[:5], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        verification_metrics(emb, labels[:-1])
