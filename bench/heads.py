"""Which head or metric-learning loss gives the best open-set embedding? (`./run.sh bench heads`)

Every method trains the same backbone with the same budget and seed through the real whale
pipeline (`common.tasks.identification.train`), on real data arranged in the whale format by
`bench.datasets`: ORL faces (30 known people, 10 held out) and Omniglot background sets
(characters as identities, test drawers never seen in training, 30 % of characters held out).
Only the method's keys (`model.head`, `model.loss`, `head.dynamic_margin`) change between runs,
so the differences in the table come from the objective alone.

Reported per method x dataset (from the run directory, nothing retrained):

* test MAP@5 (`metrics.json`: `test_map5`), with `new_whale` inserted at the threshold tuned on
  out-of-fold answers, exactly as a Kaggle submission would be scored;
* top-1: closed-set rank-1 accuracy on the test images of known identities, from
  `submission.csv` (the first answer that is not `new_whale` is the nearest known identity);
* TAR@FAR=1e-3 (`verify_tar_at_far_1e-3`): same/different verification on the out-of-fold
  embeddings of known identities;
* seconds: wall time of the whole run (training, embedding, retrieval, test prediction), and
  the optimiser-only part (sum of `train_seconds` in `log.csv`).

The trivial baseline row answers `new_whale` then the most frequent known identities.

The `untrained` row is the randomly initialised network (lr 0): what the backbone gives for free.

Usage: `./run.sh bench heads [datasets=orl,small1,small2] [methods=arcface,cosface] [seeds=1,2,3]
[out=outputs/bench] [data_seed=0] [threads=1] [reuse=true] [verbose=true] [whale config key=value ...]`.
Whale config keys (e.g. `train.epochs=30 data.image_size=[64,64]`) replace the budget below for
every method; with several seeds the table shows mean ± standard deviation. `threads=1` (default)
is both reproducible and the fastest on a shared 2-core machine. `reuse=true` keeps finished runs
whose config is unchanged (an interrupted bench resumes). Outputs: `<out>/heads.md` (the tables),
`<out>/heads.csv` (one row per run), `<out>/runs/whales/heads-<dataset>-<method>/` (run directories),
`<out>/logs/` (each run's console output). A run that crashes or diverges is reported with its
error, and the bench goes on.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from bench.datasets import (NEW_WHALE, ONE_FOLD, OMNIGLOT_ZIPS, ORL_DIR, write_omniglot_whale_format,
                            write_orl_whale_format)
from bench.options import name_list, split_options
from common.core.config import load_config
from common.core.errors import ConfigError, DataError
from common.core.paths import REPO_ROOT

# Method name -> the config keys that define it (everything else is the shared budget).
METHODS: dict[str, list[str]] = {
    # Reference: the randomly initialised network (one epoch at lr 0 only sets BatchNorm statistics).
    "untrained": ["model.head=norm_softmax", "train.lr=0", "train.epochs=1", "train.warmup_epochs=0"],
    "softmax": ["model.head=softmax"],
    "norm_softmax": ["model.head=norm_softmax"],
    "sphereface": ["model.head=sphereface"],
    "cosface": ["model.head=cosface"],
    "arcface": ["model.head=arcface"],
    "combined": ["model.head=combined"],
    "subcenter_arcface": ["model.head=subcenter_arcface"],
    "arcface_dynamic": ["model.head=arcface", "head.dynamic_margin=true"],
    "triplet": ["model.head=none", "model.loss=triplet"],
    "contrastive": ["model.head=none", "model.loss=contrastive"],
    "ntxent": ["model.head=none", "model.loss=ntxent"],
    "arcface+triplet": ["model.head=arcface", "model.loss=triplet"],
}

# Dataset name -> function(folder, seed) writing it there in the whale format.
DATASETS: dict[str, Callable[[Path, int], Path]] = {
    "orl": lambda dst, seed: write_orl_whale_format(ORL_DIR, dst, seed=seed),
    "small1": lambda dst, seed: write_omniglot_whale_format(OMNIGLOT_ZIPS["small1"], dst, seed=seed),
    "small2": lambda dst, seed: write_omniglot_whale_format(OMNIGLOT_ZIPS["small2"], dst, seed=seed),
}

# The shared budget: every method on ORL + small1 in 13 minutes on an idle 2-core machine (threads=1;
# 28 minutes when heavily shared). The small VGG-style net learns far more in
# this budget than resnet18 from scratch (small1, arcface: test MAP@5 0.54 with resnet18 at 32x32
# after 15 epochs, 0.82 with small_cnn at 64x64 after 20), and it has converged by about epoch 20.
BUDGET: list[str] = [
    "model.backbone=small_cnn",
    "model.embedding_dim=128",
    "data.image_size=[64,64]",
    *ONE_FOLD,
    "train.epochs=20",
    "augment.train=light",    # pinned, like everything here, so the table does not drift with the whale YAML
    "augment.valid=none",
    "infer.tta_flip=false",
    "infer.new_whale=true",
    "infer.neighbours=50",
    "progress=false",
]

# Keys of the bench itself (the rest are whale config keys).
OPTIONS = {"datasets": "orl,small1", "methods": "all", "out": "outputs/bench", "data_seed": 0,
           "seeds": None, "threads": 1, "reuse": False, "verbose": False}


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Split `key=value` arguments into bench options and whale config overrides."""
    options, pairs = split_options(argv, OPTIONS)
    seeds = options["seeds"]
    if seeds is not None:
        seeds = seeds.split(",") if isinstance(seeds, str) else seeds if isinstance(seeds, list) else [seeds]
        options["seeds"] = [int(seed) for seed in seeds]
    options["datasets"] = name_list(options, "datasets", DATASETS)
    options["methods"] = name_list(options, "methods", METHODS, all_means_known=True)
    return options, [f"{k}={v}" for k, v in pairs.items()]


