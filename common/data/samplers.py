"""Batch samplers, each reproducible from (seed, epoch) alone: P x K identities, shuffled, weighted.

P x K: every batch holds P identities with K images each.

Why: pair and triplet losses (and mining) learn only from positives and negatives that share a
batch; with random batches over thousands of identities (whales, landmarks) almost no image
would meet another of its identity. Sampling P identities x K images guarantees positives and
also balances rare and frequent identities.

How an epoch is built (deterministic for a given ``seed`` and ``set_epoch``):

* each identity's images are shuffled and cut into chunks of K; the last chunk is topped up by
  drawing again from that identity's own images, so an identity with fewer than K images is
  sampled **with replacement** (its images repeat within the chunk - different augmentations
  still make them useful positives);
* each batch takes the next chunk of P distinct identities, drawn uniformly among those with
  chunks left; when fewer than P identities have chunks left, the exhausted ones are reshuffled
  into fresh chunks (so big identities never pile up into single-identity batches at the end);
* an epoch has ``total_chunks // P`` batches (``ceil`` if ``drop_last=False``, the last batch
  then holding fewer identities), fixed in advance so ``len()`` is exact and constant, which
  learning-rate schedules need. Every image is used about once per epoch.

Images whose label is in ``ignore_labels`` (``new_whale``: many unrelated animals under one
label) are **skipped**: a loss would treat them as one identity and pull them together, and
they are not anyone's positive. They can still serve as negatives through a classification head
or a separate sampler.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Batch sampler yielding lists of P x K dataset indices (use as ``DataLoader(batch_sampler=...)``)."""

    def __init__(
        self,
        labels: Sequence,
        p: int,
        k: int,
        *,
        seed: int = 0,
        drop_last: bool = True,
        ignore_labels: Sequence = ("new_whale",),
    ):
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler needs p >= 1 and k >= 1, got p={p}, k={k}")
        self.p, self.k, self.seed, self.drop_last = int(p), int(k), int(seed), bool(drop_last)
        self.epoch = 0
        ignored = set(ignore_labels)
        indices_by_identity: dict = {}
        for index, label in enumerate(list(labels)):
            if label not in ignored:
                indices_by_identity.setdefault(label, []).append(index)
        self.identities = list(indices_by_identity)  # order of first appearance: deterministic
        self.indices = [np.asarray(indices_by_identity[i], dtype=np.int64) for i in self.identities]
        if len(self.identities) < self.p:
            raise ValueError(
                f"PKSampler needs at least p={self.p} identities, the labels have {len(self.identities)}"
                f" (after ignoring {sorted(map(str, ignored))})"
            )
        self.total_chunks = sum(math.ceil(len(idx) / self.k) for idx in self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (reproducible) shuffle the next ``iter()`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.total_chunks // self.p
        return math.ceil(self.total_chunks / self.p)

    def _chunks(self, identity: int, rng: np.random.Generator) -> list[np.ndarray]:
        """The identity's images shuffled into chunks of K, the last one topped up by re-drawing."""
        images = self.indices[identity]
        order = rng.permutation(images)
        missing = -len(images) % self.k
        filled = np.concatenate([order, rng.choice(images, size=missing, replace=True)])
        return list(filled.reshape(-1, self.k))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = [self._chunks(identity, rng) for identity in range(len(self.identities))]
        available = list(range(len(self.identities)))  # identities with chunks left
        for batch_number in range(len(self)):
            size = min(self.p, self.total_chunks - batch_number * self.p)  # < P only for a last, partial batch
            if len(available) < size:
                exhausted = sorted(set(range(len(self.identities))) - set(available))
                for identity in exhausted:
                    chunks[identity] = self._chunks(identity, rng)
                available.extend(exhausted)
            picks = sorted(rng.choice(len(available), size=size, replace=False), reverse=True)
            batch = []
            for position in picks:
                identity = available[position]
                batch.extend(int(i) for i in chunks[identity].pop())
                if not chunks[identity]:  # swap-remove: O(1), and picks go from high to low positions
                    available[position] = available[-1]
                    available.pop()
            yield batch


class EpochBatches(torch.utils.data.Sampler):
    """Batches of an order drawn from (seed, epoch) alone: reproducible, and DDP ranks agree on every
    global batch without communicating. Subclasses say how the epoch's n items are drawn."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.drop_last, self.epoch = n, batch_size, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(np.random.default_rng([self.seed, self.epoch]))
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


class RandomBatchSampler(EpochBatches):
    """Shuffled global batches."""

    def order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.n)


class WeightedBatchSampler(EpochBatches):
    """n items drawn with replacement in proportion to `weights`."""

    def __init__(self, weights, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        super().__init__(n, batch_size, seed, drop_last)
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) == 0 or not np.isfinite(weights).all() or weights.min() < 0 or weights.sum() <= 0:
            raise ValueError("WeightedBatchSampler needs finite, non-negative weights with a positive sum")
        self.p = weights / weights.sum()

    def order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.p), size=self.n, replace=True, p=self.p)
