"""Deterministic synthetic Google Landmark Recognition 2020 data, in Kaggle's exact layout.

Why: the real set is ~100 GB; tests and smoke runs need a small set with the same files and
the same difficulties: many classes with a long tail, strong viewpoint changes, and a test
set where half the images show no known landmark (GAP punishes confident wrong answers).

Generative model (all colours BGR, OpenCV's order)
  Landmark k (a sparse random integer id) is a scene description drawn from rng(seed, k): a
  building body (size, wall colour, trim bands), a roof (flat, gable, dome, spire, stepped),
  0-2 towers with their own roofs, a window grid (rect, arched or round windows), ground-level
  arches, maybe a rose window, and a ground (grass, pavement, sand, water). It is rendered once
  at twice the image size as a canonical picture plus a mask (0 = sky).
  A photo of landmark k, drawn with rng(seed, image): a sky (day, overcast, dusk, night, with
  clouds) behind a homography of the canonical picture (zoom 0.55-1.1 of its width, 20 %
  close-ups at 0.3-0.5, rotation +-6 deg, perspective jitter of each corner); occluders in front
  (people, cars, trees); lighting (brightness, contrast, colour cast, sun-side gradient); sensor
  noise, sometimes blur, JPEG quality 60-95.
  Non-landmark images (a share of the test set, and distractors/) come from other generators
  through the same lighting and sensor steps: textures, indoor rooms, nature, face-like
  portraits, close-up objects, streets without buildings, and - the confusable part -
  buildings from the landmark generator whose parameters no training landmark has.
  Class sizes follow a Zipf law over a random ranking of the landmarks, clipped to [2, 50]
  and scaled to total n_train. Test landmark images pick their landmark with probability
  proportional to sqrt(train size), so the tail shows up in the test set too.

Files under root (ids are 16 hex characters; csv rows sorted by id):
  train.csv              id,landmark_id
  train/a/b/c/<id>.jpg   test/a/b/c/<id>.jpg
  sample_submission.csv  id,landmarks   landmarks left empty (= "no landmark", a valid answer;
                                        Kaggle's own sample holds placeholder predictions)
  test_truth.csv         id,landmarks   true landmark_id, empty for non-landmark images
  distractors/<id>.jpg   flat folder of non-landmark images, for non-landmark re-ranking
  .landmarks_demo        marker: a rerun may clear a previous demo, never a real data folder
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from competitions.landmarks.layout import DataError, image_path

MARKER = ".landmarks_demo"
AA = cv2.LINE_AA
GROUNDS = ((70, 140, 60), (120, 120, 125), (140, 190, 215), (150, 110, 40))  # grass pavement sand water
SKIES = (((235, 170, 90), (250, 225, 190)), ((175, 175, 170), (215, 215, 210)),  # day, overcast
         ((140, 90, 120), (110, 170, 250)), ((70, 35, 20), (120, 80, 60)))        # dusk, night


def _colour(rng, sat=(0.15, 0.75), val=(0.35, 0.95)) -> tuple:
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _jitter(colour, rng, amount=20.0) -> tuple:
    return tuple(int(np.clip(v + rng.normal(0, amount), 0, 255)) for v in colour)


# ---------------------------------------------------------------- landmarks
def _poly(img, mask, pts, colour):
    """Fill a polygon on the picture and, when given, on its scene mask."""
    pts = np.round(np.asarray(pts)).astype(np.int32)
    cv2.fillPoly(img, [pts], colour, AA)
    if mask is not None:
        cv2.fillPoly(mask, [pts], 255)


def _flat_roof(x0, x1, top, scale):
    w = x1 - x0
    return [[(x0 - w * .05, top), (x1 + w * .05, top), (x1 + w * .05, top - w * .06), (x0 - w * .05, top - w * .06)]]


def _pitched_roof(steepness):
    return lambda x0, x1, top, scale: [[(x0, top), (x1, top), ((x0 + x1) / 2, top - (x1 - x0) * scale * steepness)]]


def _dome_roof(x0, x1, top, scale):
    w, cx = x1 - x0, (x0 + x1) / 2
    finial = [(cx - 2, top - w * scale), (cx + 2, top - w * scale), (cx, top - w * scale - w * .2)]
    return [cv2.ellipse2Poly((int(cx), int(top)), (int(w / 2), int(w * scale)), 0, 180, 360, 10), finial]


def _stepped_roof(x0, x1, top, scale):
    w, h = x1 - x0, (x1 - x0) * scale / 3
    return [[(x0 + w * k * .15, top - k * h), (x1 - w * k * .15, top - k * h),
             (x1 - w * k * .15, top - (k + 1) * h), (x0 + w * k * .15, top - (k + 1) * h)] for k in range(3)]


# roof name -> polygons above the span [x0, x1] standing on y = top
ROOFS = {"flat": _flat_roof, "gable": _pitched_roof(1), "dome": _dome_roof, "spire": _pitched_roof(3),
         "stepped": _stepped_roof}


def _roof(img, mask, kind, x0, x1, top, scale, colour):
    for polygon in ROOFS[kind](x0, x1, top, scale):
        _poly(img, mask, polygon, colour)


def _window(img, shape, x, y, w, h, colour):
    if shape == "round":
        cv2.circle(img, (int(x + w / 2), int(y + h / 2)), int(min(w, h) / 2), colour, -1, AA)
        return
    top = y + (w / 2 if shape == "arch" else 0)
    cv2.rectangle(img, (int(x), int(top)), (int(x + w), int(y + h)), colour, -1, AA)
    if shape == "arch":
        cv2.ellipse(img, (int(x + w / 2), int(top)), (int(w / 2), int(w / 2)), 0, 180, 360, colour, -1, AA)


def _landmark_params(rng) -> dict:
    return dict(width=rng.uniform(0.3, 0.65), height=rng.uniform(0.15, 0.38), x=rng.uniform(-0.08, 0.08),
                wall=_colour(rng), tower_wall=_colour(rng), roof=_colour(rng), trim=_colour(rng, val=(0.1, 0.7)),
                window=_colour(rng, sat=(0, 0.5), val=(0.05, 0.9)), roof_type=rng.choice(list(ROOFS)),
                roof_scale=rng.uniform(0.2, 0.5), bands=int(rng.integers(0, 4)), rows=int(rng.integers(1, 5)),
                cols=int(rng.integers(2, 9)), window_shape=rng.choice(["rect", "arch", "round"]),
                arches=int(rng.integers(0, 6)), towers=int(rng.integers(0, 3)), tower_side=rng.choice([-1, 1]),
                tower_width=rng.uniform(0.1, 0.22), tower_height=rng.uniform(0.05, 0.2),
                tower_roof=rng.choice(list(ROOFS)), rose=rng.random() < 0.4, ground=int(rng.integers(len(GROUNDS))))


def render_landmark(p: dict, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical c x c picture of a landmark and its scene mask (0 where sky shows)."""
    img, mask = np.zeros((c, c, 3), np.uint8), np.zeros((c, c), np.uint8)
    horizon = int(0.8 * c)
    img[horizon:], mask[horizon:] = GROUNDS[p["ground"]], 255
    w, h, cx = p["width"] * c, p["height"] * c, c / 2 + p["x"] * c
    x0, x1, top = cx - w / 2, cx + w / 2, horizon - h
    towers = {0: [], 1: [p["tower_side"]], 2: [-1, 1]}[p["towers"]]
    for side in towers:  # towers stand at the ends of the body
        tw = p["tower_width"] * c
        a = x0 - tw * .3 if side < 0 else x1 - tw * .7
        t_top = top - p["tower_height"] * c
        _poly(img, mask, [(a, horizon), (a + tw, horizon), (a + tw, t_top), (a, t_top)], p["tower_wall"])
        _roof(img, mask, p["tower_roof"], a, a + tw, t_top, p["roof_scale"], p["roof"])
        for k in range(3):
            y = t_top + (k + .3) * (horizon - t_top) / 4
            _window(img, p["window_shape"], a + tw * .3, y, tw * .4, tw * .6, p["window"])
    _poly(img, mask, [(x0, horizon), (x1, horizon), (x1, top), (x0, top)], p["wall"])
    _roof(img, mask, p["roof_type"], x0, x1, top, p["roof_scale"], p["roof"])
    for b in range(p["bands"]):
        y = int(top + (b + 1) * h / (p["bands"] + 1))
        cv2.line(img, (int(x0), y), (int(x1), y), p["trim"], max(1, c // 100), AA)
    cell_w, cell_h = w / p["cols"], (h * .7) / p["rows"]
    for r in range(p["rows"]):
        for q in range(p["cols"]):
            x, y = x0 + (q + .25) * cell_w, top + h * .08 + (r + .2) * cell_h
            _window(img, p["window_shape"], x, y, cell_w * .5, cell_h * .6, p["window"])
    for a in range(p["arches"]):
        aw = w / (p["arches"] * 2 + 1)
        _window(img, "arch", x0 + (2 * a + 1) * aw, horizon - h * .22, aw, h * .22, p["trim"])
    if p["rose"]:
        cv2.circle(img, (int(cx), int(top + h * .3)), int(min(w, h) * .15), p["trim"], -1, AA)
        cv2.circle(img, (int(cx), int(top + h * .3)), int(min(w, h) * .1), p["window"], -1, AA)
    return img, mask


def _camera(rng, c: int, size: int) -> np.ndarray:
    """Homography from the canonical picture to a size x size photo."""
    close = rng.random() < 0.2
    half = c / 2 * (rng.uniform(0.3, 0.5) if close else rng.uniform(0.55, 1.1))
    centre = np.array([c / 2, 0.55 * c]) + rng.normal(0, 0.1 if close else 0.05, 2) * c
    t = np.deg2rad(rng.uniform(-6, 6))
    rotation = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half @ rotation
    src = centre + corners + rng.uniform(-0.12, 0.12, (4, 2)) * half
    dst = np.array([[0, 0], [size, 0], [size, size], [0, size]])
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))


