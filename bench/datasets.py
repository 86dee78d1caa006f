"""Real open-set identification datasets in the exact Humpback Whale format, for benchmarks and tests.

Why: the whale demo data is synthetic, and the real competition needs a Kaggle account. Two small
real datasets (../shared/data) have the same structure as the whale problem once arranged:
many identities, few images each, and test images of identities never seen in training that must
be answered `new_whale`.

* ORL faces (40 people x 10 photos): some people are held out entirely; the others have a few
  photos in train and the rest in test.
* Omniglot (characters x 20 drawers): characters are identities, drawers are "photos". Known
  characters are trained on some drawers and tested on other (unseen) drawers; held-out characters
  appear only in test.

Images of held-out identities also go into train, labelled `new_whale`, as in the Kaggle data (38 %
of its train images are `new_whale`): the open-set folds tune the `new_whale` threshold on them out
of fold. By default a held-out identity has as many train images as a known one, so out-of-fold
answers have the same share of `new_whale` as the test set and the tuned threshold transfers.
Their other images stay in test (answer `new_whale`); the held-out identity itself never appears
in train.csv.

Files written (as competitions/whales reads them): `train.csv` (Image,Id), `train/`, `test/`,
`sample_submission.csv` (Image,Id: new_whale + the 4 most frequent train ids), `test_truth.csv`
(Image,Id). Image names are 9 hex digits (hashes, so a name never reveals the identity). Everything
is a function of the source and the arguments (seed included): the output is byte-identical on
every call. A `.arrangement.json` marker records the arguments: calling again with the same
arguments returns at once, with other arguments the folder is replaced (a folder without the
marker is never touched). The folder is built aside and moved into place when complete.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from common.core.errors import DataError

NEW_WHALE = "new_whale"
MARKER = ".arrangement.json"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ORL_DIR = SHARED_DATA / "orl_faces"
OMNIGLOT_ZIPS = {name: SHARED_DATA / "omniglot" / f"images_background_{name}.zip" for name in ("small1", "small2")}
OMNIGLOT_MEMBER = re.compile(r"(?:^|/)([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")


@dataclass(frozen=True)
class Photo:
    """One source image: its identity, a stable key (for the output name) and how to get PNG bytes."""

    identity: str
    key: str
    png: Callable[[], bytes]


def _image_name(dataset: str, seed: int, key: str) -> str:
    return hashlib.sha1(f"{dataset}|{seed}|{key}".encode()).hexdigest()[:9] + ".png"


def _already_arranged(dst: Path, params: dict) -> bool:
    """True when dst holds this exact arrangement; DataError when it holds something else than an arrangement."""
    marker = dst / MARKER
    if marker.is_file():
        return json.loads(marker.read_text()) == params
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: exists, is not empty and holds no {MARKER}; refusing to overwrite it")
    return False


def _write(dst: Path, dataset: str, seed: int, params: dict,
           train: Sequence[tuple[Photo, str]], test: Sequence[tuple[Photo, str]], unlabeled: Sequence[Photo] = ()) -> Path:
    """Write (photo, answer) pairs as train/, test/ and the CSV files, then the marker.

    Built in a temporary sibling folder and moved into place at the end, so a reader (or a second
    benchmark arranging the same data at the same time) never sees a half-written folder.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        _write_files(tmp, dataset, seed, params, train, test, unlabeled)
        if _already_arranged(dst, params):  # someone else finished the same arrangement meanwhile
            return dst
        if dst.exists():
            shutil.rmtree(dst)  # an older arrangement (it has a marker) or an empty folder
        try:
            tmp.rename(dst)
        except OSError:
            if not _already_arranged(dst, params):  # lost a race to another writer of the same arrangement
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _write_files(dst: Path, dataset: str, seed: int, params: dict, train: Sequence[tuple[Photo, str]],
                 test: Sequence[tuple[Photo, str]], unlabeled: Sequence[Photo] = ()) -> None:
    rows = {"train": [], "test": [], "unlabeled": []}
    names: set[str] = set()
    for split, pairs in (("train", train), ("test", test), ("unlabeled", [(p, None) for p in unlabeled])):
        if split == "unlabeled" and not pairs:
            continue
        (dst / split).mkdir()
        for photo, answer in pairs:
            name = _image_name(dataset, seed, photo.key)
            if name in names:
                raise DataError(f"{dst}: image name collision for {photo.key}; choose another seed")
            names.add(name)
            (dst / split / name).write_bytes(photo.png())
            rows[split].append((name, answer))
    train_df = pd.DataFrame(rows["train"], columns=["Image", "Id"]).sort_values("Image")
    test_df = pd.DataFrame(rows["test"], columns=["Image", "Id"]).sort_values("Image")
    train_df.to_csv(dst / "train.csv", index=False)
    test_df.to_csv(dst / "test_truth.csv", index=False)
    counts = train_df.Id[train_df.Id != NEW_WHALE].value_counts()
    frequent = sorted(counts.index, key=lambda ident: (-counts[ident], ident))[:4]
    sample = " ".join([NEW_WHALE, *frequent])
    pd.DataFrame({"Image": test_df.Image, "Id": sample}).to_csv(dst / "sample_submission.csv", index=False)
    (dst / MARKER).write_text(json.dumps(params, indent=2))


