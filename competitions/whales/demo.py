"""Deterministic synthetic data in the exact Kaggle *Humpback Whale Identification* format.

Why: the real competition data is large and needs a Kaggle account; the whole pipeline
(read -> train -> embed -> retrieve -> threshold new_whale -> MAP@5) should be runnable and
testable in minutes on a laptop CPU, on data with the same *structure* and the same pitfalls.

Files written under ``root`` (names and columns as on Kaggle):

- ``train.csv``  ``Image,Id`` -- ``Id`` is ``w_`` + 7 hex digits or ``new_whale``
- ``train/*.jpg``, ``test/*.jpg`` -- image names are 9 hex digits, as in the competition
- ``sample_submission.csv`` ``Image,Id`` -- ``new_whale`` + the 4 most frequent train ids
- ``test_truth.csv`` ``Image,Id`` -- the true id of every test image (``new_whale`` if never seen)

Generative model:

* **Animals.** Every whale is a random *template*: a fluke seen from behind (ventral side).
  Its identity lives in (a) the outline -- tip lift and curl, span, chord, the central
  notch, scallops and bites along the trailing edge, left/right asymmetry -- and (b) the
  black/white pigmentation -- a thresholded multi-scale noise field with an animal-specific
  white fraction (from almost all black to almost all white), dark/white spots, white rake
  scars and a dark rim. Tones are grey with a faint per-animal tint that is not decisive
  (a fifth of the photos are greyscale anyway).
* **Photos.** Each image re-renders the template under a random perspective warp (rotation,
  scale, shift -- so sometimes cropped -- and foreshortening; never mirrored, which would
  change the animal) over an ocean background (waves, sometimes sky), then hides part of
  it behind the sea surface and splashes, and changes lighting (contrast, brightness,
  gamma, colour cast), blur, noise and JPEG quality.
* **Label structure.** ``n_identities`` known whales get a long-tailed number of train
  images (every one at least one, many exactly one). About ``new_whale_fraction`` of the
  train images are ``new_whale``: each a different animal, never seen again. Test images
  are new photos of known whales (chosen in proportion to their train counts) mixed with
  ``test_new_fraction`` photos of never-seen animals.

Everything is drawn from ``numpy.random.default_rng([seed, stream, index])``, so the output
is byte-identical for a given seed and does not depend on the order of generation.
Run ``python -m competitions.whales.demo DIR`` to write the default set (a few seconds).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from common.core.errors import DataError

NEW_WHALE = "new_whale"
DEFAULT_ROOT = Path("inputs/demo/whales")
# Independent random streams: a change in one part never shifts the others.
_NAMES, _ANIMAL, _PHOTO = 0, 1, 2


def _noise(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Smooth random field: a small Gaussian grid (rows, cols) upsampled bicubically to size (W, H)."""
    return cv2.resize(rng.standard_normal(grid).astype(np.float32), size, interpolation=cv2.INTER_CUBIC)


