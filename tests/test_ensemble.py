"""predict run.name=a,b: finished runs as one ensemble, tuned once on their joint out-of-fold answers."""
import json

import numpy as np
import pandas as pd

import competitions.whales as whales
from common.core.cli import main
from competitions.whales.submission import validate_submission


def test_two_runs_on_one_split_ensemble_and_a_different_split_is_refused(whale_demo, tmp_path, capsys):
    args = [f"data.root={whale_demo}", f"run.root={tmp_path}", "progress=false", "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "threads=1"]
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=a", "train.eval_initial=false"]) == 0
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=b", "train.eval_initial=false",
                                     "model.head=cosface", "model.embedding_dim=32"]) == 0
    capsys.readouterr()
    assert main(whales.COMPETITION, ["predict", *args, "run.name=a,b"]) == 0
    out = capsys.readouterr().out
    ensemble = tmp_path / "whales" / "a+b"
    metrics = json.loads((ensemble / "metrics.json").read_text())
    assert [p.split("/")[-1] for p in metrics["members"]] == ["a", "b"] and "ensemble of 2 runs" in out
    validate_submission(pd.read_csv(ensemble / "submission.csv"), pd.read_csv(whale_demo / "sample_submission.csv"))
    oof = pd.read_csv(ensemble / "oof.csv", keep_default_na=False)
    assert len(oof) == metrics["oof_images"] and 0 <= metrics["oof_map5"] <= 1
    # the joint embedding: mean cosine of the members' cosines, so its OOF scores lie between theirs at most
    members = [pd.read_csv(tmp_path / "whales" / r / "oof.csv", keep_default_na=False) for r in "ab"]
    assert np.all(oof.score1.to_numpy() <= np.maximum(members[0].score1, members[1].score1).to_numpy() + 1e-5)
    # a second call reuses the tuning and writes a new file, never over the first
    again = tmp_path / "again.csv"
    assert main(whales.COMPETITION, ["predict", *args, "run.name=a,b", f"out={again}"]) == 0
    assert "tuned earlier" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(again), pd.read_csv(ensemble / "submission.csv"))
    # another seed, another split: refused before any answer
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=c", "seed=1"]) == 0
    capsys.readouterr()
    assert main(whales.COMPETITION, ["predict", *args, "run.name=a,c"]) == 2
    assert "different splits" in capsys.readouterr().err
    assert main(whales.COMPETITION, ["predict", *args, "run.name=a,a"]) == 2
