"""Deterministic synthetic videos in the exact Kaggle *Deepfake Detection Challenge* layout.

Why: DFDC is 470 GB of 10-second 1080p videos; the pipeline (read frames -> detect faces ->
crop -> train -> per-video probability -> log loss) should run end to end in a minute on a
laptop CPU, on data with the same files, the same label structure and a learnable artefact.

Files written under ``root`` (as in the Kaggle download; we mirror ``train_sample_videos/``,
the 400-video sample shipped with the competition data, rather than the full set's
``dfdc_train_part_<k>/`` folders, which have the same ``metadata.json`` format):

- ``train_sample_videos/*.mp4`` and ``train_sample_videos/metadata.json``:
  ``{"<name>.mp4": {"label": "REAL"|"FAKE", "split": "train", "original": "<real>.mp4"|null}}``
  (REAL entries have ``"original": null``, exactly like the Kaggle file).
- ``test_videos/*.mp4``
- ``sample_submission.csv``: ``filename,label`` with 0.5 for every test video.
- ``test_truth.csv``: ``filename,label`` with 1 for FAKE, 0 for REAL (not on Kaggle; lets
  runs score themselves).

File names are 10 random lowercase letters, like DFDC's.  Videos are H.264 mp4 (libx264
through PyAV), 160x120, 30 fps, ``n_frames`` frames.

Generative model:

* **People.** Each identity is a procedurally drawn head and shoulders: a skin-tone ellipse
  (seven tones from light to dark) with shaded eye sockets, eyes, brows, nose bridge
  highlight and shadow, mouth and chin shadow, hair, ears, neck and shirt, with random
  proportions.  The shading is what OpenCV's Haar face cascade looks for; the default set
  is detected on about 95 % of frames (least often on the darkest skin tone, a bias the
  real Haar cascade shares).
* **Videos.** A scene is a gradient background with a few coloured boxes; the head drifts,
  bobs, rolls a few degrees and changes size slightly, the mouth moves as if talking, and
  every frame gets sensor noise.
* **Fakes** are made from a real video's frames (so everything outside the face is the
  original), by one of ``FAKE_METHODS``:
  ``swap`` - the inner face of another identity, rendered in the same pose with a skin tone
  close to the target's, at a lower resolution (blurred), pasted through a soft elliptic mask
  that jitters a little from frame to frame; ``blend`` - the target's own face,
  colour-shifted and resampled, pasted the same way (a self-blend, see ``common.video.blend``).
  Both leave a subtle boundary, colour mismatch and texture loss inside the face.
* **Splits.** Train has ``n_real`` real videos of distinct people and ``fakes_per_real``
  fakes of each (DFDC has about 5 fakes per real), every FAKE naming its real video as
  ``original``.  Test has ``n_test`` videos, about half fake, of people never seen in train;
  the real videos test fakes were made from are not part of the test set.

Everything is drawn from ``numpy.random.default_rng([seed, stream, index])``, so the csv
and json files are identical for a given seed.  ``python -m competitions.deepfake.demo DIR``
writes the default set (about 10 s, under 1 MB).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from common.video.blend import blend, perturb_colour

DEFAULT_ROOT = Path("inputs/demo/deepfake")
TRAIN_DIR = "train_sample_videos"
TEST_DIR = "test_videos"
FRAME_WIDTH, FRAME_HEIGHT, FPS = 160, 120, 30
SUPERSAMPLE = 2  # draw at 2x and shrink: smooth, anti-aliased shapes
# Independent random streams: a change in one part never shifts the others.
_NAMES, _IDENTITY, _SCENE, _NOISE, _FAKE = 0, 1, 2, 3, 4

SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 90),
              (160, 105, 70), (120, 80, 55), (90, 60, 42)]
HAIR_COLOURS = [(30, 20, 15), (60, 40, 25), (110, 80, 40), (20, 20, 20), (150, 120, 80), (90, 90, 90)]
LIP_COLOURS = [(150, 70, 70), (120, 60, 60), (170, 90, 90)]
IRIS_COLOURS = [(60, 40, 20), (40, 70, 110), (50, 90, 60), (30, 20, 10)]


# --- people and scenes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A person's look. Face coordinates are in units of the face's half-width/half-height."""

    skin: np.ndarray
    hair: np.ndarray
    lip: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    aspect: float  # face height / width
    eye_dx: float
    eye_y: float
    eye_size: float
    brow: float
    nose_len: float
    mouth_w: float
    mouth_y: float
    hair_top: float