def _fluke_outline(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Polygon (N, 2) of a fluke plus tail stock; all shape parameters are the animal's own."""
    u = np.linspace(-1.0, 1.0, 161)
    side = np.where(u < 0, 0, 1)
    span = 0.40 * w * rng.uniform(0.85, 1.05) * (1 + rng.uniform(-0.06, 0.06, 2)[side] * np.abs(u))
    x = w / 2 + rng.uniform(-0.03, 0.03) * w + u * span
    tip_lift, curl = rng.uniform(0.04, 0.26, 2)[side], rng.uniform(1.3, 3.5)
    base = 0.32 * h - tip_lift * h * np.abs(u) ** curl
    notch = rng.uniform(0.01, 0.13) * h * np.exp(-((u / rng.uniform(0.03, 0.10)) ** 2))
    n_scallops, amp, phase = rng.integers(3, 10), rng.uniform(0.0, 0.035, 2)[side], rng.uniform(0, 6.3, 2)[side]
    scallops = amp * h * np.sin(n_scallops * np.pi * np.abs(u) + phase) * np.sin(np.pi * np.abs(u))
    bites = sum(rng.uniform(0.02, 0.09) * h * np.exp(-(((u - rng.uniform(-0.9, 0.9)) / rng.uniform(0.02, 0.06)) ** 2))
                for _ in range(rng.integers(0, 4)))
    trailing = base + notch + scallops + bites
    leading = base + rng.uniform(0.20, 0.36) * h * (1 - np.abs(u) ** 2) ** rng.uniform(0.5, 0.9)
    stock = np.abs(u) <= rng.uniform(0.10, 0.18)  # where the tail stock joins the leading edge
    right, left = np.nonzero(stock)[0][[-1, 0]]
    lead_pts = np.stack([x, leading], 1)
    return np.concatenate([
        np.stack([x, trailing], 1),  # trailing edge, left tip -> right tip
        lead_pts[:right - 1:-1],  # leading edge back to the right side of the stock
        [[x[right] + 0.02 * w, h * 1.1], [x[left] - 0.02 * w, h * 1.1]],  # stock down into the sea
        lead_pts[left::-1],  # leading edge out to the left tip
    ])


def _make_animal(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One whale's template: BGR float image and alpha mask in [0, 1], both (H, W)."""
    w, h = size
    mask8 = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask8, [np.round(_fluke_outline(rng, w, h) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    inside = mask8 > 127
    field = _noise(rng, (4, 8), size) + 0.6 * _noise(rng, (8, 16), size) + 0.3 * _noise(rng, (16, 32), size)
    # Real flukes range from almost all black to almost all white; most are mixed.
    white_fraction = rng.choice([rng.uniform(0.0, 0.12), rng.uniform(0.85, 1.0), rng.uniform(0.2, 0.8)],
                                p=[0.15, 0.15, 0.7])
    threshold = np.float32(np.quantile(field[inside], 1 - white_fraction))
    white = 1 / (1 + np.exp(-6 * (field - threshold)))
    for _ in range(rng.poisson(8)):  # spots: dark or white, anywhere on the fluke
        centre = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.05, 0.5) * h))
        cv2.circle(white, centre, int(rng.integers(1, 4)), float(rng.integers(0, 2)), -1, cv2.LINE_AA)
    for _ in range(rng.poisson(1.5)):  # rake scars: a few parallel white strokes
        x0, y0, angle = rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.45) * h, rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 0.08 * w, np.sin(angle) * 0.08 * w
        for k in range(rng.integers(2, 5)):
            a = (int(x0 + 3 * k * np.sin(angle)), int(y0 - 3 * k * np.cos(angle)))
            cv2.line(white, a, (int(a[0] + dx), int(a[1] + dy)), 1.0, 1, cv2.LINE_AA)
    if rng.random() < 0.6:  # dark rim along the whole outline
        rim = (mask8 > 127).astype(np.uint8) - cv2.erode((mask8 > 127).astype(np.uint8), np.ones((3, 3), np.uint8))
        white[rim > 0] = 0.0
    black_level, white_level = rng.uniform(15, 50), rng.uniform(180, 240)
    grey = black_level + (white_level - black_level) * np.clip(white, 0, 1)
    tint = 1 + rng.normal(0, 0.025, 3).astype(np.float32)
    return (grey[..., None] * tint).astype(np.float32), mask8.astype(np.float32) / 255


