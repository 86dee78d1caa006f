"""Video reading on real-world inputs: rotation metadata, exact sampled frames whatever the decode
strategy (non-reference skipping, key-frame splicing), headers that lie, and the DFDC clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from common.video.frames import (  # noqa: E402
    BACKENDS,
    decode_all,
    plan_read,
    read_frames,
    sample_indices,
    video_info,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DFDC_DIR = SHARED_DATA / "dfdc_sample" / "train_sample_videos"
RED, BLUE = (255, 0, 0), (0, 0, 255)


def write_clip(path: Path, n: int = 40, size=(64, 48), *, rotation: float | None = None,
               gop: int | None = None, x264_params: str | None = None, container_options=None) -> Path:
    """H.264 clip of moving noise with a frame-index block in the corner (every frame differs)."""
    rng = np.random.default_rng(0)
    width, height = size
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    options = {"crf": "20", "threads": "1"}
    if x264_params:
        options["x264-params"] = x264_params
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream("libx264", rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(n):
            image = np.roll(base, 3 * index, axis=1)
            image[:8, :8] = (index * 6) % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def full_decode(path: Path) -> np.ndarray:
    """Every frame, decoded the simplest way (no threads, no skipping)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


# --- rotation ---------------------------------------------------------------------------------


def write_marked_clip(path: Path, rotation: float) -> Path:
    """64x32 landscape frames: red block top-left, blue block bottom-right; display matrix ``rotation``."""
    image = np.full((32, 64, 3), 128, np.uint8)
    image[:16, :16] = RED
    image[16:, 48:] = BLUE
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "10", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(rotation)  # counter-clockwise degrees, as VideoFrame.rotation reads
        for index in range(6):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def block_centre(frame: np.ndarray, colour) -> tuple[float, float]:
    mask = np.all(np.abs(frame.astype(int) - colour) < 60, axis=-1)
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


