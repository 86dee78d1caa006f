"""Pair-based metric-learning losses: contrastive, triplet (with miners) and NT-Xent.

Why: a classification head needs many images per identity to place a class centre; pair-based
losses need only that the batch hold positives and negatives (see ``samplers.PKSampler``), so
they suit long-tailed identities (whales seen once or twice), can be added to a head's loss,
and NT-Xent drives self-supervised pretraining (SimCLR) where every image is its own class.

Every loss is an ``nn.Module`` called as ``loss(embeddings [B, D], labels [B]) -> scalar``, like
pytorch-metric-learning (pml), whose conventions the parity tests check. All distances are
between L2-normalised embeddings and computed in float32 (at least) with autocast disabled, so
fp16 embeddings are safe. A batch with no usable pair or triplet gives a zero loss that is still
connected to the graph (its gradient is zero, never NaN).

Distances (``distance:`` key): ``cosine`` -> ``1 - cos``; ``l2`` -> ``||a - b||``;
``squared_l2`` -> ``||a - b||^2 = 2 (1 - cos)``; ``learned`` -> ``1 - sigmoid(z)``, ``z`` the logit of the
model's relation head (``heads.RelationHead``, trained jointly through the pair loss). The learned
distance is not a function of the embeddings alone: the model computes the ``[B, B]`` logits in its
``forward`` (``relation_logits``) and the objective hands them to the loss, whose call is then
``loss(embeddings, labels, relation_logits=...)``. With it, contrastive becomes the binary pair loss
(below); triplet ranks by ``1 - sigmoid(z)``; NT-Xent has no use for it (refused by the config check).
Miners (``miner:`` key) are plain functions ``(dist, labels, margin) -> (anchor, positive, negative)``
index tensors in ``MINERS``; the triplet loss picks one by name.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from common.core.registry import Registry

LOSSES = Registry("pair loss", keys=("model.loss",), also=("none",))

# sqrt has an infinite derivative at 0 (identical embeddings): squared distances are floored here.
_SQRT_EPS = 1e-12


register_loss = LOSSES.register


def create_loss(name: str, params: Mapping) -> nn.Module:
    """Build the loss ``name`` from the config section ``loss:`` (``params``).

    ``params["weight"]`` is not used here: the trainer multiplies the loss by it.
    """
    return LOSSES.get(name, "model.loss").from_params(params)


# ----------------------------------------------------------------------------- distances


def _unit_float(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings in at least float32."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [batch, dim], got shape {tuple(embeddings.shape)}")
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    return F.normalize(embeddings.to(dtype), dim=1)


def _cosine_distance(unit: torch.Tensor) -> torch.Tensor:
    return 1.0 - unit @ unit.T


def _squared_l2_distance(unit: torch.Tensor) -> torch.Tensor:
    return (2.0 - 2.0 * (unit @ unit.T)).clamp(min=0.0)


def _l2_distance(unit: torch.Tensor) -> torch.Tensor:
    return _squared_l2_distance(unit).clamp(min=_SQRT_EPS).sqrt()


LEARNED = "learned"  # the distance of the model's relation head (module docstring)


def _learned_distance(unit: torch.Tensor) -> torch.Tensor:
    raise ValueError("loss.distance=learned is the model's relation head: pass its relation_logits "
                     "(EmbeddingModel.forward makes them when the model was built with loss.distance=learned)")


DISTANCES = Registry("distance", keys=("loss.distance",))
DISTANCES.add("cosine", _cosine_distance)
DISTANCES.add("l2", _l2_distance)
DISTANCES.add("squared_l2", _squared_l2_distance)
DISTANCES.add(LEARNED, _learned_distance)
# the pair losses that use loss.distance; the others (ntxent) would leave a relation head untrained
USES_DISTANCE = ("contrastive", "triplet")


def _relation_float(relation_logits: torch.Tensor | None, embeddings: torch.Tensor) -> torch.Tensor:
    """The relation head's ``[B, B]`` logits in at least float32, checked against the batch."""
    if relation_logits is None:
        _learned_distance(embeddings)
    b = len(embeddings)
    if relation_logits.shape != (b, b):
        raise ValueError(f"relation_logits must be [batch, batch] = [{b}, {b}], got {tuple(relation_logits.shape)}")
    return relation_logits.to(torch.promote_types(relation_logits.dtype, torch.float32))


