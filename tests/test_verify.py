"""Spatial verification: two views of one scene keep many RANSAC inliers, two scenes keep few; the
content-keyed feature cache computes each image once, survives renames and interruptions."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from common.core.errors import DataError
from common.data.images import load_rgb
from common.retrieval import verify
from common.retrieval.verify import FeatureCache, count_inliers, extract, verify_shortlist

cv2.setNumThreads(1)
METHODS = ["sift", "orb", "akaze"]


def scene(seed: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A textured RGB scene: noisy background, random filled shapes, lines and text."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(60, 200, 3), np.uint8)
    img = cv2.add(img, rng.integers(0, 40, (h, w, 3), dtype=np.uint8))
    for _ in range(40):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind, x, y = int(rng.integers(4)), int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 60)), y + int(rng.integers(8, 60))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(4, 30)), colour, int(rng.choice([-1, 2])))
        elif kind == 2:
            cv2.fillPoly(img, [rng.integers(0, [w, h], (int(rng.integers(3, 6)), 2)).astype(np.int32)], colour)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(1, 4)))
    for _ in range(6):
        text = "".join(rng.choice(list("ABCDEFGHKMNPRSTWXYZ0123456789"), 5))
        cv2.putText(img, text, (int(rng.integers(0, w - 80)), int(rng.integers(15, h))), cv2.FONT_HERSHEY_SIMPLEX,
                    float(rng.uniform(0.4, 0.9)), tuple(int(c) for c in rng.integers(0, 256, 3)), 2)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def second_view(img: np.ndarray, seed: int = 1) -> np.ndarray:
    """The same scene from another viewpoint (a moderate homography), darker, with new noise."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + np.float32([[18, 10], [-15, 14], [-20, -12], [12, -16]])
    out = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(out * 0.75 + 25 + rng.normal(0, 5, out.shape), 0, 255).astype(np.uint8)


def write_rgb(path, rgb) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture(scope="module")
def scenes():
    view1 = scene(0)
    return view1, second_view(view1), scene(7)


@pytest.fixture
def image_files(tmp_path, scenes):
    folder = tmp_path / "images"
    folder.mkdir()
    return [write_rgb(folder / f"{i}.png", img) for i, img in enumerate([*scenes, scene(11), scene(12)])]


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of `extract` made by the cache."""
    calls = []
    real = verify.extract

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "extract", spy)
    return calls


@pytest.mark.parametrize("method", METHODS)
def test_same_scene_keeps_many_inliers_another_scene_few(scenes, method):
    view1, view2, other = (extract(img, method, 1000, 512) for img in scenes)
    same, different = count_inliers(view1, view2, method), count_inliers(view1, other, method)
    assert same > 30, (same, different)
    assert different < 10, (same, different)


def test_fundamental_model_also_separates(scenes):
    view1, view2, other = (extract(img, "sift", 1000, 512) for img in scenes)
    same = count_inliers(view1, view2, "sift", model="fundamental")
    different = count_inliers(view1, other, "sift", model="fundamental")
    assert same > 100 and different < same / 5, (same, different)
    with pytest.raises(ValueError, match="homography"):
        count_inliers(view1, view2, "sift", model="affine")


@pytest.mark.parametrize("mutual", [True, False])
def test_l2_matching_equals_opencv_bfmatcher(scenes, mutual):
    """The BLAS distance-matrix matcher gives cv2.BFMatcher's ratio-test (+ mutual) matches."""
    view1, view2, other = (extract(img, "sift", 1000, 512) for img in scenes)
    for a, b in ((view1, view2), (view1, other)):
        da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        good = [m for m, n in matcher.knnMatch(da, db, k=2) if m.distance < 0.8 * n.distance]
        if mutual:
            back = {m.queryIdx: m.trainIdx for m in matcher.match(db, da)}
            good = [m for m in good if back[m.trainIdx] == m.queryIdx]
        ia, ib = verify._matches(a, b, cv2.NORM_L2, 0.8, mutual)
        assert len(good) > 5
        assert set(zip(ia.tolist(), ib.tolist())) == {(m.queryIdx, m.trainIdx) for m in good}