INNER_FACE_FIELDS = ("skin", "lip", "iris", "eye_dx", "eye_y", "eye_size", "brow", "nose_len", "mouth_w", "mouth_y")


def random_identity(rng: np.random.Generator) -> Identity:
    skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))], float) * rng.uniform(0.92, 1.05, 3)
    hair = np.array(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], float)
    # Hair darker than skin: a bright fringe over a dark face hides the brow/eye contrast.
    hair *= min(1.0, 0.7 * skin.mean() / hair.mean())
    return Identity(
        skin=np.minimum(skin, 255), hair=hair,
        lip=np.array(LIP_COLOURS[rng.integers(len(LIP_COLOURS))], float),
        iris=np.array(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], float),
        shirt=rng.uniform(30, 220, 3), aspect=rng.uniform(1.2, 1.4), eye_dx=rng.uniform(0.36, 0.44),
        eye_y=rng.uniform(-0.18, -0.08), eye_size=rng.uniform(0.10, 0.14), brow=rng.uniform(0.05, 0.08),
        nose_len=rng.uniform(0.22, 0.32), mouth_w=rng.uniform(0.28, 0.42), mouth_y=rng.uniform(0.45, 0.55),
        hair_top=rng.uniform(0.15, 0.35),
    )


@dataclass(frozen=True)
class Scene:
    """Background and head motion of one video (pixel units of the output frame)."""

    background: np.ndarray  # float32 [H*S, W*S, 3], the supersampled backdrop
    cx: float
    cy: float
    half_width: float
    sway: float
    bob: float
    period: float
    phase: float
    roll: float


def random_scene(rng: np.random.Generator) -> Scene:
    w, h = FRAME_WIDTH * SUPERSAMPLE, FRAME_HEIGHT * SUPERSAMPLE
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((h, w, 3), np.float32)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        bw, bh = rng.uniform(10, 60, 2)
        cv2.rectangle(background, (int(x), int(y)), (int(x + bw), int(y + bh)), rng.uniform(30, 240, 3).tolist(), -1)
    return Scene(
        background=background.astype(np.float32), cx=FRAME_WIDTH * rng.uniform(0.42, 0.58),
        cy=FRAME_HEIGHT * rng.uniform(0.42, 0.5), half_width=FRAME_WIDTH * rng.uniform(0.12, 0.16),
        sway=rng.uniform(2, 6), bob=rng.uniform(1, 3), period=rng.uniform(15, 40), phase=rng.uniform(0, 2 * np.pi),
        roll=rng.uniform(2, 5),
    )


@dataclass(frozen=True)
class Pose:
    cx: float
    cy: float
    half_width: float
    roll_deg: float
    mouth_open: float


def head_pose(scene: Scene, t: int) -> Pose:
    """Smooth drift, bob, small roll and scale change, and a talking mouth at frame ``t``."""
    w = 2 * np.pi * t / scene.period + scene.phase
    return Pose(
        cx=scene.cx + scene.sway * np.sin(w), cy=scene.cy + scene.bob * np.sin(1.7 * w),
        half_width=scene.half_width * (1 + 0.03 * np.sin(0.6 * w)), roll_deg=scene.roll * np.sin(0.8 * w),
        mouth_open=0.5 + 0.5 * np.sin(2.3 * w + 1.0) ** 2,
    )


def _fixed(value: float) -> int:
    """Pixel coordinate with 4 fractional bits, as cv2 drawing takes with ``shift=4``."""
    return int(round(value * 16))


class _FaceCanvas:
    """Draws ellipses given in face coordinates (u right, v down, unit = half-axes)."""

    def __init__(self, image: np.ndarray, pose: Pose, aspect: float):
        self.image = image
        self.cx, self.cy = pose.cx * SUPERSAMPLE, pose.cy * SUPERSAMPLE
        self.a = pose.half_width * SUPERSAMPLE
        self.b = self.a * aspect
        self.rot = np.radians(pose.roll_deg)

    def ellipse(self, u: float, v: float, au: float, bv: float, colour, angle: float = 0.0, upright: bool = False):
        rot = 0.0 if upright else self.rot
        x, y = u * self.a, v * self.b
        centre = (self.cx + np.cos(rot) * x - np.sin(rot) * y, self.cy + np.sin(rot) * x + np.cos(rot) * y)
        cv2.ellipse(self.image, (_fixed(centre[0]), _fixed(centre[1])), (_fixed(au * self.a), _fixed(bv * self.b)),
                    np.degrees(rot) + angle, 0, 360, np.asarray(colour, float).tolist(), -1, cv2.LINE_AA, 4)