def pairwise_distance(embeddings: torch.Tensor, distance: str,
                      relation_logits: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, B]`` distances between the L2-normalised embeddings (float32 or wider); for
    ``learned``, ``1 - sigmoid(relation_logits)`` (the logits are required then, unused otherwise)."""
    measure = DISTANCES.get(distance, "loss.distance")
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        if distance == LEARNED:
            return 1.0 - torch.sigmoid(_relation_float(relation_logits, embeddings))
        return measure(_unit_float(embeddings))


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` bool masks ``[B, B]``: same label but not the same image / other label."""
    labels = labels.view(-1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def _reduce(losses: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """``mean`` over all terms, or ``nonzero``: mean over the terms > 0 (pml's AvgNonZeroReducer).

    ``anchor`` supplies a graph-connected zero when there is nothing to average.
    """
    if reduction == "nonzero":
        losses = losses[losses > 0]
    if losses.numel() == 0:
        return anchor.sum() * 0.0
    return losses.mean()


_REDUCTIONS = ("nonzero", "mean")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {_REDUCTIONS}")
    return reduction


# ----------------------------------------------------------------------------- miners

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mine_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Every (anchor, positive, negative) triplet of the batch."""
    positive, negative = label_masks(labels)
    return torch.where(positive.unsqueeze(2) & negative.unsqueeze(1))


def mine_semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """FaceNet's semi-hard triplets: every anchor-positive pair, with each negative satisfying
    ``d(a, p) < d(a, n) < d(a, p) + margin`` (farther than the positive, yet inside the margin).

    A pair without such a negative contributes nothing. (pml's "semihard" uses ``<=`` on the right;
    a triplet exactly there has zero loss, so the two agree under the ``nonzero`` reduction.)
    """
    anchor, positive, negative = mine_all(dist, labels, margin)
    gap = dist[anchor, negative] - dist[anchor, positive]
    keep = (gap > 0) & (gap < margin)
    return anchor[keep], positive[keep], negative[keep]


def mine_batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Batch-hard (Hermans et al. 2017): per anchor its farthest positive and nearest negative.

    Anchors lacking a positive or a negative in the batch are skipped.
    """
    positive, negative = label_masks(labels)
    with torch.no_grad():
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
    anchor = torch.where(positive.any(dim=1) & negative.any(dim=1))[0]
    return anchor, hardest_positive[anchor], hardest_negative[anchor]


MINERS = Registry("triplet miner", keys=("loss.miner",))
MINERS.add("all", mine_all)
MINERS.add("semi_hard", mine_semi_hard)
MINERS.add("batch_hard", mine_batch_hard)


# ----------------------------------------------------------------------------- losses


@register_loss("contrastive")
class ContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell et al. 2006) over every pair of the batch.

    ``L+ = max(0, d - pos_margin)`` for same-label pairs, ``L- = max(0, neg_margin - d)`` for
    different-label pairs. Reduction: each part is averaged over its own pairs, then the two
    are added; ``nonzero`` (default, pml's AvgNonZeroReducer) averages only the pairs with
    non-zero loss, so the many easy negatives don't dilute the gradient; ``mean`` averages all.

    ``distance=learned``: the binary pair loss on the relation head's logits ``z``, balanced like
    the hinge form (each part averaged over its own pairs, then added): ``-log sigmoid(z)`` for
    same-label pairs, ``-log(1 - sigmoid(z))`` for the others, i.e. BCE with positives and negatives
    weighted equally however few positives the batch holds. Why not the hinge on ``1 - sigmoid(z)``:
    a confidently wrong pair sits where the sigmoid is flat and would get almost no gradient; the
    log-loss keeps it, and its probability is calibrated for re-ranking. The margins do not apply.
    """

    def __init__(self, distance: str = "cosine", pos_margin: float = 0.0, neg_margin: float = 0.5, reduction: str = "nonzero"):
        super().__init__()
        DISTANCES.check(distance, "loss.distance")
        self.distance, self.pos_margin, self.neg_margin = distance, float(pos_margin), float(neg_margin)
        self.reduction = _check_reduction(reduction)

    @classmethod
    def from_params(cls, params: Mapping) -> "ContrastiveLoss":
        return cls(
            distance=params["distance"],
            pos_margin=params["pos_margin"],
            neg_margin=params["neg_margin"],
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                relation_logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.distance == LEARNED:
            return self.binary(_relation_float(relation_logits, embeddings), labels)
        dist = pairwise_distance(embeddings, self.distance)
        positive, negative = label_masks(labels.to(dist.device))
        pos_loss = F.relu(dist[positive] - self.pos_margin)
        neg_loss = F.relu(self.neg_margin - dist[negative])
        return _reduce(pos_loss, self.reduction, dist) + _reduce(neg_loss, self.reduction, dist)

    def binary(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The balanced binary pair loss on ``[B, B]`` "same identity" logits (class docstring)."""
        positive, negative = label_masks(labels.to(logits.device))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            pos_loss = F.softplus(-logits[positive])  # -log sigmoid(z), stable for any z
            neg_loss = F.softplus(logits[negative])   # -log(1 - sigmoid(z))
        return _reduce(pos_loss, self.reduction, logits) + _reduce(neg_loss, self.reduction, logits)

    def extra_repr(self) -> str:
        return f"distance={self.distance}, pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, reduction={self.reduction}"


@register_loss("triplet")
class TripletLoss(nn.Module):
    """Triplet loss ``[d(a, p) - d(a, n) + margin]+`` over mined triplets (FaceNet, Schroff et al. 2015).

    FaceNet's margin lives on squared L2 between unit embeddings (``2 (1 - cos)``), so the config
    value ``distance: cosine`` selects ``squared_l2`` here; ``l2`` is the plain Euclidean distance
    (pml's default); ``learned`` is ``1 - sigmoid(z)`` of the relation head (in [0, 1], so the margin is
    a difference of probabilities). Reduction: ``nonzero`` (default, pml's AvgNonZeroReducer: mean over the
    triplets with positive loss; for semi-hard triplets that is all of them) or ``mean``.
    """

    CONFIG_DISTANCE = {"cosine": "squared_l2", "squared_l2": "squared_l2", "l2": "l2", LEARNED: LEARNED}

    def __init__(self, margin: float = 0.2, miner: str = "semi_hard", distance: str = "squared_l2", reduction: str = "nonzero"):
        super().__init__()
        MINERS.check(miner, "loss.miner")
        DISTANCES.check(distance, "loss.distance")
        self.margin, self.miner, self.distance = float(margin), miner, distance
        self.reduction = _check_reduction(reduction)

    @classmethod
    def from_params(cls, params: Mapping) -> "TripletLoss":
        distance = params["distance"]
        if distance not in cls.CONFIG_DISTANCE:
            raise ValueError(f"unknown loss.distance {distance!r}; choose one of {sorted(cls.CONFIG_DISTANCE)}")
        return cls(
            margin=params["margin"],
            miner=params["miner"],
            distance=cls.CONFIG_DISTANCE[distance],
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                relation_logits: torch.Tensor | None = None) -> torch.Tensor:
        dist = pairwise_distance(embeddings, self.distance, relation_logits)
        labels = labels.to(dist.device)
        with torch.no_grad():
            anchor, positive, negative = MINERS[self.miner](dist.detach(), labels, self.margin)
        losses = F.relu(dist[anchor, positive] - dist[anchor, negative] + self.margin)
        return _reduce(losses, self.reduction, dist)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, miner={self.miner}, distance={self.distance}, reduction={self.reduction}"


@register_loss("ntxent")
class NTXentLoss(nn.Module):
    """NT-Xent / InfoNCE with labels (multi-positive form of pml's NTXentLoss).

    For every ordered positive pair (a, p) (same label, a != p), with ``s = cos / temperature``:
    ``-log( exp(s_ap) / (exp(s_ap) + sum_{n: label(n) != label(a)} exp(s_an)) )``; other positives
    of ``a`` are not in the denominator. The loss is the mean over positive pairs. With two views
    per image (labels = image index) this is SimCLR's loss; see ``ntxent_two_views``.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @classmethod
    def from_params(cls, params: Mapping) -> "NTXentLoss":
        return cls(temperature=params["temperature"])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            unit = _unit_float(embeddings)
            logits = unit @ unit.T / self.temperature
        positive, negative = label_masks(labels.to(logits.device))
        anchor, other = torch.where(positive)
        if len(anchor) == 0:
            return logits.sum() * 0.0
        # One row per positive pair: [its positive logit, the anchor's negative logits (others -inf)].
        negatives = logits.masked_fill(~negative, float("-inf"))[anchor]
        rows = torch.cat([logits[anchor, other].unsqueeze(1), negatives], dim=1)
        return F.cross_entropy(rows, torch.zeros_like(anchor))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def ntxent_two_views(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's loss for two augmented views ``z1[i]``, ``z2[i]`` of the same N images."""
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    index = torch.arange(len(z1), device=z1.device)
    return NTXentLoss(temperature)(torch.cat([z1, z2]), torch.cat([index, index]))