# ---------------------------------------------------------------- photo steps
def _sky(rng, size) -> np.ndarray:
    top, bottom = (np.array(_jitter(c, rng, 15), float) for c in SKIES[rng.integers(len(SKIES))])
    ramp = np.linspace(0, 1, size)[:, None, None]
    img = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (size, size, 3)).astype(np.uint8).copy()
    for _ in range(rng.integers(0, 4)):
        centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size * .5)))
        axes = (int(rng.uniform(.1, .3) * size), int(rng.uniform(.03, .08) * size))
        cv2.ellipse(img, centre, axes, 0, 0, 360, _jitter((225, 225, 225), rng), -1, AA)
    return cv2.GaussianBlur(img, (0, 0), size / 60)


def _occluder(img, rng, kind=None):
    s = img.shape[0]
    kind = kind or rng.choice(["person", "car", "tree"])
    x, foot = rng.uniform(0, s), rng.uniform(0.75, 1.0) * s
    if kind == "person":
        h, col = rng.uniform(.15, .35) * s, _colour(rng, val=(.1, .8))
        cv2.ellipse(img, (int(x), int(foot - h * .35)), (int(h * .12), int(h * .35)), 0, 0, 360, col, -1, AA)
        cv2.circle(img, (int(x), int(foot - h * .8)), int(h * .1), _colour(rng, (.2, .5), (.3, .9)), -1, AA)
    elif kind == "car":
        w, col = rng.uniform(.25, .45) * s, _colour(rng, (.4, .9))
        cv2.rectangle(img, (int(x - w / 2), int(foot - w * .35)), (int(x + w / 2), int(foot - w * .08)), col, -1, AA)
        cv2.rectangle(img, (int(x - w / 4), int(foot - w * .55)), (int(x + w / 4), int(foot - w * .3)), col, -1, AA)
        for dx in (-w / 3, w / 3):
            cv2.circle(img, (int(x + dx), int(foot - w * .08)), int(w * .09), (30, 30, 30), -1, AA)
    else:
        r = rng.uniform(.08, .18) * s
        cv2.line(img, (int(x), int(foot)), (int(x), int(foot - 2 * r)), (30, 60, 90), max(2, int(r / 4)), AA)
        for _ in range(4):
            leaf = (int(x + rng.normal(0, r * .5)), int(foot - 2.5 * r + rng.normal(0, r * .5)))
            cv2.circle(img, leaf, int(r * rng.uniform(.6, 1)), _colour(rng, (.4, .8), (.2, .6)), -1, AA)


