"""Regression tests for bugs fixed in the metrics, retrieval, submission writers and video code.

Each test fails on the code before its fix; the docstring names the bug.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from common.core.errors import DataError
from common.metrics.scores import gap, log_loss, map_at_k
from common.retrieval.index import rank_classes
from common.retrieval.new_class import insert_new_class, tune_threshold

REPO = Path(__file__).resolve().parent.parent


def _module(dotted: str):
    """A competition's submission module. Normally a plain import; when the package's __init__
    cannot be imported (it wires CLI commands from the shared core, which may be mid-refactor),
    the module file itself is loaded: it depends on common.core.errors alone."""
    try:
        return importlib.import_module(dotted)
    except ImportError:
        spec = importlib.util.spec_from_file_location(f"_standalone_{dotted.replace('.', '_')}",
                                                      REPO / (dotted.replace(".", "/") + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


# ============================================================================= 1. GAP ties
def _reference_gap(pred_labels, confidences, true_labels, ids) -> float:
    """Google's GlobalAveragePrecision (delf ... google_landmarks_dataset/metrics.py), rewritten:
    predictions sorted by key then class, then by score descending with a stable sort, i.e.
    "first by score (descending); then by key (ascending)"; non-landmark images count as wrong."""
    predictions = {i: {"class": p, "score": c} for i, p, c in zip(ids, pred_labels, confidences) if p is not None}
    solution = {i: ([] if t is None else [t]) for i, t in zip(ids, true_labels)}
    num_positives = sum(1 for v in solution.values() if v)
    by_key_class = sorted(predictions.items(), key=lambda item: (item[0], item[1]["class"]))
    ordered = sorted(by_key_class, key=lambda item: item[1]["score"], reverse=True)
    total = correct = 0
    value = 0.0
    for key, prediction in ordered:
        total += 1
        if prediction["class"] in solution[key]:
            correct += 1
            value += correct / total
    return value / num_positives


def test_gap_breaks_confidence_ties_by_query_id_ascending():
    """Bug 1: ties were broken by input position; Kaggle breaks them by query id, ascending."""
    truth = ["a", "b"]
    # image "img2" is listed first and wrong; "img1" (right) sorts first by id
    assert gap(["x", "b"], [0.5, 0.5], truth, ids=["img2", "img1"]) == pytest.approx(0.5)
    assert gap(["x", "b"], [0.5, 0.5], truth, ids=["img1", "img2"]) == pytest.approx(0.25)
    assert gap(["x", "b"], [0.5, 0.5], truth) == pytest.approx(0.25)  # no ids: position, as before
    # integer ids compare numerically
    assert gap(["x", "b"], [0.5, 0.5], truth, ids=[10, 9]) == pytest.approx(0.5)


def test_gap_with_ids_matches_googles_reference_on_random_ties():
    """Bug 1: on data full of ties, gap(..., ids=...) equals the reference; without ids it equals
    the reference when images are listed in id order."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        ids = [f"{v:04x}" for v in rng.choice(5000, size=n, replace=False)]
        truth = [None if rng.random() < 0.25 else int(rng.integers(0, 4)) for _ in range(n)]
        if all(t is None for t in truth):
            truth[0] = 0
        preds = [None if rng.random() < 0.2 else int(rng.integers(0, 4)) for _ in range(n)]
        conf = list(rng.choice([0.1, 0.5, 0.9], size=n))  # many ties
        expected = _reference_gap(preds, conf, truth, ids)
        assert gap(preds, conf, truth, ids=ids) == pytest.approx(expected, abs=1e-12)
        order = np.argsort(ids, kind="stable")
        sorted_args = [[x[i] for i in order] for x in (preds, conf, truth)]
        assert gap(*sorted_args) == pytest.approx(expected, abs=1e-12)


