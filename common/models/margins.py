"""Per-class margins from class counts (dynamic margins, GLR2020), and the outliers a trained
Sub-center ArcFace head reveals (images far from their class's dominant centre)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def dynamic_margins(class_counts: Sequence[int], m_min: float, m_max: float) -> torch.Tensor:
    """Per-class ArcFace margins that grow for rare classes (GLR 2020 winners, Ha et al.).

    ``m_c = a * n_c^(-1/4) + b``, min-max scaled into ``[m_min, m_max]``: the rarest class gets
    ``m_max``, the most frequent ``m_min``. After the scaling ``a`` and ``b`` no longer matter,
    which is why the config has no keys for them. Classes with 0 images count as 1; if every
    class has the same count, all get ``m_max``.
    """
    if m_min > m_max:
        raise ValueError(f"head.m_min ({m_min}) must not exceed head.m_max ({m_max})")
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64)).clamp(min=1.0)
    rarity = counts.pow(-0.25)
    spread = rarity.max() - rarity.min()
    if spread == 0:
        return torch.full_like(rarity, float(m_max))
    return m_min + (m_max - m_min) * (rarity - rarity.min()) / spread


@torch.no_grad()
def find_outliers(
    head: "CosineHead",  # common.models.heads
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    dominant_threshold_deg: float = 75.0,
) -> np.ndarray:
    """Flag images far from their class's dominant sub-centre (Sub-center ArcFace's cleaning step).

    Each image is assigned to the nearest of its own class's K sub-centres; the class's dominant
    sub-centre is the one with most images assigned (ties: the lowest index). An image is an
    outlier when its angle to that dominant sub-centre exceeds ``dominant_threshold_deg``.
    The paper drops these images and retrains. Returns a bool array of length N.
    """
    embeddings = torch.as_tensor(embeddings)
    labels = torch.as_tensor(labels).long().cpu()
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"need embeddings [N, D] and N labels, got {tuple(embeddings.shape)} and {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= head.num_classes):
        raise ValueError(f"labels must lie in [0, {head.num_classes}), got [{labels.min()}, {labels.max()}]")
    k = head.subcenters
    centres = F.normalize(head.weight.detach().float().cpu(), dim=1).view(head.num_classes, k, -1)
    unit = F.normalize(embeddings.detach().float().cpu(), dim=1)
    cos_own = torch.einsum("nd,nkd->nk", unit, centres[labels])  # [N, K]: cosine to own sub-centres
    nearest = cos_own.argmax(dim=1)
    votes = torch.bincount(labels * k + nearest, minlength=head.num_classes * k).view(-1, k)
    dominant = votes.argmax(dim=1)[labels]
    cos_dominant = cos_own.gather(1, dominant.unsqueeze(1)).squeeze(1)
    return (cos_dominant < math.cos(math.radians(dominant_threshold_deg))).numpy()