def _lighter(colour: np.ndarray, amount: float) -> np.ndarray:
    return colour + (255 - colour) * amount


def draw_head(image: np.ndarray, person: Identity, pose: Pose) -> None:
    """Draw shoulders, neck, hair, face and its shading onto a supersampled float canvas."""
    c = _FaceCanvas(image, pose, person.aspect)
    skin = person.skin
    c.ellipse(0, 2.1, 2.6, 1.0, person.shirt, upright=True)
    c.ellipse(0, 1.0, 0.5, 0.6, skin * 0.8, upright=True)
    c.ellipse(0, -person.hair_top + 0.05, 1.12, 0.95, person.hair)
    c.ellipse(0, 0, 1.0, 1.0, skin)
    for side in (-1, 1):
        c.ellipse(side * 0.98, -0.05, 0.14, 0.2, skin * 0.85)
    c.ellipse(0, -0.95, 0.95, person.hair_top + 0.1, person.hair)
    draw_inner_face(c, person, pose)


def draw_inner_face(c: _FaceCanvas, person: Identity, pose: Pose) -> None:
    """Eyes, brows, highlights, nose and mouth: the part a face swap replaces."""
    skin = person.skin
    for side in (-1, 1):
        x = side * person.eye_dx
        c.ellipse(x, person.eye_y - 0.03, 0.26, 0.16, skin * 0.5 + 8)  # eye socket shadow
        c.ellipse(x, person.eye_y, person.eye_size * 1.6, person.eye_size * 0.6, (235, 235, 230))
        c.ellipse(x, person.eye_y, person.eye_size * 0.7, person.eye_size * 0.6, person.iris)
        c.ellipse(x, person.eye_y, person.eye_size * 0.3, person.eye_size * 0.3, (10, 10, 10))
        c.ellipse(x, person.eye_y - 0.2, 0.25, person.brow, person.hair * 0.8, angle=-side * 8)
        c.ellipse(side * 0.45, 0.22, 0.22, 0.16, _lighter(skin, 0.15))  # cheek highlight
    c.ellipse(0, -0.55, 0.5, 0.15, _lighter(skin, 0.12))  # forehead highlight
    nose_tip = person.eye_y + person.nose_len + 0.06
    c.ellipse(0, person.eye_y + person.nose_len / 2 + 0.02, 0.09, person.nose_len / 2 + 0.05, _lighter(skin, 0.18))
    c.ellipse(0.06, nose_tip, 0.18, 0.06, skin * 0.6)
    for side in (-1, 1):
        c.ellipse(side * 0.08, nose_tip, 0.05, 0.03, skin * 0.35)
    c.ellipse(0, person.mouth_y, person.mouth_w, 0.05 + 0.04 * pose.mouth_open, person.lip)
    c.ellipse(0, person.mouth_y, person.mouth_w * 0.9, 0.01 + 0.03 * pose.mouth_open, person.lip * 0.4)
    c.ellipse(0, person.mouth_y + 0.18, 0.3, 0.05, skin * 0.85)


