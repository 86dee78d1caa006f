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
| damaged_jigsaw | jigsaw on grey tiles with one removed: which permutation, which tile is missing? (Kim et al. 2018) |
| context  | which of its 8 neighbours in a 3x3 grid is this patch, next to the centre patch? (Doersch et al. 2015) |
| exemplar | which of the batch's seed images is this heavily transformed copy of? (Dosovitskiy et al. 2014) |
| inpainting | what was under the hidden centre of the image? (context encoder, Pathak et al. 2016) |

Per-image augmentation runs on the CPU in `PretextDataset` (albumentations); rotations, tiling,
patches, masks and every pseudo-label are made on the batch, on the device. Tasks come from the
`PRETEXT` registry by name.

Input sizes: tasks that embed tiles or patches (jigsaw, damaged_jigsaw, context) cut them from the
`ssl.image_size` image, so they are a third of its side or less: tiles whose shorter side is under
`ssl.min_side` are upsampled to it (32: a stride-32 backbone such as small_cnn still has a 1x1
feature map). `check_backbone_inputs` tries the backbone on every input size a task will feed it
before pretraining starts, and refuses a size it cannot take with a `ConfigError` that names
`ssl.image_size` (and `ssl.min_side`) and a value that works.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import albumentations as A
import cv2
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


def upsampled_shape(shape: Sequence[int], min_side: int) -> tuple[int, int]:
    """(h, w) scaled up, aspect kept, so that its shorter side is `min_side`; unchanged when it is already."""
    h, w = int(shape[0]), int(shape[1])
    if not min_side or min(h, w) >= min_side:
        return h, w
    scale = min_side / min(h, w)
    return max(min_side, round(h * scale)), max(min_side, round(w * scale))


def fit_min_side(images: torch.Tensor, min_side: int) -> torch.Tensor:
    """(N, C, h, w) tiles or patches, bilinearly upsampled to `upsampled_shape` when too small for the backbone."""
    shape = upsampled_shape(images.shape[-2:], min_side)
    if shape == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False)


def standardize(patches: torch.Tensor) -> torch.Tensor:
    """Each (C, h, w) patch of a (..., C, h, w) stack to zero mean and unit std on its own, so that
    brightness and contrast do not tell which part of the image a patch came from. An all-constant
    patch (e.g. a removed tile, zeros) stays all zeros."""
    mean = patches.mean(dim=(-3, -2, -1), keepdim=True)
    std = patches.std(dim=(-3, -2, -1), keepdim=True).clamp(min=1e-3)
    return (patches - mean) / std


def grayscale(patches: torch.Tensor) -> torch.Tensor:
    """(..., 3, h, w) -> the same shape with every channel the channel mean: no colour left."""
    return patches.mean(dim=-3, keepdim=True).expand_as(patches).contiguous()


def backbone_error(backbone: nn.Module, shape: Sequence[int]) -> str | None:
    """None when `backbone.forward_features` takes a (2, 3, h, w) batch, else its error's first line.
    Run in eval mode without gradients (and the mode restored): a probe, not a training step."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone.forward_features(torch.zeros(2, 3, int(shape[0]), int(shape[1])))
        return None
    except RuntimeError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        backbone.train(was_training)


def inputs_fit(name: str, backbone: nn.Module, image_size: Sequence[int], options: Mapping) -> bool:
    """Whether task `name` on `image_size` images feeds `backbone` only input sizes it can take."""
    try:
        task = create_pretext(name, backbone, image_size, options)
    except ConfigError:
        return False
    return all(backbone_error(backbone, shape) is None for _, shape, _ in task.backbone_inputs())


def check_backbone_inputs(name: str, backbone: nn.Module, image_size: Sequence[int], options: Mapping,
                          backbone_name: str = "the backbone") -> None:
    """Refuse, before any pretraining, an `ssl.image_size` whose tiles/patches/images the backbone
    cannot embed (e.g. small_cnn's four max-pools on a 13-pixel tile), naming the key and a value that works."""
    task = create_pretext(name, backbone, image_size, options)
    for what, shape, uses_min_side in task.backbone_inputs():
        error = backbone_error(backbone, shape)
        if error is None:
            continue
        height, width = (int(v) for v in image_size)
        scales = (1.5, 2, 3, 4, 6, 8)
        bigger = ([math.ceil(height * f / 8) * 8, math.ceil(width * f / 8) * 8] for f in scales)  # multiples of 8
        size = next((size for size in bigger if inputs_fit(name, backbone, size, options)), None)
        hint = f"ssl.image_size=[{size[0]},{size[1]}]" if size else "a larger ssl.image_size"
        if uses_min_side:
            sides = (m for m in (16, 24, 32, 48, 64, 96, 128) if m > int(options["min_side"]))
            side = next((m for m in sides if inputs_fit(name, backbone, image_size, {**options, "min_side": m})), None)
            hint += f" or ssl.min_side={side}" if side else " or a larger ssl.min_side"
            hint += " (smaller tiles/patches are upsampled)"
        raise ConfigError(f"ssl.method={name}: {backbone_name} cannot embed the {shape[0]}x{shape[1]} {what} of "
                          f"{height}x{width} images (ssl.image_size, default data.image_size): {error}; use {hint}")


def projection_mlp(width: int, dim: int) -> nn.Sequential:
    """SimCLR's projection head (Linear-BN-ReLU-Linear): the loss acts on its output, so that the
    backbone's features keep what the augmentations change (the head is thrown away)."""
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, dim))


