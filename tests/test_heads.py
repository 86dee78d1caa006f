"""Tests for common/models/heads.py: parity with pytorch-metric-learning, gradients, numerical safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from common.models.heads import (
    HEADS,
    ArcFaceHead,
    CombinedMarginHead,
    CosFaceHead,
    create_head,
)
from common.models.margins import dynamic_margins, find_outliers

# The config section `head:` exactly as the trainer passes it.
PARAMS = dict(
    s=30.0, m=0.5, m_cos=0.35, m_sphere=4, m1=1.0, m2=0.5, m3=0.0, easy_margin=False,
    subcenters=3, dynamic_margin=False, m_min=0.2, m_max=0.5, lr_mult=10.0,
)
ALL_HEADS = ["softmax", "norm_softmax", "sphereface", "cosface", "arcface", "combined", "subcenter_arcface"]
D, C = 8, 5


def make_head(name: str, dtype=torch.float64, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_head(name, D, C, {**PARAMS, **overrides}, class_counts=[1, 2, 3, 10, 40]).to(dtype)


def batch(n: int = 12, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype), torch.randint(0, C, (n,), generator=g)


def first_centres(head) -> torch.Tensor:
    """Each class's first centre (its only one unless the head has sub-centres), ``[C, D]``."""
    return head.weight.detach().view(C, -1, D)[:, 0]


def beyond_pi_minus_m(head, labels, dtype=torch.float64) -> torch.Tensor:
    """Embeddings almost opposite their class centre: target angle > pi - 0.5 (ArcFace fallback)."""
    g = torch.Generator().manual_seed(2)
    return (-F.normalize(first_centres(head), dim=1)[labels] + 0.05 * torch.randn(len(labels), D, generator=g, dtype=dtype)).to(dtype)


def ours_and_pml(head, pml_loss, embeddings, labels, prepare=lambda x: x):
    """Loss and gradients (embeddings, weight) for our head + cross-entropy and for the pml loss."""
    pml_loss.W.data = head.weight.detach().T.clone().contiguous()  # pml stores W as [D, C*K]
    x1 = embeddings.clone().requires_grad_(True)
    ours = F.cross_entropy(head(prepare(x1), labels), labels)
    ours.backward()
    x2 = embeddings.clone().requires_grad_(True)
    theirs = pml_loss(prepare(x2), labels)
    theirs.backward()
    return (ours, x1.grad, head.weight.grad.T), (theirs, x2.grad, pml_loss.W.grad)


def assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=1e-5)


def test_registry_has_every_head_and_create_head_rejects_unknown_names():
    assert set(ALL_HEADS) <= set(HEADS)
    with pytest.raises(ValueError, match="unknown head 'arcfce'"):
        create_head("arcfce", D, C, PARAMS)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_every_head_gives_logits_and_exposes_its_weight(name):
    head = make_head(name)
    x, y = batch()
    assert head(x, y).shape == (len(x), C)
    assert head(x).shape == (len(x), C)
    k = PARAMS["subcenters"] if name == "subcenter_arcface" else 1
    assert head.weight.shape == (C * k, D)
    assert any(p is head.weight for p in head.parameters())


@pytest.mark.parametrize("name", ["norm_softmax", "sphereface", "cosface", "arcface", "combined", "subcenter_arcface"])
def test_without_labels_logits_are_scaled_cosines(name):
    head = make_head(name)
    x, _ = batch()
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    expected = PARAMS["s"] * cos.view(len(x), C, -1).amax(dim=2)
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("name", ["sphereface", "cosface", "arcface", "combined", "subcenter_arcface"])
def test_margin_lowers_only_the_target_logit(name):
    head = make_head(name)
    x, y = batch()
    with_margin, plain = head(x, y), head(x)
    target = F.one_hot(y, C).bool()
    torch.testing.assert_close(with_margin[~target], plain[~target])
    assert (with_margin[target] < plain[target]).all()


# ---------------------------------------------------------------- parity with pytorch-metric-learning