def render_video(person: Identity, scene: Scene, n_frames: int, noise_rng: np.random.Generator) -> np.ndarray:
    """``[n_frames, H, W, 3]`` uint8 RGB frames of ``person`` moving in ``scene``."""
    frames = np.empty((n_frames, FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    for t in range(n_frames):
        canvas = scene.background.copy()
        draw_head(canvas, person, head_pose(scene, t))
        canvas = cv2.GaussianBlur(canvas, (0, 0), 1.0)
        small = cv2.resize(canvas, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
        small += noise_rng.normal(0, 3, small.shape).astype(np.float32)
        frames[t] = np.clip(np.round(small), 0, 255).astype(np.uint8)
    return frames


# --- fakes ----------------------------------------------------------------------------------


def inner_face_mask(pose: Pose, aspect: float, jitter: np.ndarray) -> np.ndarray:
    """Soft float32 [H, W] mask over brows, eyes, nose and mouth, shifted by ``jitter`` pixels."""
    mask = np.zeros((FRAME_HEIGHT * 4, FRAME_WIDTH * 4), np.uint8)  # 4x for a smooth outline
    a, b, rot = pose.half_width, pose.half_width * aspect, np.radians(pose.roll_deg)
    centre = (pose.cx - np.sin(rot) * 0.1 * b + jitter[0], pose.cy + np.cos(rot) * 0.1 * b + jitter[1])
    cv2.ellipse(mask, (round(centre[0] * 4), round(centre[1] * 4)), (round(0.8 * a * 4), round(0.82 * b * 4)),
                pose.roll_deg, 0, 360, 255, -1, cv2.LINE_AA)
    mask = cv2.resize(mask, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return cv2.GaussianBlur(mask, (0, 0), 1.5)


def _resample(frame: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by ``factor`` and enlarge back: the generator's lower-resolution face texture."""
    size = (round(FRAME_WIDTH * factor), round(FRAME_HEIGHT * factor))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_LINEAR)


def fake_by_swap(real: np.ndarray, person: Identity, scene: Scene, donor: Identity,
                 rng: np.random.Generator) -> np.ndarray:
    """Paste ``donor``'s inner face (skin close to the target's, resampled) over ``real``."""
    mix = rng.uniform(0.6, 0.85)  # how much of the target's skin tone the swap reproduces
    inner = {field: getattr(donor, field) for field in INNER_FACE_FIELDS}
    inner["skin"] = mix * person.skin + (1 - mix) * donor.skin
    swapped = replace(person, **inner)
    donor_frames = render_video(swapped, scene, len(real), rng)
    return _paste_faces(real, donor_frames, person, scene, rng)


def fake_by_blend(real: np.ndarray, person: Identity, scene: Scene, donor: Identity,
                  rng: np.random.Generator) -> np.ndarray:
    """Paste the target's own face, colour-shifted and resampled, over ``real``."""
    colour_seed = int(rng.integers(2**31))  # one colour change for the whole video
    source = np.stack([perturb_colour(frame, np.random.default_rng(colour_seed), strength=0.45) for frame in real])
    return _paste_faces(real, source, person, scene, rng)


def _paste_faces(real: np.ndarray, source: np.ndarray, person: Identity, scene: Scene,
                 rng: np.random.Generator) -> np.ndarray:
    fake = np.empty_like(real)
    factor = rng.uniform(0.45, 0.8)  # some fakes blurrier than others
    for t in range(len(real)):
        mask = inner_face_mask(head_pose(scene, t), person.aspect, rng.uniform(-0.7, 0.7, 2))
        fake[t] = blend(_resample(source[t], factor), real[t], mask)
    return fake


FakeMethod = Callable[[np.ndarray, Identity, Scene, Identity, np.random.Generator], np.ndarray]
FAKE_METHODS: dict[str, FakeMethod] = {"swap": fake_by_swap, "blend": fake_by_blend}


# --- files ----------------------------------------------------------------------------------


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS, crf: int = 20) -> None:
    """Encode RGB frames as H.264 (yuv420p) mp4, byte-identical from run to run.

    x264's macroblock-tree rate control gave different bytes for the same frames on repeated
    runs (even single-threaded), so it is switched off; one thread for the same reason.
    """
    options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index  # explicit timestamps: the encoder's rate control depends on them
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def _video_names(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct DFDC-style names: 10 lowercase letters + ``.mp4``."""
    names: list[str] = []
    seen = set()
    while len(names) < count:
        name = "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, 10)) + ".mp4"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


@dataclass(frozen=True)
class _Job:
    name: str
    split_dir: str
    person: int  # identity index; its real video uses scene/noise streams of the same index
    fake_method: str | None = None
    donor: int | None = None
    fake_index: int | None = None
    original: str | None = None


def _plan(n_real: int, fakes_per_real: int, n_test: int, rng: np.random.Generator) -> list[_Job]:
    """Which videos exist: names, identities, fake methods and donors (no pixels yet)."""
    n_test_fake = n_test // 2
    n_test_real = n_test - n_test_fake
    n_train_fake = n_real * fakes_per_real
    names = _video_names(rng, n_real + n_train_fake + n_test)
    methods = sorted(FAKE_METHODS)
    # identities: train people 0..n_real-1, test real people next, then hidden test originals
    train_people = list(range(n_real))
    test_people = list(range(n_real, n_real + n_test_real))
    hidden = list(range(n_real + n_test_real, n_real + n_test_real + n_test_fake))

    def donor_for(person: int, pool: list[int]) -> int:
        others = [p for p in pool if p != person]
        return int(rng.choice(others)) if others else person

    jobs = [_Job(names[i], TRAIN_DIR, p) for i, p in enumerate(train_people)]
    fake_names = iter(names[n_real : n_real + n_train_fake])
    for p in train_people:
        for _ in range(fakes_per_real):
            jobs.append(_Job(next(fake_names), TRAIN_DIR, p, methods[int(rng.integers(len(methods)))],
                             donor_for(p, train_people), len(jobs), original=names[p]))
    test_names = names[n_real + n_train_fake :]
    test_kinds = rng.permutation([False] * n_test_real + [True] * n_test_fake)  # True = fake
    reals, fakes = iter(test_people), iter(hidden)
    for name, is_fake in zip(test_names, test_kinds):
        if is_fake:
            p = next(fakes)
            jobs.append(_Job(name, TEST_DIR, p, methods[int(rng.integers(len(methods)))],
                             donor_for(p, hidden + test_people), len(jobs)))
        else:
            jobs.append(_Job(name, TEST_DIR, next(reals)))
    return jobs


def write_demo(
    root: str | Path = DEFAULT_ROOT,
    *,
    n_real: int = 10,
    fakes_per_real: int = 4,
    n_test: int = 20,
    n_frames: int = 24,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the synthetic competition into ``root`` (stale ``*.mp4`` in its video folders removed).

    Train: ``n_real`` real videos + ``n_real * fakes_per_real`` fakes; test: ``n_test``
    videos, ``n_test // 2`` of them fake.  Returns ``root`` as a Path.
    """
    if n_real < 1 or fakes_per_real < 0 or n_test < 0 or n_frames < 1:
        raise ValueError("need n_real >= 1, fakes_per_real >= 0, n_test >= 0, n_frames >= 1")
    root = Path(root)
    jobs = _plan(n_real, fakes_per_real, n_test, np.random.default_rng([seed, _NAMES]))
    for folder in (TRAIN_DIR, TEST_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stale in (root / folder).glob("*.mp4"):
            stale.unlink()

    people: dict[int, Identity] = {}
    reals: dict[int, np.ndarray] = {}  # a real video's frames, kept while its fakes are made

    def person(index: int) -> Identity:
        if index not in people:
            people[index] = random_identity(np.random.default_rng([seed, _IDENTITY, index]))
        return people[index]

    def scene(index: int) -> Scene:
        return random_scene(np.random.default_rng([seed, _SCENE, index]))

    def real_frames(index: int) -> np.ndarray:
        if index not in reals:
            reals.clear()  # jobs are grouped by person: one real video in memory at a time
            noise = np.random.default_rng([seed, _NOISE, index])
            reals[index] = render_video(person(index), scene(index), n_frames, noise)
        return reals[index]

    metadata: dict[str, dict] = {}
    truth: list[tuple[str, int]] = []
    for job in tqdm(jobs, desc=f"deepfake demo -> {root}", disable=not progress):
        frames = real_frames(job.person)
        if job.fake_method is not None:
            fake_rng = np.random.default_rng([seed, _FAKE, job.fake_index])
            frames = FAKE_METHODS[job.fake_method](frames, person(job.person), scene(job.person),
                                                   person(job.donor), fake_rng)
        write_mp4(root / job.split_dir / job.name, frames)
        label = "FAKE" if job.fake_method else "REAL"
        if job.split_dir == TRAIN_DIR:
            metadata[job.name] = {"label": label, "split": "train", "original": job.original}
        else:
            truth.append((job.name, int(label == "FAKE")))

    metadata = dict(sorted(metadata.items()))
    (root / TRAIN_DIR / "metadata.json").write_text(json.dumps(metadata))
    truth_table = pd.DataFrame(sorted(truth), columns=["filename", "label"])
    truth_table.to_csv(root / "test_truth.csv", index=False)
    truth_table.assign(label=0.5).to_csv(root / "sample_submission.csv", index=False)
    return root


def main(argv: list[str] | None = None) -> Path:
    """CLI: ``python -m competitions.deepfake.demo [DIR] [--n-real N] ...``; prints what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT), help=f"output folder (default {DEFAULT_ROOT})")
    parser.add_argument("--n-real", type=int, default=10)
    parser.add_argument("--fakes-per-real", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--n-frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_demo(args.root, n_real=args.n_real, fakes_per_real=args.fakes_per_real, n_test=args.n_test,
                      n_frames=args.n_frames, seed=args.seed)
    metadata = json.loads((root / TRAIN_DIR / "metadata.json").read_text())
    truth = pd.read_csv(root / "test_truth.csv")
    n_fake = sum(entry["label"] == "FAKE" for entry in metadata.values())
    size = sum(p.stat().st_size for p in root.rglob("*.mp4"))
    print(f"wrote {root}: {TRAIN_DIR}/ ({len(metadata)} videos, {n_fake} FAKE), {TEST_DIR}/ ({len(truth)} videos, "
          f"{truth.label.mean():.0%} FAKE), sample_submission.csv, test_truth.csv; {size / 1e6:.1f} MB of mp4")
    return root


if __name__ == "__main__":
    main()
