"""Video reading, face detection/cropping and self-blended images."""
from __future__ import annotations

import numpy as np
import pytest

from common.video.blend import SelfBlendAugment, face_mask, self_blend
from common.core.errors import DataError
from common.video.faces import (
    DETECTORS,
    FALLBACK_SCORE,
    FaceDetector,
    HaarDetector,
    MissingWeightsError,
    create_detector,
    crop_face,
    extract_faces,
    _interpolated_face,
    landmark_box,
    link_tracks,
    ssd_output_to_boxes,
    yunet_output_to_boxes,
    yunet_output_to_landmarks,
)
from common.video.frames import BACKENDS, VideoReadError, read_frames, sample_indices, video_info
from competitions.deepfake.demo import write_mp4


@pytest.fixture(scope="module")
def real_video(shared_data):
    path = shared_data / "video" / "carphone_pristine.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """30 frames whose brightness encodes the frame index (10 * index), written by PyAV."""
    frames = np.stack([np.full((48, 64, 3), 10 * i, np.uint8) for i in range(25)] +
                      [np.full((48, 64, 3), 250, np.uint8)] * 5)
    path = tmp_path_factory.mktemp("video") / "counter.mp4"
    write_mp4(path, frames)
    return path


# --- video ----------------------------------------------------------------------------------


def test_sample_indices_are_even_and_cover_the_video():
    assert sample_indices(120, 4).tolist() == [0, 40, 79, 119]
    assert sample_indices(10, 1).tolist() == [0]
    assert sample_indices(5, 50).tolist() == [0, 1, 2, 3, 4]  # never more than the video has
    steps = np.diff(sample_indices(300, 32))
    assert steps.max() - steps.min() <= 1


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_read_frames_picks_the_sampled_frames(counter_video, backend):
    frames = read_frames(counter_video, 5, backend=backend)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    expected = np.minimum(10 * sample_indices(30, 5), 250)  # indices 0, 7, 14, 22, 29
    assert np.abs(frames.reshape(5, -1).mean(axis=1) - expected).max() < 3


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_read_frames_on_real_video(real_video, backend):
    every = read_frames(real_video, 1000, backend=backend)
    assert every.shape == (120, 144, 176, 3)
    sampled = read_frames(real_video, 8, backend=backend)
    assert sampled.shape == (8, 144, 176, 3) and sampled.dtype == np.uint8
    np.testing.assert_array_equal(sampled, every[sample_indices(120, 8)])


def test_backends_agree_and_max_side_shrinks(real_video):
    np.testing.assert_array_equal(read_frames(real_video, 6, backend="opencv"), read_frames(real_video, 6, backend="pyav"))
    small = read_frames(real_video, 3, max_side=88)
    assert small.shape == (3, 72, 88, 3)
    assert read_frames(real_video, 3, max_side=1000).shape == (3, 144, 176, 3)  # never enlarged


def test_video_info(real_video):
    info = video_info(real_video)
    assert info["frames"] == 120 and (info["width"], info["height"]) == (176, 144)
    assert info["fps"] == pytest.approx(29.97, abs=0.01)


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 100, None])
def test_unreadable_video_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "broken_clip.mp4"
    if content is not None:
        path.write_bytes(content)
    for call in (lambda: read_frames(path, 4), lambda: video_info(path)):
        with pytest.raises(VideoReadError, match="broken_clip.mp4"):
            call()
    assert issubclass(VideoReadError, DataError) and issubclass(VideoReadError, ValueError)


def test_truncated_video_raises_naming_the_file(tmp_path, counter_video):
    path = tmp_path / "truncated.mp4"
    path.write_bytes(counter_video.read_bytes()[:300])
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        read_frames(path, 4)


# --- detection ------------------------------------------------------------------------------


def test_haar_finds_a_face_in_most_real_frames(real_video):
    detector = create_detector("haar")
    assert isinstance(detector, FaceDetector)
    frames = read_frames(real_video, 24)
    boxes = [detector.detect(frame) for frame in frames]
    found = [b for b in boxes if len(b)]
    assert len(found) / len(frames) >= 0.5  # 63 % over all 120 frames; the head turns away
    for b in found:
        assert b.shape[1] == 5 and b.dtype == np.float32
        x1, y1, x2, y2, score = b[0]
        assert 0 <= x1 < x2 <= 176 and 0 <= y1 < y2 <= 144 and 0 < score < 1
        assert 30 < x2 - x1 < 120  # the carphone face is about 64 px wide


def test_haar_detects_on_downscaled_copy_and_maps_back(real_video):
    frame = read_frames(real_video, 1)[0]
    big = np.repeat(np.repeat(frame, 4, axis=0), 4, axis=1)  # 704x576
    direct = HaarDetector(max_side=None).detect(frame)
    scaled = HaarDetector(max_side=176).detect(big)
    assert len(direct) and len(scaled)
    np.testing.assert_allclose(scaled[0, :4], direct[0, :4] * 4, atol=8)


def test_registry_and_unknown_detector():
    assert {"mtcnn", "haar", "ssd", "yunet"} <= set(DETECTORS)
    with pytest.raises(ValueError, match="unknown face detector 'retina'"):
        create_detector("retina")


def test_mtcnn_boxes_and_landmarks_on_real_frames(real_video):
    """MTCNN (weights inside the facenet-pytorch wheel) on the carphone clip: a face in every sampled
    frame, the box inside the frame, the five landmarks inside the box, eyes above the mouth."""
    pytest.importorskip("facenet_pytorch")
    detector = create_detector("mtcnn")
    frames = read_frames(real_video, 12)
    for frame in frames:
        boxes, landmarks = detector.detect_landmarks(frame)
        assert boxes.shape[1] == 5 and landmarks.shape == (len(boxes), 5, 2) and len(boxes) >= 1
        big = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        x1, y1, x2, y2, score = boxes[big]
        assert 0 <= x1 < x2 <= 176 and 0 <= y1 < y2 <= 144 and 0.9 < score <= 1
        assert 30 < x2 - x1 < 120  # the carphone face is about 64 px wide
        points = landmarks[big]
        assert ((points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2)).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = points
        assert max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1])  # eyes above the mouth
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]         # image left first
        assert min(left_eye[1], right_eye[1]) < nose[1] < max(mouth_left[1], mouth_right[1])


def test_mtcnn_crops_are_centred_on_the_landmarks(real_video):
    pytest.importorskip("facenet_pytorch")
    crops = extract_faces(read_frames(real_video, 6), create_detector("mtcnn"), size=64)
    assert len(crops) == 6 and all(c.score > 0.9 for c in crops)
    for c in crops:
        centroid = c.landmarks.mean(axis=0)
        assert np.abs(centroid - 32).max() < 3  # the landmarks' centroid is the crop's centre
        assert ((c.landmarks > 0) & (c.landmarks < 64)).all()


def test_mtcnn_batch_matches_one_frame_at_a_time_across_frame_sizes(real_video):
    pytest.importorskip("facenet_pytorch")
    import cv2

    frames = list(read_frames(real_video, 3))
    frames.insert(1, cv2.resize(frames[0], (264, 216)))  # another size in the same call: its own group
    detector = create_detector("mtcnn")
    batched = detector.detect_landmarks_batch(frames)
    assert len(batched) == 4
    for frame, (boxes, points) in zip(frames, batched):
        alone_boxes, alone_points = detector.detect_landmarks(frame)
        assert len(boxes) == len(alone_boxes) >= 1
        np.testing.assert_allclose(boxes, alone_boxes, atol=1e-3)
        np.testing.assert_allclose(points, alone_points, atol=1e-3)
    scale = 264 / frames[0].shape[1]
    np.testing.assert_allclose(batched[1][0][0, :4] / scale, batched[0][0][0, :4], atol=6)  # the same face


def test_second_looks_pad_windows_of_different_sizes_and_map_each_back():
    from common.video.faces import second_looks

    class _Batch:
        def detect_landmarks_batch(self, images):
            self.shapes = [im.shape for im in images]
            return [(np.array([[5, 6, 15, 18, 0.8]], np.float32), np.full((1, 5, 2), 10, np.float32)) for _ in images]

    frame = np.zeros((200, 300, 3), np.uint8)
    detector = _Batch()
    found = second_looks([frame, frame], detector, [np.array([100, 50, 140, 100, 0.9]), np.array([0, 0, 20, 20, 1.0])])
    assert detector.shapes == [(150, 120, 3), (150, 120, 3)]  # the 40x60 window and the clipped 40x40 one, padded
    np.testing.assert_allclose(found[0][0][0], [65, 6, 75, 18, 0.8])
    np.testing.assert_allclose(found[1][0][0], [5, 6, 15, 18, 0.8])  # window at (0, 0): unchanged
    np.testing.assert_allclose(found[0][1][0, 0], [70, 10])


def test_landmark_box_is_a_square_on_the_centroid():
    box = np.array([10, 20, 50, 100, 0.9], np.float32)
    points = np.array([[20, 40], [40, 40], [30, 60], [22, 80], [38, 80]], np.float32)
    np.testing.assert_allclose(landmark_box(box, points), [-10, 20, 70, 100, 0.9])
    np.testing.assert_allclose(landmark_box(box, np.full((5, 2), np.nan)), box)  # no landmarks: the box


@pytest.mark.parametrize("name, filename", [("ssd", "res10_300x300_ssd_iter_140000.caffemodel"),
                                            ("ssd", "deploy.prototxt"),
                                            ("yunet", "face_detection_yunet_2023mar.onnx")])
def test_cnn_detector_without_weights_names_the_missing_file(tmp_path, monkeypatch, name, filename):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACE_DETECTOR_DIR", str(tmp_path))
    if filename == "res10_300x300_ssd_iter_140000.caffemodel":
        (tmp_path / "deploy.prototxt").write_text("")  # one of two present: the other is named
    with pytest.raises(MissingWeightsError, match=filename) as error:
        create_detector(name, weights_dir=tmp_path)
    assert "Kaggle" in str(error.value) and "FACE_DETECTOR_DIR" in str(error.value)


def test_cnn_detector_outputs_become_boxes():
    ssd = np.zeros((1, 1, 3, 7), np.float32)
    ssd[0, 0, 0] = [0, 1, 0.9, 0.1, 0.2, 0.5, 0.6]
    ssd[0, 0, 1] = [0, 1, 0.3, 0.0, 0.0, 0.2, 0.2]  # below threshold
    ssd[0, 0, 2] = [0, 1, 0.8, 0.9, 0.9, 1.3, 1.2]  # clipped to the image
    boxes = ssd_output_to_boxes(ssd, width=200, height=100, threshold=0.5)
    np.testing.assert_allclose(boxes, [[20, 20, 100, 60, 0.9], [180, 90, 200, 100, 0.8]], rtol=1e-6)
    yunet = np.zeros((1, 15), np.float32)
    yunet[0, :4], yunet[0, 14] = [10, 20, 30, 40], 0.95
    np.testing.assert_allclose(yunet_output_to_boxes(yunet, scale=2.0), [[20, 40, 80, 120, 0.95]], rtol=1e-6)
    assert yunet_output_to_boxes(None).shape == (0, 5)


# --- crops ----------------------------------------------------------------------------------


def test_crop_face_adds_margin_keeps_aspect_and_pads():
    image = np.full((200, 300, 3), 100, np.uint8)
    image[80:100, 130:170] = 255  # a 40 x 20 "face" box
    crop = crop_face(image, (130, 80, 170, 100), margin=0.5, size=100)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    # expanded box 80 x 40 -> 100 x 50, centred: 25 rows of zero padding above and below
    assert (crop[:25] == 0).all() and (crop[75:] == 0).all()
    assert (crop[25:75] > 0).all()
    # the face box fills the middle half of the kept area in both directions
    assert (crop[40:60, 30:70] == 255).all()
    assert (crop[30:35, 5:20] == 100).all() and (crop[30:35, 80:95] == 100).all()


def test_crop_face_clips_at_the_image_border():
    image = np.full((100, 100, 3), 50, np.uint8)
    crop = crop_face(image, (0, 0, 40, 40), margin=0.5, size=60)  # wants -20..60, gets 0..60
    assert crop.shape == (60, 60, 3)
    assert (crop == 50).all()  # a square clipped region: no padding needed
    with pytest.raises(ValueError, match="empty face box"):
        crop_face(image, (10, 10, 10, 20))


class _FixedDetector:
    """Returns the same boxes for frames whose first pixel is non-zero, none otherwise."""

    def __init__(self, boxes):
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 5)

    def detect(self, rgb):
        return self.boxes if rgb[0, 0, 0] else np.zeros((0, 5), np.float32)


def test_extract_faces_modes_skip_and_fallback():
    frames = np.full((3, 120, 160, 3), 90, np.uint8)
    frames[1, 0, 0] = 0  # no face in frame 1
    detector = _FixedDetector([[10, 10, 30, 30, 0.9], [50, 20, 110, 100, 0.6]])
    largest = extract_faces(frames, detector, size=64, second_looks=False)
    assert [(c.frame_idx, c.face_idx, c.score) for c in largest] == [(0, 0, pytest.approx(0.6)), (2, 0, pytest.approx(0.6))]
    everything = extract_faces(frames, detector, size=64, mode="all", second_looks=False)
    assert [(c.frame_idx, c.face_idx) for c in everything] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert everything[0].score == pytest.approx(0.6)  # track 0: the larger face, whatever its score
    frame_idx, face_idx, crop, score, *_ = everything[0]
    assert crop.shape == (64, 64, 3)
    only_main = extract_faces(frames, detector, size=64, mode="all", max_faces=1, second_looks=False)
    assert [(c.frame_idx, c.face_idx) for c in only_main] == [(0, 0), (2, 0)]
    # the second look: frame 1's miss is searched again around frame 0's face (the first pixel of
    # the search window is not black, so the fixed detector answers there)
    frames = np.full((3, 240, 320, 3), 90, np.uint8)
    frames[1, 0, 0] = 0
    looked = extract_faces(frames, _FixedDetector([[150, 120, 210, 200, 0.9]]), size=64)
    assert [(c.frame_idx, c.second_look) for c in looked] == [(0, False), (1, True), (2, False)]

    blank = np.zeros((2, 120, 160, 3), np.uint8)  # no face anywhere: centre crops, score 0
    fallback = extract_faces(blank, detector, size=32)
    assert [(c.frame_idx, c.score) for c in fallback] == [(0, FALLBACK_SCORE), (1, FALLBACK_SCORE)]
    assert fallback[0].crop.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown mode"):
        extract_faces(frames, detector, mode="biggest")


def test_fallback_centre_crop_is_the_central_square():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 200  # the central 100 x 100 square
    crop = extract_faces(frame[None], _FixedDetector(np.zeros((0, 5))), margin=0.3, size=50)[0].crop
    assert crop.mean() > 190  # only the central square, no black side bands


# --- self-blended images --------------------------------------------------------------------


def _textured_face(size=96):
    rng = np.random.default_rng(3)
    return np.clip(rng.normal(128, 40, (size, size, 3)), 0, 255).astype(np.uint8)


def test_self_blend_changes_only_inside_a_soft_mask():
    face = _textured_face()
    changed_somewhere = False
    for seed in range(5):
        fake, mask = self_blend(face, np.random.default_rng(seed))
        assert fake.shape == face.shape and fake.dtype == np.uint8
        assert mask.shape == face.shape[:2] and mask.dtype == np.float32
        assert mask.min() >= 0 and mask.max() <= 1
        assert ((mask > 0.05) & (mask < 0.95)).any()  # soft edge
        np.testing.assert_array_equal(fake[mask == 0], face[mask == 0])
        changed_somewhere |= bool((fake != face).any(axis=2)[mask > 0.5 * mask.max()].mean() > 0.5)
    assert changed_somewhere


def test_self_blend_is_reproducible_and_rejects_bad_input():
    face = _textured_face(64)
    a = self_blend(face, np.random.default_rng(7))
    b = self_blend(face, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="RGB uint8"):
        self_blend(face.astype(np.float32), np.random.default_rng(0))


def test_face_mask_is_centred_and_zero_at_corners():
    mask = face_mask(128, 128, np.random.default_rng(0))
    assert mask[64, 64] > 0.5
    assert mask[:8, :8].max() == 0 and mask[-8:, -8:].max() == 0


def test_self_blend_augment_labels_match_images():
    face = _textured_face(48)
    augment = SelfBlendAugment(p=0.5, seed=0)
    labels = []
    for _ in range(40):
        out = augment(image=face)
        labels.append(out["label"])
        assert out["image"].shape == face.shape
        if out["label"] == 0:
            assert out["image"] is face and not out["mask"].any()
        else:
            assert out["mask"].max() > 0
    assert 8 < sum(labels) < 32
    assert all(SelfBlendAugment(p=1.0, seed=1)(image=face)["label"] == 1 for _ in range(3))
    with pytest.raises(ValueError, match="p must be"):
        SelfBlendAugment(p=1.5)


def test_second_look_maps_boxes_back_to_the_frame():
    from common.video.faces import second_look

    class _Recorder:
        def detect(self, rgb):
            self.shape = rgb.shape
            return np.array([[5, 6, 15, 18, 0.8]], np.float32)

    frame = np.zeros((200, 300, 3), np.uint8)
    detector = _Recorder()
    boxes, landmarks = second_look(frame, detector, np.array([100, 50, 140, 100, 0.9]))
    assert detector.shape == (150, 120, 3)  # the neighbour's 40x50 box grown by its size on each side
    np.testing.assert_allclose(boxes[0], [65, 6, 75, 18, 0.8])  # window (60, 0) + the window's box
    assert np.isnan(landmarks).all()


def test_tracks_follow_faces_across_frames_and_rank_by_area():
    big = lambda dx: np.array([50 + dx, 20, 110 + dx, 100, 0.6], np.float32)
    small = lambda dx: np.array([10 + dx, 10, 30 + dx, 30, 0.9], np.float32)
    frames = [np.stack([small(0), big(0)]), np.stack([big(5)]), np.stack([big(8), small(2)]),
              np.zeros((0, 5), np.float32), np.stack([small(60)])]  # the small face reappears elsewhere
    tracks = link_tracks(frames)
    assert [t.tolist() for t in tracks] == [[1, 0], [0], [0, 1], [], [2]]


def test_yunet_landmarks_are_scaled_rows():
    row = np.array([[10, 20, 30, 40, 15, 30, 30, 30, 22, 40, 16, 50, 29, 50, 0.95]], np.float32)
    points = yunet_output_to_landmarks(row, scale=2.0)
    assert points.shape == (1, 5, 2)
    np.testing.assert_allclose(points[0, 0], [30, 60]) and np.testing.assert_allclose(points[0, 4], [58, 100])


def test_detect_every_searches_whole_frames_only_every_k_th():
    class _Counting(_FixedDetector):
        def __init__(self, boxes):
            super().__init__(boxes)
            self.shapes = []

        def detect(self, rgb):
            self.shapes.append(rgb.shape[:2])
            return super().detect(rgb)

    frames = np.full((6, 240, 320, 3), 90, np.uint8)
    detector = _Counting([[150, 120, 210, 200, 0.9]])
    crops = extract_faces(frames, detector, size=32, detect_every=3)
    assert [c.frame_idx for c in crops] == list(range(6))
    whole = [i for i, shape in enumerate(detector.shapes) if shape == (240, 320)]
    assert len(detector.shapes) == 6 and whole == [0, 1]  # frames 0 and 3 whole (detected first), 4 windows
    with pytest.raises(ValueError, match="detect_every"):
        extract_faces(frames, detector, detect_every=0)


def test_between_interpolate_runs_no_detector_between_searched_frames():
    """faces.between=interpolate: frames 0 and 3 are searched whole (detect_every=3); frames 1-2 get
    the box and landmarks interpolated between them, frames 4-5 frame 3's, held; no window search."""
    class _Moving:
        """A face at x = 100 + the frame's pixel value, landmarks at its corners."""

        def __init__(self):
            self.calls = []

        def detect_landmarks(self, rgb):
            self.calls.append(rgb.shape[:2])
            x = 100.0 + rgb[0, 0, 0]
            box = np.array([[x, 50, x + 60, 130, 0.9 - rgb[0, 0, 0] / 1000]], np.float32)
            return box, np.array([[[x, 50]] * 5], np.float32)

    frames = np.stack([np.full((240, 320, 3), 10 * i, np.uint8) for i in range(6)])
    detector = _Moving()
    crops = extract_faces(frames, detector, size=32, detect_every=3, between="interpolate")
    assert detector.calls == [(240, 320), (240, 320)]  # frames 0 and 3 only
    assert [c.frame_idx for c in crops] == list(range(6)) and not any(c.second_look for c in crops)
    found = [None] * 6
    found[0], found[3] = detector.detect_landmarks(frames[0]), detector.detect_landmarks(frames[3])
    box, points = _interpolated_face(found, [0, 3], 1)
    np.testing.assert_allclose(box[0], [110, 50, 170, 130, 0.87], rtol=1e-6)  # a third of the way; the lower score
    np.testing.assert_allclose(points[0, 0], [110, 50])
    np.testing.assert_allclose(_interpolated_face(found, [0, 3], 5)[0][0], found[3][0][0])
    with pytest.raises(ValueError, match="largest"):
        extract_faces(frames, detector, detect_every=3, between="interpolate", mode="all")
    with pytest.raises(ValueError, match="between"):
        extract_faces(frames, detector, detect_every=3, between="guess")
