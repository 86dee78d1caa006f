"""Landmark recognition: format/layout integration, folds, kNN vote, distractor re-ranking, index
choice, and `train preset=smoke` + `predict` end to end on a tiny generated demo."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import common.tasks.recognition as recognition
import competitions.landmarks as landmarks
from common.core.cli import main
from common.core.errors import DataError
from common.metrics.scores import gap
from common.engine.folds import distractor_split, recognition_folds
from common.retrieval.vote import NO_CLASS, Neighbours, VoteSettings, find_neighbours, gap_of_codes, tune_vote, vote
from competitions.landmarks.demo import write_demo
from competitions.landmarks.layout import read_sample_submission, validate_submission

TINY = dict(n_landmarks=8, n_train=40, n_test=16, n_distractors=12, image_size=32, progress=False)
COMP = landmarks.COMPETITION


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("landmarks") / "demo", **TINY)


# --- the Kaggle format ---------------------------------------------------------------------------
def test_readers_follow_the_layout_and_the_sample_order(tiny_demo):
    train = COMP.read_train(tiny_demo)
    assert list(train.columns) == ["image", "label", "path"] and len(train) == TINY["n_train"]
    assert train.label.map(type).eq(str).all()
    test = COMP.read_test(tiny_demo)
    assert test.image.tolist() == read_sample_submission(tiny_demo)["id"].tolist()
    truth = COMP.read_truth(tiny_demo)
    assert truth.image.tolist() == test.image.tolist()
    assert truth.label.isna().sum() == TINY["n_test"] // 2  # half the test images show no landmark
    assert set(truth.label.dropna()) <= set(train.label)


def test_submission_is_written_in_sample_order_and_validated(tiny_demo, tmp_path):
    ids = COMP.read_test(tiny_demo).image.tolist()
    labels = ["17", None] + ["42"] * (len(ids) - 2)
    path = COMP.write_submission(ids, list(zip(labels, np.linspace(1, 0, len(ids)))), tmp_path / "sub.csv", tiny_demo)
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    validate_submission(sub, read_sample_submission(tiny_demo))
    assert sub.landmarks[0] == "17 1.000000" and sub.landmarks[1] == ""  # at most one prediction per image
    with pytest.raises(DataError, match="order"):
        COMP.write_submission(ids[::-1], list(zip(labels, np.ones(len(ids)))), tmp_path / "bad.csv", tiny_demo)
    with pytest.raises(DataError, match="not finite"):
        COMP.write_submission(ids, list(zip(labels, np.full(len(ids), np.nan))), tmp_path / "bad.csv", tiny_demo)


# --- folds -----------------------------------------------------------------------------------------
def test_folds_keep_every_class_in_training_and_singletons_out_of_validation():
    labels = ["solo"] + ["pair"] * 2 + ["three"] * 3 + ["big"] * 12
    folds = recognition_folds(labels, n_folds=4, seed=3)
    labels = np.array(labels)
    assert folds[0] == -1  # a class's only image is never held out
    for fold in range(4):
        val, train = labels[folds == fold], labels[folds != fold]
        assert set(val) <= set(train)
        assert 2 <= (val == "big").sum() <= 3 and (val == "pair").sum() <= 1
    assert (folds[labels == "pair"] >= 0).all() and len(set(folds[labels == "pair"])) == 2


def test_distractor_split_is_disjoint_and_differs_between_folds():
    q0, r0 = distractor_split(20, fold=0, share=0.25, seed=1)
    q1, _ = distractor_split(20, fold=1, share=0.25, seed=1)
    assert len(q0) == 5 and len(r0) == 15 and not set(q0) & set(r0) and set(q0) | set(r0) == set(range(20))
    assert set(q0) != set(q1)
    with pytest.raises(ValueError):
        distractor_split(20, 0, share=1.0)


# --- vote and re-ranking on constructed embeddings -----------------------------------------------------
def _unit(*pairs, dim=8):
    v = np.zeros(dim, np.float32)
    for axis, weight in pairs:
        v[axis] = weight
    return v / np.linalg.norm(v)


def test_similarity_weighted_vote():
    sims = np.array([[0.9, 0.5, 0.45, 0.4], [0.8, -np.inf, -np.inf, -np.inf], [-np.inf] * 4], np.float32)
    labels = np.array([["a", "b", "b", "b"], ["c", "", "", ""], ["", "", "", ""]])
    nb = Neighbours.from_labels(sims, labels, np.zeros((3, 4, 0)), np.zeros((3, 0)))
    pred, conf = vote(nb, VoteSettings(k=1))
    assert nb.classes[pred[:2]].tolist() == ["a", "c"] and pred[2] == NO_CLASS
    np.testing.assert_allclose(conf[:2], [0.9, 0.8])
    pred, conf = vote(nb, VoteSettings(k=4))  # three weaker "b" neighbours outvote one strong "a"
    assert nb.classes[pred[0]] == "b" and conf[0] == pytest.approx((0.5 + 0.45 + 0.4) / 4)
    assert nb.classes[pred[1]] == "c" and conf[1] == pytest.approx(0.8 / 4)


def _scene():
    """Classes on axes 0-2 (two gallery images each); distractors (indoor-like) around axis 6."""
    gallery = np.stack([_unit((0, 1), (7, .1)), _unit((0, 1), (7, -.1)), _unit((1, 1), (7, .1)),
                        _unit((1, 1), (7, -.1)), _unit((2, 1), (7, .1)),
                        _unit((2, .5), (6, 1))])  # the last image of class 2 is an indoor shot
    labels = ["A", "A", "B", "B", "C", "C"]
    distractors = np.stack([_unit((6, 1), (5, .2)), _unit((6, 1), (5, -.2)), _unit((6, 1), (4, .3))])
    queries = np.stack([_unit((0, 1), (3, .2)),            # an easy A
                        _unit((1, .55), (3, .85)),          # a hard B: low similarity, but a landmark
                        _unit((0, .7), (6, .72))])          # an indoor photo resembling A a little
    truth = ["A", "B", None]
    return gallery, labels, distractors, queries, truth


def test_a_distractor_like_query_loses_confidence_and_gap_improves():
    gallery, labels, distractors, queries, truth = _scene()
    nb = find_neighbours(gallery, labels, queries, distractors, k=2, topm=2, index_params={"use_gpu": False})
    assert nb.query_distractor.shape == (3, 2) and nb.gallery_distractor.shape == (3, 2, 2)
    plain_pred, plain_conf = vote(nb, VoteSettings(k=1))
    assert nb.classes[plain_pred].tolist() == ["A", "B", "A"]
    assert plain_conf[2] > plain_conf[1]  # without re-ranking the indoor photo outranks a true landmark
    rerank = VoteSettings(k=1, topm=2, query_penalty=1.0)
    pred, conf = vote(nb, rerank)
    assert conf[2] < conf[1] < conf[0]  # with it, the distractor-like query drops to the bottom
    assert conf[0] == pytest.approx(plain_conf[0], abs=0.05)  # a clean landmark barely moves
    truth_codes = nb.code_of(truth)
    assert gap_of_codes(pred, conf, truth_codes) == 1.0 > gap_of_codes(plain_pred, plain_conf, truth_codes)
    table = tune_vote(nb, truth, {"k": [1, 2], "topm": [1, 2], "query_penalty": [0.5, 1.0],
                                  "gallery_penalty": [1.0]}, rerank=True)
    assert table.gap.iloc[0] == 1.0 and table.query_penalty.iloc[0] > 0
    plain_only = tune_vote(nb, truth, {"k": [1, 2]}, rerank=False)
    assert (plain_only.query_penalty == 0).all() and len(plain_only) == 2


def test_a_gallery_image_that_looks_like_a_distractor_votes_less():
    gallery, labels, distractors, _, _ = _scene()
    query = _unit((2, .5), (6, 1), (3, .3))[None]  # nearest to the indoor image labelled C
    nb = find_neighbours(gallery, labels, query, distractors, k=3, topm=1, index_params={"use_gpu": False})
    assert nb.labels()[0, 0] == "C"
    _, plain = vote(nb, VoteSettings(k=1))
    _, penalised = vote(nb, VoteSettings(k=1, topm=1, gallery_penalty=1.0))
    assert penalised[0] < plain[0] - 0.5


def test_vectorised_gap_matches_the_metric():
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.integers(-2, 6, n)  # negative = a non-member image
    pred = np.where(rng.random(n) < 0.6, truth, rng.integers(0, 6, n))
    pred[rng.random(n) < 0.1] = NO_CLASS
    conf = rng.random(n).astype(np.float32)
    expected = gap([None if p < 0 else p for p in pred], conf, [None if t < 0 else t for t in truth])
    assert gap_of_codes(pred, conf, truth) == pytest.approx(expected, abs=1e-12)


def test_gallery_index_is_chosen_by_size(monkeypatch):
    built = []
    import common.retrieval.vote as vote_module

    real = vote_module.build_index

    def spy(vectors, **params):
        index = real(vectors, **params)
        built.append(type(index).__name__)
        return index

    monkeypatch.setattr(vote_module, "build_index", spy)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16))
    gallery = (np.repeat(centres, 40, axis=0) + 0.1 * rng.normal(size=(400, 16))).astype(np.float32)
    labels = np.repeat([f"c{i}" for i in range(10)], 40)
    queries = centres + 0.1 * rng.normal(size=(10, 16))
    exact = find_neighbours(gallery, labels, queries, k=5, topm=0, index_params={"exact_max": 1000, "use_gpu": False})
    ivf = find_neighbours(gallery, labels, queries, k=5, topm=0,
                          index_params={"exact_max": 100, "nlist": 8, "nprobe": 8, "use_gpu": False})
    assert built == ["IndexFlatIP", "IndexIVFFlat"] and (exact.index, ivf.index) == ("IndexFlatIP", "IndexIVFFlat")
    np.testing.assert_array_equal(exact.labels(), ivf.labels())  # nprobe = nlist: IVF searches everything
    assert (exact.labels()[:, 0] == [f"c{i}" for i in range(10)]).all()


# --- end to end ----------------------------------------------------------------------------------------
def _cli(*args):
    return main(landmarks.COMPETITION, list(args))


@pytest.fixture(scope="module")
def smoke_run(tiny_demo, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    common = [f"data.root={tiny_demo}", f"run.root={runs}", "run.name=smoke", "progress=false", "data.num_workers=0",
              f"data.cache_dir={runs / 'cache'}", "data.image_size=[32,32]", "train.batch_size=16"]
    assert _cli("train", "preset=smoke", *common) == 0
    return runs, runs / "landmarks" / "smoke", common


def test_train_writes_a_complete_run_and_a_valid_submission(smoke_run, tiny_demo, capsys):
    _, run, _ = smoke_run
    for name in ["config.yaml", "log.csv", "folds.csv", "oof.csv", "vote_grid.csv", "metrics.json", "submission.csv",
                 "curves.png", "confidence_hist.png", "gap_vs_query_penalty.png", "fold0/best.pt", "fold0/last.pt",
                 "fold0/oof.csv", "fold0/neighbours.npz", "fold0/embeddings/train.f16", "fold0/embeddings/test.ids"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ["oof_gap", "oof_gap_rerank", "oof_baseline_gap", "test_gap", "test_gap_plain", "test_baseline_gap"]:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["gallery_index"] == "IndexFlatIP"
    assert metrics["rerank_enabled"] and set(metrics["rerank"]) == {"k", "topm", "query_penalty", "gallery_penalty"}
    assert metrics["oof_gap_rerank"] >= metrics["oof_gap"]  # the grid includes "no penalty"
    oof = pd.read_csv(run / "oof.csv", dtype=str, keep_default_na=False)
    assert set(oof.kind) == {"member", "distractor"} and (oof.truth[oof.kind == "distractor"] == "").all()
    assert pd.read_csv(run / "log.csv").epoch.tolist() == [0, 1, 2]  # smoke: before training, two epochs
    sub = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    validate_submission(sub, read_sample_submission(tiny_demo))
    assert sub.landmarks.str.fullmatch(r"\d+ -?\d+\.\d+").all()


def test_resume_reuses_the_finished_fold(smoke_run, capsys):
    _, run, common = smoke_run
    before = (run / "fold0" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert _cli("train", "preset=smoke", *common) == 2
    assert "already exists" in capsys.readouterr().err
    assert _cli("train", "preset=smoke", *common, "resume=true") == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == before


def test_predict_on_another_data_root(smoke_run, tmp_path, capsys):
    runs, _, _ = smoke_run
    other = write_demo(tmp_path / "other", **{**TINY, "n_train": 24, "n_test": 10, "seed": 5})
    out = tmp_path / "pred.csv"
    assert _cli("predict", f"run.root={runs}", "run.name=smoke", f"data.root={other}", f"out={out}", "progress=false",
                f"data.cache_dir={runs / 'cache'}") == 0
    assert "against the truth in" in capsys.readouterr().out
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    validate_submission(sub, read_sample_submission(other))
    answers = {cell.split()[0] for cell in sub.landmarks if cell}
    assert answers <= set(pd.read_csv(other / "train.csv", dtype=str).landmark_id)  # answered from the new gallery


def test_predict_without_distractor_folder_uses_the_distractors_stored_in_the_run(smoke_run, tiny_demo, tmp_path,
                                                                                  capsys):
    runs, run, _ = smoke_run
    out = tmp_path / "pred.csv"
    assert _cli("predict", f"run.root={runs}", "run.name=smoke", f"data.root={tiny_demo}", "recognition.distractors=null",
                f"out={out}", "progress=false", f"data.cache_dir={runs / 'cache'}") == 0
    assert "no distractor embeddings" not in capsys.readouterr().out
    same = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str, keep_default_na=False), same)  # = train's re-ranked answer


def test_bad_input_is_reported_with_the_file(tiny_demo, tmp_path, capsys):
    assert _cli("predict", f"run.root={tmp_path}", "run.name=nope") == 2
    assert "no run named 'nope'" in capsys.readouterr().err
    assert _cli("train", "preset=smoke", f"data.root={tiny_demo}", f"run.root={tmp_path}", "progress=false",
                f"recognition.distractors={tmp_path / 'absent'}") == 2
    assert "absent: folder not found" in capsys.readouterr().err


# --- training-side pieces ------------------------------------------------------------------------------
def _config(*overrides):
    from common.core.config import load_config

    return load_config(landmarks.COMPETITION.config_path, ["data.num_workers=0", *overrides])


def test_rare_classes_are_sampled_more_than_their_share():
    import torch
    from torch.utils.data import TensorDataset

    from common.data.loaders import make_loader

    y = np.array([0] * 4 + [1] * 1000)
    dataset = TensorDataset(torch.zeros(len(y), 1), torch.as_tensor(y))
    drawn = np.concatenate([labels.numpy() for _, labels in make_loader(_config(), dataset, y, seed=0,
                                                                        default="class_balanced")])
    assert len(y) - 32 < len(drawn) <= len(y)  # one epoch (the last partial batch is dropped)
    share = np.mean(drawn == 0)  # expected 2 / (2 + sqrt(1000)) = 6 % with balance 0.5, not 0.4 %
    assert 0.03 < share < 0.1
    plain = make_loader(_config("train.sampler=random"), dataset, y, seed=0, default="class_balanced")
    assert np.mean(np.concatenate([labels.numpy() for _, labels in plain]) == 0) < 0.01  # plain shuffling


@pytest.mark.parametrize("mode", ["head", "knn"])
def test_per_epoch_validation_scores_gap(mode):
    """Both per-epoch evaluations on separable embeddings: right classes first, the distractor last."""
    import torch
    from types import SimpleNamespace

    from common.models.heads import create_head
    from common.tasks.recognition import EPOCH_EVALUATIONS, FoldData

    cfg = _config()
    centres = np.eye(8, dtype=np.float32)[:3]
    train_emb = np.repeat(centres, 2, axis=0)  # rows 0-5: classes 0,0,1,1,2,2
    query_emb = np.stack([_unit((0, 1), (4, .3)), _unit((1, 1), (4, .5)), _unit((7, 1), (2, .2))])
    embeddings = np.concatenate([train_emb, query_emb])
    state = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), labels=np.array(["a", "a", "b", "b", "c", "c"],
                                                                                 dtype=object),
                            embed=lambda model, rows, desc, tta: embeddings[rows])
    fold = FoldData(train_rows=np.arange(6), val_rows=np.array([]), distractor_queries=np.array([]),
                    distractor_reference=np.array([]), classes=["a", "b", "c"], y=np.array([0, 0, 1, 1, 2, 2]),
                    query_rows=np.array([6, 7, 8]), query_truth=["a", "b", None],
                    query_truth_codes=np.array([0, 1, -2]))
    head = create_head("subcenter_arcface", 8, 3, {**_config().head, "subcenters": 1, "dynamic_margin": False})
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(centres))
    assert EPOCH_EVALUATIONS[mode](state, fold)(SimpleNamespace(head=head)) == {"gap": 1.0}
