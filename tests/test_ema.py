"""train.ema: validation scores timm's ModelEmaV3 of the weights, best.pt holds it, resume continues it."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader, TensorDataset

from common.core.config import load_config
from common.core.files import load_checkpoint
from common.engine.trainer import load_best, train_fold
from competitions.whales import COMPETITION

DECAY = 0.5  # low enough that timm's warm-up (decay 0, then 0.37, ...) reaches it within a few steps


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)  # buffers: the EMA averages running statistics too
        self.head = nn.Linear(8, 3)

    def forward(self, x, labels=None):
        return {"logits": self.head(torch.relu(self.norm(self.backbone(x))))}


def ce(output, labels):
    return F.cross_entropy(output["logits"], labels), {}


def _cfg(ema: bool, epochs: int = 3, eval_initial: bool = False):
    torch.set_num_threads(1)
    return load_config(COMPETITION.config_path, [
        f"train.epochs={epochs}", "train.warmup_epochs=0", "progress=false", f"train.eval_initial={str(eval_initial).lower()}",
        f"train.ema={str(ema).lower()}", f"train.ema_decay={DECAY}", "train.accum_steps=2", "train.lr=0.05"])


def _loader():
    """Unshuffled: every run (and a resumed one) sees the same batches."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)  # 4 batches = 2 optimizer steps


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a, b):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def _train(tmp_path, cfg, evaluate, model=None, name="fold0"):
    torch.manual_seed(0)
    model = model if model is not None else Tiny()
    result = train_fold(cfg, fold=0, model=model, train_loader=_loader(), loss_fn=ce, evaluate=evaluate,
                        fold_dir=tmp_path / name, log_path=tmp_path / f"{name}.csv", device=torch.device("cpu"),
                        monitor="score")
    return result, model


def _run_recording(tmp_path, ema: bool, scores):
    """Trains with eval_initial; records the raw weights after every optimizer step and what each
    validation was given."""
    torch.manual_seed(0)
    model = Tiny()
    initial = _state(model)
    steps, evaluated = [], []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(_state(model)))
    scores = iter(scores)

    def evaluate(m):
        evaluated.append({"is_model": m is model, "state": _state(m), "raw": _state(model), "steps": len(steps)})
        return {"score": next(scores)}

    try:
        result = train_fold(_cfg(ema, eval_initial=True), fold=0, model=model, train_loader=_loader(), loss_fn=ce,
                            evaluate=evaluate, fold_dir=tmp_path / "fold0", log_path=tmp_path / "log.csv",
                            device=torch.device("cpu"), monitor="score")
    finally:
        handle.remove()
    return result, model, initial, steps, evaluated


def _manual_ema(steps):
    """timm's ModelEmaV3 with warm-up, by hand: step n averages with decay min(1 - n^(-2/3), DECAY)
    (n=1: a copy); integer buffers are copied."""
    ema, out = None, []
    for n, weights in enumerate(steps, start=1):
        decay = max(0.0, min(1 - (1 + (n - 1)) ** (-2 / 3), DECAY)) if n > 1 else 0.0
        ema = ({k: v.clone() for k, v in weights.items()} if ema is None else
               {k: (decay * ema[k] + (1 - decay) * v) if v.is_floating_point() else v.clone() for k, v in weights.items()})
        out.append(ema)
    return out


def test_validation_scores_the_ema_and_best_pt_holds_it(tmp_path):
    result, model, initial, steps, evaluated = _run_recording(tmp_path, True, [0.1, 0.3, 0.9, 0.5])
    assert result.best_epoch == 2
    assert len(steps) == 6  # 3 epochs x 2 optimizer steps (accum_steps=2): the EMA follows steps, not batches
    manual = _manual_ema(steps)
    assert [e["steps"] for e in evaluated] == [0, 2, 4, 6]
    assert not any(e["is_model"] for e in evaluated)  # always the EMA's module, epoch 0 included
    assert _equal(evaluated[0]["state"], initial)  # epoch 0: the EMA is the model
    for epoch in (1, 2, 3):
        seen = evaluated[epoch]
        assert _close(seen["state"], manual[2 * epoch - 1]), epoch
        assert not _close(seen["state"], seen["raw"]), epoch  # an average, not the current weights
    best = load_checkpoint(tmp_path / "fold0" / "best.pt")
    assert set(best) == {"model", "epoch", "score"} and best["epoch"] == 2  # the usual format
    assert _equal(best["model"], evaluated[2]["state"])
    assert _equal(load_best(Tiny(), tmp_path / "fold0").state_dict(), evaluated[2]["state"])
    last = load_checkpoint(tmp_path / "fold0" / "last.pt")
    assert last["ema_updates"] == 6 and _equal(last["ema"], evaluated[3]["state"])
    assert _equal(last["model"], _state(model))  # the resume point keeps the raw weights to train on


def test_ema_off_validates_and_saves_the_model_itself(tmp_path):
    result, model, initial, steps, evaluated = _run_recording(tmp_path, False, [0.1, 0.3, 0.9, 0.5])
    assert result.best_epoch == 2 and len(steps) == 6
    assert all(e["is_model"] for e in evaluated)
    assert _equal(evaluated[0]["state"], initial)
    best = load_checkpoint(tmp_path / "fold0" / "best.pt")
    assert set(best) == {"model", "epoch", "score"}
    assert _equal(best["model"], evaluated[2]["raw"])
    last = load_checkpoint(tmp_path / "fold0" / "last.pt")
    assert "ema" not in last and "ema_updates" not in last

    # the EMA only watches: with it on, training itself is bit for bit the same
    _, with_ema, *_ = _run_recording(tmp_path / "on", True, [0.1, 0.3, 0.9, 0.5])
    assert _equal(_state(with_ema), _state(model))


def test_resumed_ema_equals_uninterrupted(tmp_path):
    calls = {"n": 0}

    def score(m):
        calls["n"] += 1
        return {"score": float(calls["n"])}  # always improving: best.pt is the last epoch's EMA

    _train(tmp_path, _cfg(True), score, name="whole")

    calls["n"] = 0

    def crashing(m):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # dies during epoch 2's validation: the resume point is after epoch 1
        return {"score": float(calls["n"])}

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, _cfg(True), crashing, name="cut")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["ema_updates"] == 2
    calls["n"] = 1
    _train(tmp_path, _cfg(True), score, model=Tiny(), name="cut")

    whole, cut = (load_checkpoint(tmp_path / n / "last.pt") for n in ("whole", "cut"))
    assert whole["ema_updates"] == cut["ema_updates"] == 6
    assert _equal(whole["ema"], cut["ema"]) and _equal(whole["model"], cut["model"])
    assert _equal(load_checkpoint(tmp_path / "whole" / "best.pt")["model"],
                  load_checkpoint(tmp_path / "cut" / "best.pt")["model"])


def test_resume_point_without_ema_starts_it_from_the_model(tmp_path, capsys):
    calls = {"n": 0}

    def crashing(m):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return {"score": float(calls["n"])}

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, _cfg(False), crashing)
    assert "ema" not in load_checkpoint(tmp_path / "fold0" / "last.pt")
    _train(tmp_path, _cfg(True), lambda m: {"score": 0.0})
    assert "the resume point has no EMA of the weights" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "fold0" / "last.pt")["ema_updates"] == 4  # epochs 2 and 3 only
