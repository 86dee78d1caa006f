"""Face-part dropout by landmarks, and the real-video augmentation pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from common.data.augment import build_transform
from common.video.face_parts import PARTS, FacePartDropout, part_box

# a frontal face in a 64 px crop: eyes at y=24, nose at 34, mouth corners at 44
LANDMARKS = np.array([[22, 24], [42, 24], [32, 34], [25, 44], [39, 44]], np.float32)


@pytest.mark.parametrize("part, inside, outside", [
    ("eyes", [(22, 24), (42, 24), (32, 24)], [(32, 34), (32, 44)]),
    ("nose", [(32, 34)], [(22, 24), (32, 44)]),
    ("mouth", [(25, 44), (39, 44), (32, 44)], [(32, 34), (22, 24)]),
])
def test_each_part_box_covers_its_landmarks_and_not_the_others(part, inside, outside):
    left, top, right, bottom = part_box(LANDMARKS, part, 64, 64)
    covered = lambda x, y: left <= x < right and top <= y < bottom  # noqa: E731
    assert all(covered(x, y) for x, y in inside)
    assert not any(covered(x, y) for x, y in outside)


def test_part_boxes_scale_with_the_face_and_stay_in_the_crop():
    small = part_box(LANDMARKS, "eyes", 64, 64)
    big = part_box(LANDMARKS * 2, "eyes", 128, 128)
    assert (big[2] - big[0]) == pytest.approx(2 * (small[2] - small[0]), abs=2)
    edge = part_box(LANDMARKS - 30, "eyes", 64, 64)  # eyes beyond the crop's top-left corner
    assert edge[0] == 0 and edge[1] == 0 and edge[2] >= edge[0] and edge[3] >= edge[1]
    with pytest.raises(ValueError, match="unknown face part"):
        part_box(LANDMARKS, "ears", 64, 64)


def test_dropout_blacks_out_one_part_and_leaves_faces_without_landmarks_alone():
    image = np.full((64, 64, 3), 200, np.uint8)
    drop = FacePartDropout(p=1.0, seed=0)
    seen = set()
    for _ in range(30):
        out = drop(image, LANDMARKS)
        black = np.argwhere((out == 0).all(axis=2))
        assert len(black) > 0 and (out[(out != 0).any(axis=2)] == 200).all()
        (top, left), (bottom, right) = black.min(0), black.max(0) + 1
        seen.add(next(p for p in PARTS if part_box(LANDMARKS, p, 64, 64) == (left, top, right, bottom)))
    assert seen == set(PARTS)  # every part is chosen, the hole is exactly that part's box
    assert image.min() == 200  # the input is not modified
    np.testing.assert_array_equal(drop(image, np.full((5, 2), np.nan, np.float32)), image)
    np.testing.assert_array_equal(FacePartDropout(p=0.0)(image, LANDMARKS), image)
    rate = np.mean([(FacePartDropout(p=0.3, seed=s)(image, LANDMARKS) == 0).any() for s in range(200)])
    assert 0.2 < rate < 0.4
    with pytest.raises(ValueError, match="probability"):
        FacePartDropout(p=2.0)


def test_face_real_pipeline_keeps_size_and_changes_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    transform = build_transform("face_real", 64, normalize=False)
    outs = [transform(image=image)["image"] for _ in range(20)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) and not np.array_equal(o, image[:, ::-1]) for o in outs) >= 10


def test_crop_dataset_applies_part_dropout_to_real_and_fake_crops():
    import torch
    from common.video.crops import FaceCropDataset

    crops = np.full((2, 64, 64, 3), 200, np.uint8)
    reader = lambda video, k: crops[video]  # noqa: E731
    dataset = FaceCropDataset(reader, np.array([[0, 0], [1, 0]]), np.array([0.0, 1.0]), build_transform("none", 64, normalize=False),
                              landmarks=np.stack([LANDMARKS, LANDMARKS]), part_dropout=FacePartDropout(p=1.0, seed=0))
    for i in range(2):
        image, label = dataset[i]
        assert (np.asarray(image) == 0).any() and label == torch.tensor(float(i))
