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

import copy

import json
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.config import fill_missing, read_saved_config, save_config
from common.core.errors import ConfigError, DataError
from common.core.files import write_csv_atomic, write_json_atomic, write_npz_atomic
from common.core.paths import create_run, resolve_data_root, run_config, run_dir
from common.core.validate import validate_config
from common.data.tables import files_table
from common.engine import distributed, tracking
from common.engine.folds import run_folds
from common.engine.trainer import seed_everything
from common.metrics import plots
from common.tasks import TASKS

# what `predict` may always change: where data and outputs are, and how it runs (not what it computes)
ENGINE_PREDICT_KEYS = ("data.root", "data.cache_dir", "data.num_workers", "out", "images", "progress", "threads",
                       "infer.batch_size", "run.name", "run.root", "gpus", "nproc", "nodes")


def task_class(comp):
    return TASKS.get(comp.task, f"task of competition {comp.name}")


def train(comp, cfg) -> Path:
    """`train [key=value ...]`: every fold, the tuned post-processing, the test submission; with
    `pseudo.rounds=N`, N more runs (NAME.pseudo1, ...), each trained with the previous run's confident
    test answers as extra training images. Returns the last run."""
    run, task = train_run(comp, cfg)
    for number in range(1, int(task.cfg.pseudo.rounds) + 1):
        chosen = distributed.on_main(task.pseudo_labels, run)
        if chosen is None:
            break
        base = str(task.cfg.run.name).split(".pseudo")[0]
        cfg = copy.deepcopy(task.cfg)
        cfg.__dict__["_command_line_keys"] = task.cfg.command_line_keys
        cfg.run.name = f"{base}.pseudo{number}"
        print(f"\npseudo-label round {number}: run {cfg.run.name}", flush=True)
        run, task = train_run(comp, cfg, pseudo=chosen)
    return run


def train_run(comp, cfg, pseudo: tuple | None = None):
    """One run: (run directory, task). `pseudo`: (pseudo-labels, how they were chosen) from the run before."""
    cls = task_class(comp)
    distributed.init(cfg)  # joins the process group when launched by torchrun
    cfg = run_config(comp, cfg)  # resume=true: the saved config
    validate_config(cfg, cls)
    main = distributed.is_main()
    seed_everything(cfg.seed)
    started = time.time()
    root = Path(distributed.on_main(resolve_data_root, cfg, comp.name, comp.slug, comp.write_demo))  # demo: once
    task = cls(comp, cfg, root, purpose="train")  # the tables, checked: nothing written yet
    if pseudo is not None:
        task.add_pseudo_labels(pseudo[0])
    run = create_run(comp, cfg)
    task.prepare()
    folds = task.split()
    if main:
        save_config(cfg, run / "config.yaml")
        write_csv_atomic(task.fold_table(folds), run / "folds.csv")
        if pseudo is not None:
            write_csv_atomic(pseudo[0], run / "pseudo_labels.csv")
    tracking.start(cfg, run, comp.name)
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

    if cfg.train.full_fit:
        task.train_full(fold_dirs, run)
        distributed.barrier()
    metrics = distributed.on_main(task.tune, fold_dirs, folds, run)
    metrics.update(train_minutes=round((time.time() - started) / 60, 2), data_root=str(root),
                   processes=distributed.world_size(), **(pseudo[1] if pseudo is not None else {}))
    answers = task.predict(fold_dirs, metrics, run)
    if not main:
        return run, task
    submission = comp.write_submission(task.test_ids(), answers, run / "submission.csv", root)
    task.after_submission(submission)
    metrics.update(task.score_test(answers, metrics))
    write_json_atomic(run / "metrics.json", metrics)
    plots.training_curves(run / "log.csv", run / "curves.png")
    report = write_report(comp, cfg, run, root)
    tracking.finish(metrics)
    print("\n" + task.summary(metrics))
    print(f"submission: {submission}\n{report}run directory: {run}", flush=True)
    return run, task