def run_config(root: Path, out: Path, dataset: str, method: str, overrides: list[str], seed: int | None = None):
    """The whale config of one run: budget <- user overrides <- the method's own keys (<- seed)."""
    from competitions.whales import COMPETITION

    name = f"heads-{dataset}-{method}" + ("" if seed is None else f"-s{seed}")
    return load_config(COMPETITION.config_path, [
        *BUDGET, *overrides, *METHODS[method], *([] if seed is None else [f"seed={seed}"]),
        f"data.root={root}", f"data.cache_dir={out / 'cache'}", f"run.root={out / 'runs'}", f"run.name={name}",
    ])


def closed_set_top1(submission: Path, truth_csv: Path) -> float:
    """Rank-1 accuracy on test images of known identities, ignoring `new_whale` in the answers."""
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False).set_index("Image").Id
    truth = pd.read_csv(truth_csv, dtype=str, keep_default_na=False)
    known = truth[truth.Id != NEW_WHALE]
    first = [next((label for label in sub[image].split() if label != NEW_WHALE), None) for image in known.Image]
    return float((pd.Series(first, index=known.index) == known.Id).mean())


def baseline_row(root: Path) -> dict:
    """The answer with no model: `new_whale`, then the most frequent known identities."""
    from common.tasks.identification import trivial_baseline

    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(root / "test_truth.csv", dtype=str, keep_default_na=False)
    known_test = truth.Id[truth.Id != NEW_WHALE]
    most_frequent = train.Id[train.Id != NEW_WHALE].value_counts().index[0]
    return {"method": "trivial baseline", "status": "ok",
            "test_map5": trivial_baseline(train.Id, truth.Id, NEW_WHALE),
            "top1": float((known_test == most_frequent).mean())}


def dataset_summary(root: Path) -> str:
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(root / "test_truth.csv", dtype=str, keep_default_na=False)
    return (f"{len(train)} train images ({(train.Id == NEW_WHALE).sum()} new_whale), "
            f"{train.Id[train.Id != NEW_WHALE].nunique()} known identities; {len(truth)} test images, "
            f"{(truth.Id == NEW_WHALE).mean():.0%} answer new_whale")


def finished_run(run: Path, cfg) -> bool:
    """A run directory with metrics.json whose saved config is exactly this one."""
    saved = run / "config.yaml"
    return (run / "metrics.json").is_file() and saved.is_file() and yaml.safe_load(saved.read_text()) == cfg.to_dict()


def fold_dirs(run: Path) -> list[Path]:
    """A run's `fold<k>/` folders, in fold order."""
    return sorted(d for d in run.glob("fold*") if d.is_dir() and d.name[len("fold"):].isdigit())


def kept_epochs(run: Path) -> str | None:
    """Each trained fold's kept (best) epoch from its `done.json`, comma-joined; '0' means no epoch beat
    the starting weights, so that fold scores its init untouched (the epoch-0 guard). None: no fold done."""
    done = [json.loads((d / "done.json").read_text()) for d in fold_dirs(run) if (d / "done.json").is_file()]
    return ",".join(str(d["best_epoch"]) for d in done) if done else None


