"""pseudo.rounds: confident test answers (at a precision measured on OOF) train the next round."""
import json

import numpy as np
import pandas as pd

import competitions.whales as whales
from common.core.cli import main
from common.retrieval.pseudo import confidence_threshold, select


def test_confidence_threshold_is_the_widest_cut_at_the_precision():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, False]
    assert confidence_threshold(scores, correct, 1.0) == (0.8, 1.0, 2)
    assert confidence_threshold(scores, correct, 0.75) == (0.6, 0.75, 4)  # 3 of the top 4
    assert confidence_threshold(scores, correct, 0.5)[2] == 5
    assert confidence_threshold([0.9, 0.8], [False, True], 0.9) is None
    # a cut never splits equal scores: the tie at 0.8 (one right, one wrong) goes in or out together
    assert confidence_threshold([0.9, 0.8, 0.8], [True, True, False], 0.9) == (0.9, 1.0, 1)
    assert confidence_threshold([-np.inf, 0.5], [True, True], 0.9) == (0.5, 1.0, 1)


def test_select_keeps_confident_known_answers():
    frame = select(["a", "b", "c"], ["pa", "pb", "pc"], [["w1", "w2"], ["w3"], []],
                   np.array([[0.9, 0.1], [0.4, -np.inf], [-np.inf, -np.inf]]), 0.5)
    assert frame.to_dict("list") == {"image": ["a"], "label": ["w1"], "score": [0.9], "path": ["pa"]}


def test_a_round_trains_with_the_pseudo_labels_and_predict_uses_them(whale_demo, tmp_path):
    args = [f"data.root={whale_demo}", f"run.root={tmp_path}", "progress=false", "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "threads=1"]
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=p", "pseudo.rounds=1",
                                     "pseudo.precision=0.2"]) == 0
    first, second = tmp_path / "whales" / "p", tmp_path / "whales" / "p.pseudo1"
    chosen = pd.read_csv(second / "pseudo_labels.csv", keep_default_na=False)
    metrics = json.loads((second / "metrics.json").read_text())
    assert len(chosen) == metrics["pseudo_images"] > 0 and metrics["pseudo_oof_precision"] >= 0.2
    test_names = set(pd.read_csv(whale_demo / "sample_submission.csv").Image)
    assert set(chosen.image) <= test_names and (chosen.label != "new_whale").all()
    assert (chosen.score >= metrics["pseudo_threshold"]).all()
    folds = pd.read_csv(second / "folds.csv")
    assert (folds.fold[folds.image.isin(chosen.image)] == -1).all()  # trained on, never validated on
    # the OOF queries are the real training images only, the same as the first round's
    assert sorted(pd.read_csv(second / "oof.csv").image) == sorted(pd.read_csv(first / "oof.csv").image)
    out = tmp_path / "again.csv"
    assert main(whales.COMPETITION, ["predict", *args, "run.name=p.pseudo1", f"out={out}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(second / "submission.csv"))
