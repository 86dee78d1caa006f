"""Tests for common/losses/pair.py: parity with pytorch-metric-learning, miners, numerical safety."""

from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from common.losses.pair import (
    LOSSES,
    MINERS,
    ContrastiveLoss,
    NTXentLoss,
    TripletLoss,
    create_loss,
    mine_batch_hard,
    mine_semi_hard,
    ntxent_two_views,
    pairwise_distance,
)

# The config section `loss:` exactly as the trainer passes it.
PARAMS = dict(weight=1.0, distance="cosine", pos_margin=0.0, neg_margin=0.5, margin=0.2, miner="semi_hard", temperature=0.1)
D = 6


def pk_batch(p: int = 4, k: int = 3, singles: int = 2, dtype=torch.float64, seed: int = 0):
    """P identities x K images plus a few identities seen once; embeddings clustered by identity
    so that every kind of pair (easy, semi-hard, hard) occurs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(p).repeat_interleave(k), torch.arange(p, p + singles)])
    centres = torch.randn(p + singles, D, generator=g, dtype=dtype)
    embeddings = centres[labels] + 0.7 * torch.randn(len(labels), D, generator=g, dtype=dtype)
    return embeddings, labels


def loss_and_grad(loss_fn, embeddings, labels):
    x = embeddings.clone().requires_grad_(True)
    loss = loss_fn(x, labels)
    loss.backward()
    return loss, x.grad


def assert_parity(ours_fn, pml_fn, embeddings, labels):
    ours, grad_ours = loss_and_grad(ours_fn, embeddings, labels)
    theirs, grad_theirs = loss_and_grad(pml_fn, embeddings, labels)
    assert ours.item() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-5)


def test_registry_and_create_loss_from_the_config_section():
    assert {"contrastive", "triplet", "ntxent"} <= set(LOSSES)
    assert {"all", "semi_hard", "batch_hard"} <= set(MINERS)
    triplet = create_loss("triplet", PARAMS)
    assert (triplet.margin, triplet.miner, triplet.distance) == (0.2, "semi_hard", "squared_l2")
    assert create_loss("triplet", {**PARAMS, "distance": "l2"}).distance == "l2"
    contrastive = create_loss("contrastive", PARAMS)
    assert (contrastive.distance, contrastive.pos_margin, contrastive.neg_margin) == ("cosine", 0.0, 0.5)
    assert create_loss("ntxent", PARAMS).temperature == 0.1
    with pytest.raises(ValueError, match="unknown pair loss 'tripplet'"):
        create_loss("tripplet", PARAMS)
    with pytest.raises(ValueError, match="miner"):
        create_loss("triplet", {**PARAMS, "miner": "hardest"})
    with pytest.raises(ValueError, match="distance"):
        create_loss("contrastive", {**PARAMS, "distance": "manhattan"})


def test_distances_are_between_normalised_embeddings():
    x, _ = pk_batch()
    unit = torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close(pairwise_distance(x, "cosine"), 1 - unit @ unit.T)
    torch.testing.assert_close(pairwise_distance(x, "l2"), torch.cdist(unit, unit), atol=1e-6, rtol=0)
    torch.testing.assert_close(pairwise_distance(x, "squared_l2"), torch.cdist(unit, unit) ** 2)


# ---------------------------------------------------------------- parity: contrastive


@pytest.mark.parametrize("reduction, pml_reducer", [("nonzero", None), ("mean", pml_reducers.MeanReducer())])
def test_parity_contrastive_cosine(reduction, pml_reducer):
    """Matched: pml ContrastiveLoss(CosineSimilarity). pml works on the similarity c = 1 - rho, so its
    margins are 1 - ours: pos relu((1 - pos_margin) - c) = relu(rho - pos_margin), neg relu(c - (1 - neg_margin)).
    Reduction: pml's default AvgNonZeroReducer = our "nonzero"; MeanReducer = our "mean"; both reduce
    the positive and negative parts separately and add them."""
    x, y = pk_batch()
    ours = ContrastiveLoss("cosine", pos_margin=0.1, neg_margin=0.5, reduction=reduction)
    theirs = pml_losses.ContrastiveLoss(
        pos_margin=0.9, neg_margin=0.5, distance=pml_distances.CosineSimilarity(), reducer=pml_reducer
    )
    assert_parity(ours, theirs, x, y)


@pytest.mark.parametrize("reduction, pml_reducer", [("nonzero", None), ("mean", pml_reducers.MeanReducer())])
def test_parity_contrastive_l2(reduction, pml_reducer):
    """Matched: pml ContrastiveLoss with its default LpDistance (Euclidean, normalize_embeddings=True),
    same margins; reducers as in the cosine test."""
    x, y = pk_batch()
    ours = ContrastiveLoss("l2", pos_margin=0.2, neg_margin=1.0, reduction=reduction)
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.0, distance=pml_distances.LpDistance(), reducer=pml_reducer)
    assert_parity(ours, theirs, x, y)


# ---------------------------------------------------------------- parity: triplet


def squared_l2():
    """pml's distance equal to ours for `distance: cosine`: squared Euclidean between unit vectors."""
    return pml_distances.LpDistance(normalize_embeddings=True, p=2, power=2)