# ccw degrees written -> (clockwise "rotate" tag, red centre, blue centre) in the upright 64x32 (HxW) frame
ROTATIONS = {
    -90: (90, (7.5, 23.5), (55.5, 7.5)),   # the usual portrait phone clip: turn 90 degrees clockwise
    90: (270, (55.5, 7.5), (7.5, 23.5)),   # turn 90 degrees counter-clockwise
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("ccw", sorted(ROTATIONS))
def test_rotated_clip_reads_upright(tmp_path, backend, ccw):
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip(f"PyAV {av.__version__} cannot write a display matrix")
    path = write_marked_clip(tmp_path / f"rot{ccw}.mp4", ccw)
    with av.open(str(path)) as container:  # the file really stores landscape frames + a rotation
        stream = container.streams.video[0]
        first = next(container.decode(stream))
        assert (stream.width, stream.height) == (64, 32)
        assert first.rotation == ccw
    frames = read_frames(path, 3, backend=backend)
    assert frames.shape == (3, 64, 32, 3) and frames.dtype == np.uint8
    cw_tag, red, blue = ROTATIONS[ccw]
    for frame in frames:
        np.testing.assert_allclose(block_centre(frame, RED), red, atol=1.5)
        np.testing.assert_allclose(block_centre(frame, BLUE), blue, atol=1.5)
    info = video_info(path)
    assert (info["width"], info["height"], info["rotation"]) == (32, 64, cw_tag)
    assert read_frames(path, 2, backend=backend, max_side=32).shape == (2, 32, 16, 3)


# --- exactly the sampled frames, whatever the strategy ----------------------------------------


@pytest.fixture(scope="module")
def gop5_clip(tmp_path_factory):
    """40 frames with B-frames and a key frame every 5 frames: splicing at key frames pays."""
    return write_clip(tmp_path_factory.mktemp("video") / "gop5.mp4", gop=5)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sampled_frames_equal_a_full_decode(gop5_clip, backend):
    full = full_decode(gop5_clip)
    assert len(full) == 40
    strategies = ["auto", "sequential", "seek", "plain"] if backend == "pyav" else ["auto"]
    for strategy in strategies:
        for n in (1, 3, 4, 7, 13, 40, 100):
            frames = read_frames(gop5_clip, n, backend=backend, strategy=strategy)
            np.testing.assert_array_equal(frames, full[sample_indices(40, n)], err_msg=f"{strategy}, {n} frames")
    for threads in (1, 2):
        np.testing.assert_array_equal(read_frames(gop5_clip, 6, backend=backend, threads=threads),
                                      full[sample_indices(40, 6)])


def test_plan_seeks_on_frequent_key_frames_and_skips_nonref(gop5_clip):
    plan = plan_read(gop5_clip, 4)
    assert plan.keyframes == (0, 5, 10, 15, 20, 25, 30, 35)
    assert plan.strategy == "seek" and len(plan.segments) > 1 and plan.skip_nonref
    assert plan.decoded_packets < 0.5 * 40
    assert plan_read(gop5_clip, 40).strategy == "sequential"  # every frame wanted: read through
    plain = plan_read(gop5_clip, 4, strategy="plain")
    assert plain.strategy == "plain" and not plain.skip_nonref
    assert len(plain.segments) == 1 and plain.segments[0][0] == 0 and plain.decoded_packets >= 38


def test_open_gop_key_frames_are_not_splice_points(tmp_path):
    """x264 open GOP: frames decoded after a key frame display before it, so decoding cannot start there."""
    path = write_clip(tmp_path / "open_gop.mp4", n=50,
                      x264_params="keyint=10:min-keyint=10:open-gop=1:bframes=3:scenecut=0")
    full = full_decode(path)
    for n in (3, 4, 6, 13):
        np.testing.assert_array_equal(read_frames(path, n, strategy="seek"), full[sample_indices(len(full), n)])


# --- frame counts: header, no header, a header that over-states --------------------------------


def test_truncated_clip_returns_the_frames_that_exist(tmp_path):
    whole = write_clip(tmp_path / "whole.mp4", n=60, container_options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # header (moov first) still says 60 frames
    assert video_info(cut)["frames"] == 60
    expected = full_decode(whole)[sample_indices(60, 8)]
    for backend in sorted(BACKENDS):
        frames = read_frames(cut, 8, backend=backend)
        assert 0 < len(frames) < 8
        np.testing.assert_array_equal(frames, expected[: len(frames)])


def test_container_without_frame_count(tmp_path):
    path = write_clip(tmp_path / "clip.mkv", n=30)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska has no frame count
    assert plan_read(path, 5).total_frames == 30
    full = full_decode(path)
    np.testing.assert_array_equal(read_frames(path, 5, backend="pyav"), full[sample_indices(30, 5)])
    assert read_frames(path, 5, backend="opencv").shape == (5, 48, 64, 3)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown read strategy"):
        read_frames(__file__, 3, strategy="fastest")


# --- the real clips -------------------------------------------------------------------------


def real_clip(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_carphone_decode_all_and_plan():
    path = real_clip("video", "carphone_pristine.mp4")
    assert decode_all(path) == 120 and decode_all(path, backend="opencv") == 120
    plan = plan_read(path, 32)
    assert plan.keyframes == (0,) and plan.strategy == "sequential" and plan.total_frames == 120


@pytest.mark.parametrize("name", ["abofeumbvv.mp4", "lynaeydofd.mp4"])
def test_dfdc_clip_reads_32_upright_landscape_frames(name):
    path = real_clip("dfdc_sample", "train_sample_videos", name)
    frames = read_frames(path, 32)
    assert frames.shape == (32, 1080, 1920, 3) and frames.dtype == np.uint8
    info = video_info(path)
    assert (info["frames"], info["width"], info["height"], info["rotation"]) == (300, 1920, 1080, 0)
    if name == "abofeumbvv.mp4":  # skipping non-reference frames changes none of the kept ones
        np.testing.assert_array_equal(frames[::4], read_frames(path, 32, backend="opencv")[::4])