def _split_identities(identities: Sequence[str], n_held_out: int, rng: np.random.Generator) -> tuple[list, list]:
    """(known, held_out), both sorted, held_out chosen at random."""
    order = [identities[i] for i in rng.permutation(len(identities))]
    return sorted(order[n_held_out:]), sorted(order[:n_held_out])


# ------------------------------------------------------------------------------------------------
# ORL faces
# ------------------------------------------------------------------------------------------------
def _pgm_to_png(path: Path) -> Callable[[], bytes]:
    def encode() -> bytes:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"{path}: not a readable image")
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise DataError(f"{path}: could not be re-encoded as PNG")
        return data.tobytes()

    return encode


def write_orl_whale_format(src: str | Path, dst: str | Path, *, held_out_subjects: int = 10,
                           train_per_subject: int = 5, new_whale_train: int | None = None, seed: int = 0) -> Path:
    """ORL faces (`src/sN/M.pgm`) as a whale-format dataset in `dst`; returns `dst`.

    Every known person has `train_per_subject` photos in train and the rest in test. The
    `held_out_subjects` people never appear under their own Id: `new_whale_train` (default:
    `train_per_subject`) of each one's photos go into train as `new_whale`, the rest into test
    (truth `new_whale`). Subjects are labelled `s01`..`s40`.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src}: ORL faces folder not found (expected sN/M.pgm; see ../shared/data/README.md)")
    subjects = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name)):
        files = sorted(folder.glob("*.pgm"), key=lambda p: (len(p.stem), p.stem))
        if files:
            subjects[f"s{int(folder.name[1:]):02d}"] = files
    if not subjects:
        raise DataError(f"{src}: no sN/*.pgm subject folders (is this the ORL faces database?)")
    per_subject = min(len(files) for files in subjects.values())
    if not 0 < held_out_subjects < len(subjects):
        raise DataError(f"held_out_subjects={held_out_subjects}: need between 1 and {len(subjects) - 1}")
    if not 0 < train_per_subject < per_subject:
        raise DataError(f"train_per_subject={train_per_subject}: need between 1 and {per_subject - 1} "
                        f"({src} has {per_subject} images per subject)")
    new_whale_train = train_per_subject if new_whale_train is None else new_whale_train
    if not 0 <= new_whale_train < per_subject:
        raise DataError(f"new_whale_train={new_whale_train}: need between 0 and {per_subject - 1}")
    params = {"dataset": "orl", "src": str(src.resolve()), "held_out_subjects": held_out_subjects,
              "train_per_subject": train_per_subject, "new_whale_train": new_whale_train, "seed": seed}
    if _already_arranged(dst, params):
        return dst
    rng = np.random.default_rng(seed)
    known, held_out = _split_identities(sorted(subjects), held_out_subjects, rng)
    train, test = [], []
    for subject in sorted(subjects):
        files = subjects[subject]
        photos = [Photo(subject, f"{subject}/{f.name}", _pgm_to_png(f)) for f in files]
        photos = [photos[i] for i in rng.permutation(len(photos))]
        if subject in known:
            train += [(p, subject) for p in photos[:train_per_subject]]
            test += [(p, subject) for p in photos[train_per_subject:]]
        else:
            train += [(p, NEW_WHALE) for p in photos[:new_whale_train]]
            test += [(p, NEW_WHALE) for p in photos[new_whale_train:]]
    return _write(dst, "orl", seed, params, train, test)


# ------------------------------------------------------------------------------------------------
# Omniglot
# ------------------------------------------------------------------------------------------------
def _zip_reader(archive: zipfile.ZipFile, member: str) -> Callable[[], bytes]:
    return lambda: archive.read(member)


def omniglot_drawings(zip_path: str | Path) -> dict[str, dict[str, dict[int, str]]]:
    """An Omniglot background zip's drawings: alphabet -> character -> drawer -> zip member."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise DataError(f"{zip_path}: Omniglot zip not found (see ../shared/data/README.md)")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DataError(f"{zip_path}: not a zip file") from None
    found: dict[str, dict[str, dict[int, str]]] = {}
    with archive:
        for member in archive.namelist():
            match = OMNIGLOT_MEMBER.search(member)
            if match:
                alphabet, character, _, drawer = match.groups()
                found.setdefault(alphabet, {}).setdefault(character, {})[int(drawer)] = member
    return found


