"""tracking=none|tensorboard|mlflow: the numbers of log.csv reach the tracker, a missing package is a
clear error before anything is written, and a resumed run continues its MLflow run."""
from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.core.config import load_config
from common.core.errors import ConfigError
from common.core.validate import validate_config
from common.engine import tracking
from common.engine.trainer import train_fold
from competitions.whales import COMPETITION


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, labels=None):
        return {"logits": self.head(torch.relu(self.backbone(x)))}


def _train(run, tracker_name: str, epochs: int = 2):
    cfg = load_config(COMPETITION.config_path, [f"train.epochs={epochs}", "train.warmup_epochs=0", "progress=false",
                                                f"tracking={tracker_name}"])
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)),
                        batch_size=16)
    tracking.start(cfg, run, "whales")
    scores = iter([0.1, 0.5, 0.7, 0.9])
    train_fold(cfg, fold=0, model=Tiny(), train_loader=loader,
               loss_fn=lambda out, y: (F.cross_entropy(out["logits"], y), {}),
               evaluate=lambda m: {"map5": next(scores)}, fold_dir=run / "fold0", log_path=run / "log.csv",
               device=torch.device("cpu"), monitor="map5")
    return cfg


def test_tensorboard_gets_every_row_of_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, "tensorboard")
    tracking.finish({"oof_map5": 0.7})
    events = EventAccumulator(str(tmp_path / "tensorboard" / "fold0"))
    events.Reload()
    log = pd.read_csv(tmp_path / "log.csv")
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("map5")] == list(zip(log.epoch, log.map5.round(6)))


def test_mlflow_gets_the_log_the_config_and_the_files_and_resume_continues_the_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "whales" / "r1"
    run.mkdir(parents=True)
    _train(run, "mlflow")
    (run / "metrics.json").write_text(json.dumps({"oof_map5": 0.7, "threshold": float("inf")}))
    (run / "report.html").write_text("<html></html>")
    tracking.finish({"oof_map5": 0.7, "threshold": float("inf")})
    state = json.loads((run / "tracking.json").read_text())
    assert state["tracking_uri"].startswith("file:") and "mlruns" in state["tracking_uri"]
    client = MlflowClient(state["tracking_uri"])
    record = client.get_run(state["mlflow_run_id"])
    log = pd.read_csv(run / "log.csv")
    history = client.get_metric_history(record.info.run_id, "fold0/map5")
    assert sorted((m.step, round(m.value, 6)) for m in history) == list(zip(log.epoch, log.map5.round(6)))
    assert record.data.params["model.backbone"] and record.data.params["tracking"] == "mlflow"
    assert record.data.metrics["oof_map5"] == pytest.approx(0.7)
    artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert {"log.csv", "metrics.json", "report.html"} <= artifacts

    tracking.start(load_config(COMPETITION.config_path, ["tracking=mlflow"]), run, "whales")  # resume=true
    tracking.active().log_epoch(0, {"fold": 0, "epoch": 9, "map5": 0.95})
    tracking.finish({})
    assert json.loads((run / "tracking.json").read_text())["mlflow_run_id"] == record.info.run_id
    assert max(m.step for m in client.get_metric_history(record.info.run_id, "fold0/map5")) == 9


def test_a_missing_or_unknown_tracker_is_refused_before_anything_runs(monkeypatch):
    cfg = load_config(COMPETITION.config_path, ["tracking=wandb"])
    with pytest.raises(ConfigError, match="tracking"):
        validate_config(cfg)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install mlflow-skinny"):
        validate_config(load_config(COMPETITION.config_path, ["tracking=mlflow"]))


def test_no_tracker_writes_nothing_extra(tmp_path):
    _train(tmp_path, "none")
    tracking.finish({})
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "tracking.json").exists()
