"""Self-blend masks shaped by the five face landmarks (common.video.blend, common.video.crops)."""
import numpy as np
import pytest

from common.video.blend import (
    BLEND_RATIOS, SelfBlendAugment, face_mask, landmark_mask, landmark_mask_bound, perturb_colour,
    perturb_geometry, perturb_resample, self_blend, usable_landmarks,
)
from common.video.crops import FaceCropDataset

# the ArcFace 5-point template (112 px, eyes / nose / mouth corners, image left first), put in a
# 224 px crop with margin 0.3 as extract_faces makes it: centred on the landmarks' centroid
_TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
_OFFSETS = (_TEMPLATE - _TEMPLATE.mean(axis=0)) * 1.25


def _rotated(degrees):
    a = np.deg2rad(degrees)
    return _OFFSETS @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T


def _profile():
    offsets = _OFFSETS.copy()
    offsets[:, 0] *= 0.25  # yawed: the eyes (and mouth corners) nearly on top of each other
    offsets[2, 0] += 25  # the nose sticks out
    return offsets


# (crop side, landmarks): frontal, rolled, yawed, a small face in a small crop off centre
LAYOUTS = [
    (224, _OFFSETS + 112),
    (224, _rotated(25) + 112),
    (224, _profile() + 112),
    (96, _OFFSETS * 0.4 + (44, 50)),
]
LAYOUTS = [(side, points.astype(np.float32)) for side, points in LAYOUTS]


def _textured(size, seed=3):
    return np.clip(np.random.default_rng(seed).normal(128, 40, (size, size, 3)), 0, 255).astype(np.uint8)


def _centroid(mask):
    ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
    return np.array([(xs * mask).sum(), (ys * mask).sum()]) / mask.sum()


@pytest.mark.parametrize("layout", range(len(LAYOUTS) + 1))
def test_landmark_mask_stays_inside_the_maximal_region(layout):
    # the extra layout: a face at the crop's bottom-left edge, its hull partly outside the crop
    side, points = LAYOUTS[layout] if layout < len(LAYOUTS) else (224, (_OFFSETS + (20, 200)).astype(np.float32))
    bound = landmark_mask_bound(side, side, points)
    assert bound.dtype == bool and bound.shape == (side, side) and not bound.all()
    inside = (points >= 0).all(axis=1) & (points < side).all(axis=1)
    assert bound[np.round(points[inside, 1]).astype(int), np.round(points[inside, 0]).astype(int)].all()
    for seed in range(150):
        mask = landmark_mask(side, side, points, np.random.default_rng(seed))
        assert mask.dtype == np.float32 and mask.shape == (side, side)
        assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 0.99
        assert not (mask[~bound] > 0.01).any(), seed
        assert not mask[~bound].any(), seed  # not even a blur tail: exactly 0 outside
        assert ((mask > 0.05) & (mask < 0.95)).any()  # a soft edge


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_landmark_mask_covers_eyes_nose_and_mouth(layout):
    side, points = LAYOUTS[layout]
    at = (np.round(points[:, 1]).astype(int), np.round(points[:, 0]).astype(int))
    covered = [bool((landmark_mask(side, side, points, np.random.default_rng(s))[at] > 0.5).all())
               for s in range(100)]
    assert np.mean(covered) >= 0.9


def test_landmark_mask_follows_the_landmarks():
    side, points = LAYOUTS[0]
    for shift in ((10, 0), (0, 10), (-10, 0), (0, -10)):
        moved = []
        for seed in range(20):
            here = _centroid(landmark_mask(side, side, points, np.random.default_rng(seed)))
            there = _centroid(landmark_mask(side, side, points + np.float32(shift), np.random.default_rng(seed)))
            moved.append(there - here)
            np.testing.assert_allclose(there - here, shift, atol=3.0)  # the flow is fixed to the crop, not the face
        np.testing.assert_allclose(np.mean(moved, axis=0), shift, atol=1.0)
    # and it is nowhere near the crop centre when the face is not
    corner = LAYOUTS[0][1] * 0.5 + np.float32(-10)  # a half-size face up and left (centroid ~(46, 46))
    for seed in range(5):
        centroid = _centroid(landmark_mask(side, side, corner, np.random.default_rng(seed)))
        assert np.hypot(*(centroid - corner.mean(axis=0))) < 10  # a little above it: the forehead


def test_unusable_landmarks_give_the_ellipse():
    rng_state = np.random.default_rng(5)
    for bad in (None, np.full((5, 2), np.nan, np.float32), np.where(np.arange(10).reshape(5, 2) == 3, np.nan, 50.0),
                np.full((5, 2), 60.0), np.zeros((4, 2)), LAYOUTS[0][1] + 1000):
        assert not usable_landmarks(bad, 224, 224)
        seed = int(rng_state.integers(1 << 30))
        np.testing.assert_array_equal(landmark_mask(224, 224, bad, np.random.default_rng(seed)),
                                      face_mask(224, 224, np.random.default_rng(seed)))
        assert landmark_mask_bound(224, 224, bad).all()
    assert usable_landmarks(LAYOUTS[0][1], 224, 224)


def _old_self_blend(face, rng):
    """self_blend as it was before landmarks: the ellipse mask."""
    source = perturb_colour(face, rng)
    source = perturb_geometry(source, rng)
    if rng.random() < 0.5:
        source = perturb_resample(source, rng)
    mask = face_mask(face.shape[0], face.shape[1], rng) * float(rng.choice(BLEND_RATIOS))
    m = mask[..., None]
    fake = np.clip(np.round(m * source.astype(np.float32) + (1 - m) * face.astype(np.float32)), 0, 255)
    return fake.astype(np.uint8), mask.astype(np.float32)