def _ocean(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Random sea background (BGR float): a base colour, horizontally stretched waves, sometimes sky."""
    w, h = size
    blue = rng.uniform(90, 170)
    green = blue * rng.uniform(0.7, 1.05)
    sea = np.array([blue, green, green * rng.uniform(0.45, 0.85)], np.float32)
    img = sea + rng.uniform(6, 22) * _noise(rng, (max(h // 6, 2), max(w // 40, 2)), size)[..., None]
    if rng.random() < 0.4:  # sky above a horizon
        horizon = int(rng.uniform(0.0, 0.35) * h)
        grey = rng.uniform(170, 235)
        img[:horizon] = np.array([grey + rng.uniform(0, 20), grey + rng.uniform(-5, 10), grey - rng.uniform(0, 30)])
    return img


def _photo(template: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """One photo (JPEG bytes) of an animal template under random pose, occlusion, light and camera."""
    w, h = size
    fluke, alpha = template
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    angle, scale = np.deg2rad(rng.uniform(-14, 14)), rng.uniform(0.7, 1.15)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([w / 2 + rng.uniform(-0.12, 0.12) * w, h / 2 + rng.uniform(-0.12, 0.12) * h])
    moved = (corners - [w / 2, h / 2]) @ rotation.T + shift
    moved[[1, 2], 0] -= rng.uniform(-0.15, 0.15) * w * scale  # yaw: the right side nearer or farther
    moved += rng.uniform(-0.04, 0.04, (4, 2)) * [w, h]  # small perspective jitter per corner
    matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    fluke = cv2.warpPerspective(fluke, matrix, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(alpha, matrix, size, flags=cv2.INTER_LINEAR)[..., None]
    img = _ocean(rng, size) * (1 - alpha) + fluke * alpha
    if rng.random() < 0.75:  # the sea surface hides the tail stock and, sometimes, part of the fluke
        level = rng.uniform(0.45, 0.7) if rng.random() < 0.2 else rng.uniform(0.7, 1.0)
        xs = np.arange(0, w + 8, 8)
        ys = level * h + rng.uniform(2, 6) * np.sin(xs / rng.uniform(6, 20) + rng.uniform(0, 6.3))
        water = np.zeros((h, w), np.float32)
        cv2.fillPoly(water, [np.int32(np.concatenate([np.stack([xs, ys], 1), [[w, h], [0, h]]]))], 1.0, cv2.LINE_AA)
        water = cv2.GaussianBlur(water, (0, 0), 1.5)[..., None]
        img = img * (1 - water) + _ocean(rng, size) * water
    if rng.random() < 0.35:  # splash: blurred white droplets and foam
        foam = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(5, 30)):
            centre = (int(rng.uniform(0, w)), int(rng.normal(0.7, 0.2) * h))
            axes = (int(rng.integers(1, max(w // 12, 2))), int(rng.integers(1, max(h // 10, 2))))
            cv2.ellipse(foam, centre, axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(0.4, 1.0)), -1)
        foam = cv2.GaussianBlur(foam, (0, 0), rng.uniform(1.0, 3.0))[..., None]
        img = img * (1 - foam) + rng.uniform(215, 250) * foam
    img = np.clip(img * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30), 0, 255)  # contrast, brightness
    img = 255 * (img / 255) ** rng.uniform(0.7, 1.4) * rng.uniform(0.92, 1.08, 3)  # gamma, colour cast
    if rng.random() < 0.2:  # many real photos are greyscale
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.5))
    img = img + rng.normal(0, rng.uniform(0, 8), img.shape)
    ok, jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return jpeg.tobytes()


def _hex_names(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    """n distinct random hex strings of the given length."""
    return [f"{v:0{digits}x}" for v in rng.choice(16 ** digits, size=n, replace=False)]


def _long_tail_counts(rng: np.random.Generator, n_identities: int, n_images: int) -> np.ndarray:
    """Images per known whale: at least one each, the rest spread by heavy-tailed popularity."""
    popularity = rng.lognormal(0.0, 1.3, n_identities)
    return 1 + rng.multinomial(n_images - n_identities, popularity / popularity.sum())


def write_demo(root: str | Path = DEFAULT_ROOT, *, n_identities: int = 300, n_train: int = 1500, n_test: int = 400,
               image_size: tuple[int, int] = (256, 128), new_whale_fraction: float = 0.35,
               test_new_fraction: float = 0.35, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic competition into ``root`` (created; stale ``*.jpg`` in train/ and test/ removed).

    ``image_size`` is (width, height). Returns ``root`` as a Path.
    """
    n_new_train = round(n_train * new_whale_fraction)
    n_new_test = round(n_test * test_new_fraction)
    if n_train - n_new_train < n_identities:
        raise ValueError(f"n_train={n_train} leaves {n_train - n_new_train} known images, "
                         f"fewer than n_identities={n_identities} (each needs at least one)")
    if n_identities < 4 or n_test - n_new_test < 1:
        raise ValueError("need at least 4 identities and one known test image")
    root, size = Path(root), (int(image_size[0]), int(image_size[1]))
    names = np.random.default_rng([seed, _NAMES])
    whale_ids = np.array([f"w_{h}" for h in _hex_names(names, n_identities, 7)])
    image_names = [f"{h}.jpg" for h in _hex_names(names, n_train + n_test, 9)]
    counts = _long_tail_counts(names, n_identities, n_train - n_new_train)
    test_known = names.choice(n_identities, size=n_test - n_new_test, p=counts / counts.sum())
    # Animal index per photo: 0..n_identities-1 are known whales, larger indices are one-off animals.
    train_animals = np.concatenate([np.repeat(np.arange(n_identities), counts),
                                    n_identities + np.arange(n_new_train)])
    test_animals = np.concatenate([test_known, n_identities + n_new_train + np.arange(n_new_test)])
    train_animals, test_animals = names.permutation(train_animals), names.permutation(test_animals)

    def label(animal: int) -> str:
        return whale_ids[animal] if animal < n_identities else NEW_WHALE

    # Photos grouped by animal, so only one template is in memory at a time.
    photos_of: dict[int, list[tuple[int, Path]]] = {}
    for index, animal in enumerate(np.concatenate([train_animals, test_animals])):
        split = "train" if index < n_train else "test"
        photos_of.setdefault(int(animal), []).append((index, root / split / image_names[index]))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for stale in (root / split).glob("*.jpg"):
            stale.unlink()
    with tqdm(total=n_train + n_test, desc=f"whales demo -> {root}", disable=not progress) as bar:
        for animal, photos in photos_of.items():
            template = _make_animal(np.random.default_rng([seed, _ANIMAL, animal]), size)
            for index, path in photos:
                path.write_bytes(_photo(template, np.random.default_rng([seed, _PHOTO, index]), size))
            bar.update(len(photos))
    train = pd.DataFrame({"Image": image_names[:n_train], "Id": [label(a) for a in train_animals]})
    truth = pd.DataFrame({"Image": image_names[n_train:], "Id": [label(a) for a in test_animals]})
    train, truth = train.sort_values("Image", ignore_index=True), truth.sort_values("Image", ignore_index=True)
    known_counts = train.loc[train.Id != NEW_WHALE, "Id"].value_counts()
    top4 = [whale for whale, _ in sorted(known_counts.items(), key=lambda item: (-item[1], item[0]))[:4]]
    train.to_csv(root / "train.csv", index=False)
    truth.to_csv(root / "test_truth.csv", index=False)
    pd.DataFrame({"Image": truth.Image, "Id": " ".join([NEW_WHALE, *top4])}).to_csv(
        root / "sample_submission.csv", index=False)
    validate_demo(root)
    return root


def validate_demo(root: str | Path) -> None:
    """Check a written demo: csvs match the image folders, names unique, test ids known from train."""
    root = Path(root)
    train = pd.read_csv(root / "train.csv")
    truth = pd.read_csv(root / "test_truth.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    for file, table, folder in [("train.csv", train, "train"), ("test_truth.csv", truth, "test")]:
        if list(table.columns) != ["Image", "Id"]:
            raise DataError(f"{root / file}: columns are {list(table.columns)}, expected ['Image', 'Id']")
        if table.Image.duplicated().any():
            raise DataError(f"{root / file}: duplicate image names")
        on_disk = {p.name for p in (root / folder).glob("*.jpg")}
        if on_disk != set(table.Image):
            raise DataError(f"{root / file}: {len(table)} rows but {len(on_disk)} images in {root / folder}, "
                            f"{len(on_disk ^ set(table.Image))} names differ")
    if set(train.Image) & set(truth.Image):
        raise DataError(f"{root}: images appear in both train.csv and test_truth.csv")
    unknown = set(truth.Id) - set(train.Id) - {NEW_WHALE}
    if unknown:
        raise DataError(f"{root / 'test_truth.csv'}: {len(unknown)} ids never seen in train.csv")
    if list(sample.columns) != ["Image", "Id"] or list(sample.Image) != list(truth.Image):
        raise DataError(f"{root / 'sample_submission.csv'}: columns or rows differ from test_truth.csv")
    if (sample.Id.str.split().str.len() != 5).any():
        raise DataError(f"{root / 'sample_submission.csv'}: every Id must hold 5 space-separated labels")


def demo_cli(argv: list[str] | None, doc: str, default_root: Path, write, describe) -> Path:
    """The demo generators' command line: ``[DIR] [--n-identities N] [--n-train N] [--n-test N] [--seed N]``;
    `write(root, **sizes)` writes, `describe(root)` is the line printed about it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("root", nargs="?", default=str(default_root), help=f"output folder (default {default_root})")
    parser.add_argument("--n-identities", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write(args.root, n_identities=args.n_identities, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(describe(root))
    return root


def _describe(root: Path) -> str:
    train, truth = pd.read_csv(root / "train.csv"), pd.read_csv(root / "test_truth.csv")
    known = train[train.Id != NEW_WHALE].Id.value_counts()
    return (f"wrote {root}: train.csv ({len(train)} images, {len(known)} whales, {(known == 1).sum()} seen once, "
            f"{(train.Id == NEW_WHALE).mean():.0%} new_whale), test/ ({len(truth)} images, "
            f"{(truth.Id == NEW_WHALE).mean():.0%} never seen), sample_submission.csv, test_truth.csv")


def main(argv: list[str] | None = None) -> Path:
    """CLI: ``python -m competitions.whales.demo [DIR] [--seed N] ...``; prints what it wrote."""
    return demo_cli(argv, __doc__, DEFAULT_ROOT, write_demo, _describe)


if __name__ == "__main__":
    main()
