"""Deterministic synthetic data in the exact Kaggle *Happywhale - Whale and Dolphin Identification* format.

Why: the real data (about 51k train photos of 30 species) is large and needs a Kaggle account; the
whole pipeline should run and be tested in minutes on a CPU, on data with the same structure and the
same pitfalls. The animals and photos come from the Humpback demo's generator
(`competitions.whales.demo`); this module only adds what Happywhale has on top of it.

Files written under ``root`` (names and columns as on Kaggle):

- ``train.csv`` ``image,species,individual_id`` -- images are 14 hex digits + ``.jpg``, ids 12 hex digits;
  every row is a real individual (no unknown label in train)
- ``train_images/*.jpg``, ``test_images/*.jpg``
- ``sample_submission.csv`` ``image,predictions`` -- ``new_individual`` + the 4 most frequent train ids
- ``test_truth.csv`` ``image,individual_id`` -- demo only: the true id, ``new_individual`` if never seen

What is new compared with the Humpback demo:

* **Species.** Five species, each with its own look, so species is learnable from the pixels: the
  animal's size and aspect within the frame (a beluga is small, a pilot whale long and flat), its
  contrast and brightness (killer whales stark, belugas pale, pilot whales dark) and a colour tint.
  Individuals are spread over species by a fixed share, like the real data's imbalance.
* **Spelling slips.** Some individuals are listed under the raw names Kaggle's train.csv used
  (``bottlenose_dolpin``, ``kiler_whale``, ``beluga``, ``globis``, ``pilot_whale``), so the reader's
  normalisation is exercised; every spelling is guaranteed to occur at least once.
* **Open set only at test time.** Test photos are new photos of known individuals (in proportion to
  their train counts) mixed with ``test_new_fraction`` photos of never-seen animals.

Everything is drawn from ``numpy.random.default_rng([seed, stream, index])``, so the output is
byte-identical for a given seed and does not depend on the order of generation.
Run ``python -m competitions.happywhale.demo DIR`` to write the default set.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from common.core.errors import DataError
from competitions.happywhale import SPECIES_FIXES, HappyWhale
from competitions.whales.demo import _hex_names, _long_tail_counts, _make_animal, _photo, demo_cli

NEW_INDIVIDUAL = HappyWhale.new_label
DEFAULT_ROOT = Path("inputs/demo/happywhale")
IMAGE_NAME, INDIVIDUAL_ID = re.compile(r"[0-9a-f]{14}\.jpg"), re.compile(r"[0-9a-f]{12}")
# Independent random streams: a change in one part never shifts the others.
_NAMES, _SPECIES, _ANIMAL, _PHOTO = 0, 1, 2, 3


class Look(NamedTuple):
    """A species' bias: share of individuals, animal width/height as a fraction of the frame, tone."""
    share: float
    width: float
    height: float
    contrast: float
    brightness: float
    tint: tuple[float, float, float]  # BGR gains


SPECIES = {
    "humpback_whale": Look(0.30, 1.00, 1.00, 1.0, 0, (1.0, 1.0, 1.0)),
    "bottlenose_dolphin": Look(0.25, 0.70, 0.85, 0.8, 10, (1.15, 1.0, 0.85)),
    "killer_whale": Look(0.15, 0.85, 1.00, 1.6, 0, (1.0, 1.0, 1.0)),
    "beluga_whale": Look(0.15, 0.65, 0.75, 0.5, 70, (0.95, 1.0, 1.05)),
    "short_finned_pilot_whale": Look(0.15, 0.95, 0.60, 0.6, -55, (0.9, 1.0, 1.1)),
}
NAMES = list(SPECIES)
# (species index, spelling in train.csv): the correct name first, then Kaggle's raw variants of it.
SPELLINGS = [(i, spelling) for i, name in enumerate(NAMES)
             for spelling in [name, *sorted(raw for raw, fixed in SPECIES_FIXES.items() if fixed == name)]]