def write_report(comp, cfg, run: Path, root: Path) -> str:
    """report.html at the end of train. Everything it shows is already saved, so a failure here costs
    nothing: it is reported with the command that rebuilds the page once fixed."""
    from common.report.build import build_report

    try:
        return f"report: {build_report(comp, cfg, run, root)}\n"
    except Exception as exc:  # noqa: BLE001 - the run is complete; the page is a view of it
        traceback.print_exc()
        return (f"warning: report.html was not written ({type(exc).__name__}: {exc}); rebuild it with "
                f"./run.sh {comp.name} report run.name={run.name}\n")


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
    added = fill_missing(saved, cfg)
    if added:
        print(f"run '{run.name}' was saved before {len(added)} key(s) existed; their defaults (the behaviour "
              f"from before them) apply: {', '.join(added[:6])}{' ...' if len(added) > 6 else ''}", flush=True)
    for key in given:
        saved.set_path(key, cfg.get_path(key))
    saved.data.cache_dir = cfg.data.cache_dir  # where, not what: never the training machine's folder
    saved.data.limit = None  # the whole gallery, whatever the training run used
    saved.resume = False
    validate_config(saved, cls)
    return saved


def open_finished_run(comp, cfg, purpose: str = "predict"):
    """A finished run's task on (possibly other) data: (task, saved config, run dir, metrics, fold dirs).
    purpose "files": the test set is the `images=` folder or file instead of the competition's."""
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
    files = None
    if purpose == "files":
        if not saved.get("images"):
            raise ConfigError("images=DIR_OR_FILE is required: the folder (searched recursively) or file to answer")
        files = files_table(saved.images, cls.id_column, cls.files_suffixes)  # bad input fails before any model loads
    root = resolve_data_root(saved, comp.name, comp.slug, comp.write_demo)
    task = cls(comp, saved, root, purpose=purpose)
    if (run / "pseudo_labels.csv").exists():  # a pseudo-label round: its gallery had them too
        task.add_pseudo_labels(pd.read_csv(run / "pseudo_labels.csv", keep_default_na=False, dtype=str))
    if files is not None:
        task.use_files(files)
    task.prepare()
    return task, saved, run, metrics, fold_dirs


def check_out(cfg, suffix: str) -> None:
    """A wrong `out=` suffix is refused before any work."""
    if cfg.get("out") and Path(cfg.out).suffix.lower() != suffix:
        raise ConfigError(f"out={cfg.out}: this command writes a {suffix} file")


def output_path(saved, run: Path, folder: str, stem: str, suffix: str) -> Path:
    """`out=FILE`, else a new time-stamped file inside the run."""
    check_out(saved, suffix)
    if saved.get("out"):
        return Path(saved.out)
    return run / folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"


