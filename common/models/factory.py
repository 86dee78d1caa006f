"""Config -> model: backbone (timm) -> GeM -> embedding neck -> margin head (a name in HEADS)."""
from __future__ import annotations

import copy
from typing import Sequence

from common.core.errors import ConfigError
from common.core.registry import is_none
from common.losses.pair import LEARNED
from common.models.heads import RelationHead, create_head
from common.models.network import EmbeddingModel, create_backbone, load_backbone_init


def build_model(cfg, num_classes: int, class_counts: Sequence[int] | None = None) -> EmbeddingModel:
    m = cfg.model
    if is_none(m.head) and is_none(m.loss):
        raise ConfigError("model.head=none needs a pair loss (model.loss=triplet|contrastive|ntxent)")
    head = None if is_none(m.head) else create_head(m.head, m.embedding_dim, num_classes, cfg.head,
                                                     class_counts=class_counts)
    loss = cfg.get("loss") or {}
    # loss.distance=learned: the pair distance is a relation head, part of the model (optimised, checkpointed)
    relation = RelationHead(m.embedding_dim, loss["relation_hidden"]) if loss.get("distance") == LEARNED else None
    model = EmbeddingModel(create_backbone(m.backbone, m.pretrained), m.embedding_dim, head,
                           gem_p=m.gem_p, dropout=m.dropout, relation=relation)
    if m.init:
        load_backbone_init(model, m.init)
    return model


def without_init(cfg):
    """The config to rebuild a finished model: its checkpoint holds every weight, so neither
    pretrained weights nor an init checkpoint are needed (nor, in a kernel, available)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.pretrained = False
    cfg.model.init = None
    return cfg