def _species_animal(rng: np.random.Generator, size: tuple[int, int], look: Look) -> tuple[np.ndarray, np.ndarray]:
    """A whales-demo animal drawn smaller/flatter per species and toned, its body kept near the frame's
    middle (where the sea does not hide it) and its tail stock extended down into the sea."""
    w, h = size
    tw, th = max(8, round(w * look.width)), max(8, round(h * look.height))
    body, alpha = _make_animal(rng, (tw, th))
    image, mask = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)
    x0, y0 = (w - tw) // 2, round(0.45 * (h - th))
    toned = ((body - 128) * look.contrast + 128 + look.brightness) * np.float32(look.tint)
    image[y0:y0 + th, x0:x0 + tw], mask[y0:y0 + th, x0:x0 + tw] = np.clip(toned, 0, 255), alpha
    image[y0 + th:], mask[y0 + th:] = image[y0 + th - 1], mask[y0 + th - 1]
    return image, mask


def _spellings(rng: np.random.Generator, n_known: int, n_new: int) -> np.ndarray:
    """Index into SPELLINGS per animal: each spelling once among the known, the rest by share, 3 in 4 spelt right."""
    shares = np.array([look.share for look in SPECIES.values()])
    chosen = []
    for species in rng.choice(len(NAMES), size=n_known + n_new - len(SPELLINGS), p=shares / shares.sum()):
        options = [k for k, (s, _) in enumerate(SPELLINGS) if s == species]
        chosen.append(options[0] if len(options) == 1 or rng.random() < 0.75 else int(rng.choice(options[1:])))
    known = rng.permutation(np.array([*range(len(SPELLINGS)), *chosen[:n_known - len(SPELLINGS)]]))
    return np.concatenate([known, np.array(chosen[n_known - len(SPELLINGS):], dtype=int)])


