"""Classification heads that shape an embedding space: softmax and the angular-margin family.

Why: identification (whales, landmarks) is solved by nearest-neighbour search over embeddings,
but embeddings learn best when trained as a classifier over the known identities. Margin heads
(SphereFace, CosFace, ArcFace, ...) put class centres and embeddings on the unit sphere and
demand that an image be closer to its own centre than to any other by a margin, which makes
classes compact and well separated under cosine similarity; at test time the head is dropped
and only the embedding is used.

Contract every head follows (the trainer relies on it):

* ``forward(embeddings [B, D], labels [B] | None) -> logits [B, C]``; the training loss is
  ``F.cross_entropy(logits, labels)``, computed by the trainer. With ``labels=None`` the logits
  carry no margin (``s * cos``), for validation and inference.
* ``head.weight`` is the class-centre matrix ``[C * K, D]`` (K sub-centres per class, K = 1
  except for ``subcenter_arcface``; rows ``c*K .. c*K+K-1`` belong to class ``c``, as in
  pytorch-metric-learning), so the trainer can give it its own learning-rate multiplier.

Numerical safety: cosines and margins are computed in float32 with autocast disabled (fp16
logits of ``s * cos`` and the margin arithmetic lose too much precision), cosines are clamped
before ``acos`` / ``sqrt(1 - cos^2)`` so that ``cos = +-1`` gives finite gradients, and nothing
depends on how many images of an identity are in the batch.

Heads are created by name from the ``HEADS`` registry; each class reads the keys of the config
section ``head:`` that apply to it in ``from_params``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.core.registry import Registry
from common.models.margins import dynamic_margins

HEADS = Registry("head", keys=("model.head",), also=("none",))
register_head = HEADS.register


def create_head(
    name: str,
    in_features: int,
    num_classes: int,
    params: Mapping,
    class_counts: Sequence[int] | None = None,
) -> nn.Module:
    """Build the head ``name`` from the config section ``head:`` (``params``).

    ``class_counts[c]`` (images of class c in the training fold) is needed only by dynamic margins.
    """
    return HEADS.get(name, "model.head").from_params(in_features, num_classes, params, class_counts)


def _full_precision(tensor: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off on the tensor's device."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _at_least_float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Cast half/bfloat16 (and mixed) tensors to float32; float64 stays float64 (gradcheck)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return [tensor.to(dtype) for tensor in tensors]


def _chebyshev_t(x: torch.Tensor, degree: int) -> torch.Tensor:
    """``T_n(x) = cos(n * acos(x))`` by the recurrence ``T_{n+1} = 2x T_n - T_{n-1}`` (differentiable)."""
    previous, current = torch.ones_like(x), x
    for _ in range(degree - 1):
        previous, current = current, 2 * x * current - previous
    return current


@register_head("softmax")
class SoftmaxHead(nn.Module):
    """Plain linear classifier (``x W^T + b``); no normalisation, no margin, labels unused."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        linear = nn.Linear(in_features, num_classes)  # borrow nn.Linear's initialisation
        self.weight = linear.weight
        self.bias = linear.bias

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(in_features, num_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with _full_precision(embeddings):
            return F.linear(*_at_least_float32(embeddings, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"


class CosineHead(nn.Module):
    """Shared machinery: ``logits = s * cos(x, W_c)`` with a margin on the target class only.

    Subclasses override ``target_logit(cos_target, labels)``, which maps the cosine of each
    image to its own class to the margin-penalised value (still before scaling by ``s``).
    With ``subcenters = K > 1`` each class has K centres and its cosine is the max over them.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, subcenters: int = 1):
        super().__init__()
        if subcenters < 1:
            raise ValueError(f"head.subcenters must be >= 1, got {subcenters}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.subcenters = int(subcenters)
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(num_classes * self.subcenters, in_features))
        nn.init.xavier_uniform_(self.weight)

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(in_features, num_classes, s=params["s"])

    def subcenter_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of every embedding to every centre, ``[B, C, K]``, at least float32."""
        with _full_precision(embeddings):
            embeddings, weight = _at_least_float32(embeddings, self.weight)
            cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(weight, dim=1))
        return cos.view(-1, self.num_classes, self.subcenters)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of every embedding to every class (max over sub-centres), ``[B, C]``."""
        return self.subcenter_cosine(embeddings).amax(dim=2)

    def target_logit(self, cos_target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos_target

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return self.s * cos
        labels = labels.long().view(-1, 1)
        with _full_precision(cos):
            target = self.target_logit(cos.gather(1, labels).squeeze(1), labels.squeeze(1))
            logits = cos.scatter(1, labels, target.unsqueeze(1).to(cos.dtype))
        return self.s * logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, subcenters={self.subcenters}, s={self.s}"


@register_head("norm_softmax")
class NormSoftmaxHead(CosineHead):
    """NormFace: scaled cosine logits without a margin (pml's NormalizedSoftmaxLoss, T = 1/s)."""


@register_head("cosface")
class CosFaceHead(CosineHead):
    """CosFace / AM-Softmax: target logit ``cos(theta) - m`` (key ``m_cos``)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m: float = 0.35):
        super().__init__(in_features, num_classes, s=s)
        self.m = float(m)

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(in_features, num_classes, s=params["s"], m=params["m_cos"])

    def target_logit(self, cos_target, labels):
        return cos_target - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@register_head("sphereface")
class SphereFaceHead(CosineHead):
    """SphereFace / A-Softmax, feature-normalised variant: target logit ``psi(theta)``.

    ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta in [k pi/m, (k+1) pi/m]``, which keeps
    the target logit decreasing over ``[0, pi]``. Weights *and* features are normalised and the
    logits scaled by ``s`` (the original paper keeps ``|x|`` instead of ``s``; with unit-norm
    embeddings the two coincide, which the parity test uses). ``cos(m theta)`` is evaluated as
    the Chebyshev polynomial of ``cos theta``, so it stays differentiable at ``cos = +-1``.
    The paper's lambda-annealing (blending ``psi`` with ``cos`` early in training) is not done.
    Key: ``m_sphere`` (integer >= 1).
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m: int = 4):
        super().__init__(in_features, num_classes, s=s)
        if int(m) != m or m < 1:
            raise ValueError(f"head.m_sphere must be an integer >= 1, got {m}")
        self.m = int(m)

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(in_features, num_classes, s=params["s"], m=params["m_sphere"])

    def target_logit(self, cos_target, labels):
        c = cos_target.clamp(-1.0, 1.0)
        cos_m_theta = _chebyshev_t(c, self.m)
        with torch.no_grad():
            k = torch.floor(torch.acos(c) * self.m / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
        return sign * cos_m_theta - 2.0 * k

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@register_head("arcface")
class ArcFaceHead(CosineHead):
    """ArcFace: target logit ``cos(theta + m)`` with the standard fallback past ``pi - m``.

    ``cos(theta + m)`` stops decreasing once ``theta + m > pi``; there the InsightFace form
    ``phi = where(cos > th, cos(theta + m), cos - mm)`` with ``th = cos(pi - m)`` and
    ``mm = sin(pi - m) * m`` switches to a CosFace-like penalty, keeping the logit monotonic.
    ``easy_margin`` instead applies the margin only where ``cos > 0``.
    ``cos(theta + m) = cos*cos(m) - sin(theta)*sin(m)`` needs no ``acos``.

    The margin ``m`` (radians) can be one number or one per class (dynamic margins, see
    ``dynamic_margins``). ``subcenters > 1`` gives Sub-center ArcFace.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float = 30.0,
        m: float | Sequence[float] | torch.Tensor = 0.5,
        easy_margin: bool = False,
        subcenters: int = 1,
    ):
        super().__init__(in_features, num_classes, s=s, subcenters=subcenters)
        margins = torch.as_tensor(m, dtype=torch.float32)
        if margins.ndim == 0:
            margins = margins.repeat(num_classes)
        if margins.shape != (num_classes,):
            raise ValueError(f"need one margin or {num_classes} per-class margins, got shape {tuple(margins.shape)}")
        self.easy_margin = bool(easy_margin)
        self.register_buffer("margins", margins.clone())

    @classmethod
    def margins_from_params(cls, num_classes, params, class_counts):
        """The fixed margin ``m``, or per-class margins when ``dynamic_margin`` is on."""
        if not params["dynamic_margin"]:
            return params["m"]
        if class_counts is None:
            raise ValueError(f"head.dynamic_margin=true needs class_counts for {cls.__name__}")
        if len(class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries for {num_classes} classes")
        return dynamic_margins(class_counts, params["m_min"], params["m_max"])

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(in_features, num_classes, s=params["s"], m=cls.margins_from_params(num_classes, params, class_counts),
                   easy_margin=params["easy_margin"], **cls.extra_params(params))

    @classmethod
    def extra_params(cls, params) -> dict:
        """Constructor keywords of a subclass (sub-center ArcFace's K)."""
        return {}

    def target_logit(self, cos_target, labels):
        m = self.margins[labels].to(cos_target.dtype)
        # Clamp: sqrt has an infinite derivative at 0 (cos = +-1); the clamped value has zero gradient.
        eps = torch.finfo(cos_target.dtype).eps
        sin_theta = torch.sqrt((1.0 - cos_target * cos_target).clamp(min=eps))
        phi = cos_target * torch.cos(m) - sin_theta * torch.sin(m)
        if self.easy_margin:
            return torch.where(cos_target > 0, phi, cos_target)
        th, mm = torch.cos(math.pi - m), torch.sin(math.pi - m) * m
        return torch.where(cos_target > th, phi, cos_target - mm)

    def extra_repr(self) -> str:
        low, high = self.margins.min().item(), self.margins.max().item()
        margin = f"m={low:g}" if low == high else f"m=[{low:g}..{high:g}] per class"
        return f"{super().extra_repr()}, {margin}, easy_margin={self.easy_margin}"


@register_head("subcenter_arcface")
class SubCenterArcFaceHead(ArcFaceHead):
    """Sub-center ArcFace (Deng et al. 2020): K centres per class, cosine = max over them.

    Noisy images of a class gather at non-dominant sub-centres instead of pulling the main
    centre; ``common.models.margins.find_outliers`` then finds them. Key: ``subcenters`` (K).
    """

    @classmethod
    def extra_params(cls, params) -> dict:
        return {"subcenters": params["subcenters"]}


@register_head("combined")
class CombinedMarginHead(CosineHead):
    """InsightFace's combined margin: target logit ``cos(m1*theta + m2) - m3``.

    ``(1, m, 0)`` is ArcFace, ``(1, 0, m)`` CosFace, ``(m, 0, 0)`` a real-valued SphereFace.
    Past ``theta* = (pi - m2) / m1`` the cosine would turn back up, so there the logit continues
    as ``cos(theta) - (1 + cos(theta*)) - m3``: continuous at ``theta*`` and decreasing. (ArcFace's
    own fallback ``cos - sin(m)*m`` is a first-order approximation that jumps at ``pi - m``; the
    two agree for every ``theta < pi - m``.) Keys: ``m1, m2, m3``.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__(in_features, num_classes, s=s)
        if m1 <= 0:
            raise ValueError(f"head.m1 must be > 0, got {m1}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.theta_limit = (math.pi - self.m2) / self.m1
        self.fallback_shift = 1.0 + math.cos(self.theta_limit)

    @classmethod
    def from_params(cls, in_features, num_classes, params, class_counts=None):
        return cls(
            in_features,
            num_classes,
            s=params["s"],
            m1=params["m1"],
            m2=params["m2"],
            m3=params["m3"],
        )

    def target_logit(self, cos_target, labels):
        # Clamped strictly inside (-1, 1) (by one machine epsilon): acos's derivative is infinite at the ends.
        eps = torch.finfo(cos_target.dtype).eps
        theta = torch.acos(cos_target.clamp(-1.0 + eps, 1.0 - eps))
        with_margin = torch.cos(self.m1 * theta + self.m2)
        fallback = cos_target - self.fallback_shift
        return torch.where(theta <= self.theta_limit, with_margin, fallback) - self.m3

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


class RelationHead(nn.Module):
    """The learned distance (``loss.distance=learned``): a small MLP that scores a pair of embeddings
    as one logit, "same identity", from ``[|a - b|, a * b]`` of the L2-normalised embeddings.

    Why: cosine weighs every dimension alike; a relation network (Siamese with a relation head, as
    in Koch et al. 2015 and Sung et al. 2018) learns which agreements matter, and its probability
    re-ranks a cosine kNN shortlist (``infer.learned_rerank``). Not a margin head (not in ``HEADS``):
    it lives beside the neck in ``EmbeddingModel.relation`` so that the trainer optimises it and the
    checkpoint holds it with the rest of the model.

    Both features are symmetric in (a, b), so ``head(a, b) == head(b, a)`` exactly. ``forward``
    broadcasts over leading dimensions: ``head(x[:, None], x[None])`` scores all ``B x B`` pairs of a
    batch (``pairwise``), ``head(q[:, None], g[ids])`` a query's shortlist ``[n, k]``. Computed in
    float32 (at least) with autocast off, like the margin heads.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"RelationHead needs dim >= 1 and hidden >= 1, got dim={dim}, hidden={hidden}")
        self.dim, self.hidden = int(dim), int(hidden)
        self.mlp = nn.Sequential(nn.Linear(2 * self.dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``[...]`` of the pairs ``(a, b)``, ``a, b: [..., dim]`` (broadcast against each other)."""
        if a.shape[-1] != self.dim or b.shape[-1] != self.dim:
            raise ValueError(f"RelationHead of dim {self.dim} got vectors of dim {a.shape[-1]} and {b.shape[-1]}")
        with _full_precision(a):
            a, b = _at_least_float32(a, b)
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
            features = torch.cat([(a - b).abs(), a * b], dim=-1)  # both broadcast to the pairs' shape
            return self.mlp(features.to(self.mlp[0].weight.dtype)).squeeze(-1)

    def pairwise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` logits of every pair of a batch ``[B, dim]`` (memory: ``B^2 x 2 dim`` floats)."""
        return self(embeddings.unsqueeze(1), embeddings.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"