@pytest.mark.parametrize("mutual", [True, False])
def test_rootsift_matching_equals_bfmatcher_on_hellinger_vectors(scenes, mutual):
    """root=True gives cv2.BFMatcher's matches on sqrt(L1-normalised SIFT), and still separates scenes;
    a second call (the reused per-thread buffer, now of another shape) gives the same answer."""
    view1, view2, other = (extract(img, "sift", 1000, 512) for img in scenes)
    hellinger = verify.root_descriptors(view1.descriptors)
    np.testing.assert_allclose(np.linalg.norm(hellinger, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(hellinger ** 2, view1.descriptors / view1.descriptors.sum(1, keepdims=True),
                               atol=1e-6)
    for a, b in ((view1, view2), (view1, other), (view2, view1)):
        da, db = verify.root_descriptors(a.descriptors), verify.root_descriptors(b.descriptors)
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        good = [m for m, n in matcher.knnMatch(da, db, k=2) if m.distance < 0.8 * n.distance]
        if mutual:
            back = {m.queryIdx: m.trainIdx for m in matcher.match(db, da)}
            good = [m for m in good if back[m.trainIdx] == m.queryIdx]
        expected = {(m.queryIdx, m.trainIdx) for m in good}
        for _ in range(2):
            ia, ib = verify._matches(a, b, cv2.NORM_L2, 0.8, mutual, root=True)
            # float32 ties can flip a match whose ratio is within rounding of 0.8; allow one
            assert len(set(zip(ia.tolist(), ib.tolist())) ^ expected) <= 1
    same, different = (count_inliers(view1, v, "sift", root=True) for v in (view2, other))
    assert same > 30 and different < 10, (same, different)
    with pytest.raises(ValueError, match="RootSIFT"):
        count_inliers(view1, view2, "orb", root=True)


def test_extract_resizes_caps_and_types():
    big = cv2.resize(scene(3), (1024, 768), interpolation=cv2.INTER_CUBIC)
    for method in METHODS:
        xy, desc = extract(big, method, max_features=150, max_side=512)
        assert 0 < len(xy) <= 150 and len(desc) == len(xy), method
        assert xy.dtype == np.float32 and desc.dtype == verify.METHODS[method].dtype
        assert xy[:, 0].max() < 512 and xy[:, 1].max() < 384, method  # the resized frame
    xy, desc = extract(np.full((100, 100, 3), 128, np.uint8), "sift", 100, 512)  # flat: no keypoints
    assert xy.shape == (0, 2) and desc.shape == (0, 128)
    assert count_inliers(extract(scene(0), "sift", 100, 512), verify.LocalFeatures(xy, desc)) == 0
    with pytest.raises(ValueError, match="akaze"):
        extract(big, "surf", 100, 512)


def test_real_photo_rotated_copy_beats_another_photo(shared_data):
    """A nyala photo vs a slightly rotated and shrunk copy of itself, and vs a photo of another animal."""
    root = shared_data / "nyala_dev"
    if not root.is_dir():
        pytest.skip("../shared/data/nyala_dev is absent")
    train = pd.read_csv(root / "train.csv")
    train = train[train.Id != "new_whale"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(train), 3, replace=False):
        row = train.iloc[int(i)]
        others = train[train.Id != row.Id]
        image = load_rgb(root / "train" / row.Image)
        other = load_rgb(root / "train" / others.Image.iloc[int(rng.integers(len(others)))])
        h, w = image.shape[:2]
        copy = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 0.85), (w, h))
        a, b, c = (extract(x, "sift", 1000, 512) for x in (image, copy, other))
        same, different = count_inliers(a, b, "sift"), count_inliers(a, c, "sift")
        assert same > different and same > 30, (row.Image, same, different)