def predict(comp, cfg) -> Path:
    """`predict run.name=NAME [data.root=DIR] [out=FILE] [switches]`: a finished run on a test set;
    with `images=DIR_OR_FILE`, on any folder or file instead (one row per file, no Kaggle layout)."""
    if "," in str(cfg.run.get("name") or ""):
        return predict_ensemble(comp, cfg)
    if cfg.get("images"):
        return predict_files(comp, cfg)
    check_out(cfg, ".csv")
    task, saved, run, metrics, fold_dirs = open_finished_run(comp, cfg)
    answers = task.predict(fold_dirs, metrics, run)
    if not distributed.is_main():
        return run
    out = output_path(saved, run, "predictions", "submission", ".csv")
    submission = comp.write_submission(task.test_ids(), answers, out, task.root)
    task.after_submission(submission)
    found = {k: v for k, v in task.score_test(answers, metrics).items() if isinstance(v, float)}
    if found:
        print(f"against the truth in {task.root}: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()))
    print(f"submission: {submission}", flush=True)
    return submission


def predict_ensemble(comp, cfg) -> Path:
    """`predict run.name=a,b,c [data.root=DIR] [out=FILE]`: several finished runs as one ensemble.

    The runs must share one split (identical folds.csv, the same folds trained), so that every
    out-of-fold image is answered only by models that never saw it and the joint OOF answers can
    tune the ensemble's threshold honestly. The tuning is kept in `outputs/<competition>/a+b+c/`
    (made once; a later call on other data reuses it), with the submission beside it."""
    cls = task_class(comp)
    names = [n.strip() for n in str(cfg.run.name).split(",") if n.strip()]
    if not cls.ensembles:
        raise ConfigError(f"run.name={cfg.run.name}: ensembles of runs are not built for the {cls.name} task yet")
    if len(set(names)) != len(names) or len(names) < 2:
        raise ConfigError(f"run.name={cfg.run.name}: two or more different finished runs, separated by commas")
    if cfg.get("images"):
        raise ConfigError("images= with an ensemble of runs is not built yet: predict the runs one by one")
    check_out(cfg, ".csv")
    members, saved = [], None
    for name in names:
        one = copy.deepcopy(cfg)
        one.run.name = name
        one.__dict__["_command_line_keys"] = cfg.command_line_keys  # what predict may override, per member
        task, member_saved, run, _, fold_dirs = open_finished_run(comp, one)
        saved = saved or member_saved
        members.append((task, run, fold_dirs))
    first = members[0]
    for task, run, fold_dirs in members[1:]:
        if (run / "folds.csv").read_bytes() != (first[1] / "folds.csv").read_bytes():
            raise ConfigError(f"runs '{first[1].name}' and '{run.name}' were trained on different splits "
                              f"(their folds.csv differ): an ensemble's OOF answers would leak; train them with "
                              "the same data, seed and train.folds")
        if [d.name for d in fold_dirs] != [d.name for d in first[2]]:
            raise ConfigError(f"runs '{first[1].name}' and '{run.name}' trained different folds "
                              f"({[d.name for d in first[2]]} vs {[d.name for d in fold_dirs]})")
    out_dir = first[1].parent / "+".join(names)
    out_dir.mkdir(exist_ok=True)
    answers, metrics = first[0].ensemble(members, out_dir)
    target = out_dir / "submission.csv"
    out = Path(saved.out) if saved.get("out") else (target if not target.exists() else
                                                     output_path(saved, out_dir, "predictions", "submission", ".csv"))
    submission = comp.write_submission(first[0].test_ids(), answers, out, first[0].root)
    found = {k: v for k, v in first[0].score_test(answers, metrics).items() if isinstance(v, float)}
    print("\n" + first[0].summary({**metrics, **found}))
    print(f"ensemble of {len(members)} runs: {out_dir}\nsubmission: {submission}", flush=True)
    return submission


def predict_files(comp, cfg) -> Path:
    """`predict run.name=NAME images=DIR_OR_FILE [out=FILE.csv]`: one row per file."""
    check_out(cfg, ".csv")
    task, saved, run, metrics, fold_dirs = open_finished_run(comp, cfg, purpose="files")
    frame = task.files_frame(task.predict(fold_dirs, metrics, run))
    out = output_path(saved, run, "predictions", "files", ".csv")
    write_csv_atomic(frame, out)
    task.after_submission(out)
    print(f"{len(frame)} file(s) from {saved.images} answered with run '{run.name}': {out}", flush=True)
    return out


def embed(comp, cfg) -> Path:
    """`embed run.name=NAME images=DIR_OR_FILE [out=FILE.npz]`: the run's embeddings of any images
    (the fold models' concatenated, L2-normalised), with their file names and paths."""
    check_out(cfg, ".npz")
    task, saved, run, metrics, fold_dirs = open_finished_run(comp, cfg, purpose="files")
    vectors = np.asarray(task.embed_test(fold_dirs, run), dtype=np.float32)
    out = output_path(saved, run, "embeddings", "embed", ".npz")
    write_npz_atomic(out, embeddings=vectors, files=np.asarray(task.test[task.id_column].tolist(), dtype=str),
                     paths=np.asarray(task.test.path.tolist(), dtype=str))  # str arrays: np.load needs no pickle
    print(f"{len(vectors)} embedding(s) of dimension {vectors.shape[1]} from {saved.images}: {out}", flush=True)
    return out
