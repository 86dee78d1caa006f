"""The training objectives the trainer calls as `loss_fn(model_output, labels) -> (loss, parts)`."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.core.registry import is_none
from common.losses.pair import LEARNED, create_loss


class Objective(nn.Module):
    """Cross-entropy on the head's margin logits, plus `loss.weight` x a pair loss on the embeddings.

    With `loss.distance=learned` the pair loss also gets the model's relation-head logits of the batch's
    pairs (`relation_logits`): the head belongs to the model (so the trainer optimises and saves it);
    this module holds no parameters of its own, and the trainer never optimises any it had.
    """

    def __init__(self, use_head: bool, pair_loss: nn.Module | None, pair_weight: float):
        super().__init__()
        self.use_head, self.pair_loss, self.pair_weight = use_head, pair_loss, pair_weight

    def forward(self, output: dict, labels: torch.Tensor):
        parts, total = {}, 0.0
        if self.use_head:
            parts["ce"] = F.cross_entropy(output["logits"].float(), labels)
            total = total + parts["ce"]
        if self.pair_loss is not None:
            learned = getattr(self.pair_loss, "distance", None) == LEARNED
            extra = {"relation_logits": output.get("relation_logits")} if learned else {}
            parts["pair"] = self.pair_loss(output["embedding"].float(), labels, **extra)
            total = total + self.pair_weight * parts["pair"]
        return total, {k: v.item() for k, v in parts.items()}


def build_objective(cfg) -> Objective:
    pair = None if is_none(cfg.model.loss) else create_loss(cfg.model.loss, cfg.loss)
    return Objective(not is_none(cfg.model.head), pair, float(cfg.loss.weight))


class BinaryObjective:
    """BCE on one logit with label smoothing (targets eps/2 and 1 - eps/2) and optional class weights."""

    def __init__(self, smoothing: float = 0.0, class_weights: tuple[float, float] = (1.0, 1.0)):
        self.smoothing, self.class_weights = float(smoothing), class_weights

    def __call__(self, output: dict, labels: torch.Tensor):
        labels = labels.float()
        target = labels * (1.0 - self.smoothing) + 0.5 * self.smoothing
        weight = torch.where(labels > 0.5, self.class_weights[1], self.class_weights[0])
        loss = F.binary_cross_entropy_with_logits(output["logits"].float(), target, weight=weight)
        return loss, {}


def class_weights(labels) -> tuple[float, float]:
    """Weights that make both classes count equally: n / (2 n_class)."""
    import numpy as np

    n, positives = len(labels), float(np.sum(labels))
    if positives in (0, n):
        return 1.0, 1.0
    return n / (2 * (n - positives)), n / (2 * positives)
