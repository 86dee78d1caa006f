"""Small backbones registered in timm's registry, for CPU-sized demo runs.

ImageNet-scale backbones need thousands of steps to learn anything from scratch; on a 2-core CPU
the demo gets a few hundred. A plain VGG-style net (conv-BN-ReLU blocks, max-pooling) with a few
hundred thousand parameters trains an order of magnitude more steps in the same time and learns
the demo's identities. Registering it with timm keeps `model.backbone=small_cnn` working through
the same `timm.create_model` path as every other backbone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import register_model


def _block(c_in: int, c_out: int, pool: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Stem (stride 2) + pooled conv blocks; `forward_features` returns the last feature map."""

    def __init__(self, widths=(32, 64, 128, 192), in_chans: int = 3, num_classes: int = 0,
                 global_pool: str = "avg", **_):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for w in widths:
            blocks.append(_block(c, w))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {"architecture": "small_cnn", "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(self.forward_features(x))
        return self.classifier(x.flatten(1)) if not isinstance(self.global_pool, nn.Identity) else x


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights")
    return SmallCNN(**kwargs)


@register_model
def small_cnn_wide(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ValueError("small_cnn_wide has no pretrained weights")
    return SmallCNN(widths=(48, 96, 192, 256), **kwargs)
