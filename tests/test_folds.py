import numpy as np
import pytest

from common.engine.folds import (assert_disjoint, assert_groups_within_folds, group_folds, open_set_folds,
                          open_set_truth)


def _long_tail_labels(seed=0):
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(60):
        labels += [f"w_{i}"] * int(min(12, 1 + rng.zipf(1.8)))
    labels += ["new_whale"] * 50
    rng.shuffle(labels)
    return np.array(labels, dtype=object)


@pytest.mark.parametrize("n_folds", [2, 4, 5])
def test_every_validation_fold_has_known_and_new_answers(n_folds):
    labels = _long_tail_labels()
    folds = open_set_folds(labels, n_folds, seed=1)
    assert set(folds) == set(range(n_folds))
    for k in range(n_folds):
        val, train = folds == k, folds != k
        truth = open_set_truth(labels[val], labels[train])
        assert (truth == "new_whale").sum() > 0
        assert (truth != "new_whale").sum() > 0
        # unknown-labelled images are always answered new_whale
        assert all(truth[labels[val] == "new_whale"] == "new_whale")


def test_identities_with_several_images_are_spread_not_stacked():
    labels = _long_tail_labels()
    folds = open_set_folds(labels, 4, seed=0)
    for identity in set(labels) - {"new_whale"}:
        mine = folds[labels == identity]
        if len(mine) >= 2:
            assert len(set(mine)) >= 2, identity  # so its validation images are known in training


def test_singletons_and_unknowns_are_balanced_and_split_is_seeded():
    labels = _long_tail_labels()
    folds = open_set_folds(labels, 4, seed=3)
    per_fold_new = np.bincount(folds[labels == "new_whale"], minlength=4)
    assert per_fold_new.max() - per_fold_new.min() <= 1
    np.testing.assert_array_equal(folds, open_set_folds(labels, 4, seed=3))
    assert not np.array_equal(folds, open_set_folds(labels, 4, seed=4))


def test_open_set_truth():
    truth = open_set_truth(["a", "b", "new_whale", "c"], ["a", "c", "new_whale"])
    assert truth.tolist() == ["a", "new_whale", "new_whale", "c"]


def test_group_folds_keep_groups_together_and_leaks_are_caught():
    labels = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0] * 3)
    groups = np.repeat(np.arange(12), 3)
    folds = group_folds(labels, groups, 3, seed=0)
    assert_groups_within_folds(folds, groups)
    bad = folds.copy()
    bad[0] = (bad[1] + 1) % 3
    with pytest.raises(AssertionError, match="fold leak"):
        assert_groups_within_folds(bad, groups)
    with pytest.raises(AssertionError, match="fold leak"):
        assert_disjoint([1, 2, 3], [3, 4])
