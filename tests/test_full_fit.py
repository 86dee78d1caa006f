"""train.full_fit: a final model on every known training image, for the folds' mean best epoch, answers the test set."""
import json

import pandas as pd
import torch

import competitions.whales as whales
from common.core.cli import main


def _args(whale_demo, tmp_path):
    return [f"data.root={whale_demo}", f"run.root={tmp_path}", "progress=false", "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "threads=1"]


def test_full_fit_trains_the_folds_mean_best_epoch_and_answers_the_test_set(whale_demo, tmp_path, capsys):
    args = _args(whale_demo, tmp_path)
    # no epoch-0 candidate: the folds' best epochs are trained ones, so the full fit has epochs to train
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=full", "train.full_fit=true",
                                     "train.eval_initial=false"]) == 0
    run = tmp_path / "whales" / "full"
    best = json.loads((run / "fold0" / "done.json").read_text())["best_epoch"]
    assert best >= 1 and f"full fit: {best} epoch(s)" in capsys.readouterr().out
    log = pd.read_csv(run / "log.csv")
    full = log[log.fold == -1]
    assert full.epoch.tolist() == list(range(1, best + 1)) and full.map5.isna().all()  # trained, never validated
    weights = torch.load(run / "full" / "best.pt", weights_only=True)["model"]
    last = torch.load(run / "full" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], last[k]) for k in weights)  # best.pt = the last epoch
    assert json.loads((run / "full" / "classes.json").read_text())  # every known identity
    out = tmp_path / "again.csv"
    assert main(whales.COMPETITION, ["predict", *args, "run.name=full", f"out={out}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(run / "submission.csv"))
    # resume: the finished full fit is reused, not retrained
    before = (run / "full" / "best.pt").stat().st_mtime_ns
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=full", "train.full_fit=true",
                                     "train.eval_initial=false", "resume=true"]) == 0
    assert "full fit: finished earlier" in capsys.readouterr().out
    assert (run / "full" / "best.pt").stat().st_mtime_ns == before


def test_full_fit_is_skipped_when_the_folds_kept_the_initial_model(whale_demo, tmp_path, capsys):
    args = _args(whale_demo, tmp_path)
    # lr so small nothing changes: epoch 0 (the model before training) stays best, the mean best epoch is 0
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=keep", "train.full_fit=true",
                                     "train.lr=1e-12"]) == 0
    run = tmp_path / "whales" / "keep"
    assert json.loads((run / "fold0" / "done.json").read_text())["best_epoch"] == 0
    assert "full fit skipped" in capsys.readouterr().out and not (run / "full").exists()


def test_full_fit_is_refused_where_it_is_not_built(tmp_path, capsys):
    import competitions.landmarks as landmarks

    assert main(landmarks.COMPETITION, ["train", "preset=smoke", f"run.root={tmp_path}", "train.full_fit=true"]) == 2
    assert "train.full_fit=true: not built for the recognition task" in capsys.readouterr().err
