"""Self-supervised pretext tasks: learn a backbone from images without (or with few) labels.

Why: a competition's unlabeled images (its test set, its `new_whale` images) and its labelled
ones can teach the backbone what the domain looks like before the metric-learning fine-tune.
Each task wraps the shared timm backbone with a small head of its own and is an `nn.Module`
whose `forward(images, groups)` returns `{"loss": ..., ...}`, so `common.engine.trainer.train_fold`
trains it like any model (schedule, AMP, checkpoints, resume, log.csv). `loss(batch)` is the
same for a `(images, groups)` batch. The head is thrown away; only the backbone is kept.

| name     | the question the backbone must answer                                      |
|----------|----------------------------------------------------------------------------|
| simclr   | are these two augmented views of the same image? (NT-Xent, in-batch negatives) |
| micle    | simclr, but the two views are two *different* photos of one identity where one is known |
| rotation | was this image rotated by 0, 90, 180 or 270 degrees?                       |
| jigsaw   | which of N fixed permutations shuffled these 3x3 tiles?                    |

Per-image augmentation runs on the CPU in `PretextDataset` (albumentations); rotations and
tiling run on the batch, on the device. Tasks come from the `PRETEXT` registry by name.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import albumentations as A
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from common.data.augment import IMAGENET_MEAN, IMAGENET_STD
from common.data.images import reseed_worker_transform  # noqa: F401  (kept importable from here)
from common.core.errors import ConfigError
from common.core.registry import Registry
from common.losses.pair import NTXentLoss, ntxent_two_views

PRETEXT = Registry("pretext task", keys=("ssl.method",))


def register(name: str):
    def add(cls):
        cls.name = name
        PRETEXT.add(name, cls)
        return cls
    return add


def create_pretext(name: str, backbone: nn.Module, image_size: Sequence[int], options: Mapping) -> "PretextTask":
    """`ssl.method=NAME` -> a task around `backbone`; `options` is the `ssl` config section."""
    return PRETEXT.get(name, "ssl.method")(backbone, image_size, options)


def pooled_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global average of the backbone's feature map (or token sequence): one vector per image."""
    features = backbone.forward_features(images)
    return features.mean(dim=(2, 3)) if features.ndim == 4 else features.mean(dim=1)


def _normalize() -> list:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


def _aspect_preserving_ratio(height: int, width: int) -> tuple[float, float]:
    """RandomResizedCrop's crop aspect range around the image's own, so crops are not stretched."""
    aspect = width / height
    return aspect * 3 / 4, aspect * 4 / 3


class PretextTask(nn.Module):
    """A backbone plus a pretext head. Subclasses set `two_views`/`uses_identities` and define
    `transform()` (per image, CPU) and `forward(images, groups) -> {"loss": tensor, ...}`."""

    name = "?"
    two_views = False        # the dataset yields (view of the image, view of its partner)
    uses_identities = False  # the partner is another image of the same identity, when there is one

    def __init__(self, backbone: nn.Module, image_size: Sequence[int], options: Mapping):
        super().__init__()
        self.backbone = backbone
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.options = dict(options)

    def transform(self) -> A.Compose:
        raise NotImplementedError

    def loss(self, batch) -> torch.Tensor:
        images, groups = batch
        return self(images, groups)["loss"]


