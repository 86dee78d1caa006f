"""The one training-loader factory: every task's batches come from here.

`train.sampler` names a batch sampler from SAMPLERS (`auto`, every competition's default: the
task's own sampler, or P x K when a pair loss needs positives in every batch; a task refuses
samplers that do not fit its labels). Whatever the sampler, the loader is the same: with N
processes each one takes its 1/N slice of every global batch (`train.batch_size` is the global
batch, so a run means the same on 1 or 8 GPUs), and every worker reseeds its augmentation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.core.registry import Registry
from common.data.images import reseed_worker_transform, seed_transform
from common.data.samplers import PKSampler, RandomBatchSampler, WeightedBatchSampler
from common.engine import distributed

SAMPLERS = Registry("sampler", keys=("train.sampler",), also=("auto",))
PAIR_LOSSES_NEED_PK = ("triplet", "contrastive", "ntxent")


def _drop_last(n: int, batch_size: int) -> bool:
    return n > batch_size


@SAMPLERS.register("random")
def random_batches(cfg, labels: np.ndarray, seed: int, **_) -> RandomBatchSampler:
    """Shuffled batches."""
    n, batch = len(labels), int(cfg.train.batch_size)
    return RandomBatchSampler(n, batch, seed=seed, drop_last=_drop_last(n, batch))


@SAMPLERS.register("pk")
def pk_batches(cfg, labels: np.ndarray, seed: int, **_) -> PKSampler:
    """P identities x K images: every batch holds positives for a pair loss."""
    k = int(cfg.train.pk_k)
    return PKSampler(labels, p=max(2, int(cfg.train.batch_size) // k), k=k, seed=seed)


@SAMPLERS.register("class_balanced")
def class_balanced_batches(cfg, labels: np.ndarray, seed: int, **_) -> WeightedBatchSampler:
    """A class of n images drawn in proportion to n^(1 - train.balance_power): 0 is plain shuffling,
    1 gives every class the same share; in between rare classes are seen often enough without
    repeating them endlessly (long-tailed landmarks)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = counts[labels].astype(np.float64) ** -float(cfg.train.balance_power)
    n, batch = len(labels), int(cfg.train.batch_size)
    return WeightedBatchSampler(weights, n, batch, seed=seed, drop_last=_drop_last(n, batch))


def balanced_sample_weights(labels: np.ndarray, blend_p: float = 0.0) -> np.ndarray:
    """Per-item sampling weights that make batches half negative, half positive *after* self-blending.

    A negative item is drawn with total share r and turned positive with probability blend_p, so
    r (1 - blend_p) = 1/2 gives r = 1 / (2 (1 - blend_p)) (all negatives when blend_p >= 1/2).
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    negative_share = min(1.0, 0.5 / (1.0 - blend_p)) if blend_p < 1 else 1.0
    if counts[1] == 0:
        negative_share = 1.0
    if counts[0] == 0:
        negative_share = 0.0
    share = np.array([negative_share, 1.0 - negative_share])
    return share[labels] / np.maximum(counts[labels], 1)


@SAMPLERS.register("binary_balanced")
def binary_balanced_batches(cfg, labels: np.ndarray, seed: int, *, blend_p: float = 0.0, **_) -> WeightedBatchSampler:
    """Both classes of a binary label equally often, counting self-blended negatives as positives
    (DFDC: about 5 fakes per real)."""
    n, batch = len(labels), int(cfg.train.batch_size)
    return WeightedBatchSampler(balanced_sample_weights(labels, blend_p), n, batch, seed=seed,
                                drop_last=_drop_last(n, batch))


def sampler_name(cfg, default: str) -> str:
    name = cfg.train.sampler
    if name != "auto":
        return name
    return "pk" if cfg.model.get("loss") in PAIR_LOSSES_NEED_PK else default


def make_loader(cfg, dataset, labels: Sequence, seed: int, *, default: str = "random", sampler: str | None = None,
                **options) -> DataLoader:
    """Training batches of `dataset` (item i has label labels[i]) from `sampler`, else the configured one."""
    name = sampler or sampler_name(cfg, default)
    batches = SAMPLERS.get(name, "train.sampler")(cfg, np.asarray(labels), seed, **options)
    if distributed.world_size() > 1:
        batches = distributed.ShardedBatchSampler(batches, distributed.rank(), distributed.world_size())
    workers = int(cfg.data.num_workers)
    # augmentations in the main process (num_workers=0) follow the seed too, each rank its own stream
    seed_transform(dataset, seed + 10_000 * distributed.rank())
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, worker_init_fn=reseed_worker_transform)