def write_demo(root: str | Path = DEFAULT_ROOT, *, n_identities: int = 300, n_train: int = 1500, n_test: int = 400,
               image_size: tuple[int, int] = (256, 128), test_new_fraction: float = 0.3, seed: int = 0,
               progress: bool = True) -> Path:
    """Write the synthetic competition into ``root`` (created; stale ``*.jpg`` in the image folders removed).

    ``image_size`` is (width, height). Returns ``root`` as a Path.
    """
    n_new_test = round(n_test * test_new_fraction)
    if n_identities < len(SPELLINGS) or n_train < n_identities or n_test - n_new_test < 1:
        raise ValueError(f"need n_identities >= {len(SPELLINGS)} (one per species spelling), n_train >= n_identities "
                         f"(each has a photo) and one known test image; got {n_identities}, {n_train}, {n_test}")
    root, size = Path(root), (int(image_size[0]), int(image_size[1]))
    names = np.random.default_rng([seed, _NAMES])
    ids = _hex_names(names, n_identities, 12)
    image_names = [f"{h}.jpg" for h in _hex_names(names, n_train + n_test, 14)]
    counts = _long_tail_counts(names, n_identities, n_train)
    test_known = names.choice(n_identities, size=n_test - n_new_test, p=counts / counts.sum())
    # Animal index per photo: 0..n_identities-1 are known individuals, larger ones are never seen in train.
    train_animals = names.permutation(np.repeat(np.arange(n_identities), counts))
    test_animals = names.permutation(np.concatenate([test_known, n_identities + np.arange(n_new_test)]))
    spelling = _spellings(np.random.default_rng([seed, _SPECIES]), n_identities, n_new_test)

    photos_of: dict[int, list[tuple[int, Path]]] = {}
    for index, animal in enumerate(np.concatenate([train_animals, test_animals])):
        folder = "train_images" if index < n_train else "test_images"
        photos_of.setdefault(int(animal), []).append((index, root / folder / image_names[index]))
    for folder in ("train_images", "test_images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stale in (root / folder).glob("*.jpg"):
            stale.unlink()
    with tqdm(total=n_train + n_test, desc=f"happywhale demo -> {root}", disable=not progress) as bar:
        for animal, photos in photos_of.items():  # grouped by animal: one template in memory at a time
            look = SPECIES[NAMES[SPELLINGS[spelling[animal]][0]]]
            template = _species_animal(np.random.default_rng([seed, _ANIMAL, animal]), size, look)
            for index, path in photos:
                path.write_bytes(_photo(template, np.random.default_rng([seed, _PHOTO, index]), size))
            bar.update(len(photos))
    train = pd.DataFrame({"image": image_names[:n_train],
                          "species": [SPELLINGS[spelling[a]][1] for a in train_animals],
                          "individual_id": [ids[a] for a in train_animals]}).sort_values("image", ignore_index=True)
    truth = pd.DataFrame({"image": image_names[n_train:],
                          "individual_id": [ids[a] if a < n_identities else NEW_INDIVIDUAL for a in test_animals]})
    truth = truth.sort_values("image", ignore_index=True)
    top4 = sorted(train.individual_id.value_counts().items(), key=lambda item: (-item[1], item[0]))[:4]
    train.to_csv(root / "train.csv", index=False)
    truth.to_csv(root / "test_truth.csv", index=False)
    pd.DataFrame({"image": truth.image, "predictions": " ".join([NEW_INDIVIDUAL, *(i for i, _ in top4)])}).to_csv(
        root / "sample_submission.csv", index=False)
    validate_demo(root)
    return root


def validate_demo(root: str | Path) -> None:
    """Check a written demo: Kaggle's columns and name shapes, csvs match the folders, test ids known."""
    root = Path(root)
    read = lambda name: pd.read_csv(root / name, dtype=str, keep_default_na=False)  # noqa: E731
    train, truth, sample = read("train.csv"), read("test_truth.csv"), read("sample_submission.csv")
    for file, table, columns, folder in [("train.csv", train, ["image", "species", "individual_id"], "train_images"),
                                         ("test_truth.csv", truth, ["image", "individual_id"], "test_images")]:
        if list(table.columns) != columns:
            raise DataError(f"{root / file}: columns are {list(table.columns)}, expected {columns}")
        if table.image.duplicated().any() or not table.image.str.fullmatch(IMAGE_NAME).all():
            raise DataError(f"{root / file}: image names must be unique, 14 hex digits + .jpg")
        on_disk = {p.name for p in (root / folder).glob("*.jpg")}
        if on_disk != set(table.image):
            raise DataError(f"{root / file}: {len(table)} rows but {len(on_disk)} images in {root / folder}, "
                            f"{len(on_disk ^ set(table.image))} names differ")
    if not train.individual_id.str.fullmatch(INDIVIDUAL_ID).all():
        raise DataError(f"{root / 'train.csv'}: every individual_id must be 12 hex digits (no unknown label)")
    if set(train.image) & set(truth.image):
        raise DataError(f"{root}: images appear in both train.csv and test_truth.csv")
    unknown = set(truth.individual_id) - set(train.individual_id) - {NEW_INDIVIDUAL}
    if unknown:
        raise DataError(f"{root / 'test_truth.csv'}: {len(unknown)} ids never seen in train.csv")
    if list(sample.columns) != ["image", "predictions"] or list(sample.image) != list(truth.image):
        raise DataError(f"{root / 'sample_submission.csv'}: columns or rows differ from test_truth.csv")
    if (sample.predictions.str.split().str.len() != 5).any():
        raise DataError(f"{root / 'sample_submission.csv'}: every prediction must hold 5 space-separated labels")


def _describe(root: Path) -> str:
    train, truth = (pd.read_csv(root / name, dtype=str) for name in ("train.csv", "test_truth.csv"))
    known = train.individual_id.value_counts()
    species = train.species.replace(SPECIES_FIXES).value_counts()
    return (f"wrote {root}: train.csv ({len(train)} images, {len(known)} individuals, {(known == 1).sum()} seen once; "
            f"{', '.join(f'{name} {n}' for name, n in species.items())}), test_images/ ({len(truth)} images, "
            f"{(truth.individual_id == NEW_INDIVIDUAL).mean():.0%} never seen), sample_submission.csv, test_truth.csv")


def main(argv: list[str] | None = None) -> Path:
    """CLI: ``python -m competitions.happywhale.demo [DIR] [--seed N] ...``; prints what it wrote."""
    return demo_cli(argv, __doc__, DEFAULT_ROOT, write_demo, _describe)


if __name__ == "__main__":
    main()