def test_parity_arcface_including_the_fallback_past_pi_minus_m():
    """Matched: pml ArcFaceLoss(margin in DEGREES = deg(m), scale = s), W = our weight^T, MeanReducer
    (pml's default for classification losses) = F.cross_entropy's mean. pml's fallback
    ``cos - m sin(m)`` for theta > pi - m is ours (mm = sin(pi - m) m). Half the batch sits beyond pi - m."""
    head = make_head("arcface")
    x, y = batch(12)
    x[:6] = beyond_pi_minus_m(head, y[:6])
    cos_target = (F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T).gather(1, y[:, None])
    assert (torch.acos(cos_target[:6]) > math.pi - 0.5).all() and (torch.acos(cos_target[6:]) < math.pi - 0.5).all()
    pml = pml_losses.ArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=30.0)
    assert_same(*ours_and_pml(head, pml, x, y))


def test_parity_cosface():
    """Matched: pml CosFaceLoss(margin = m_cos, scale = s) - the margin is a plain cosine there too."""
    head = make_head("cosface")
    x, y = batch()
    pml = pml_losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=30.0)
    assert_same(*ours_and_pml(head, pml, x, y))


@pytest.mark.parametrize("m_sphere", [2, 3, 4])
def test_parity_sphereface_on_unit_embeddings(m_sphere):
    """Matched: pml SphereFaceLoss(margin = m_sphere, scale = s). pml keeps the feature norm |x| in the
    logits, we use s; fed unit-norm embeddings (normalised from the leaf) the two are the same maths,
    and the gradients w.r.t. the raw leaf match too. Target angles span several k-intervals."""
    head = make_head("sphereface", m_sphere=m_sphere)
    x, y = batch(16)
    x[:5] = beyond_pi_minus_m(head, y[:5])
    pml = pml_losses.SphereFaceLoss(num_classes=C, embedding_size=D, margin=m_sphere, scale=30.0)
    assert_same(*ours_and_pml(head, pml, x, y, prepare=lambda t: F.normalize(t, dim=1)))


def test_parity_norm_softmax():
    """Matched: pml NormalizedSoftmaxLoss(temperature = 1/s) (its DotProductSimilarity normalises
    the embeddings, and it normalises W), mean reduction."""
    head = make_head("norm_softmax")
    x, y = batch()
    pml = pml_losses.NormalizedSoftmaxLoss(num_classes=C, embedding_size=D, temperature=1 / 30.0)
    assert_same(*ours_and_pml(head, pml, x, y))


def test_parity_subcenter_arcface():
    """Matched: pml SubCenterArcFaceLoss(margin in degrees, scale, sub_centers = K); both lay out the
    centres of class c as columns/rows c*K .. c*K+K-1 and take the max cosine over them."""
    head = make_head("subcenter_arcface")
    x, y = batch(12)
    x[:4] = beyond_pi_minus_m(head, y[:4])
    pml = pml_losses.SubCenterArcFaceLoss(
        num_classes=C, embedding_size=D, margin=math.degrees(0.5), scale=30.0, sub_centers=3
    )
    assert_same(*ours_and_pml(head, pml, x, y))


def test_parity_find_outliers_with_pml_get_outliers():
    """Matched: pml SubCenterArcFaceLoss.get_outliers(threshold=75 degrees), which returns outlier
    indices; ours returns the equivalent boolean mask. The data has a few far-off images per class."""
    head = make_head("subcenter_arcface")
    centres = head.weight.detach().view(C, 3, D)
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(C).repeat_interleave(8)
    near = centres[labels, 0] + 0.3 * torch.randn(len(labels), D, generator=g, dtype=torch.float64)
    far = torch.randn(len(labels), D, generator=g, dtype=torch.float64)
    embeddings = torch.where((torch.arange(len(labels)) % 4 == 0)[:, None], far, near)
    ours = find_outliers(head, embeddings, labels, dominant_threshold_deg=75.0)
    pml = pml_losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, sub_centers=3)
    pml.W.data = head.weight.detach().T.clone()
    outlier_indices, _ = pml.get_outliers(embeddings, labels, threshold=75)
    assert ours.dtype == bool and ours.shape == (len(labels),)
    assert 0 < ours.sum() < len(labels)
    assert sorted(np.flatnonzero(ours).tolist()) == sorted(outlier_indices.tolist())


