"""Named albumentations pipelines, built from config (`augment.train`, `augment.valid`).

Images arrive already resized by the cache, so pipelines only perturb and normalise. A registry
keeps competitions declarative: add a function with @register and name it in the YAML.
Test-time flip is done on the batch tensor in `common.engine.embed`, not here.
"""
from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from common.core.registry import Registry
from common.models.input_config import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (older code imports them here)

AUGMENTATIONS = Registry("augmentation", keys=("augment.train", "augment.valid"))
PIPELINES = AUGMENTATIONS  # the name older code and notebooks use


register = AUGMENTATIONS.register


@register("none")
def no_augment(size) -> list:
    return []


@register("light")
def light(size) -> list:
    return [
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REPLICATE, p=0.7),
        A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
    ]


@register("identity")
def identity_preserving(size) -> list:
    """For re-identification: pose, light, blur, noise and occlusion, but no flip (it changes identity)."""
    return [
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), shear=(-8, 8),
                 border_mode=cv2.BORDER_REPLICATE, p=0.9),
        A.RandomBrightnessContrast(0.25, 0.25, p=0.7),
        A.RandomGamma((80, 120), p=0.3),
        A.ToGray(p=0.1),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.4),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=0.3),
    ]


@register("strong")
def strong(size) -> list:
    return identity_preserving(size) + [A.HorizontalFlip(p=0.5)]


def build_transform(name: str, size, normalize: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> A.Compose:
    """The pipeline `name`, then (normalize) `(pixel / 255 - mean) / std` and a CHW tensor. `mean`/`std`
    default to ImageNet's; `common.models.input_config.normalization(cfg)` gives what `data.normalize` asks for."""
    steps = AUGMENTATIONS.get(name, "augment.train")(size)
    if normalize:
        steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps)


@register("face")
def face_augment(size) -> list:
    """Face crops: mirror and light only. No resampling (rotation, scaling), blur or noise: a fake
    is told apart by its texture (a generator's resampled, blended face), and interpolating a real
    crop would fake the very artefact the model must learn."""
    return [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=0.5)]


@register("face_geometric")
def face_geometric_augment(size) -> list:
    """`face` plus small pose changes (resampled): for real data, where faces are larger than the crop."""
    return face_augment(size) + [A.Affine(scale=(0.92, 1.08), translate_percent=(-0.04, 0.04), rotate=(-8, 8),
                                          border_mode=cv2.BORDER_CONSTANT, p=0.5)]


@register("face_real")
def face_real_augment(size) -> list:
    """`face` plus what real test videos do to a face (DFDC 1st place): JPEG re-compression at a random
    quality and downscale-upscale, so the model cannot lean on one encoder's artefacts or on sharpness
    (DFDC's test videos were re-encoded and resized), and a little noise. Applied to real and fake
    crops alike; `augment.part_dropout` adds the landmark-guided part cut-outs (`common.video.face_parts`)."""
    return face_augment(size) + [
        A.ImageCompression(compression_type="jpeg", quality_range=(40, 95), p=0.5),
        A.Downscale(scale_range=(0.5, 0.9), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                    p=0.25),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.1),
    ]