def test_gap_ids_are_checked():
    """Bug 1: ids must be one distinct, present id per image."""
    with pytest.raises(ValueError, match="one id per image"):
        gap(["a", "b"], [0.5, 0.5], ["a", "b"], ids=["i1"])
    with pytest.raises(ValueError, match="more than once"):
        gap(["a", "b"], [0.5, 0.5], ["a", "b"], ids=["i1", "i1"])
    with pytest.raises(ValueError, match="missing"):
        gap(["a", "b"], [0.5, 0.5], ["a", "b"], ids=["i1", None])


# ============================================================================= 2./3. landmarks writer
def test_landmark_confidences_keep_distinct_values_distinct_and_ordered():
    """Bug 2: confidences were written with %.6f, merging values that differ in the 7th digit."""
    format_prediction = _module("competitions.landmarks.layout").format_prediction

    low, high = format_prediction(5, 0.1234567), format_prediction(5, 0.1234568)
    assert low != high
    assert float(low.split()[1]) < float(high.split()[1])
    assert format_prediction(12, 0.5) == "12 0.500000"  # short values keep the familiar look
    rng = np.random.default_rng(3)
    values64 = np.concatenate([rng.random(300), rng.random(50) * 1e-9, [1 / 3, 2 / 3, 1e-30, 0.0, 1.0]])
    for value in values64:
        assert float(format_prediction(1, float(value)).split()[1]) == value  # round-trip exact
    values32 = rng.random(300).astype(np.float32)
    texts = [format_prediction(1, v).split()[1] for v in values32]
    assert [np.float32(float(t)) for t in texts] == list(values32)  # float32 round trip
    # values one float32 ulp apart stay distinct and keep their order
    a = np.float32(0.7312345)
    b = np.nextafter(a, np.float32(1))
    assert float(format_prediction(1, a).split()[1]) < float(format_prediction(1, b).split()[1])


def test_landmark_cells_with_long_confidences_pass_the_validator():
    """Bug 2: the exact text is still a well-formed '<id> <confidence>' cell."""
    layout = _module("competitions.landmarks.layout")
    format_prediction, validate_submission = layout.format_prediction, layout.validate_submission

    frame = pd.DataFrame({"id": ["aaa", "bbb", "ccc"],
                          "landmarks": [format_prediction(1, 0.1234567891), format_prediction(2, 1e-12), ""]})
    validate_submission(frame, frame.assign(landmarks=""))


def test_landmarks_validator_refuses_duplicate_ids_without_a_sample():
    """Bug 3: duplicates passed when `expected` was built from the frame itself (no sample file)."""
    validate_submission = _module("competitions.landmarks.layout").validate_submission

    frame = pd.DataFrame({"id": ["aaa", "bbb", "aaa"], "landmarks": ["1 0.5", "", "2 0.25"]})
    with pytest.raises(DataError, match="duplicated id.*'aaa'"):
        validate_submission(frame, frame.assign(landmarks=""))


def test_landmarks_writer_without_sample_refuses_duplicate_ids(tmp_path):
    """Bug 3, end to end: Landmarks.write_submission with no sample_submission.csv."""
    try:
        from competitions.landmarks import COMPETITION
    except ImportError as exc:  # the package __init__ depends on the shared core being consistent
        pytest.skip(f"competitions.landmarks cannot be imported right now: {exc}")

    with pytest.raises(DataError, match="duplicated"):
        COMPETITION.write_submission(["aaa", "aaa"], [(1, 0.5), (2, 0.4)], tmp_path / "sub.csv", tmp_path)
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("bad", ["abc", "12x", 3.5, None, float("nan"), float("inf"), True, -1])
def test_non_integer_landmark_id_is_a_data_error_naming_it(bad):
    """Bug 3: a non-integer landmark id raised a bare ValueError (or TypeError) from int()."""
    format_prediction = _module("competitions.landmarks.layout").format_prediction

    with pytest.raises(DataError, match="landmark id") as caught:
        format_prediction(bad, 0.5)
    assert repr(bad) in str(caught.value)


def test_integer_like_landmark_ids_are_accepted():
    format_prediction = _module("competitions.landmarks.layout").format_prediction

    assert format_prediction(np.int64(7), 0.25) == format_prediction(7.0, 0.25) == format_prediction("7", 0.25)


