"""Folds grouped by estimated actor (common/video/actors.py)."""
from __future__ import annotations

import numpy as np

from common.engine.folds import assert_groups_within_folds, group_folds
from common.video.actors import cluster_actors, merge_groups


def test_clusters_join_close_videos_only():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    points = np.concatenate([c + 0.05 * rng.normal(size=(3, 32)) for c in centres])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    actors = cluster_actors(points, threshold=0.1)
    assert len(set(actors.tolist())) == 4
    assert all(len(set(actors[i * 3:(i + 1) * 3].tolist())) == 1 for i in range(4))
    assert len(set(cluster_actors(points, threshold=1e-6).tolist())) == 12
    assert cluster_actors(points[:1], 0.1).tolist() == [0]


def test_merge_joins_originals_of_one_actor_and_their_fakes():
    # videos: r1, r2 (same actor), r3 (another), fakes of r1 and r3, a fake of a missing original m
    groups = ["r1", "r2", "r3", "r1", "r3", "m"]
    merged = merge_groups(groups, {"r1": 0, "r2": 0, "r3": 1})
    assert merged.tolist() == [0, 0, 1, 0, 1, 2]
    assert merge_groups(groups, {}).tolist() == [0, 1, 2, 0, 2, 3]


def test_actor_groups_never_straddle_folds():
    groups = np.array([f"r{i}" for i in range(12)] * 3)
    actor = {f"r{i}": i // 2 for i in range(12)}  # six actors, two originals each
    merged = merge_groups(groups, actor)
    labels = np.array([0] * 12 + [1] * 24)
    folds = group_folds(labels, merged, 3, seed=0)
    assert_groups_within_folds(folds, merged)
    for i in range(0, 12, 2):  # both originals of an actor in one fold
        assert len(set(folds[np.isin(groups, [f"r{i}", f"r{i + 1}"])].tolist())) == 1
