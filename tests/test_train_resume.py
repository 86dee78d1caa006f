"""The trainer resumes an interrupted fold from its last finished epoch."""
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.core.config import load_config
from common.engine.trainer import load_best, param_groups, train_fold
from competitions.whales import COMPETITION

CONFIG_PATH = COMPETITION.config_path


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, labels=None):
        return {"logits": self.head(torch.relu(self.backbone(x)))}


def _setup(epochs=3):
    cfg = load_config(CONFIG_PATH, [f"train.epochs={epochs}", "train.warmup_epochs=0", "progress=false",
                                    "train.eval_initial=false"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    return cfg, loader


def ce(output, labels):
    loss = F.cross_entropy(output["logits"], labels)
    return loss, {}


def test_interrupted_fold_resumes_after_last_finished_epoch(tmp_path, capsys):
    cfg, loader = _setup(epochs=3)
    calls = {"n": 0}

    def crashing_eval(model):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the machine dies during epoch 2's validation
        return {"score": float(calls["n"])}

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, fold=0, model=Tiny(), train_loader=loader, loss_fn=ce, evaluate=crashing_eval,
                   fold_dir=tmp_path / "fold0", log_path=tmp_path / "log.csv", device=torch.device("cpu"),
                   monitor="score")
    assert (tmp_path / "fold0" / "last.pt").exists() and not (tmp_path / "fold0" / "done.json").exists()

    result = train_fold(cfg, fold=0, model=Tiny(), train_loader=loader, loss_fn=ce,
                        evaluate=lambda m: {"score": 0.5}, fold_dir=tmp_path / "fold0",
                        log_path=tmp_path / "log.csv", device=torch.device("cpu"), monitor="score")
    assert "resuming after epoch 0" in capsys.readouterr().out
    log = pd.read_csv(tmp_path / "log.csv")
    assert log.epoch.tolist() == [1, 2, 3]  # epoch 1 once, then 2 and 3 after the resume
    assert result.best_epoch == 1 and result.best_score == 1.0  # the best from before the crash is kept
    assert (tmp_path / "fold0" / "done.json").exists()


def test_head_gets_its_own_learning_rate_and_no_decay_on_biases():
    groups = param_groups(Tiny(), lr=1e-3, backbone_lr_mult=0.1, head_lr_mult=10.0, weight_decay=0.01)
    by = {(g["name"], g["weight_decay"] > 0): g["lr"] for g in groups}
    assert by[("backbone", True)] == pytest.approx(1e-4)
    assert by[("head", True)] == pytest.approx(1e-2)
    assert ("head", False) in by  # biases: no weight decay


def test_the_model_before_training_is_epoch_zero_and_wins_when_training_does_not_help(tmp_path, capsys):
    """Fine-tuning must never leave a fold worse than where it started (e.g. frozen ImageNet features)."""
    cfg, loader = _setup(epochs=2)
    cfg.train.eval_initial = True
    model = Tiny()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.9, 0.5, 0.6])  # before training, epoch 1, epoch 2
    result = train_fold(cfg, fold=0, model=model, train_loader=loader, loss_fn=ce, evaluate=lambda m: {"score": next(scores)},
                        fold_dir=tmp_path / "fold0", log_path=tmp_path / "log.csv", device=torch.device("cpu"),
                        monitor="score")
    assert result.best_epoch == 0 and result.best_score == 0.9
    assert pd.read_csv(tmp_path / "log.csv").epoch.tolist() == [0, 1, 2]
    best = load_best(Tiny(), tmp_path / "fold0")
    assert all(torch.equal(best.state_dict()[k], v) for k, v in initial.items())
    assert "no epoch beat the model before training" in capsys.readouterr().out