@register("simclr")
class SimCLR(PretextTask):
    """Chen et al. 2020: two random views per image, a projection MLP, NT-Xent over the batch."""

    two_views = True

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        width = backbone.num_features
        self.temperature = float(options["temperature"])
        self.projector = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                       nn.Linear(width, int(options["projection_dim"])))

    def transform(self) -> A.Compose:
        height, width = self.image_size
        blur = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)  # odd kernel, about 10% of the image
        return A.Compose([
            A.RandomResizedCrop(size=(height, width), scale=(0.2, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(blur_limit=(3, blur), sigma_limit=(0.1, 2.0), p=0.5),
            *_normalize(),
        ])

    def project(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled_features(self.backbone, images).float())

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return ntxent_two_views(z1, z2, self.temperature)

    def forward(self, images: torch.Tensor, groups: torch.Tensor) -> dict:
        if images.ndim != 5 or images.shape[1] != 2:
            raise ValueError(f"{self.name} expects a batch of view pairs (B, 2, C, H, W), got {tuple(images.shape)}")
        n = len(images)
        z = self.project(torch.cat([images[:, 0], images[:, 1]]))  # one pass: BatchNorm sees both views
        return {"loss": self.contrast(z[:n], z[n:], groups)}


@register("micle")
class MICLe(SimCLR):
    """Azizi et al. 2021 (multi-instance contrastive learning): where several images share a known
    identity, the positive pair is two *different* images of it, so the backbone learns what stays
    the same across photos of one animal; images of unknown identity pair with a second view of
    themselves, as in SimCLR. Labels only form positives: images of one identity that meet in a
    batch count as positives of each other rather than as false negatives."""

    uses_identities = True

    def contrast(self, z1, z2, groups):
        return NTXentLoss(self.temperature)(torch.cat([z1, z2]), torch.cat([groups, groups]))


@register("rotation")
class RotationPrediction(PretextTask):
    """Gidaris et al. 2018: predict whether an image was rotated by 0, 90, 180 or 270 degrees.
    Each image gets one random rotation per step (the paper shows all four: 4x the compute for a
    somewhat stronger signal). Images are cropped square first, so the shape of a rotated image
    does not give the answer away."""

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.classifier = nn.Linear(backbone.num_features, 4)

    def transform(self) -> A.Compose:
        side = min(self.image_size)
        return A.Compose([
            A.RandomResizedCrop(size=(side, side), scale=(0.35, 1.0), ratio=(0.8, 1.25)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.5),
            *_normalize(),
        ])

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        target = torch.randint(0, 4, (len(images),), device=images.device)
        every = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(4)], dim=1)  # (B, 4, C, S, S)
        rotated = every[torch.arange(len(images), device=images.device), target]
        logits = self.classifier(pooled_features(self.backbone, rotated).float())
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}


@lru_cache(maxsize=8)
def jigsaw_permutations(n: int = 100, tiles: int = 9) -> np.ndarray:
    """`n` permutations of `tiles` positions, as far apart as possible (Noroozi & Favaro 2016).

    Greedy farthest-point selection over all `tiles!` permutations: start from the identity, then
    repeatedly add the permutation whose smallest Hamming distance to those already chosen is
    largest (ties: the first in lexicographic order). Deterministic; under a second for 9 tiles.
    Any two of the 64-permutation set differ in at least 7 positions; of the 100-permutation set, 6.
    """
    if not 2 <= n <= 1000:
        raise ConfigError(f"ssl.jigsaw_permutations must be in [2, 1000], got {n}")
    every = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)
    columns = np.ascontiguousarray(every.T)  # position-major: fast per-position comparisons

    def distances(index: int) -> np.ndarray:
        d = np.zeros(len(every), np.int8)
        for position in range(tiles):
            d += columns[position] != columns[position, index]
        return d

    chosen = [0]  # the identity comes first in lexicographic order
    nearest = distances(0)  # each candidate's distance to its nearest chosen permutation
    for _ in range(n - 1):
        best = int(np.argmax(nearest))
        chosen.append(best)
        np.minimum(nearest, distances(best), out=nearest)
    return every[chosen].astype(np.int64)


def min_hamming_distance(permutations: np.ndarray) -> int:
    """Smallest number of positions in which two different permutations of the set differ."""
    distance = (permutations[:, None, :] != permutations[None, :, :]).sum(-1)
    np.fill_diagonal(distance, permutations.shape[1] + 1)
    return int(distance.min())