class PmlMinedTriplet:
    """pml miner + pml TripletMarginLoss, called like our losses."""

    def __init__(self, miner, loss):
        self.miner, self.loss = miner, loss

    def __call__(self, embeddings, labels):
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


def test_parity_triplet_semi_hard():
    """Matched: pml TripletMarginMiner(type_of_triplets="semihard") + TripletMarginLoss, both with
    LpDistance(power=2) (pml's default is non-squared). pml's semihard is 0 < d_an - d_ap <= margin,
    ours < margin: the boundary triplet has zero loss, so with AvgNonZeroReducer (pml default,
    our "nonzero") the losses are identical."""
    x, y = pk_batch()
    ours = create_loss("triplet", PARAMS)
    theirs = PmlMinedTriplet(
        pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=squared_l2()),
        pml_losses.TripletMarginLoss(margin=0.2, distance=squared_l2()),
    )
    assert_parity(ours, theirs, x, y)


def test_parity_triplet_all_triplets():
    """Matched: pml TripletMarginLoss without a miner (all triplets), LpDistance(power=2), AvgNonZeroReducer;
    and with MeanReducer against our reduction="mean"."""
    x, y = pk_batch()
    assert_parity(
        create_loss("triplet", {**PARAMS, "miner": "all"}),
        pml_losses.TripletMarginLoss(margin=0.2, distance=squared_l2()),
        x, y,
    )
    assert_parity(
        TripletLoss(margin=0.2, miner="all", reduction="mean"),
        pml_losses.TripletMarginLoss(margin=0.2, distance=squared_l2(), reducer=pml_reducers.MeanReducer()),
        x, y,
    )


def test_parity_triplet_batch_hard():
    """Matched: pml BatchHardMiner (farthest positive, nearest negative per anchor) + TripletMarginLoss,
    LpDistance(power=2), AvgNonZeroReducer."""
    x, y = pk_batch()
    theirs = PmlMinedTriplet(
        pml_miners.BatchHardMiner(distance=squared_l2()),
        pml_losses.TripletMarginLoss(margin=0.2, distance=squared_l2()),
    )
    assert_parity(create_loss("triplet", {**PARAMS, "miner": "batch_hard"}), theirs, x, y)


def test_parity_triplet_euclidean_semi_hard():
    """Matched: `distance: l2` = pml's default LpDistance (non-squared, normalised), semihard miner."""
    x, y = pk_batch()
    theirs = PmlMinedTriplet(
        pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
        pml_losses.TripletMarginLoss(margin=0.2),
    )
    assert_parity(create_loss("triplet", {**PARAMS, "distance": "l2"}), theirs, x, y)


# ---------------------------------------------------------------- parity: NT-Xent


def test_parity_ntxent_with_labels():
    """Matched: pml NTXentLoss(temperature) with labels (multi-positive: one term per ordered positive
    pair, denominator = that positive + the anchor's negatives), CosineSimilarity, MeanReducer over pairs."""
    x, y = pk_batch()
    assert_parity(create_loss("ntxent", PARAMS), pml_losses.NTXentLoss(temperature=0.1), x, y)


def test_parity_ntxent_two_views():
    """Matched: pml SelfSupervisedLoss(NTXentLoss(temperature)) (symmetric: both views are anchors)."""
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(8, D, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(8, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    ours = ntxent_two_views(z1, z2, temperature=0.2)
    ours.backward()
    grads = z1.grad.clone(), z2.grad.clone()
    z1.grad, z2.grad = None, None
    theirs = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.2))(z1, z2)
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, (z1.grad, z2.grad), rtol=1e-5, atol=1e-5)