def write_omniglot_whale_format(zip_path: str | Path, dst: str | Path, *,
                                n_characters: int | None = None, train_drawers: int = 10, test_drawers: int = 4,
                                held_out_fraction: float = 0.3, new_whale_train: int | None = None, seed: int = 0,
                                unlabeled_rest: bool = False) -> Path:
    """An Omniglot background zip as a whale-format dataset in `dst` (read from the zip); returns `dst`.

    Identities are characters (`Alphabet_characterNN`), `n_characters` of them at random (None: all).
    The 20 drawers are shuffled once: known characters get their first `train_drawers` drawers in
    train and the next `test_drawers` in test (people train never saw). A `held_out_fraction` of the
    characters never appears in train.csv: `new_whale_train` (default: `train_drawers`) of their
    train-drawer drawings go into train as `new_whale`, their test-drawer drawings into test (truth
    `new_whale`). `unlabeled_rest` writes every drawing of the characters *not* chosen into
    `unlabeled/` (no label, no CSV): in-domain images for self-supervised pretraining that are
    neither train nor test images of the task.
    """
    zip_path, dst = Path(zip_path), Path(dst)
    characters: dict[str, dict[int, str]] = {
        re.sub(r"\s+", "_", f"{alphabet}_{character}"): drawers
        for alphabet, by_character in omniglot_drawings(zip_path).items() for character, drawers in by_character.items()}
    with zipfile.ZipFile(zip_path) as archive:
        if not characters:
            raise DataError(f"{zip_path}: no Alphabet/characterNN/NNNN_DD.png drawings (is this an Omniglot zip?)")
        drawers = sorted(set.intersection(*(set(d) for d in characters.values())))
        if train_drawers < 1 or test_drawers < 1 or train_drawers + test_drawers > len(drawers):
            raise DataError(f"train_drawers={train_drawers} + test_drawers={test_drawers}: need at least 1 each "
                            f"and at most {len(drawers)} in all (drawers every character of {zip_path} has)")
        new_whale_train = train_drawers if new_whale_train is None else new_whale_train
        if not 0 <= new_whale_train <= train_drawers:
            raise DataError(f"new_whale_train={new_whale_train}: need between 0 and train_drawers={train_drawers}")
        if n_characters is not None and not 2 <= n_characters <= len(characters):
            raise DataError(f"n_characters={n_characters}: {zip_path} has {len(characters)} characters (need >= 2)")
        if not 0.0 < held_out_fraction < 1.0:
            raise DataError(f"held_out_fraction={held_out_fraction}: need a fraction strictly between 0 and 1")
        params = {"dataset": "omniglot", "src": str(zip_path.resolve()), "n_characters": n_characters,
                  "train_drawers": train_drawers, "test_drawers": test_drawers,
                  "held_out_fraction": held_out_fraction, "new_whale_train": new_whale_train, "seed": seed}
        if unlabeled_rest:  # only when asked, so that the markers of earlier arrangements stay valid
            params["unlabeled_rest"] = True
        if _already_arranged(dst, params):
            return dst
        rng = np.random.default_rng(seed)
        chosen = sorted(characters)
        if n_characters is not None:
            chosen = sorted(chosen[i] for i in rng.permutation(len(chosen))[:n_characters])
        n_held_out = min(max(1, round(held_out_fraction * len(chosen))), len(chosen) - 1)
        known, held_out = _split_identities(chosen, n_held_out, rng)
        order = [drawers[i] for i in rng.permutation(len(drawers))]
        seen_by_train, test_only = order[:train_drawers], order[train_drawers:train_drawers + test_drawers]
        train, test = [], []
        for identity in chosen:
            photo = {d: Photo(identity, characters[identity][d], _zip_reader(archive, characters[identity][d]))
                     for d in seen_by_train + test_only}
            if identity in known:
                train += [(photo[d], identity) for d in seen_by_train]
                test += [(photo[d], identity) for d in test_only]
            else:
                train += [(photo[d], NEW_WHALE) for d in seen_by_train[:new_whale_train]]
                test += [(photo[d], NEW_WHALE) for d in test_only]
        rest = [Photo(identity, member, _zip_reader(archive, member)) for identity in sorted(set(characters) - set(chosen))
                for _, member in sorted(characters[identity].items())] if unlabeled_rest else []
        return _write(dst, f"omniglot-{zip_path.stem}", seed, params, train, test, rest)


# The split both whale-format benches pin: half of train.csv trains one fold model, half gives its
# out-of-fold answers (the table compares methods, not fold ensembles).
ONE_FOLD = ["data.num_workers=0", "train.folds=2", "train.run_folds=[0]", "train.warmup_epochs=1",
            "train.batch_size=32"]
