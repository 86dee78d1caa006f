"""Tests for common/data/samplers.py: P x K batch composition, short identities, determinism."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from common.data.samplers import PKSampler


def whale_like_labels() -> list[str]:
    """Identities with 1 .. 9 images, plus unrelated 'new_whale' images scattered in."""
    labels = []
    for identity in range(12):
        labels += [f"w_{identity}"] * (1 + identity % 9)
    labels += ["new_whale"] * 10
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    return [labels[i] for i in order]


def epoch(sampler: PKSampler, number: int = 0) -> list[list[int]]:
    sampler.set_epoch(number)
    return list(sampler)


def test_every_batch_holds_p_distinct_identities_with_k_images_each():
    labels = whale_like_labels()
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    batches = epoch(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12 and all(isinstance(i, int) for i in batch)
        identities = [labels[i] for i in batch]
        runs = [identities[j : j + 3] for j in range(0, 12, 3)]
        assert all(len(set(run)) == 1 for run in runs)  # K consecutive images of one identity
        assert len({run[0] for run in runs}) == 4  # P distinct identities
        assert "new_whale" not in identities


def test_length_counts_chunks_of_k_per_identity():
    labels = whale_like_labels()
    counts = Counter(label for label in labels if label != "new_whale")
    chunks = sum(math.ceil(n / 3) for n in counts.values())
    assert len(PKSampler(labels, p=4, k=3)) == chunks // 4
    keep_last = PKSampler(labels, p=4, k=3, drop_last=False)
    batches = epoch(keep_last)
    assert len(keep_last) == len(batches) == math.ceil(chunks / 4)
    assert [len(b) for b in batches[:-1]] == [12] * (len(batches) - 1)
    assert len(batches[-1]) == 3 * (chunks % 4 or 4)


def test_short_identities_are_sampled_with_replacement():
    labels = ["solo"] + ["pair"] * 2 + ["trio"] * 3 + ["many"] * 5
    sampler = PKSampler(labels, p=4, k=4, ignore_labels=())
    for batch in epoch(sampler):
        by_identity = {}
        for index in batch:
            by_identity.setdefault(labels[index], []).append(index)
        assert all(len(indices) == 4 for indices in by_identity.values())
        assert by_identity["solo"] == [0, 0, 0, 0]
        assert set(by_identity["pair"]) == {1, 2}  # both images, one of them repeated
        assert set(by_identity["trio"]) == {3, 4, 5}


def test_balanced_data_uses_every_image_exactly_once_per_epoch():
    labels = [i // 4 for i in range(40)]  # 10 identities x 4 images, K = 4 divides evenly
    sampler = PKSampler(labels, p=2, k=4, ignore_labels=())
    for number in range(3):
        used = sorted(i for batch in epoch(sampler, number) for i in batch)
        assert used == list(range(40))


def test_a_dominant_identity_never_fills_a_batch_alone():
    """One identity with 60 images among nine with 2: its chunks outlast the others, which are
    then reshuffled so batches keep P distinct identities, and the length stays as announced."""
    labels = ["big"] * 60 + [f"small_{i}" for i in range(9) for _ in range(2)]
    sampler = PKSampler(labels, p=3, k=2, ignore_labels=())
    batches = epoch(sampler)
    assert len(batches) == len(sampler) == (30 + 9) // 3
    for batch in batches:
        assert len({labels[i] for i in batch}) == 3
    big_images = [i for batch in batches for i in batch if labels[i] == "big"]
    assert len(big_images) == len(set(big_images)) > 0  # its chunks are fresh images, not repeats


def test_same_seed_and_epoch_repeat_and_others_reshuffle():
    labels = whale_like_labels()
    first = epoch(PKSampler(labels, p=4, k=2, seed=7), 3)
    assert epoch(PKSampler(labels, p=4, k=2, seed=7), 3) == first
    assert epoch(PKSampler(labels, p=4, k=2, seed=7), 4) != first
    assert epoch(PKSampler(labels, p=4, k=2, seed=8), 3) != first
    sampler = PKSampler(labels, p=4, k=2, seed=7)
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler) == first  # iterating again without set_epoch repeats


def test_ignored_labels_and_too_few_identities_are_reported():
    with pytest.raises(ValueError, match="at least p=3 identities.*new_whale"):
        PKSampler(["a", "a", "b", "new_whale", "new_whale"], p=3, k=2)
    with pytest.raises(ValueError, match="p >= 1 and k >= 1"):
        PKSampler(["a", "b"], p=2, k=0)


def test_works_as_a_dataloader_batch_sampler():
    labels = [i % 5 for i in range(20)]
    dataset = torch.utils.data.TensorDataset(torch.arange(20), torch.tensor(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=PKSampler(labels, p=5, k=2, ignore_labels=()))
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # 5 identities x 2 chunks of K=2, P=5 chunks per batch
    for indices, batch_labels in batches:
        assert torch.equal(batch_labels, torch.tensor(labels)[indices])
        assert sorted(Counter(batch_labels.tolist()).values()) == [2] * 5
