"""Named albumentations pipelines, built from config (`augment.train`, `augment.valid`).

Images arrive already resized by the cache, so pipelines only perturb and normalise. A registry
keeps competitions declarative: add a function with @register and name it in the YAML.
Test-time flip is done on the batch tensor in `common.engine.embed`, not here.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

PIPELINES: dict[str, Callable[..., list]] = {}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def register(name: str):
    def wrap(fn):
        PIPELINES[name] = fn
        return fn
    return wrap


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


def build_transform(name: str, size, normalize: bool = True) -> A.Compose:
    if name not in PIPELINES:
        raise KeyError(f"unknown augmentation pipeline '{name}'; known: {', '.join(sorted(PIPELINES))}")
    steps = PIPELINES[name](size)
    if normalize:
        steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return A.Compose(steps)