def test_cache_fills_once_and_hits_renamed_copies(tmp_path, image_files, counted):
    cache = FeatureCache(tmp_path / "cache", "orb", 500, 512)
    assert cache.directory == tmp_path / "cache" / "orb-500-512"
    assert cache.fill(image_files, progress=False) == len(image_files) == len(counted)
    stamps = {f: f.stat().st_mtime_ns for f in cache.directory.glob("*.npz")}
    assert len(stamps) == len(image_files)
    assert cache.fill(image_files, progress=False) == 0 and len(counted) == len(image_files)
    assert {f: f.stat().st_mtime_ns for f in cache.directory.glob("*.npz")} == stamps

    renamed = tmp_path / "elsewhere" / "renamed.png"
    renamed.parent.mkdir()
    shutil.copy(image_files[0], renamed)
    assert cache.file(renamed) == cache.file(image_files[0])
    got = cache.get(renamed)
    assert len(counted) == len(image_files)  # a hit: nothing computed
    fresh = extract(load_rgb(image_files[0]), "orb", 500, 512)
    np.testing.assert_array_equal(got.descriptors, fresh.descriptors)
    np.testing.assert_allclose(got.xy, fresh.xy)

    other = FeatureCache(tmp_path / "cache", "orb", 500, 512, clahe=False)  # other settings, other folder
    assert other.directory.name == "orb-500-512-noclahe" and other.fill(image_files[:1], progress=False) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_fill_leaves_complete_files_and_resumes(tmp_path, image_files, monkeypatch, workers):
    """Killed in the middle of writing the third file: no partial file under a cache name."""
    real = np.savez
    calls = []

    def dies_on_third(file, **arrays):
        calls.append(1)
        if len(calls) == 3:
            file.write(b"PK\x03\x04 half written")
            raise KeyboardInterrupt
        real(file, **arrays)

    monkeypatch.setattr(np, "savez", dies_on_third)
    cache = FeatureCache(tmp_path / "cache", "sift", 300, 512)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(image_files, progress=False, workers=workers)
    written = sorted(cache.directory.iterdir())
    assert 1 <= len(written) < len(image_files), written
    for f in written:
        assert f.suffix == ".npz" and not f.name.startswith(".")  # no temporary file left behind
        with np.load(f) as z:
            assert len(z["xy"]) == len(z["descriptors"]) > 0
    monkeypatch.setattr(np, "savez", real)
    assert cache.fill(image_files, progress=False, workers=workers) == len(image_files) - len(written)
    assert len(list(cache.directory.glob("*.npz"))) == len(image_files)


def test_unreadable_image_is_a_data_error_naming_it(tmp_path, image_files):
    bad = tmp_path / "broken_photo.jpg"
    bad.write_bytes(b"this is not an image" * 50)
    cache = FeatureCache(tmp_path / "cache", "sift", 300, 512)
    with pytest.raises(DataError, match="broken_photo.jpg"):
        cache.fill([image_files[0], bad], progress=False)
    with pytest.raises(DataError, match="broken_photo.jpg"):
        cache.get(bad)
    with pytest.raises(DataError, match="gone.jpg"):
        cache.get(tmp_path / "gone.jpg")
    assert [f.name for f in cache.directory.iterdir()] == [cache.file(image_files[0]).name]


def test_damaged_cache_file_is_recomputed(tmp_path, image_files, counted):
    cache = FeatureCache(tmp_path / "cache", "sift", 300, 512)
    cache.file(image_files[0]).write_bytes(b"PK\x03\x04 half a zip")
    assert len(cache.get(image_files[0]).xy) > 0 and len(counted) == 1
    assert len(cache.get(image_files[0]).xy) > 0 and len(counted) == 1


def test_verify_shortlist_scores_and_no_candidate(tmp_path, image_files, counted):
    view1, view2, other, spare1, spare2 = image_files
    cache = FeatureCache(tmp_path / "cache", "sift", 1000, 512)
    gallery = [view2, other, view1]
    ids = np.array([[0, 1, -1], [-1, -1, -1], [2, 2, 0]])
    scores = verify_shortlist([view1, spare1, view2], gallery, ids, cache, progress=False)
    assert scores.shape == (3, 3) and scores.dtype == np.int32
    assert scores[0, 0] > 30 and scores[0, 1] < 10 and scores[0, 2] == 0
    assert (scores[1] == 0).all()
    assert scores[2, 0] == scores[2, 1] > 30 and scores[2, 2] > 30
    assert len(counted) == 3  # each image once (a query is also a gallery image); spare1 never
    strict = verify_shortlist([view1], gallery, ids[:1], cache, progress=False, min_matches=10 ** 6)
    assert (strict == 0).all()  # match_kwargs reach count_inliers
    assert verify_shortlist([], gallery, np.zeros((0, 5), int), cache, progress=False).shape == (0, 5)
    with pytest.raises(ValueError, match="n_query"):
        verify_shortlist([view1], gallery, ids, cache, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 3\)"):
        verify_shortlist([view1], gallery, np.array([[3]]), cache, progress=False)