def test_find_outliers_uses_the_dominant_subcentre():
    """3 images near sub-centre 1, 1 image near sub-centre 0 (90 degrees apart): sub-centre 1 dominates,
    so the lone image is an outlier although it sits right on one of its class's centres."""
    head = ArcFaceHead(4, 2, subcenters=2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]))
    embeddings = np.array([[0, 1, 0.1, 0], [0, 1, 0, 0.1], [0.1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    mask = find_outliers(head, embeddings, [0, 0, 0, 0, 1])
    assert mask.tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match="labels must lie in"):
        find_outliers(head, embeddings, [0, 0, 0, 0, 2])


# ---------------------------------------------------------------- the other heads' maths


def test_combined_margin_reduces_to_arcface_and_cosface():
    """(m1, m2, m3) = (1, m, 0) is ArcFace wherever theta < pi - m (the fallbacks differ on purpose);
    (1, 0, m) is CosFace everywhere."""
    x, y = batch(16)
    arc, combined_arc = make_head("arcface"), make_head("combined", m1=1.0, m2=0.5, m3=0.0)
    torch.testing.assert_close(combined_arc(x, y), arc(x, y))
    cos, combined_cos = make_head("cosface"), make_head("combined", m1=1.0, m2=0.0, m3=0.35)
    x[:5] = beyond_pi_minus_m(cos, y[:5])
    torch.testing.assert_close(combined_cos(x, y), cos(x, y))


def test_combined_margin_matches_its_formula_and_stays_continuous_and_decreasing():
    head = CombinedMarginHead(D, C, s=1.0, m1=1.2, m2=0.2, m3=0.1).double()
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    labels = torch.zeros_like(theta, dtype=torch.long)
    target = head.target_logit(torch.cos(theta), labels)
    inside = theta < (math.pi - 0.2) / 1.2
    torch.testing.assert_close(target[inside], torch.cos(1.2 * theta[inside] + 0.2) - 0.1)
    assert (target.diff() <= 1e-12).all()
    assert target.diff().abs().max() < 0.01  # no jump at theta*


@pytest.mark.parametrize("name", ["sphereface", "arcface", "combined", "cosface"])
def test_target_logit_decreases_with_the_angle(name):
    head = make_head(name)
    theta = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    target = head.target_logit(torch.cos(theta), torch.zeros_like(theta, dtype=torch.long))
    assert (target.diff() <= 1e-9).all()


def test_easy_margin_applies_the_margin_only_for_positive_cosines():
    head = make_head("arcface", easy_margin=True)
    cos = torch.tensor([0.9, 0.1, -0.1, -0.9], dtype=torch.float64)
    target = head.target_logit(cos, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(target[:2], torch.cos(torch.acos(cos[:2]) + 0.5))
    torch.testing.assert_close(target[2:], cos[2:])


def test_dynamic_margins_scale_rarity_into_m_min_m_max():
    counts = [1, 16, 81, 10000]
    margins = dynamic_margins(counts, 0.2, 0.5)
    rarity = torch.tensor(counts, dtype=torch.float64) ** -0.25  # 1, 1/2, 1/3, 1/10
    torch.testing.assert_close(margins, 0.2 + 0.3 * (rarity - 0.1) / 0.9)
    assert margins[0] == pytest.approx(0.5) and margins[-1] == pytest.approx(0.2)
    assert torch.all(dynamic_margins([7, 7, 7], 0.2, 0.5) == 0.5)
    with pytest.raises(ValueError, match="m_min"):
        dynamic_margins(counts, 0.6, 0.5)


@pytest.mark.parametrize("name", ["arcface", "subcenter_arcface"])
def test_dynamic_margin_heads_use_each_class_own_margin(name):
    counts = [1, 2, 3, 10, 40]
    head = make_head(name, dynamic_margin=True)
    expected = dynamic_margins(counts, 0.2, 0.5).float().double()  # the buffer is float32, then .double()
    torch.testing.assert_close(head.margins, expected)
    x, y = batch(10)
    logits = head(x, y)
    for i in range(len(y)):  # one fixed-margin head per class, same weights
        fixed = make_head(name, m=float(expected[y[i]]))
        torch.testing.assert_close(logits[i], fixed(x[i : i + 1], y[i : i + 1])[0])
    with pytest.raises(ValueError, match="class_counts"):
        create_head(name, D, C, {**PARAMS, "dynamic_margin": True})


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ALL_HEADS)
def test_gradcheck(name):
    head = make_head(name)
    x, y = batch(6)
    weight = head.weight.detach().clone().requires_grad_(True)
    x.requires_grad_(True)

    def logits(embeddings, w):
        return torch.func.functional_call(head, {"weight": w}, (embeddings, y))

    assert torch.autograd.gradcheck(logits, (x, weight), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- numerical safety


def loss_and_grads(head, x, y):
    x = x.detach().clone().requires_grad_(True)
    head.zero_grad()
    loss = F.cross_entropy(head(x, y).float(), y)
    loss.backward()
    return loss, x.grad, head.weight.grad


def assert_finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


@pytest.mark.parametrize("name", ALL_HEADS)
def test_cosines_of_exactly_plus_and_minus_one_stay_finite(name):
    """Centres and embeddings along basis vectors normalise exactly, so the target cosines are
    exactly +1 and -1 (checked), in float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        head = make_head(name, dtype=dtype)
        with torch.no_grad():
            head.weight.copy_(torch.eye(D, dtype=dtype)[torch.arange(len(head.weight)) * C // len(head.weight)])
        y = torch.tensor([0, 1, 2, 3])
        x = torch.cat([2 * first_centres(head)[y[:2]], -4 * first_centres(head)[y[2:]]])
        cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
        assert cos.view(4, C, -1).amax(2).gather(1, y[:, None]).flatten().tolist() == [1, 1, -1, -1]
        assert_finite(*loss_and_grads(head, x, y))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_identities_seen_once_and_single_image_batches_are_fine(name):
    head = make_head(name, dtype=torch.float32)
    x, _ = batch(C, dtype=torch.float32)
    assert_finite(*loss_and_grads(head, x, torch.arange(C)))
    assert_finite(*loss_and_grads(head, x[:1], torch.tensor([3])))


def _autocast_dtypes():
    dtypes = [torch.bfloat16]
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        dtypes.append(torch.float16)
    except (RuntimeError, AssertionError):
        pass
    return dtypes


@pytest.mark.parametrize("amp_dtype", _autocast_dtypes())
@pytest.mark.parametrize("name", ALL_HEADS)
def test_autocast_keeps_logits_float32_and_finite(name, amp_dtype):
    head = make_head(name, dtype=torch.float32)
    neck = torch.nn.Linear(D, D)
    x, y = batch(8, dtype=torch.float32)
    x[0] = first_centres(head)[y[0]]  # cos = 1 exactly in float32
    reference = head(neck(x), y)
    with torch.autocast("cpu", dtype=amp_dtype):
        embeddings = neck(x)
        assert embeddings.dtype == amp_dtype
        logits = head(embeddings, y)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    assert logits.dtype == torch.float32
    assert_finite(loss, head.weight.grad, neck.weight.grad)
    torch.testing.assert_close(logits, reference, atol=0.5, rtol=0.05)  # only the fp16 backbone output differs


@pytest.mark.parametrize("name", ALL_HEADS)
def test_half_precision_inputs_and_half_heads(name):
    x, y = batch(8, dtype=torch.float32)
    head = make_head(name, dtype=torch.float32)
    reference = head(x, y)
    torch.testing.assert_close(head(x.half(), y), reference, atol=0.1, rtol=0.01)
    half_head = make_head(name, dtype=torch.float16)
    x_half = x.half()
    loss, grad_x, grad_w = loss_and_grads(half_head, x_half, y)
    assert half_head(x_half, y).dtype == torch.float32
    assert_finite(loss, grad_x, grad_w)
