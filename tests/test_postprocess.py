"""Retrieval post-processing tuned on OOF (common/retrieval/postprocess.py), and a smoke run that uses it."""
import json

import numpy as np
import pandas as pd
import pytest

import competitions.whales as whales
from common.core.cli import main
from common.core.config import Config
from common.retrieval import postprocess
from common.retrieval.index import build_index, l2_normalize, search
from common.retrieval.rerank import k_reciprocal_rerank


def clustered(seed: int, n_ids: int = 12, per_id: int = 3, n_new: int = 6, dim: int = 16, noise: float = 0.9):
    """A fold: a gallery of `per_id` noisy views per identity, one query per identity plus never-seen ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + n_new, dim))
    gallery = np.repeat(centres[:n_ids], per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    query = centres + noise * rng.normal(size=centres.shape)
    labels = np.repeat([f"id{i}" for i in range(n_ids)], per_id).astype(object)
    truth = [f"id{i}" for i in range(n_ids)] + ["new_whale"] * n_new
    return postprocess.FoldAnswers(l2_normalize(query), l2_normalize(gallery), labels, truth)


def infer(**on) -> Config:
    return Config({"dba": False, "query_expansion": False, "kreciprocal": False, **on,
                   "tune_grid": {"dba": {"k": [1, 2], "alpha": [3.0]}, "query_expansion": {"k": [1, 2], "alpha": [1.0, 3.0]},
                                 "kreciprocal": {"k1": [5], "k2": [2], "lambda_value": [0.3]}}})


def test_candidates_are_the_grid_product():
    assert postprocess.candidates({"k": [1, 2], "alpha": [3.0]}) == [{"k": 1, "alpha": 3.0}, {"k": 2, "alpha": 3.0}]
    assert postprocess.candidates({"k": 4}) == [{"k": 4}]


def test_shortlist_without_steps_is_faiss_and_kreciprocal_orders_by_its_distance():
    fold = clustered(0)
    sims, ids = postprocess.shortlist(fold.query, fold.gallery, 10)
    ref_sims, ref_ids = search(build_index(fold.gallery), fold.query, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    sims, ids = postprocess.shortlist(fold.query, fold.gallery, 7, [("kreciprocal", {"k1": 5, "k2": 2, "lambda_value": 0.3})])
    distance = k_reciprocal_rerank(fold.query, fold.gallery, 5, 2, 0.3)
    np.testing.assert_array_equal(ids, np.argsort(distance, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(sims, 1 - np.take_along_axis(distance, ids, axis=1), atol=1e-6)
    assert (np.diff(sims, axis=1) <= 1e-7).all()


def test_tuning_keeps_the_best_of_off_and_the_grid_in_order():
    folds = [clustered(1), clustered(2)]
    steps, tried = postprocess.tune_steps(folds, infer(dba=True, query_expansion=True), "new_whale", 20, 100,
                                          log=lambda _: None)
    assert tried[0]["postprocess"] == "none"
    assert len(tried) == 1 + 2 + 4  # none, the dba grid, the QE grid (given the chosen dba)
    assert [name for name, _ in steps] in ([], ["dba"], ["query_expansion"], ["dba", "query_expansion"])
    final = postprocess.score(folds, [postprocess.shortlist(f.query, f.gallery, 20, steps) for f in folds], "new_whale")
    assert final == max(row["oof_map5"] for row in tried) and final >= tried[0]["oof_map5"]


def test_a_post_processor_that_cannot_help_is_switched_off():
    # well separated identities: plain retrieval is already perfect, nothing can strictly beat it
    folds = [clustered(3, noise=0.01)]
    steps, tried = postprocess.tune_steps(folds, infer(query_expansion=True, kreciprocal=True), "new_whale", 20, 100,
                                          log=lambda _: None)
    assert tried[0]["oof_map5"] == pytest.approx(1.0) and steps == []


def test_kreciprocal_is_skipped_when_the_test_set_would_not_fit(capsys):
    steps, tried = postprocess.tune_steps([clustered(4)], infer(kreciprocal=True), "new_whale", 20,
                                          postprocess.KRECIPROCAL_MAX_ITEMS + 1)
    assert steps == [] and len(tried) == 1 and "kreciprocal skipped" in capsys.readouterr().out


def test_fusion_is_a_calibrated_probability_rising_with_inliers():
    rng = np.random.default_rng(0)
    same = rng.random(2000) < 0.2
    similarity = np.where(same, 0.6, 0.4) + 0.15 * rng.normal(size=same.size)
    inliers = np.where(same, rng.poisson(6, same.size), rng.poisson(2, same.size))
    fusion = postprocess.Fusion.fit(similarity, inliers, same)
    assert fusion.coef[0] > 0 and fusion.coef[1] > 0
    p = fusion(similarity, inliers)
    assert p.shape == similarity.shape and ((p > 0) & (p < 1)).all()
    assert abs(p.mean() - same.mean()) < 0.02  # calibrated on its own data: mean probability = base rate
    assert fusion(np.array([0.5]), np.array([50]))[0] > fusion(np.array([0.5]), np.array([0]))[0]
    again = postprocess.Fusion(**fusion.to_dict())
    np.testing.assert_allclose(again(similarity, inliers), p)
    with pytest.raises(ValueError, match="same and different"):
        postprocess.Fusion.fit(similarity, inliers, np.ones_like(same))


def test_same_identity_marks_pairs_and_ignores_padding():
    ids = np.array([[0, 2, -1], [1, 0, 2]])
    same = postprocess.same_identity(ids, np.array(["a", "b", "a"], dtype=object), ["a", "b"])
    assert same.tolist() == [[True, True, False], [True, False, False]]


def test_smoke_run_tunes_post_processing_and_predict_applies_it(whale_demo, tmp_path):
    args = [f"data.root={whale_demo}", f"run.root={tmp_path}", "progress=false", "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}", "threads=1"]
    on = ["infer.query_expansion=true", "infer.verify=orb", "infer.verify_k=5", "infer.verify_features=300"]
    assert main(whales.COMPETITION, ["train", "preset=smoke", *args, "run.name=pp", *on]) == 0
    run = tmp_path / "whales" / "pp"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("oof_map5_plain", "oof_map5_unfused", "postprocess", "test_top1_known", "test_new_first"):
        assert key in metrics, key
    chosen = json.loads((run / "postprocess.json").read_text())
    assert chosen["fusion"] and chosen["tried"][0]["oof_map5"] == pytest.approx(metrics["oof_map5_plain"])
    assert list((tmp_path / "cache" / "whales" / "local_features").glob("orb-300-512/*.npz"))  # features cached
    oof = pd.read_csv(run / "oof.csv", keep_default_na=False)
    assert {"ranked", "neighbours", "score1", "prediction"} <= set(oof.columns)
    assert oof.score1.between(0, 1).all()  # fused scores are probabilities
    out = tmp_path / "again.csv"
    assert main(whales.COMPETITION, ["predict", *args, "run.name=pp", f"out={out}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(run / "submission.csv"))
    assert main(whales.COMPETITION, ["export", *args, "run.name=pp"]) == 0
    spec = json.loads((run / "export" / "preprocessing.json").read_text())
    assert spec["retrieval_postprocessing"]["verification"] == "orb"
    assert spec["retrieval_postprocessing"]["steps"] == chosen["steps"]
    page = (run / "report.html").read_text()
    assert "out-of-fold, without post-processing" in page and "post-processing chosen on OOF" in page
