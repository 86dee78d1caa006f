"""`./run.sh bench oneshot [key=value ...]`: Omniglot 20-way one-shot classification, Lake et al.'s way.

Why: one-shot verification is the oldest test of "an embedding that generalises to identities it
never saw", which is exactly what open-set re-identification needs. In the "minimal" setting (train
on one 5-alphabet background set, test on alphabets never seen) a deep ConvNet made 24 % errors,
Bayesian Program Learning 4.3 % / 4.0 %, people 4.5 % (Lake, Salakhutdinov & Tenenbaum, Science 2015).

What it does: trains the whale flow (`./run.sh whales train`, with the given overrides) on
`images_background_small1.zip` arranged in the whale format (bench/datasets.py), or takes a finished
run (`run.name=NAME` of an existing `outputs/bench/oneshot/runs/whales/NAME`); then builds `runs` trials
from `images_background_small2.zip` (alphabets the model never saw): per trial, `way` characters of
one alphabet, each drawn once by drawer A (the gallery) and once by drawer B (the queries); a query
is answered by its most similar gallery drawing (`./run.sh whales embed` of the run, cosine). The
error rate over all queries is the number; alphabets with fewer than `way` characters are skipped
(small2's Tagalog has 17). One markdown row per call is added to `outputs/bench/oneshot.md`.
"""
from __future__ import annotations

import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from bench.datasets import OMNIGLOT_MEMBER, SHARED_DATA, omniglot_drawings, write_omniglot_whale_format
from bench.options import split_options
from common.core.errors import ConfigError, DataError
from common.core.paths import REPO_ROOT

SMALL1 = SHARED_DATA / "omniglot" / "images_background_small1.zip"
SMALL2 = SHARED_DATA / "omniglot" / "images_background_small2.zip"
OPTIONS = {"runs": 20, "way": 20, "seed": 0, "out": "outputs/bench", "threads": 1, "label": None}


def one_shot_trials(zip_path: Path, runs: int = 20, way: int = 20, seed: int = 0) -> list[dict]:
    """`runs` trials: {alphabet, gallery: [member] * way, queries: [member] * way} (query i is gallery i's
    character by another drawer). Alphabets are taken in turn; characters and the two drawers at random."""
    rng = np.random.default_rng(seed)
    alphabets = {a: c for a, c in sorted(omniglot_drawings(zip_path).items()) if len(c) >= way}
    if not alphabets:
        raise DataError(f"{zip_path}: no alphabet has {way} characters for {way}-way trials")
    names = sorted(alphabets)
    trials = []
    for t in range(runs):
        alphabet = names[t % len(names)]
        characters = sorted(alphabets[alphabet])
        chosen = [characters[i] for i in rng.permutation(len(characters))[:way]]
        common = sorted(set.intersection(*(set(alphabets[alphabet][c]) for c in chosen)))
        a, b = (common[i] for i in rng.permutation(len(common))[:2])
        trials.append({"alphabet": alphabet, "gallery": [alphabets[alphabet][c][a] for c in chosen],
                       "queries": [alphabets[alphabet][c][b] for c in chosen]})
    return trials


def file_name(member: str) -> str:
    alphabet, character, image, drawer = OMNIGLOT_MEMBER.search(member).groups()  # image: the character's number
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{alphabet}_{character}_{image}_{drawer}") + ".png"


def extract(zip_path: Path, members: set[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        for member in sorted(members):
            target = folder / file_name(member)
            if not target.exists():
                target.write_bytes(archive.read(member))
    return folder


def error_rate(vectors: dict[str, np.ndarray], trials: list[dict]) -> float:
    """Share of queries whose most similar gallery drawing (cosine) is another character's."""
    wrong = total = 0
    for trial in trials:
        gallery = np.stack([vectors[file_name(m)] for m in trial["gallery"]])
        queries = np.stack([vectors[file_name(m)] for m in trial["queries"]])
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        answer = (queries @ gallery.T).argmax(axis=1)
        wrong += int((answer != np.arange(len(queries))).sum())
        total += len(queries)
    return wrong / total


def main(argv: list[str]) -> int:
    import competitions.whales as whales
    from common.core.cli import main as cli

    try:
        options, overrides = split_options(argv, OPTIONS)
        out = Path(options["out"])
        out = out if out.is_absolute() else REPO_ROOT / out
        trials = one_shot_trials(SMALL2, int(options["runs"]), int(options["way"]), int(options["seed"]))
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = out / "oneshot"
    runs_root = base / "runs"
    name = overrides.pop("run.name", None) or time.strftime("oneshot-%Y%m%d-%H%M%S")
    run = runs_root / "whales" / name
    common = [f"run.root={runs_root}", f"run.name={name}", f"data.cache_dir={base / 'cache'}",
              f"threads={options['threads']}"]
    started = time.time()
    if not (run / "metrics.json").exists():
        data = write_omniglot_whale_format(SMALL1, base / "data" / "omniglot_small1", seed=int(options["seed"]))
        code = cli(whales.COMPETITION, ["train", f"data.root={data}", *common,
                                        *(f"{k}={v}" for k, v in overrides.items())])
        if code:
            return code
    folder = extract(SMALL2, {m for t in trials for m in t["gallery"] + t["queries"]}, base / "small2_trials")
    npz = base / f"{name}-small2.npz"
    code = cli(whales.COMPETITION, ["embed", *common, f"images={folder}", f"out={npz}", "progress=false"])
    if code:
        return code
    with np.load(npz) as z:
        vectors = dict(zip(map(str, z["files"]), z["embeddings"]))
    error = error_rate(vectors, trials)
    seconds = time.time() - started
    label = options["label"] or (" ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults")
    table = out / "oneshot.md"
    if not table.exists():
        table.write_text("# Omniglot 20-way one-shot (train: small1, trials: small2's unseen alphabets)\n\n"
                         "Reference errors (Lake et al. 2015, minimal setting): ConvNet 22.3 %, BPL 4.0 %, people 4.5 %.\n\n"
                         "| run | configuration | trials x way | error | seconds |\n|---|---|---|---|---|\n")
    with open(table, "a") as f:
        f.write(f"| {name} | {label} | {len(trials)} x {options['way']} | {error:.1%} | {seconds:.0f} |\n")
    print(f"one-shot {options['way']}-way error on small2 ({len(trials)} trials): {error:.1%}  ({table})")
    return 0
