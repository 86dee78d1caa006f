"""`./run.sh <competition> runs`: the finished runs of a competition, best first.

Why: after a few experiments a user must pick what to submit or ensemble, and the answer is spread
over outputs/<competition>/*/metrics.json and config.yaml. A run is finished when it has a
metrics.json; its key metric is the first key naming the competition's metric (`map5`, `gap`,
`logloss`), preferring out-of-fold (`oof_*`) and skipping baselines. Log loss is better when lower.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import yaml

from common.core.paths import outputs_root

METRIC_NAMES = ("map5", "gap", "logloss")
LOWER_IS_BETTER = ("logloss",)
_NOT_A_SCORE = ("baseline", "prior")  # trivial references stored beside the real score
COLUMNS = ["run", "date", "backbone", "head", "folds", "threshold", "metric", "score", "test"]


def _is_score(key: str, value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and any(m in key for m in METRIC_NAMES)
            and not any(word in key for word in _NOT_A_SCORE))


def key_metric(metrics: dict, prefix: str = "oof_") -> tuple[str, float] | None:
    """(key, value) of the headline score: the first `oof_*` metric key, else the first metric key at all."""
    scores = [(k, float(v)) for k, v in metrics.items() if _is_score(k, v)]
    preferred = [kv for kv in scores if kv[0].startswith(prefix)]
    if prefix == "oof_":
        scores = [kv for kv in scores if not kv[0].startswith("test_")]
    return (preferred or scores or [None])[0]


def lower_is_better(key: str) -> bool:
    return any(name in key for name in LOWER_IS_BETTER)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def run_summary(run: Path) -> dict | None:
    """One row of the table for a run directory, or None when it has no (readable) metrics.json."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    found = key_metric(metrics)
    test = key_metric({k: v for k, v in metrics.items() if k.startswith("test_")}, prefix="test_")
    config = _read_yaml(run / "config.yaml")
    model, train = config.get("model") or {}, config.get("train") or {}
    n_folds = train.get("folds")
    run_folds = train.get("run_folds")
    trained = len(run_folds) if run_folds is not None else n_folds
    return {
        "run": run.name,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime((run / "metrics.json").stat().st_mtime)),
        "backbone": model.get("backbone"),
        "head": model.get("head"),
        "folds": f"{trained}/{n_folds}" if n_folds else None,
        "threshold": metrics.get("threshold"),
        "metric": found[0] if found else None,
        "score": found[1] if found else None,
        "test": test[1] if test else None,
    }


def _lower_is_better(table: pd.DataFrame) -> bool:
    names = table.metric.dropna()
    return bool(len(names)) and lower_is_better(str(names.iloc[0]))


def list_runs(folder: Path) -> pd.DataFrame:
    """Finished runs under `folder` (outputs/<competition>/), best first; runs without a score go last."""
    runs = sorted(p for p in Path(folder).iterdir() if p.is_dir()) if Path(folder).is_dir() else []
    rows = [row for run in runs if (row := run_summary(run)) is not None]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        return table
    score = pd.to_numeric(table.score, errors="coerce")
    key = score if _lower_is_better(table) else -score
    return table.assign(_key=key).sort_values(["_key", "date"], na_position="last", kind="stable") \
        .drop(columns="_key").reset_index(drop=True)


def runs_command(comp, cfg, args) -> pd.DataFrame:
    """`runs`: print the table of finished runs (outputs/<competition>/*/metrics.json), best first."""
    folder = outputs_root(cfg) / comp.name
    table = list_runs(folder)
    if table.empty:
        print(f"no finished run in {folder} (a run is finished once it has metrics.json)")
        return table
    unfinished = sum(1 for d in folder.iterdir() if d.is_dir() and (d / "config.yaml").exists()
                     and not (d / "metrics.json").exists())  # run folders only (not mlruns/)
    better = "lower" if _lower_is_better(table) else "higher"
    shown = table.copy()
    for column in ("score", "test", "threshold"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    print(f"{len(table)} finished run(s) in {folder}, best first ({better} is better)"
          + (f"; {unfinished} unfinished not shown" if unfinished else "") + ":")
    print(shown.fillna("").to_string(index=False))
    print(f"submit one with: ./run.sh {comp.name} submit run.name={table.run.iloc[0]}")
    return table