class PretextTask(nn.Module):
    """A backbone plus a pretext head. Subclasses set `views`/`uses_identities` and define
    `transform()` (per image, CPU) and `forward(images, groups) -> {"loss": tensor, ...}`."""

    name = "?"
    views = 1                # views per item: 2 = (view of the image, view of its partner); K > 2: K views of it
    uses_identities = False  # the partner is another image of the same identity, when there is one

    def __init__(self, backbone: nn.Module, image_size: Sequence[int], options: Mapping):
        super().__init__()
        self.backbone = backbone
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.options = dict(options)

    @property
    def two_views(self) -> bool:
        return self.views == 2

    def transform(self) -> A.Compose:
        raise NotImplementedError

    def backbone_inputs(self) -> list[tuple[str, tuple[int, int], bool]]:
        """(what, (h, w), whether ssl.min_side sizes it) for every input shape the backbone is fed;
        `check_backbone_inputs` tries each before pretraining. Default: the transform's output."""
        return [("images", self.image_size, False)]

    def loss(self, batch) -> torch.Tensor:
        images, groups = batch
        return self(images, groups)["loss"]

    def chance_loss(self, images: torch.Tensor) -> float:
        """The loss a head that has learnt nothing gets on this batch (uniform over the classes; for
        inpainting, the mean predicted everywhere): the line a pretext loss must fall clearly below
        before its representation can be worth anything."""
        raise NotImplementedError


BLUR_MIN_SIDE = 64  # simclr: views of smaller images are not blurred
MIN_CROP_SIDE = 28  # simclr: pixels on the shorter side of the smallest random crop (before resizing)


def smallest_crop(side: int, recipe: float) -> float:
    """RandomResizedCrop's smallest share of the area: the recipe's, raised so that a crop of an image
    whose shorter side is `side` keeps at least MIN_CROP_SIDE pixels a side (all of it below that)."""
    return min(1.0, max(recipe, (MIN_CROP_SIDE / side) ** 2))