# ============================================================================= 4. deepfake
def _videos(labels):
    return pd.DataFrame({"filename": [f"v{i}.mp4" for i in range(len(labels))], "label": labels})


@pytest.mark.parametrize("value", [0.0, 1.0, 0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_deepfake_validator_refuses_certainties_and_non_probabilities(value):
    """Bug 4: labels of exactly 0 or 1 were accepted (log loss then punishes a miss without bound)."""
    validate_submission = _module("competitions.deepfake.submission").validate_submission

    frame = _videos([0.3, value, 0.6])
    with pytest.raises(DataError) as caught:
        validate_submission(frame, _videos([0.5] * 3), where="out/submission.csv")
    message = str(caught.value)
    assert "out/submission.csv" in message and "row 2" in message and "v1.mp4" in message


def test_deepfake_validator_accepts_probabilities_strictly_inside():
    validate_submission = _module("competitions.deepfake.submission").validate_submission

    validate_submission(_videos([1e-6, 0.5, 1 - 1e-6]), _videos([0.5] * 3))


def test_log_loss_refuses_values_that_are_not_probabilities():
    """Bug 4: log_loss clipped p outside [0, 1] silently (a logit passed as p scored fine)."""
    for bad in ([1.2, 0.5], [-0.01, 0.5], [float("nan"), 0.5], [float("inf"), 0.5], [-float("inf"), 0.5]):
        with pytest.raises(ValueError, match="log_loss"):
            log_loss([1, 0], bad)
    # inside [0, 1] still clipped to [1e-15, 1 - 1e-15], as Kaggle does
    eps = 1e-15
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-(math.log(eps) + math.log(1 - (1 - eps))) / 2)
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-15))