def test_self_blend_with_landmarks_changes_pixels_only_under_the_mask():
    side, points = LAYOUTS[1]
    face, bound = _textured(side), landmark_mask_bound(side, side, points)
    changed_inside = []
    for seed in range(8):
        fake, mask = self_blend(face, np.random.default_rng(seed), points)
        assert fake.shape == face.shape and fake.dtype == np.uint8 and mask.dtype == np.float32
        np.testing.assert_array_equal(fake[mask == 0], face[mask == 0])
        assert not (fake != face).any(axis=2)[~bound].any()
        changed_inside.append((fake != face).any(axis=2)[mask > 0.5 * mask.max()].mean())
        again = self_blend(face, np.random.default_rng(seed), points)
        np.testing.assert_array_equal(again[0], fake)
    assert max(changed_inside) > 0.5
    # the landmark mask, not the ellipse
    _, ellipse = self_blend(face, np.random.default_rng(0))
    assert not np.array_equal(self_blend(face, np.random.default_rng(0), points)[1], ellipse)


def test_nan_landmarks_blend_exactly_as_before():
    face = _textured(96)
    nan = np.full((5, 2), np.nan, np.float32)
    for seed in range(6):
        old_fake, old_mask = _old_self_blend(face, np.random.default_rng(seed))
        for landmarks in (None, nan):
            fake, mask = self_blend(face, np.random.default_rng(seed), landmarks)
            np.testing.assert_array_equal(fake, old_fake)
            np.testing.assert_array_equal(mask, old_mask)
    plain, with_nan = SelfBlendAugment(p=0.5, seed=11), SelfBlendAugment(p=0.5, seed=11)
    for _ in range(12):
        a, b = plain(image=face), with_nan(image=face, landmarks=nan)
        assert a["label"] == b["label"]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


class _FakeReader:
    """`reader(video, k) -> uint8 [S, S, 3]`, like CropReader, from a fixed array."""

    def __init__(self, crops):
        self.crops = crops

    def __call__(self, video, k):
        return self.crops[video][k].copy()


class _RecordingBlend:
    def __init__(self):
        self.seen = []

    def __call__(self, *, image, landmarks=None):
        self.seen.append(None if landmarks is None else np.array(landmarks))
        return {"image": 255 - image, "label": 1, "mask": np.ones(image.shape[:2], np.float32)}


def _dataset_parts(side=96):
    crops = [np.stack([_textured(side, seed=10 * v + k) for k in range(2)]) for v in range(2)]
    items = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    labels = np.array([0, 0, 1, 0], np.float32)  # video 1's first crop is from a fake video
    points = LAYOUTS[3][1]
    landmarks = np.stack([points, np.full((5, 2), np.nan), points + 2, points - 3]).astype(np.float32)
    return _FakeReader(crops), items, labels, landmarks


def _identity(image):
    return {"image": image}


def test_face_crop_dataset_passes_each_crops_landmarks_to_the_blend():
    reader, items, labels, landmarks = _dataset_parts()
    blend = _RecordingBlend()
    dataset = FaceCropDataset(reader, items, labels, _identity, blend=blend, landmarks=landmarks)
    out = [dataset[i] for i in range(len(dataset))]
    assert [float(label) for _, label in out] == [1.0, 1.0, 1.0, 1.0]
    assert len(blend.seen) == 3  # the fake video's crop is not blended
    np.testing.assert_array_equal(blend.seen[0], landmarks[0])
    assert np.isnan(blend.seen[1]).all()
    np.testing.assert_array_equal(blend.seen[2], landmarks[3])
    np.testing.assert_array_equal(out[2][0], reader(1, 0))  # untouched
    with pytest.raises(ValueError, match="landmarks must be"):
        FaceCropDataset(reader, items, labels, _identity, blend=blend, landmarks=landmarks[:3])


def test_face_crop_dataset_self_blends_with_landmarks_and_labels_them_fake():
    reader, items, labels, landmarks = _dataset_parts()
    dataset = FaceCropDataset(reader, items, labels, _identity, blend=SelfBlendAugment(p=1.0, seed=2),
                              landmarks=landmarks)
    reference = SelfBlendAugment(p=1.0, seed=2)
    side = reader(0, 0).shape[0]
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert float(label) == 1.0
        video, k = items[i]
        if labels[i] == 1:
            np.testing.assert_array_equal(image, reader(video, k))
            continue
        expected = reference(image=reader(video, k), landmarks=landmarks[i])
        assert expected["label"] == 1
        np.testing.assert_array_equal(image, expected["image"])
        changed = (image != reader(video, k)).any(axis=2)
        assert changed.any()
        if np.isfinite(landmarks[i]).all():
            assert not changed[~landmark_mask_bound(side, side, landmarks[i])].any()


def test_face_crop_dataset_without_landmarks_calls_the_blend_as_before():
    reader, items, labels, _ = _dataset_parts()

    def image_only(*, image):  # a blend that predates landmarks
        return {"image": image, "label": 1, "mask": np.zeros(image.shape[:2], np.float32)}

    dataset = FaceCropDataset(reader, items, labels, _identity, blend=image_only)
    assert [float(dataset[i][1]) for i in range(len(dataset))] == [1.0, 1.0, 1.0, 1.0]
    assert dataset.landmarks is None