def _finish(img, rng) -> bytes:
    """Lighting, sensor noise, blur and JPEG: the same for every kind of image."""
    x = img.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean()
    x *= rng.uniform(0.7, 1.25) * (1 + rng.normal(0, 0.06, 3))
    x *= 1 + rng.uniform(-0.2, 0.2) * np.linspace(-1, 1, img.shape[1])[None, :, None]
    x += rng.normal(0, rng.uniform(0, 6), x.shape)
    x = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        x = cv2.GaussianBlur(x, (3, 3), 0)
    return cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])[1].tobytes()


def landmark_photo(canonical, rng, size: int) -> np.ndarray:
    """One photo of a rendered landmark: sky, camera, occluders."""
    scene, mask = canonical
    homography = _camera(rng, scene.shape[0], size)
    warp = dict(dsize=(size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpPerspective(mask, homography, **warp)[..., None] / 255.0
    img = (_sky(rng, size) * (1 - alpha) + cv2.warpPerspective(scene, homography, **warp) * alpha).astype(np.uint8)
    for _ in range(min(5, rng.poisson(1.2))):
        _occluder(img, rng)
    return img


# ---------------------------------------------------------------- non-landmarks
def _texture(rng, s):
    layers = [cv2.resize(rng.random((n, n, 3)), (s, s), interpolation=cv2.INTER_CUBIC) for n in (4, 16, 64)]
    x = sum(w * layer for w, layer in zip(rng.dirichlet([1, 1, 1]), layers))
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    return np.clip(a + (b - a) * (x - x.min()) / np.ptp(x), 0, 255).astype(np.uint8)


def _indoor(rng, s):
    img = np.full((s, s, 3), _colour(rng, (0, .4)), np.uint8)
    vx, vy, half = rng.uniform(.35, .65) * s, rng.uniform(.35, .6) * s, rng.uniform(.15, .3) * s
    back = [(vx - half, vy - half), (vx + half, vy - half), (vx + half, vy + half), (vx - half, vy + half)]
    _poly(img, None, [(0, s), (s, s), back[2], back[3]], _colour(rng, (.1, .6), (.2, .7)))
    _poly(img, None, [(0, 0), (s, 0), back[1], back[0]], _colour(rng, (0, .2), (.6, 1)))
    _poly(img, None, back, _colour(rng, (0, .5)))
    for _ in range(rng.integers(1, 4)):  # furniture and frames
        x, y, w, h = rng.uniform(0, s, 2).tolist() + (rng.uniform(.1, .35, 2) * s).tolist()
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), _colour(rng), -1, AA)
    return img