# ============================================================================= 5. tune_threshold
def _brute_force_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every finite score, the midpoints between them, values just around them and both infinities."""
    finite = np.unique(scores[np.isfinite(scores)])
    around = np.concatenate([finite, np.nextafter(finite, np.inf), np.nextafter(finite, -np.inf),
                             (finite[1:] + finite[:-1]) / 2 if finite.size > 1 else [],
                             [finite.min() - 1, finite.max() + 1] if finite.size else [0.0]])
    return np.unique(np.concatenate([[-np.inf, np.inf], around]))


def _small_open_set(rng, n):
    pool = [f"w{i}" for i in range(6)]
    labels, truth = [], []
    scores = rng.choice([0.2, 0.4, 0.4, 0.6, 0.8, 1.0], size=(n, 5))  # ties within and across rows
    scores = -np.sort(-scores, axis=1)
    for row in range(n):
        n_known = int(rng.integers(0, 6))  # rows with fewer than 5 candidates, and empty rows
        labels.append(list(rng.choice(pool, size=n_known, replace=False)) + [None] * (5 - n_known))
        scores[row, n_known:] = -np.inf
        roll = rng.random()
        truth.append("new_whale" if roll < 0.35 else (labels[-1][0] if roll < 0.6 and n_known else str(rng.choice(pool))))
    if rng.random() < 0.3:  # a known label scored -inf: only threshold -inf keeps new_whale behind it
        row = int(rng.integers(0, n))
        labels[row][0], scores[row, 0] = "w5", -np.inf
        labels[row][1:] = [None] * 4
        scores[row, 1:] = -np.inf
    return labels, scores, truth


def test_tune_threshold_is_exact_against_brute_force_including_both_extremes():
    """Bug 5: the candidates lacked -inf and used nextafter(max) instead of +inf."""
    rng = np.random.default_rng(21)
    for _ in range(60):
        labels, scores, truth = _small_open_set(rng, int(rng.integers(1, 8)))
        best_t, best_map, ts, curve = tune_threshold(scores, labels, truth)
        assert ts[0] == -np.inf and ts[-1] == np.inf
        for t, value in zip(ts, curve):
            assert value == map_at_k(insert_new_class(labels, scores, t), truth, k=5)
        brute = [map_at_k(insert_new_class(labels, scores, t), truth, k=5) for t in _brute_force_thresholds(scores)]
        assert best_map == max(brute)
        assert map_at_k(insert_new_class(labels, scores, best_t), truth, k=5) == best_map


def test_tune_threshold_reaches_never_new_when_a_known_label_scores_minus_inf():
    """Bug 5: -inf ("never put new_whale ahead of a known label") was not a candidate."""
    labels = [["a", None, None, None, None], ["b", "c", None, None, None]]
    scores = np.array([[-np.inf] * 5, [-np.inf] * 5])
    best_t, best_map, _, _ = tune_threshold(scores, labels, ["a", "b"])
    assert best_t == -np.inf and best_map == 1.0


def test_tune_threshold_always_new_is_plus_inf_and_holds_on_new_data():
    """Bug 5: "new_whale first everywhere" came back as nextafter(max score), which fails on a
    test image scoring higher than every out-of-fold one."""
    labels = [["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"]]
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.7, 0.6, 0.5, 0.4, 0.3]])
    best_t, best_map, _, _ = tune_threshold(scores, labels, ["new_whale", "new_whale"])
    assert best_t == np.inf and best_map == 1.0
    assert insert_new_class([["x", "y"]], np.array([[0.99, 0.98]]), best_t) == [["new_whale", "x", "y"]]


# ============================================================================= 6. fewer than 5 answers
def test_fewer_than_five_identities_give_short_real_answers_that_the_whales_validator_accepts():
    """Bug 6: padding could reach the answer, and the validator refused fewer than 5 labels."""
    validate_submission = _module("competitions.whales.submission").validate_submission

    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0.2, 0.1]], np.float32)
    ids = np.array([[0, 1, 2], [0, 1, 2]])
    ranked, scores = rank_classes(sims, ids, np.array(["w_1", "w_1", "w_2"], dtype=object), top=5)
    assert ranked[0] == ["w_1", "w_2", None, None, None]
    for threshold in (-np.inf, 0.0, 0.5, 0.85, np.inf):
        answers = insert_new_class(ranked, scores, threshold)
        for row in answers:
            assert row and all(isinstance(label, str) for label in row) and len(set(row)) == len(row) <= 5
        frame = pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": [" ".join(r) for r in answers]})
        validate_submission(frame, frame)
    # the same padding after a DataFrame round trip (None -> NaN) never becomes a label either
    as_nan = [[np.nan if label is None else label for label in row] for row in ranked]
    assert insert_new_class(as_nan, scores, 0.5) == insert_new_class(ranked, scores, 0.5)
    assert insert_new_class([["w_1", pd.NA, ""]], np.array([[0.9, 0.5, 0.4]]), 0.5) == [["w_1", "new_whale"]]
    curve = tune_threshold(scores, as_nan, ["w_2", "new_whale"])[3]
    assert curve.tolist() == tune_threshold(scores, ranked, ["w_2", "new_whale"])[3].tolist()


def test_whales_validator_accepts_one_to_five_labels_and_refuses_the_rest():
    """Bug 6: 1-5 distinct labels per row are valid; empty rows, repeats and more than 5 are not."""
    validate_submission = _module("competitions.whales.submission").validate_submission

    good = pd.DataFrame({"Image": ["a.jpg", "b.jpg", "c.jpg"], "Id": ["w_1", "new_whale w_2", "w_1 w_2 w_3 w_4 w_5"]})
    validate_submission(good, good)
    for bad, message in [("", "0 labels"), (np.nan, "0 labels"), ("w_1 w_1", "repeats a label"),
                         ("w_1 w_2 w_3 w_4 w_5 w_6", "6 labels")]:
        frame = good.assign(Id=[good.Id[0], bad, good.Id[2]])
        with pytest.raises(DataError, match=message):
            validate_submission(frame, good)
    written = good.assign(Id=["w_1", "", "w_2"])  # an empty cell as read back from a CSV file
    with pytest.raises(DataError, match="b.jpg has 0 labels"):
        validate_submission(pd.read_csv(pd.io.common.StringIO(written.to_csv(index=False))), good)


# ============================================================================= 7. face cache
def _fake_videos(tmp_path, n=2):
    paths = []
    for i in range(n):
        path = tmp_path / "videos" / f"clip{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really a video %d" % i)
        paths.append(path)
    return paths


def _frames(path):
    rng = np.random.default_rng(abs(hash(str(path))) % 2 ** 32)
    return rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("transient", [MemoryError("out of memory"), OSError(5, "Input/output error"),
                                       TimeoutError("read timed out"), KeyboardInterrupt()])
def test_face_cache_does_not_record_transient_failures(tmp_path, transient):
    """Bug 7: any exception marked the video unreadable for good (its .json held the error)."""
    from common.video.face_cache import FaceCache, FaceExtractor

    videos = _fake_videos(tmp_path)
    extractor = FaceExtractor(frames=2, size=16)
    calls = []

    def failing_read(path):
        calls.append(path)
        if str(path) == str(videos[1]):
            raise transient
        return _frames(path)

    extractor.read = failing_read
    cache = FaceCache(extractor, tmp_path / "cache", progress=False)
    with pytest.raises(type(transient)) as caught:
        cache.build(videos)
    assert any(str(videos[1]) in note for note in getattr(caught.value, "__notes__", []))  # names the video
    assert not cache.is_done(videos[1])
    assert not cache.crop_file(videos[1]).exists()
    assert not [p for p in cache.directory.rglob("*") if ".tmp" in p.name]  # no half-written files
    # the next build retries it (and only what is not done yet)
    extractor.read = _frames
    assert cache.build(videos) == {}
    assert cache.is_done(videos[1]) and cache.load(videos[1]).crops.shape == (2, 16, 16, 3)


def test_face_cache_records_decode_failures(tmp_path):
    """Bug 7: a real decode failure (VideoReadError) is still recorded and not retried."""
    from common.video.face_cache import FaceCache, FaceExtractor
    from common.video.frames import VideoReadError

    videos = _fake_videos(tmp_path)
    extractor = FaceExtractor(frames=2, size=16)

    def read(path):
        if str(path) == str(videos[1]):
            raise VideoReadError(f"{path}: cannot read video frames")
        return _frames(path)

    extractor.read = read
    cache = FaceCache(extractor, tmp_path / "cache", progress=False)
    errors = cache.build(videos)
    assert list(errors) == [str(videos[1])] and errors[str(videos[1])].startswith("VideoReadError")
    extractor.read = lambda path: pytest.fail("a recorded decode failure must not be retried")
    assert cache.build(videos) == errors
    # a real undecodable file goes the same way through the real reader
    real = FaceCache(FaceExtractor(frames=2, size=16), tmp_path / "cache2", progress=False)
    assert "clip0.mp4" in real.build(videos[:1])[str(videos[0])]


def test_face_cache_retries_transient_errors_recorded_by_older_versions(tmp_path):
    """Bug 7: entries already poisoned by a transient error are not treated as done."""
    from common.video.face_cache import FaceCache, FaceExtractor

    videos = _fake_videos(tmp_path, n=1)
    extractor = FaceExtractor(frames=2, size=16)
    extractor.read = _frames
    cache = FaceCache(extractor, tmp_path / "cache", progress=False)
    legacy = cache.crop_file(videos[0]).with_suffix(".json")
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({"source": str(videos[0]), "settings": {}, "error": "MemoryError: "}))
    assert not cache.is_done(videos[0])
    assert cache.build(videos) == {} and cache.load(videos[0]).crops.shape == (2, 16, 16, 3)


def test_face_cache_key_includes_the_video_backend(tmp_path):
    """Bug 7: switching video.backend reused the crops decoded by the other backend."""
    from common.core.config import load_config
    from common.video.face_cache import FaceCache, FaceExtractor

    CONFIG_PATH = REPO / "competitions" / "deepfake" / "config.yaml"

    videos = _fake_videos(tmp_path, n=1)
    caches = {}
    for backend in ("opencv", "pyav"):
        cfg = load_config(CONFIG_PATH, [f"video.backend={backend}", "faces.detector=haar", "video.frames=2",
                                        "data.image_size=[16,16]"])
        extractor = FaceExtractor.from_config(cfg)
        assert extractor.backend == backend and extractor.settings()["backend"] == backend
        extractor.read = _frames
        caches[backend] = FaceCache(extractor, tmp_path / "cache", progress=False)
    caches["opencv"].build(videos)
    assert caches["opencv"].directory != caches["pyav"].directory
    assert caches["opencv"].is_done(videos[0]) and not caches["pyav"].is_done(videos[0])
    assert caches["opencv"].meta(videos[0])["settings"]["backend"] == "opencv"


# ============================================================================= 8. SelfBlendAugment
def _face(size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _signature(augment, n=12):
    face = _face()
    outs = [augment(image=face) for _ in range(n)]
    return [(o["label"], round(float(o["mask"].sum()), 3), int(o["image"].astype(np.int64).sum())) for o in outs]


def test_self_blend_does_not_depend_on_the_process_id(monkeypatch):
    """Bug 8: a change of process id reseeded the stream from (seed, pid): not reproducible."""
    from common.video.blend import SelfBlendAugment

    expected = _signature(SelfBlendAugment(p=0.5, seed=3))
    augment = SelfBlendAugment(p=0.5, seed=3)
    monkeypatch.setattr(os, "getpid", lambda: 424242)
    assert _signature(augment) == expected


def test_self_blend_workers_get_distinct_streams_derived_from_seed_and_worker_id(monkeypatch):
    """Bug 8: each DataLoader worker derives its stream from (seed, worker id)."""
    import common.video.blend as blend_module
    from common.video.blend import SelfBlendAugment

    def as_worker(worker_id):
        monkeypatch.setattr(blend_module, "get_worker_info",
                            lambda: SimpleNamespace(id=worker_id, seed=random.randrange(2 ** 32), num_workers=2))
        return _signature(SelfBlendAugment(p=0.5, seed=7))

    first, second, first_again = as_worker(0), as_worker(1), as_worker(0)
    assert first == first_again  # deterministic for a seed and a worker
    assert first != second  # distinct per worker
    # the stream is SeedSequence(seed).spawn(...)[worker id], whatever torch's worker seed is
    monkeypatch.setattr(blend_module, "get_worker_info", lambda: SimpleNamespace(id=1, seed=123, num_workers=2))
    augment = SelfBlendAugment(p=0.0, seed=7)  # p=0: one draw per call ("blend or not"), no blend
    augment(image=_face())
    reference = np.random.default_rng(np.random.SeedSequence(7).spawn(2)[1])
    reference.random()
    assert augment.rng.bit_generator.state == reference.bit_generator.state
    monkeypatch.setattr(blend_module, "get_worker_info", lambda: None)  # main process: default_rng(seed)
    assert _signature(SelfBlendAugment(p=0.5, seed=7)) not in (first, second)


class _BlendDataset:
    def __init__(self, augment, n):
        self.augment, self.n, self.face = augment, n, _face(24)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        out = self.augment(image=self.face)
        return torch.tensor([torch.utils.data.get_worker_info().id, out["label"], float(out["mask"].sum())])


def test_self_blend_in_real_dataloader_workers_is_reproducible_and_distinct_per_worker():
    """Bug 8: two runs with one seed give the same blends; the two workers differ."""
    import torch
    from torch.utils.data import DataLoader

    from common.video.blend import SelfBlendAugment

    def run(seed):
        loader = DataLoader(_BlendDataset(SelfBlendAugment(p=0.5, seed=seed), 16), batch_size=None, num_workers=2)
        return torch.stack(list(loader)).numpy()

    first, again = run(5), run(5)
    np.testing.assert_array_equal(first, again)
    by_worker = [first[first[:, 0] == w, 1:] for w in (0, 1)]
    assert len(by_worker[0]) == len(by_worker[1]) == 8
    assert not np.array_equal(by_worker[0], by_worker[1])