@register("simclr")
class SimCLR(PretextTask):
    """Chen et al. 2020: two random views per image, a projection MLP, NT-Xent over the batch."""

    views = 2

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.temperature = float(options["temperature"])
        self.projector = projection_mlp(backbone.num_features, int(options["projection_dim"]))

    def transform(self) -> A.Compose:
        """SimCLR's views, sized for the image: below `BLUR_MIN_SIDE` pixels no blur (the paper drops it
        for 32-px CIFAR: a 5-px kernel erases 1-px strokes), and a crop never smaller than
        `MIN_CROP_SIDE` pixels on its side (a 20 % crop of a 40-px character is an 18-px stroke
        fragment that shares nothing with the other view). Omniglot at 40 px from random
        EfficientNet-Lite0, AdamW 3e-3, batch 32, steps 241-280: NT-Xent 3.26 with these views, 3.84
        with the 224-px recipe (chance 4.14); ImageNet + SimCLR, then fine-tuned (bench pretrain, 3 seeds):
        test MAP@5 0.861 +- 0.009, against 0.841 +- 0.017 measured earlier with the 224-px views. From
        64 px up (whale, landmark and face-crop defaults) the views are SimCLR's own, as before."""
        height, width = self.image_size
        side = min(height, width)
        smallest = smallest_crop(side, 0.2)
        blur = [] if side < BLUR_MIN_SIDE else [A.GaussianBlur(
            blur_limit=(3, max(3, int(0.1 * side) // 2 * 2 + 1)), sigma_limit=(0.1, 2.0), p=0.5)]  # kernel ~10 %
        return A.Compose([
            A.RandomResizedCrop(size=(height, width), scale=(smallest, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
            A.ToGray(p=0.2),
            *blur,
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

    def chance_loss(self, images):
        return math.log(2 * len(images) - 1)  # each view's partner among the 2B - 1 others


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

    def backbone_inputs(self):
        side = min(self.image_size)
        return [("square crops", (side, side), False)]

    def chance_loss(self, images):
        return math.log(4)

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
    trivially) and is normalised on its own (brightness must not give the order away); tiles under
    `ssl.min_side` are upsampled to it for the backbone."""

    grid = 3
    fraction = 0.85  # of a cell's side: each tile's crop

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.min_side = _min_side(options)
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

    def backbone_inputs(self):
        cell_h, cell_w = self.image_size[0] // self.grid, self.image_size[1] // self.grid
        tile = (max(1, int(cell_h * self.fraction)), max(1, int(cell_w * self.fraction)))
        return [("tiles", upsampled_shape(tile, self.min_side), True)]

    def chance_loss(self, images):
        return math.log(len(self.permutations))

    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 9, C, th, tw): jittered tiles, each standardised on its own."""
        return standardize(cut_tiles(images, self.grid, fraction=self.fraction))

    def shuffle(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 9, ...) -> (the tiles in a random permutation of the set, its index): position j shows tile order[j]."""
        b = len(tiles)
        target = torch.randint(0, len(self.permutations), (b,), device=tiles.device)
        order = self.permutations[target]  # (B, 9)
        return tiles[torch.arange(b, device=tiles.device)[:, None], order], target

    def tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, 9, C, th, tw) -> (B, 9 * 256): every tile through the shared backbone (upsampled to
        `ssl.min_side` when smaller), embedded, concatenated in position order."""
        b = len(tiles)
        features = pooled_features(self.backbone, fit_min_side(tiles.flatten(0, 1), self.min_side)).float()
        return self.tile_embed(features).reshape(b, -1)

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        shuffled, target = self.shuffle(self.tiles(images))
        logits = self.classifier(self.tile_features(shuffled))
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}


def _min_side(options: Mapping) -> int:
    value = options["min_side"]
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"ssl.min_side={value!r}: expected an integer >= 0 (0: never upsample tiles)")
    return int(value)


def _fraction(options: Mapping, key: str, low: float = 0.0, high: float = 1.0) -> float:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ConfigError(f"ssl.{key}={value!r}: expected a number strictly between {low:g} and {high:g}")
    return float(value)


@register("damaged_jigsaw")
class DamagedJigsaw(Jigsaw):
    """Kim, Cho, Yoo & Kweon 2018 (completing damaged jigsaw puzzles): the jigsaw, made harder so
    that low-level cues cannot solve it. Every tile is decolourised (grey: colour and chromatic
    aberration cannot tell neighbours), and one tile, chosen at random, is removed (all zeros), so
    the backbone must reason about the tiles that are there. Heads: the permutation's index, as in
    jigsaw, and, with `ssl.damaged_missing_head`, which tile of the original 3x3 grid (row-major)
    was removed. That is the tile's *cell* in the image, not its shuffled position (a zero tile is
    visible). The paper's colourisation and inpainting heads are left out (a GAN-free CPU budget);
    the loss is the sum of the two cross-entropies."""

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.missing_head = bool(options["damaged_missing_head"])
        if self.missing_head:
            self.missing_classifier = nn.Sequential(nn.Linear(self.grid ** 2 * 256, 256), nn.ReLU(inplace=True),
                                                    nn.Linear(256, self.grid ** 2))

    def transform(self) -> A.Compose:
        height, width = self.image_size
        return A.Compose([  # no colour jitter: the tiles lose their colour anyway
            A.RandomResizedCrop(size=(height, width), scale=(0.6, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            *_normalize(),
        ])

    def chance_loss(self, images):
        return math.log(len(self.permutations)) + (math.log(self.grid ** 2) if self.missing_head else 0.0)

    def damage(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (damaged tiles (B, 9, C, th, tw) in shuffled order, permutation index (B,),
        removed tile (B,): its cell in the original grid). Tiles are grey and not yet standardised;
        the removed one is all zeros, at the position j where order[j] is the removed cell."""
        tiles = grayscale(cut_tiles(images, self.grid, fraction=self.fraction))
        b, device = len(tiles), tiles.device
        missing = torch.randint(0, self.grid ** 2, (b,), device=device)
        keep = torch.ones(b, self.grid ** 2, device=device, dtype=tiles.dtype)
        keep[torch.arange(b, device=device), missing] = 0
        tiles = tiles * keep[:, :, None, None, None]
        shuffled, target = self.shuffle(tiles)
        return shuffled, target, missing

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        shuffled, target, missing = self.damage(images)
        features = self.tile_features(standardize(shuffled))  # a zero tile stays zero
        logits = self.classifier(features)
        loss = F.cross_entropy(logits, target)
        out = {"accuracy": (logits.argmax(1) == target).float().mean()}
        if self.missing_head:
            missing_logits = self.missing_classifier(features)
            loss = loss + F.cross_entropy(missing_logits, missing)
            out["missing_accuracy"] = (missing_logits.argmax(1) == missing).float().mean()
        return {"loss": loss, **out}


# the 8 neighbours of the centre cell of a 3x3 grid, as (row, column): class k is NEIGHBOURS[k]
CONTEXT_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def crop_cells(images: torch.Tensor, cells: torch.Tensor, grid: int, patch: Sequence[int],
               jitter: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W), cells (B, 2) as (row, column) -> (B, C, ph, pw): from each image, a `patch`-sized
    crop centred in its cell of a `grid` x `grid` split, shifted by up to +-`jitter` pixels (uniform, per image)."""
    b, _, height, width = images.shape
    cell_h, cell_w = height // grid, width // grid
    (ph, pw), (jy, jx), device = patch, jitter, images.device
    dy = torch.randint(-jy, jy + 1, (b,), device=device)
    dx = torch.randint(-jx, jx + 1, (b,), device=device)
    top = cells[:, 0] * cell_h + (cell_h - ph) // 2 + dy
    left = cells[:, 1] * cell_w + (cell_w - pw) // 2 + dx
    rows = top[:, None] + torch.arange(ph, device=device)   # (B, ph)
    cols = left[:, None] + torch.arange(pw, device=device)  # (B, pw)
    batch = torch.arange(b, device=device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def drop_colour(patches: torch.Tensor) -> torch.Tensor:
    """Per patch of (N, 3, h, w), at random: grey (the channel mean in every channel), or one random
    channel kept and the other two replaced by faint noise (1/100 of its std; Doersch et al.'s
    colour dropping). Either way no colour fringe is left to say where in the lens a patch was."""
    n, device = len(patches), patches.device
    gray = grayscale(patches)
    kept = torch.randint(0, 3, (n,), device=device)
    channel = patches[torch.arange(n, device=device), kept][:, None]  # (N, 1, h, w)
    scale = channel.std(dim=(1, 2, 3), keepdim=True) / 100
    dropped = torch.randn_like(patches) * scale
    one_hot = F.one_hot(kept, 3).to(patches.dtype)[:, :, None, None]
    dropped = one_hot * channel + (1 - one_hot) * dropped
    use_gray = (torch.rand(n, device=device) < 0.5)[:, None, None, None]
    return torch.where(use_gray, gray, dropped)


@register("context")
class ContextPrediction(PretextTask):
    """Doersch, Gupta & Efros 2015 (context prediction): split the image into a 3x3 grid, take the
    centre cell's patch and the patch of one of its 8 neighbours, and predict which neighbour (8
    classes). Both patches go through the shared backbone; their embeddings are concatenated and a
    small MLP classifies. Shortcuts the paper warns about are closed: a patch is `ssl.context_patch`
    of its cell's side, so neighbours are separated by a gap (edges and textures cannot be continued
    across it) and jittered by up to a quarter of the margin around it; every patch is decolourised
    or has two channels dropped (chromatic aberration differs across the lens and would give the
    position away) and is standardised on its own. Patches under `ssl.min_side` are upsampled."""

    grid = 3

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.min_side = _min_side(options)
        share = _fraction(options, "context_patch")
        cell_h, cell_w = self.image_size[0] // self.grid, self.image_size[1] // self.grid
        self.patch = (max(1, int(cell_h * share)), max(1, int(cell_w * share)))
        self.jitter = ((cell_h - self.patch[0]) // 4, (cell_w - self.patch[1]) // 4)  # gap >= half the margin
        self.register_buffer("neighbours", torch.tensor(CONTEXT_NEIGHBOURS), persistent=False)
        self.patch_embed = nn.Sequential(nn.Linear(backbone.num_features, 256), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(2 * 256, 256), nn.ReLU(inplace=True),
                                        nn.Linear(256, len(CONTEXT_NEIGHBOURS)))

    def transform(self) -> A.Compose:
        height, width = self.image_size
        return A.Compose([  # no flip: a mirrored image swaps left and right neighbours
            A.RandomResizedCrop(size=(height, width), scale=(0.6, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            *_normalize(),
        ])

    def backbone_inputs(self):
        return [("patches", upsampled_shape(self.patch, self.min_side), True)]

    def chance_loss(self, images):
        return math.log(len(CONTEXT_NEIGHBOURS))

    def pairs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (centre patches, neighbour patches, target): the neighbour patch of image i
        comes from cell `CONTEXT_NEIGHBOURS[target[i]]`. Raw crops: colour and standardisation come later."""
        b, device = len(images), images.device
        target = torch.randint(0, len(CONTEXT_NEIGHBOURS), (b,), device=device)
        centre = torch.ones(b, 2, dtype=torch.long, device=device)
        return (crop_cells(images, centre, self.grid, self.patch, self.jitter),
                crop_cells(images, self.neighbours[target], self.grid, self.patch, self.jitter), target)

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        centre, neighbour, target = self.pairs(images)
        b = len(images)
        patches = standardize(drop_colour(torch.cat([centre, neighbour])))
        features = self.patch_embed(pooled_features(self.backbone, fit_min_side(patches, self.min_side)).float())
        logits = self.classifier(torch.cat([features[:b], features[b:]], dim=1))
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}


@register("exemplar")
class Exemplar(PretextTask):
    """Dosovitskiy et al. 2014 (Exemplar-CNN): every seed image is a surrogate class of its own, and
    its heavily transformed copies (translation, scale 0.7-1.4, rotation up to 20 degrees, contrast,
    gamma, colour) are the class's samples, so the backbone learns what stays the same under them.
    The dataset yields `ssl.exemplar_views` copies of each image. The paper's classifier has one
    weight vector per seed (fine for its 8-16k patches, but each vector is updated once an epoch);
    here a batch's seeds are the classes and each class's weight is the mean of its copies'
    normalised projections, the copy being classified left out of its own seed's mean. The loss is
    the cross-entropy of each copy over the batch's seeds (cosine / `ssl.temperature`), so any number
    of images works and every step sees fresh classes. No flip: a mirrored fluke is another whale."""

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.views = int(options["exemplar_views"])
        if self.views < 2 or isinstance(options["exemplar_views"], bool):
            raise ConfigError(f"ssl.exemplar_views={options['exemplar_views']!r}: expected an integer >= 2 "
                              "(a copy is classified by its seed's other copies)")
        self.temperature = float(options["temperature"])
        self.projector = projection_mlp(backbone.num_features, int(options["projection_dim"]))

    def transform(self) -> A.Compose:
        height, width = self.image_size
        return A.Compose([
            A.Affine(scale=(0.7, 1.4), rotate=(-20, 20), translate_percent=(-0.2, 0.2),
                     border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.ColorJitter(brightness=0.4, contrast=0.5, saturation=0.6, hue=0.1, p=0.9),
            A.RandomGamma(gamma_limit=(50, 200), p=0.5),  # the paper's "contrast 2": powers of the values
            A.ToGray(p=0.1),
            A.Resize(height, width),
            *_normalize(),
        ])

    def chance_loss(self, images):
        return math.log(len(images))  # each copy's seed among the batch's

    @staticmethod
    def targets(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, C, H, W) -> (the B*K copies, seed-major, their class: the seed's index in the batch)."""
        b, k = images.shape[:2]
        return images.flatten(0, 1), torch.arange(b, device=images.device).repeat_interleave(k)

    def classify(self, z: torch.Tensor, b: int) -> torch.Tensor:
        """(B*K, D) projections, seed-major -> (B*K, B) logits: cosine to each seed's leave-one-out mean."""
        z = F.normalize(z, dim=1)
        k = len(z) // b
        sums = z.reshape(b, k, -1).sum(1)                         # (B, D)
        others = (sums / k)[None].expand(len(z), b, -1).clone()   # (B*K, B, D)
        own = torch.arange(b, device=z.device).repeat_interleave(k)
        others[torch.arange(len(z), device=z.device), own] = (sums[own] - z) / (k - 1)
        return torch.einsum("nd,nbd->nb", z, F.normalize(others, dim=2)) / self.temperature

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        if images.ndim != 5 or images.shape[1] != self.views:
            raise ValueError(f"exemplar expects (B, {self.views}, C, H, W) copies, got {tuple(images.shape)}")
        copies, target = self.targets(images)
        z = self.projector(pooled_features(self.backbone, copies).float())
        logits = self.classify(z, len(images))
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}


def inpainting_mask(shape: Sequence[int], area: float, kind: str, batch: int = 1,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, 1, H, W) bool, True where the image is hidden. `center`: one centred rectangle of the
    image's aspect covering `area` of it (the paper's central square, on a non-square image); `blocks`:
    4 rectangles, each of a quarter of `area`, at random places per image (they may overlap)."""
    height, width = int(shape[0]), int(shape[1])
    if kind == "center":
        mh, mw = max(1, round(height * math.sqrt(area))), max(1, round(width * math.sqrt(area)))
        mask = torch.zeros(batch, 1, height, width, dtype=torch.bool, device=device)
        top, left = (height - mh) // 2, (width - mw) // 2
        mask[:, :, top:top + mh, left:left + mw] = True
        return mask
    if kind == "blocks":
        bh, bw = max(1, round(height * math.sqrt(area / 4))), max(1, round(width * math.sqrt(area / 4)))
        rows = torch.arange(height, device=device)[None, :, None]
        cols = torch.arange(width, device=device)[None, None, :]
        mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
        for _ in range(4):
            top = torch.randint(0, height - bh + 1, (batch, 1, 1), device=device)
            left = torch.randint(0, width - bw + 1, (batch, 1, 1), device=device)
            mask |= (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        return mask[:, None]
    raise ConfigError(f"ssl.inpaint_mask={kind!r}: choose one of center, blocks")


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               outside_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, masked_mse): the mean squared error over the hidden pixels (every channel), plus
    `outside_weight` times that over the visible ones. Pathak et al. weight the hidden part (and a
    thin overlap) above the rest; the small outside term keeps the decoder from drifting there."""
    error = (prediction.float() - target.float()) ** 2
    inside = mask.expand_as(error).float()
    masked_mse = (error * inside).sum() / inside.sum().clamp(min=1)
    outside_mse = (error * (1 - inside)).sum() / (1 - inside).sum().clamp(min=1)
    return masked_mse + outside_weight * outside_mse, masked_mse


@register("inpainting")
class Inpainting(PretextTask):
    """Pathak et al. 2016 (context encoders): hide part of the image (`ssl.inpaint_mask`: the centre,
    `ssl.inpaint_area` of it, or random blocks), encode what is left with the backbone (its
    `forward_features` map) and reconstruct the whole image with a small decoder (1x1 conv, then
    upsample-x2 + 3x3 conv blocks up to the input size). The loss is the L2 error on the hidden
    pixels plus `ssl.inpaint_outside_weight` times that on the visible ones
    (`masked_reconstruction_loss`). The paper's adversarial term is left out: it sharpens the
    inpainted pixels, which a representation does not need, and doubles the cost. The hidden region
    is filled with 0, the dataset mean after normalisation (as the paper fills it with the mean)."""

    def __init__(self, backbone, image_size, options):
        super().__init__(backbone, image_size, options)
        self.area = _fraction(options, "inpaint_area")
        self.mask_kind = str(options["inpaint_mask"])
        inpainting_mask(self.image_size, self.area, self.mask_kind)  # an unknown kind fails here
        self.outside_weight = float(options["inpaint_outside_weight"])
        if not 0 <= self.outside_weight <= 1:
            raise ConfigError(f"ssl.inpaint_outside_weight={self.outside_weight}: expected a number in [0, 1]")
        stages = 5  # a stride-32 backbone's; used when the image is too small for it (check_backbone_inputs refuses it)
        if backbone_error(backbone, self.image_size) is None:
            was_training = backbone.training
            backbone.eval()
            with torch.no_grad():
                features = backbone.forward_features(torch.zeros(2, 3, *self.image_size))
            backbone.train(was_training)
            if features.ndim != 4:
                raise ConfigError("ssl.method=inpainting needs a backbone whose forward_features is a feature map "
                                  f"(B, C, h, w), got shape {tuple(features.shape)} (a transformer's tokens?)")
            stages = max(1, math.ceil(math.log2(max(self.image_size[0] / features.shape[2],
                                                    self.image_size[1] / features.shape[3]))))
        layers, width = [nn.Conv2d(backbone.num_features, 128, 1), nn.BatchNorm2d(128), nn.ReLU(inplace=True)], 128
        for _ in range(stages):
            out = max(32, width // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def transform(self) -> A.Compose:
        height, width = self.image_size
        return A.Compose([
            A.RandomResizedCrop(size=(height, width), scale=(0.6, 1.0), ratio=_aspect_preserving_ratio(height, width)),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            *_normalize(),
        ])

    def mask(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (the images with the hidden region set to 0, the mask (B, 1, H, W), True = hidden)."""
        mask = inpainting_mask(images.shape[-2:], self.area, self.mask_kind, len(images), images.device)
        return images.masked_fill(mask, 0.0), mask

    def chance_loss(self, images):
        """The loss of predicting 0 (the normalised mean) everywhere, on this batch's own pixels."""
        masked, mask = self.mask(images)
        return float(masked_reconstruction_loss(torch.zeros_like(images), images, mask, self.outside_weight)[0])

    def reconstruct(self, masked: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.backbone.forward_features(masked))
        return F.interpolate(out, size=masked.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        masked, mask = self.mask(images)
        loss, masked_mse = masked_reconstruction_loss(self.reconstruct(masked), images, mask, self.outside_weight)
        return {"loss": loss, "masked_mse": masked_mse.detach()}


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

    Yields `(view, group)`, or `(stack of K views, group)` when `views=K` > 1 (`two_views`: K = 2):
    the second view is of the same image, or, with `pair_identities`, of a random other image of the
    same group when the group has one; further views are of the image itself (exemplar's copies).
    Groups come from `identity_groups` (default: every item alone).
    """

    def __init__(self, images, rows: Sequence[int], transform: Callable, groups: Sequence[int] | None = None,
                 two_views: bool = False, pair_identities: bool = False, seed: int = 0, views: int | None = None):
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.groups = np.arange(len(self.rows)) if groups is None else np.asarray(groups, dtype=np.int64)
        if len(self.groups) != len(self.rows):
            raise ValueError(f"{len(self.groups)} groups for {len(self.rows)} rows")
        self.views = int(views) if views is not None else (2 if two_views else 1)
        if self.views < 1:
            raise ValueError(f"views={views}: expected at least 1")
        self.two_views = self.views == 2
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
        if self.views > 1:
            view = torch.stack([view, self._view(self.partner(i)), *(self._view(i) for _ in range(self.views - 2))])
        return view, int(self.groups[i])


