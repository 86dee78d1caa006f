"""`runs`: finished runs of a competition, best first, from fabricated run folders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

import competitions.deepfake as deepfake
import competitions.whales as whales
from common.core.cli import main
from common.core.config import load_config, save_config
from common.core.runs import key_metric, list_runs, lower_is_better


def fake_run(runs: Path, module, name: str, metrics: dict | None, overrides=(), mtime: float | None = None) -> Path:
    run = runs / module.COMPETITION.name / name
    run.mkdir(parents=True)
    save_config(load_config(module.COMPETITION.config_path, [f"run.name={name}", *overrides]), run / "config.yaml")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
        if mtime is not None:
            os.utime(run / "metrics.json", (mtime, mtime))
    return run


def test_runs_key_metric_prefers_oof_and_skips_baselines():
    assert key_metric({"oof_baseline_map5": 0.9, "test_map5": 0.8, "oof_map5": 0.6, "threshold": 0.5}) == \
        ("oof_map5", 0.6)
    assert key_metric({"oof_gap": 0.3, "oof_gap_rerank": 0.4, "oof_baseline_gap": 0.1}) == ("oof_gap", 0.3)
    assert key_metric({"baseline_logloss": 0.69, "oof_prior_logloss": 0.5, "oof_logloss": 0.2}) == ("oof_logloss", 0.2)
    assert key_metric({"map5": 0.4}) == ("map5", 0.4)  # no oof_ key: the first metric key
    assert key_metric({"test_map5": 0.4}) is None  # a test score alone is not the key metric
    assert key_metric({"test_baseline_map5": 0.1, "test_map5": 0.4}, prefix="test_") == ("test_map5", 0.4)
    assert key_metric({"threshold": 0.5, "oof_map5": True}) is None
    assert lower_is_better("oof_logloss") and not lower_is_better("oof_map5") and not lower_is_better("oof_gap")


def test_runs_sorted_best_first_with_their_settings(tmp_path):
    fake_run(tmp_path, whales, "mid", {"oof_map5": 0.5, "threshold": 0.61, "test_map5": 0.45}, ["train.folds=4"],
             mtime=1.7e9)
    fake_run(tmp_path, whales, "best", {"oof_baseline_map5": 0.9, "oof_map5": 0.7, "threshold": 0.55},
             ["model.backbone=resnet34", "model.head=cosface", "train.folds=5", "train.run_folds=[0,1]"])
    fake_run(tmp_path, whales, "worst", {"oof_map5": 0.2})
    fake_run(tmp_path, whales, "unfinished", None)
    (fake_run(tmp_path, whales, "broken", None) / "metrics.json").write_text("{not json")
    table = list_runs(tmp_path / "whales")
    assert table.run.tolist() == ["best", "mid", "worst"]
    best = table.iloc[0]
    assert (best.backbone, best["head"], best.folds, best.metric, best.score) == ("resnet34", "cosface", "2/5",
                                                                                "oof_map5", 0.7)
    assert best.threshold == 0.55 and pd.isna(best.test)  # no test truth: no test score
    mid = table.set_index("run").loc["mid"]
    assert mid.test == 0.45 and mid.folds == "4/4" and mid.date.startswith("2023-11-1")


def test_runs_log_loss_is_better_when_lower(tmp_path):
    fake_run(tmp_path, deepfake, "a", {"oof_logloss": 0.45, "baseline_logloss": 0.69})
    fake_run(tmp_path, deepfake, "b", {"oof_logloss": 0.25, "test_logloss": 0.3})
    fake_run(tmp_path, deepfake, "c", {"oof_logloss": 0.6})
    assert list_runs(tmp_path / "deepfake").run.tolist() == ["b", "a", "c"]


def test_runs_command_prints_the_table(tmp_path, capsys):
    fake_run(tmp_path, whales, "r-low", {"oof_map5": 0.31})
    fake_run(tmp_path, whales, "r-high", {"oof_map5": 0.62, "threshold": 0.5})
    fake_run(tmp_path, whales, "half", None)
    assert main(whales.COMPETITION, ["runs", f"run.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "2 finished run(s)" in lines[0] and "higher is better" in lines[0] and "1 unfinished" in lines[0]
    header = lines[1].split()
    assert header == ["run", "date", "backbone", "head", "folds", "threshold", "metric", "score", "test"]
    assert lines[2].split()[0] == "r-high" and "0.6200" in lines[2] and "oof_map5" in lines[2]
    assert lines[3].split()[0] == "r-low"
    assert "submit run.name=r-high" in out


def test_runs_command_without_runs(tmp_path, capsys):
    assert main(deepfake.COMPETITION, ["runs", f"run.root={tmp_path}"]) == 0
    assert "no finished run" in capsys.readouterr().out