def _nature(rng, s):
    img = _sky(rng, s)
    for layer in range(rng.integers(1, 4)):
        xs = np.linspace(0, s, 40)
        ys = s * (.45 + .15 * layer + rng.uniform(.03, .1) * np.sin(xs / s * rng.uniform(3, 12) + rng.uniform(0, 6)))
        _poly(img, None, np.r_[np.c_[xs, ys], [[s, s], [0, s]]], _colour(rng, (.3, .8), (.2, .7)))
    for _ in range(rng.integers(0, 4)):
        _occluder(img, rng, "tree")
    return img


def _face(rng, s):
    img = np.full((s, s, 3), _colour(rng), np.uint8)
    cx, cy, r = s / 2 + rng.normal(0, s * .05), s / 2 + rng.normal(0, s * .05), rng.uniform(.25, .38) * s
    hair = _colour(rng, (.2, .8), (.05, .5))
    cv2.ellipse(img, (int(cx), int(cy - r * .2)), (int(r * 1.05), int(r * 1.1)), 0, 0, 360, hair, -1, AA)
    cv2.ellipse(img, (int(cx), int(cy)), (int(r * .8), int(r)), 0, 0, 360, _jitter((120, 160, 210), rng, 35), -1, AA)
    for dx in (-r * .35, r * .35):
        eye = (int(cx + dx), int(cy - r * .15))
        cv2.ellipse(img, eye, (int(r * .15), int(r * .08)), 0, 0, 360, (240, 240, 240), -1, AA)
        cv2.circle(img, eye, int(r * .06), _colour(rng, val=(.1, .5)), -1, AA)
    mouth = (int(cx), int(cy + r * .45))
    cv2.ellipse(img, mouth, (int(r * .3), int(r * .1)), 0, 0, 180, (60, 60, 150), max(1, s // 60), AA)
    return img


def _closeup(rng, s):
    img = cv2.GaussianBlur(_texture(rng, s), (0, 0), s / 20)
    for _ in range(rng.integers(1, 4)):  # big round or boxy objects seen from close by
        (x, y), r = rng.uniform(0, s, 2).astype(int), int(rng.uniform(.15, .45) * s)
        if rng.random() < .5:
            cv2.circle(img, (int(x), int(y)), r, _colour(rng), -1, AA)
        else:
            cv2.rectangle(img, (int(x - r), int(y - r / 2)), (int(x + r), int(y + r / 2)), _colour(rng), -1, AA)
    return img


def _street(rng, s):
    img = _sky(rng, s)
    img[int(s * rng.uniform(.55, .75)):] = _jitter(GROUNDS[1], rng)
    for _ in range(rng.integers(2, 6)):
        _occluder(img, rng)
    return img


def _unseen_building(rng, s):
    return landmark_photo(render_landmark(_landmark_params(rng), 2 * s), rng, s)


NON_LANDMARKS = {"texture": (_texture, .12), "indoor": (_indoor, .17), "nature": (_nature, .17), "face": (_face, .12),
                 "closeup": (_closeup, .12), "street": (_street, .15), "unseen_building": (_unseen_building, .15)}


def non_landmark_image(rng, size: int) -> np.ndarray:
    names = list(NON_LANDMARKS)
    name = names[rng.choice(len(names), p=[NON_LANDMARKS[n][1] for n in names])]
    return NON_LANDMARKS[name][0](rng, size)


# ---------------------------------------------------------------- data set
def class_sizes(n_classes: int, n_train: int, rng, low: int = 2, high: int = 50) -> np.ndarray:
    """Zipf-distributed class sizes in [low, high] summing to n_train."""
    if not low * n_classes <= n_train <= high * n_classes:
        raise DataError(f"n_train={n_train} must lie in [{low * n_classes}, {high * n_classes}] "
                        f"for {n_classes} landmarks")
    weights = (1.0 / np.arange(1, n_classes + 1))[rng.permutation(n_classes)]
    sizes_at = lambda scale: np.clip(np.floor(scale * weights), low, high).astype(int)  # noqa: E731
    lo, hi = 0.0, float(n_train * n_classes)
    for _ in range(100):  # largest scale whose sizes do not exceed n_train
        lo, hi = ((lo + hi) / 2, hi) if sizes_at((lo + hi) / 2).sum() <= n_train else (lo, (lo + hi) / 2)
    sizes = sizes_at(lo)
    for k in np.argsort(-weights)[sizes[np.argsort(-weights)] < high][: n_train - sizes.sum()]:
        sizes[k] += 1
    return sizes


def _unique_ids(rng, n: int) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids.update(dict.fromkeys(f"{v:016x}" for v in rng.integers(0, 2**63, n - len(ids))))
    return list(ids)


def write_demo(root: str | Path, *, n_landmarks: int = 150, n_train: int = 1500, n_test: int = 400,
               n_distractors: int = 300, image_size: int = 128, non_landmark_share: float = 0.5,
               seed: int = 0, progress: bool = True) -> Path:
    """Write the demo data set under `root` (see the module docstring) and return `root`."""
    if not 0 <= non_landmark_share <= 1:
        raise DataError(f"non_landmark_share={non_landmark_share} must lie in [0, 1]")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise DataError(f"{root}: not empty and not a landmarks demo folder; refusing to write into it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = np.random.default_rng([seed, 0])
    landmark_ids = np.sort(plan.choice(200_000, n_landmarks, replace=False))
    sizes = class_sizes(n_landmarks, n_train, plan)
    n_non = int(round(n_test * non_landmark_share))
    test_classes = plan.choice(n_landmarks, n_test - n_non, p=np.sqrt(sizes) / np.sqrt(sizes).sum())
    ids = _unique_ids(plan, n_train + n_test + n_distractors)
    train_ids, test_ids, distractor_ids = ids[:n_train], ids[n_train:n_train + n_test], ids[n_train + n_test:]
    photo_classes = plan.permutation(np.repeat(np.arange(n_landmarks), sizes))
    test_labels = [int(k) for k in test_classes] + [None] * n_non  # class index, None = no landmark
    plan.shuffle(test_labels)  # landmark and non-landmark test images interleave

    jobs = [("train", i, int(k)) for i, k in zip(train_ids, photo_classes)]
    jobs += [("test", i, k) for i, k in zip(test_ids, test_labels)]
    jobs += [("distractors", i, None) for i in distractor_ids]
    canonical: dict[int, tuple] = {}  # class index -> rendered landmark, drawn on first use
    for n, (split, image_id, k) in enumerate(tqdm(jobs, desc="landmarks demo", disable=not progress)):
        rng = np.random.default_rng([seed, 1, n])
        if k is not None:
            if k not in canonical:
                canonical[k] = render_landmark(_landmark_params(np.random.default_rng([seed, 2, k])), 2 * image_size)
            img = landmark_photo(canonical[k], rng, image_size)
        else:
            img = non_landmark_image(rng, image_size)
        path = root / "distractors" / f"{image_id}.jpg" if split == "distractors" else image_path(root, split, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_finish(img, rng))

    train = pd.DataFrame({"id": train_ids, "landmark_id": landmark_ids[photo_classes]})
    train.sort_values("id").to_csv(root / "train.csv", index=False)
    truth_cells = ["" if k is None else str(landmark_ids[k]) for k in test_labels]
    truth = pd.DataFrame({"id": test_ids, "landmarks": truth_cells})
    truth = truth.sort_values("id")
    truth.to_csv(root / "test_truth.csv", index=False)
    truth.assign(landmarks="").to_csv(root / "sample_submission.csv", index=False)
    (root / MARKER).write_text("written by competitions.landmarks.demo\n")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic Landmark Recognition 2020 data.")
    parser.add_argument("root", nargs="?", default="inputs/demo/landmarks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(write_demo(args.root, seed=args.seed, image_size=args.image_size))


if __name__ == "__main__":
    main()
