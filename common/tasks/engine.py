"""The one `train` and the one `predict`, for every task and competition.

train:   check the config -> run folder -> the task on the data -> folds.csv -> ONE fold loop
         (a fold whose out-of-fold answers exist is reused: resume) -> tune on out-of-fold answers
         -> predict the test set with the fold models -> submission.csv, metrics.json, curves.png.
predict: a finished run on (possibly other) data. Its rule, written once: the run's saved config
         wins; only ENGINE_PREDICT_KEYS and the task's documented inference switches may be set,
         anything else is refused, since a model predicted under other settings than those it was
         tuned with (TTA, image size, threshold) would silently score worse.

`train` runs in every process under torchrun (`gpus=N` / `nproc=N`) and only the main one writes;
`predict` runs in one process (its `gpus` picks the device).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from common.core.config import read_saved_config, save_config
from common.core.errors import ConfigError, DataError
from common.core.files import write_csv_atomic, write_json_atomic
from common.core.paths import create_run, resolve_data_root, run_config, run_dir
from common.core.validate import validate_config
from common.engine import distributed
from common.engine.folds import run_folds
from common.engine.trainer import seed_everything
from common.metrics import plots
from common.tasks import TASKS

# what `predict` may always change: where data and outputs are, and how it runs (not what it computes)
ENGINE_PREDICT_KEYS = ("data.root", "data.cache_dir", "data.num_workers", "out", "progress", "threads",
                       "infer.batch_size", "run.name", "run.root", "gpus", "nproc", "nodes")


def task_class(comp):
    return TASKS.get(comp.task, f"task of competition {comp.name}")


def train(comp, cfg) -> Path:
    """`train [key=value ...]`: every fold, the tuned post-processing, the test submission."""
    cls = task_class(comp)
    distributed.init(cfg)  # joins the process group when launched by torchrun
    cfg = run_config(comp, cfg)  # resume=true: the saved config
    validate_config(cfg, cls)
    main = distributed.is_main()
    seed_everything(cfg.seed)
    started = time.time()
    root = Path(distributed.on_main(resolve_data_root, cfg, comp.name, comp.slug, comp.write_demo))  # demo: once
    task = cls(comp, cfg, root, purpose="train")  # the tables, checked: nothing written yet
    run = create_run(comp, cfg)
    task.prepare()
    folds = task.split()
    if main:
        save_config(cfg, run / "config.yaml")
        write_csv_atomic(task.fold_table(folds), run / "folds.csv")
    print(f"{comp.name}: {task.describe()}; data {root}; run {run}", flush=True)

    fold_dirs = []
    for fold in run_folds(cfg):
        fold_dir = run / f"fold{fold}"
        if (fold_dir / cls.fold_marker).exists():
            print(f"fold {fold}: finished earlier, reusing its out-of-fold answers", flush=True)
        else:
            task.train_fold(fold, folds, fold_dir, run / "log.csv")
        distributed.barrier()
        fold_dirs.append(fold_dir)

    metrics = distributed.on_main(task.tune, fold_dirs, folds, run)
    metrics.update(train_minutes=round((time.time() - started) / 60, 2), data_root=str(root),
                   processes=distributed.world_size())
    answers = task.predict(fold_dirs, metrics, run)
    if not main:
        return run
    submission = comp.write_submission(task.test_ids(), answers, run / "submission.csv", root)
    metrics.update(task.score_test(answers, metrics))
    write_json_atomic(run / "metrics.json", metrics)
    plots.training_curves(run / "log.csv", run / "curves.png")
    print("\n" + task.summary(metrics))
    print(f"submission: {submission}\nrun directory: {run}", flush=True)
    return run


def predict_config(cls, cfg, run: Path):
    """The run's saved config with the command line's allowed keys applied; other keys refused."""
    allowed = set(ENGINE_PREDICT_KEYS) | set(cls.predict_overrides)
    given = list(getattr(cfg, "command_line_keys", ()))
    refused = [key for key in given if key not in allowed and key != "preset"]
    if refused or "preset" in given:
        raise ConfigError(
            f"predict uses the settings run '{run.name}' was trained and tuned with ({run / 'config.yaml'}); "
            f"refused: {', '.join(refused + (['preset'] if 'preset' in given else []))}. "
            f"predict may set only {', '.join(sorted(allowed))}")
    saved = read_saved_config(run / "config.yaml")
    for key in given:
        saved.set_path(key, cfg.get_path(key))
    saved.data.cache_dir = cfg.data.cache_dir  # where, not what: never the training machine's folder
    saved.data.limit = None  # the whole gallery, whatever the training run used
    saved.resume = False
    validate_config(saved, cls)
    return saved


def predict(comp, cfg) -> Path:
    """`predict run.name=NAME [data.root=DIR] [out=FILE] [switches]`: a finished run on a test set."""
    cls = task_class(comp)
    run = run_dir(cfg, comp.name, create=False)
    saved = predict_config(cls, cfg, run)
    distributed.init(saved)
    metrics_path = run / "metrics.json"
    if not metrics_path.exists():
        raise DataError(f"{metrics_path}: missing (run '{run.name}' did not finish, so it has no tuned post-processing)")
    metrics = json.loads(metrics_path.read_text())
    fold_dirs = [run / f"fold{f}" for f in run_folds(saved)]
    missing = [str(d / name) for d in fold_dirs for name in cls.fold_files if not (d / name).exists()]
    if missing:
        raise DataError(f"run '{run.name}': no trained model in {', '.join(missing)}")
    root = resolve_data_root(saved, comp.name, comp.slug, comp.write_demo)
    task = cls(comp, saved, root, purpose="predict")
    task.prepare()
    answers = task.predict(fold_dirs, metrics, run)
    if not distributed.is_main():
        return run
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(saved.out) if saved.get("out") else run / "predictions" / f"submission-{stamp}.csv"
    submission = comp.write_submission(task.test_ids(), answers, out, root)
    found = {k: v for k, v in task.score_test(answers, metrics).items() if isinstance(v, float)}
    if found:
        print(f"against the truth in {root}: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
    print(f"submission: {submission}", flush=True)
    return submission