def run_method(root: Path, out: Path, dataset: str, method: str, overrides: list[str], seed: int | None = None, *,
               reuse: bool = False, verbose: bool = False) -> dict:
    """Train one method on one dataset through the whale pipeline; one row of results."""
    from common.tasks.engine import train
    from competitions.whales import COMPETITION

    cfg = run_config(root, out, dataset, method, overrides, seed)
    row = {"dataset": dataset, "method": method, "seed": cfg.seed}
    run = out / "runs" / COMPETITION.name / cfg.run.name
    log = out / "logs" / f"{cfg.run.name}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.time(), time.process_time()
    reused = reuse and finished_run(run, cfg)
    if not reused:
        shutil.rmtree(run, ignore_errors=True)  # the bench owns its run folders
        try:
            with open(log, "w") as sink, _maybe_redirect(sink, verbose):
                train(COMPETITION, cfg)
        except Exception as exc:  # a method that crashes or diverges is a result, not the end of the bench
            with open(log, "a") as sink:
                traceback.print_exc(file=sink)
            return {**row, "status": f"{type(exc).__name__}: {exc}", "seconds": round(time.time() - started, 1),
                    "cpu_seconds": round(time.process_time() - cpu_started, 1)}
    timing = run / "bench_timing.json"  # what the run cost when it ran, for reuse=true
    if not reused:
        timing.write_text(json.dumps({"seconds": round(time.time() - started, 1),
                                      "cpu_seconds": round(time.process_time() - cpu_started, 1)}))
    metrics = json.loads((run / "metrics.json").read_text())
    log_csv = pd.read_csv(run / "log.csv")
    return {**row, "status": "ok",
            "test_map5": metrics.get("test_map5"),
            "top1": closed_set_top1(run / "submission.csv", root / "test_truth.csv"),
            "tar_far_1e-3": metrics.get("verify_tar_at_far_1e-3"),
            "oof_map5": metrics.get("oof_map5"),
            "best_epoch": int(log_csv.loc[log_csv.map5.idxmax(), "epoch"]),
            "train_seconds": round(float(log_csv.train_seconds.sum()), 1),
            **(json.loads(timing.read_text()) if timing.is_file() else {"seconds": None, "cpu_seconds": None})}