def cut_tiles(images: torch.Tensor, grid: int = 3, fraction: float = 0.85) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, th, tw), row-major: from each grid cell, a crop of `fraction`
    of the cell at a random place (independently per image and cell)."""
    b, _, height, width = images.shape
    cell_h, cell_w = height // grid, width // grid
    th, tw = max(1, int(cell_h * fraction)), max(1, int(cell_w * fraction))
    device = images.device
    batch = torch.arange(b, device=device)[:, None, None]
    channels_last = images.permute(0, 2, 3, 1)
    out = []
    for r in range(grid):
        for c in range(grid):
            dy = torch.randint(0, cell_h - th + 1, (b,), device=device)
            dx = torch.randint(0, cell_w - tw + 1, (b,), device=device)
            rows = (r * cell_h + dy)[:, None] + torch.arange(th, device=device)  # (B, th)
            cols = (c * cell_w + dx)[:, None] + torch.arange(tw, device=device)  # (B, tw)
            out.append(channels_last[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))
    return torch.stack(out, dim=1)


@register("jigsaw")
class Jigsaw(PretextTask):
    """Noroozi & Favaro 2016: cut the image into 3x3 tiles, shuffle them with one of N fixed
    permutations, embed every tile with the shared backbone, concatenate, and predict the
    permutation's index. Each tile is a random crop of 85% of its cell (edges must not line up
    trivially) and is normalised on its own (brightness must not give the order away)."""

    grid = 3

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        n = int(options["jigsaw_permutations"])
        self.register_buffer("permutations", torch.from_numpy(jigsaw_permutations(n, self.grid ** 2)), persistent=False)
        tile_dim = 256
        self.tile_embed = nn.Sequential(nn.Linear(backbone.num_features, tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(self.grid ** 2 * tile_dim, 512), nn.ReLU(inplace=True),
                                        nn.Linear(512, n))

    def transform(self) -> A.Compose:
        height, width = self.image_size
        return A.Compose([
            A.RandomResizedCrop(size=(height, width), scale=(0.6, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.5),
            A.ToGray(p=0.3),
            *_normalize(),
        ])

    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 9, C, th, tw): jittered tiles, each standardised on its own."""
        tiles = cut_tiles(images, self.grid, fraction=0.85)
        mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
        std = tiles.std(dim=(2, 3, 4), keepdim=True).clamp(min=1e-3)
        return (tiles - mean) / std

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        tiles = self.tiles(images)
        b, t = tiles.shape[:2]
        target = torch.randint(0, len(self.permutations), (b,), device=images.device)
        order = self.permutations[target]  # (B, 9): position j shows tile order[j]
        shuffled = tiles[torch.arange(b, device=images.device)[:, None], order]
        features = pooled_features(self.backbone, shuffled.flatten(0, 1)).float()
        logits = self.classifier(self.tile_embed(features).reshape(b, -1))
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}


def identity_groups(labels: Sequence, known: Sequence[bool]) -> np.ndarray:
    """One integer per image: images of one known identity share it, every other image has its own."""
    labels = np.asarray(labels, dtype=object)
    known = np.asarray(known, dtype=bool)
    groups = np.arange(len(labels), dtype=np.int64) + len(labels)  # unique, above any identity code
    if known.any():
        _, codes = np.unique(labels[known].astype(str), return_inverse=True)
        groups[known] = codes
    return groups


def identity_partners(groups: Sequence[int]) -> list[np.ndarray]:
    """For each item, the positions of the *other* items in its group (empty when it is alone)."""
    groups = np.asarray(groups)
    members: dict[int, list[int]] = {}
    for position, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(position)
    return [np.array([p for p in members[g] if p != i], dtype=np.int64) for i, g in enumerate(groups.tolist())]


class PretextDataset(Dataset):
    """Items `rows` of an image source (e.g. `common.data.images.ImageCache`), transformed for a pretext task.

    Yields `(view, group)`, or `(stack of two views, group)` when `two_views`: the second view is of
    the same image, or, with `pair_identities`, of a random other image of the same group when the
    group has one. Groups come from `identity_groups` (default: every item alone).
    """

    def __init__(self, images, rows: Sequence[int], transform: Callable, groups: Sequence[int] | None = None,
                 two_views: bool = False, pair_identities: bool = False, seed: int = 0):
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.groups = np.arange(len(self.rows)) if groups is None else np.asarray(groups, dtype=np.int64)
        if len(self.groups) != len(self.rows):
            raise ValueError(f"{len(self.groups)} groups for {len(self.rows)} rows")
        self.two_views = two_views
        self.partners = identity_partners(self.groups) if pair_identities else None
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def partner(self, i: int) -> int:
        """Position of the item whose image gives the second view."""
        if self.partners is None or len(self.partners[i]) == 0:
            return i
        return int(self.partners[i][torch.randint(len(self.partners[i]), ()).item()])

    def _view(self, position: int) -> torch.Tensor:
        image = self.transform(image=np.asarray(self.images[int(self.rows[position])]))["image"]
        return image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def __getitem__(self, i: int):
        view = self._view(i)
        if self.two_views:
            view = torch.stack([view, self._view(self.partner(i))])
        return view, int(self.groups[i])


