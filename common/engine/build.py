"""Config sections -> objects: the model (backbone, pooling, neck, head), the training objective,
and the batch sampler. Names resolve through registries, so a new head or loss needs no edit here."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.engine import distributed
from common.engine.distributed import RandomBatchSampler, ShardedBatchSampler
from common.data.images import reseed_worker_transform
from common.core.errors import ConfigError
from common.models.network import EmbeddingModel, create_backbone, load_backbone_init

PAIR_LOSSES_NEED_PK = {"triplet", "contrastive", "ntxent"}


def _is_none(name) -> bool:
    return name in (None, False, "none", "None", "")


def build_model(cfg, num_classes: int, class_counts: Sequence[int] | None = None) -> EmbeddingModel:
    m = cfg.model
    head = None
    if not _is_none(m.head):
        from common.models.heads import create_head

        head = create_head(m.head, m.embedding_dim, num_classes, cfg.head, class_counts=class_counts)
    if _is_none(m.head) and _is_none(m.get("loss")):
        raise ConfigError("model.head=none needs a pair loss (model.loss=triplet|contrastive|ntxent)")
    model = EmbeddingModel(create_backbone(m.backbone, m.pretrained), m.embedding_dim, head,
                           gem_p=m.gem_p, dropout=m.get("dropout", 0.0))
    if m.get("init"):
        load_backbone_init(model, m.init)
    return model


class Objective(nn.Module):
    """Cross-entropy on the head's margin logits, plus `loss.weight` x a pair loss on the embeddings."""

    def __init__(self, use_head: bool, pair_loss: nn.Module | None, pair_weight: float):
        super().__init__()
        self.use_head, self.pair_loss, self.pair_weight = use_head, pair_loss, pair_weight

    def forward(self, output: dict, labels: torch.Tensor):
        parts, total = {}, 0.0
        if self.use_head:
            parts["ce"] = F.cross_entropy(output["logits"].float(), labels)
            total = total + parts["ce"]
        if self.pair_loss is not None:
            parts["pair"] = self.pair_loss(output["embedding"].float(), labels)
            total = total + self.pair_weight * parts["pair"]
        return total, {k: v.item() for k, v in parts.items()}


def build_objective(cfg) -> Objective:
    pair = None
    if not _is_none(cfg.model.get("loss")):
        from common.losses.pair import create_loss

        pair = create_loss(cfg.model.loss, cfg.loss)
    return Objective(not _is_none(cfg.model.head), pair, float(cfg.loss.get("weight", 1.0)))


def needs_pk_sampler(cfg) -> bool:
    sampler = cfg.train.get("sampler", "auto")
    if sampler == "auto":
        return cfg.model.get("loss") in PAIR_LOSSES_NEED_PK
    return sampler == "pk"


def train_loader(cfg, dataset, labels: Sequence[int], seed: int) -> DataLoader:
    """Shuffled batches, or P identities x K images when a pair loss needs positives in every batch."""
    """`train.batch_size` is the global batch: with N processes each one loads its 1/N slice of it."""
    if needs_pk_sampler(cfg):
        from common.data.samplers import PKSampler

        k = int(cfg.train.pk_k)
        batches = PKSampler(labels, p=max(2, cfg.train.batch_size // k), k=k, seed=seed)
    else:
        batches = RandomBatchSampler(len(dataset), cfg.train.batch_size, seed=seed,
                                     drop_last=len(dataset) > cfg.train.batch_size)
    if distributed.world_size() > 1:
        batches = ShardedBatchSampler(batches, distributed.rank(), distributed.world_size())
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.data.num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0,
                      worker_init_fn=reseed_worker_transform)