@contextlib.contextmanager
def _maybe_redirect(sink, verbose: bool):
    """The pipeline's own output goes to the run's log file (verbose=true: to the terminal)."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
METRICS = ["test_map5", "top1", "tar_far_1e-3", "oof_map5", "best_epoch", "train_seconds", "seconds", "cpu_seconds"]
COLUMNS = [("method", "method", None), ("test_map5", "test MAP@5", 3), ("top1", "top-1 (known)", 3),
           ("tar_far_1e-3", "TAR@FAR=1e-3 (OOF)", 3), ("oof_map5", "OOF MAP@5", 3), ("best_epoch", "best epoch", 0),
           ("train_seconds", "train s", 0), ("seconds", "total s", 0), ("cpu_seconds", "CPU s", 0),
           ("status", "status", None)]
BASELINE = "trivial baseline"


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset x method: the mean over seeds (and the spread of the test metrics)."""
    rows = []
    for (dataset, method), group in records.groupby(["dataset", "method"], sort=False):
        ok = group[group.status == "ok"]
        row = {"dataset": dataset, "method": method, "runs": len(group),
               **{key: ok[key].mean() if key in ok and len(ok) else None for key in METRICS}}
        for key in ("test_map5", "top1"):
            row[f"{key}_std"] = ok[key].std() if key in ok and len(ok) > 1 else None
        failed = group[group.status != "ok"]
        row["status"] = "ok" if failed.empty else (
            f"{len(failed)}/{len(group)} failed: {failed.status.iloc[0]}" if len(group) > 1 else failed.status.iloc[0])
        for key in ("seconds", "cpu_seconds"):  # failed runs took time too
            row[key] = group[key].mean() if key in group else None
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value, digits: int | None = 3, spread=None) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if digits is None or isinstance(value, str):
        return str(value)
    text = f"{value:.{digits}f}"
    return text if spread is None or spread != spread else f"{text} ± {spread:.{digits}f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """One dataset's methods as a markdown table; the best test MAP@5 in bold."""
    trained = summary[summary.method != BASELINE].test_map5.dropna()
    best = trained.max() if len(trained) else None
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join("---" if digits is None else "---:" for _, _, digits in COLUMNS) + "|"]
    for row in summary.to_dict("records"):
        cells = []
        for key, _, digits in COLUMNS:
            text = _fmt(row.get(key), digits, row.get(f"{key}_std"))
            if key == "test_map5" and row["method"] != BASELINE and best is not None and row.get(key) == best:
                text = f"**{text}**"
            if key == "status" and len(text) > 100:
                text = text[:97] + "..."
            cells.append(text.replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_table(summary: pd.DataFrame, datasets: list[str]) -> str:
    """Test MAP@5, method x dataset, with the mean rank of each method over the datasets."""
    pivot = summary.pivot(index="method", columns="dataset", values="test_map5").reindex(columns=datasets)
    methods = [m for m in dict.fromkeys(summary.method) if m != BASELINE]
    ranks = pivot.loc[methods].rank(ascending=False).mean(axis=1)
    lines = ["| method | " + " | ".join(datasets) + " | mean rank |", "|---|" + "---:|" * (len(datasets) + 1)]
    for method in [*sorted(methods, key=lambda m: (ranks[m] != ranks[m], ranks[m])), BASELINE]:
        rank = _fmt(ranks.get(method), 1) if method != BASELINE else ""
        lines.append(f"| {method} | " + " | ".join(_fmt(pivot.loc[method, d]) for d in datasets) + f" | {rank} |")
    return "\n".join(lines)


def report(summary: pd.DataFrame, summaries: dict[str, str], budget: list[str], seeds, seconds: float,
           cpu_seconds: float) -> str:
    datasets = list(summaries)
    parts = ["# Heads and losses benchmark (`./run.sh bench heads`)", "",
             "Same backbone, budget and seed for every method, through the whale pipeline. Test MAP@5 with "
             "new_whale at the threshold tuned out of fold; top-1: rank-1 accuracy on test images of known "
             "identities (new_whale ignored); TAR@FAR=1e-3: verification on out-of-fold embeddings; "
             "train s: optimiser steps only, total s: the whole run (wall clock), CPU s: its CPU time "
             "(about the wall time on an idle machine with threads=1).", "",
             f"Budget: `{' '.join(budget)}`; seeds: {', '.join(map(str, seeds))}"
             + (" (mean ± standard deviation over seeds)" if len(seeds) > 1 else ""), "",
             f"Machine: {os.cpu_count()} CPU cores, torch threads {_torch_threads()}, load average "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; whole bench {seconds / 60:.1f} min "
             f"({cpu_seconds / 60:.1f} min of CPU time).", ""]
    if len(datasets) > 1:
        parts += ["## Test MAP@5, all datasets", "", cross_table(summary, datasets), ""]
    for dataset in datasets:
        parts += [f"## {dataset}", "", summaries[dataset], "", markdown_table(summary[summary.dataset == dataset]), ""]
    return "\n".join(parts)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str]) -> int:
    try:
        options, overrides = parse_options(argv)
        out = Path(options["out"])
        out = out if out.is_absolute() else REPO_ROOT / out
        for method in options["methods"]:  # every config must load before an hour of training starts
            cfg = run_config(out / "data", out, "check", method, overrides)
        seeds = options["seeds"] or [cfg.seed]
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if options["threads"]:
        import torch

        torch.set_num_threads(int(options["threads"]))
    started, cpu_started = time.time(), time.process_time()
    summaries: dict[str, str] = {}
    records = []
    for dataset in options["datasets"]:
        try:
            root = DATASETS[dataset](out / "data" / dataset, int(options["data_seed"]))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        summaries[dataset] = dataset_summary(root)
        print(f"\n{dataset}: {summaries[dataset]}", flush=True)
        records.append({"dataset": dataset, "method": BASELINE, "seed": None, **baseline_row(root)})
        for method in options["methods"]:
            for seed in seeds:
                row = run_method(root, out, dataset, method, overrides, None if len(seeds) == 1 else seed,
                                 reuse=bool(options["reuse"]), verbose=bool(options["verbose"]))
                records.append(row)
                print(f"  {method:18s} seed {row['seed']}: test MAP@5 {_fmt(row.get('test_map5'))}  "
                      f"top-1 {_fmt(row.get('top1'))}  TAR@1e-3 {_fmt(row.get('tar_far_1e-3'))}  "
                      f"{_fmt(row.get('seconds'), 0)} s  {row['status']}", flush=True)
    frame = pd.DataFrame(records)
    frame["seed"] = frame.seed.astype("Int64")  # the baseline rows have none
    frame.to_csv(out / "heads.csv", index=False)
    text = report(summarise(frame), summaries, [*BUDGET, *overrides], seeds, time.time() - started,
                  time.process_time() - cpu_started)
    (out / "heads.md").write_text(text + "\n")
    print("\n" + text + f"\ntable: {out / 'heads.md'} (every run: heads.csv); run logs: {out / 'logs'}", flush=True)
    return 0