def test_ntxent_prefers_aligned_views():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(16, D, generator=g)
    aligned = ntxent_two_views(z, z + 0.01 * torch.randn(16, D, generator=g))
    shuffled = ntxent_two_views(z, z[torch.randperm(16, generator=g)])
    assert aligned < shuffled


# ---------------------------------------------------------------- miners against brute force


def test_semi_hard_miner_returns_exactly_the_semi_hard_triplets():
    x, y = pk_batch(seed=6)
    dist = pairwise_distance(x, "squared_l2")
    expected = {
        (a, p, n)
        for a, p, n in itertools.permutations(range(len(y)), 3)
        if y[a] == y[p] and y[a] != y[n] and dist[a, p] < dist[a, n] < dist[a, p] + 0.2
    }
    mined = set(zip(*(t.tolist() for t in mine_semi_hard(dist, y, 0.2))))
    assert expected and mined == expected


def test_batch_hard_miner_picks_farthest_positive_and_nearest_negative():
    x, y = pk_batch(seed=7)
    dist = pairwise_distance(x, "squared_l2")
    anchors, positives, negatives = mine_batch_hard(dist, y, 0.2)
    assert anchors.tolist() == [i for i in range(len(y)) if (y == y[i]).sum() > 1]  # singles have no positive
    for a, p, n in zip(anchors.tolist(), positives.tolist(), negatives.tolist()):
        same = [j for j in range(len(y)) if y[j] == y[a] and j != a]
        other = [j for j in range(len(y)) if y[j] != y[a]]
        assert dist[a, p] == max(dist[a, j] for j in same)
        assert dist[a, n] == min(dist[a, j] for j in other)


# ---------------------------------------------------------------- numerical safety

ALL_LOSSES = [
    ContrastiveLoss("cosine"),
    ContrastiveLoss("l2", neg_margin=1.0),
    TripletLoss(miner="semi_hard"),
    TripletLoss(miner="batch_hard", distance="l2"),
    TripletLoss(miner="all"),
    NTXentLoss(0.1),
]


def assert_finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=repr)
def test_identical_embeddings_and_exact_cosines_stay_finite(loss_fn):
    """Duplicated images (distance exactly 0, cos exactly 1) and opposite ones (cos exactly -1)."""
    e = torch.eye(D)
    x = torch.stack([e[0], e[0], 2 * e[0], -e[0], e[1], e[1]])
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    loss, grad = loss_and_grad(loss_fn, x, y)
    assert_finite(loss, grad)


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=repr)
def test_batches_without_positives_or_negatives_give_a_zero_finite_loss(loss_fn):
    x, _ = pk_batch(dtype=torch.float32)
    for labels in (torch.arange(len(x)), torch.zeros(len(x), dtype=torch.long)):
        loss, grad = loss_and_grad(loss_fn, x, labels)
        assert_finite(loss, grad)
        if isinstance(loss_fn, TripletLoss) or (isinstance(loss_fn, NTXentLoss) and labels.max() > 0):
            assert loss.item() == 0 and not grad.any()


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=repr)
def test_identities_seen_once_do_not_break_the_loss(loss_fn):
    """Identities with a single image in a P x K batch (they can only be negatives): finite, positive loss."""
    x, y = pk_batch(dtype=torch.float32, singles=3)
    loss, grad = loss_and_grad(loss_fn, x, y)
    assert_finite(loss, grad)
    assert loss.item() > 0


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=repr)
def test_low_precision_embeddings(loss_fn, amp_dtype):
    """Half/bfloat16 embeddings, given directly and produced under CPU autocast: the loss is computed in
    float32, stays finite and close to the float32 loss."""
    x, y = pk_batch(dtype=torch.float32)
    reference = loss_fn(x, y)
    direct, grad = loss_and_grad(loss_fn, x.to(amp_dtype), y)
    assert direct.dtype == torch.float32
    assert_finite(direct, grad)
    torch.testing.assert_close(direct, reference, atol=0.05, rtol=0.05)
    neck = torch.nn.Linear(D, D)
    try:
        with torch.autocast("cpu", dtype=amp_dtype):
            embeddings = neck(x)
            loss = loss_fn(embeddings, y)
    except RuntimeError as error:  # a torch build without CPU autocast for this dtype
        pytest.skip(f"CPU autocast with {amp_dtype}: {error}")
    loss.backward()
    assert embeddings.dtype == amp_dtype and loss.dtype == torch.float32
    assert_finite(loss, neck.weight.grad)
