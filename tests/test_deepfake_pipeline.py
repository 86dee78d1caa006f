"""Deepfake detection on the shared core: format, grouped folds, aggregation, calibration, robust
inference, the face cache, and one end-to-end smoke train + predict."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import competitions.deepfake as deepfake
from common.core.cli import main
from common.core.config import load_config
from common.core.errors import ConfigError, DataError
from common.engine.folds import assert_groups_within_folds, group_folds
from common.video.inference import (UNKNOWN, UnreadableVideoWarning, VideoPredictor, aggregate, calibrate,
                              frame_probabilities, to_tensor)
from common.metrics.scores import log_loss
from common.data.loaders import balanced_sample_weights
from common.losses.objective import class_weights
from common.video.calibration import fit_temperature, tune_clip_eps
from competitions.deepfake import COMPETITION
from competitions.deepfake.demo import TRAIN_DIR, write_demo, write_mp4
from competitions.deepfake.submission import validate_submission

SMALL = dict(n_real=4, fakes_per_real=2, n_test=4, n_frames=8, progress=False)
# preset=smoke, a little smaller still: the test must stay well under a minute on a busy 2-core box
FAST = ["preset=smoke", "data.image_size=[32,32]", "video.frames=4", "progress=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("deepfake_demo"), **SMALL)


@pytest.fixture(scope="module")
def smoke_run(demo, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ["train", *FAST, f"data.root={demo}", f"run.root={runs}", "run.name=smoke", f"data.cache_dir={runs / 'cache'}"]
    assert main(deepfake.COMPETITION, args) == 0
    return runs, runs / "deepfake" / "smoke", args


# --- end to end -----------------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(smoke_run, demo):
    _, run, _ = smoke_run
    for name in ["config.yaml", "log.csv", "folds.csv", "oof.csv", "metrics.json", "calibration.json", "submission.csv",
                 "curves.png", "reliability.png", "reliability_test.png", "logloss_vs_eps.png",
                 "fold0/best.pt", "fold0/last.pt", "fold0/oof_frames.csv"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ["oof_logloss", "baseline_logloss", "test_logloss", "test_baseline_logloss", "aggregation",
                "temperature", "clip_eps", "oof_logloss_mean", "oof_logloss_confident"]:
        assert key in metrics, key
    assert metrics["baseline_logloss"] == pytest.approx(math.log(2))
    assert metrics["aggregation"] in ("mean", "median", "confident")
    # the chosen aggregation is the one whose tuned post-processing scores best on OOF
    tuned = {s: metrics[f"oof_balanced_logloss_{s}_tuned"] for s in ("mean", "median", "confident")}
    assert metrics["aggregation"] == min(tuned, key=tuned.get)
    assert metrics["oof_logloss"] == pytest.approx(metrics[f"oof_logloss_{metrics['aggregation']}"])
    eps = metrics["clip_eps"]
    sub = pd.read_csv(run / "submission.csv")
    validate_submission(sub, pd.read_csv(demo / "sample_submission.csv"))
    assert sub.label.between(eps, 1 - eps).all()
    log = pd.read_csv(run / "log.csv")
    assert {"fold", "epoch", "train_loss", "logloss", "auc"} <= set(log.columns) and log.epoch.tolist() == [0, 1, 2]
    oof = pd.read_csv(run / "oof.csv")
    folds = pd.read_csv(run / "folds.csv")
    assert set(oof.video) == set(folds.video[folds.fold == 0])  # smoke: one fold's videos, each once
    assert_groups_within_folds(folds.fold, folds.group)
    assert_groups_within_folds(folds.fold, folds.fold_group)  # originals joined by estimated actor
    assert folds.fold_group.nunique() <= folds.group.nunique()
    for _, members in folds.groupby("group"):  # an original's videos are in one actor group
        assert members.fold_group.nunique() == 1


def test_rerun_refuses_and_resume_reuses_finished_folds(smoke_run, capsys):
    _, run, args = smoke_run
    before = (run / "fold0" / "best.pt").stat().st_mtime_ns
    assert main(deepfake.COMPETITION, args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(deepfake.COMPETITION, [*args, "resume=true"]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == before


def test_predict_decodes_videos_and_matches_the_cached_path(smoke_run, demo, tmp_path, capsys):
    runs, run, _ = smoke_run
    out = tmp_path / "pred.csv"
    assert main(deepfake.COMPETITION, ["predict", f"run.root={runs}", "run.name=smoke", f"data.root={demo}", f"out={out}",
                           "progress=false"]) == 0
    assert "against the truth in" in capsys.readouterr().out
    predicted = pd.read_csv(out)
    validate_submission(predicted, pd.read_csv(demo / "sample_submission.csv"))
    # on-the-fly decode + detect (predict, the Kaggle kernel) gives what training's cached faces gave
    np.testing.assert_allclose(predicted.label, pd.read_csv(run / "submission.csv").label, atol=1e-5)


def test_predict_images_answers_a_folder_of_videos_and_export_matches_torch(smoke_run, demo, tmp_path):
    runs, run, _ = smoke_run
    folder = tmp_path / "clips"
    folder.mkdir()
    chosen = sorted((demo / "test_videos").glob("*.mp4"))[:2]
    for path in chosen:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "answers.csv"
    common = [f"run.root={runs}", "run.name=smoke", "progress=false"]
    assert main(deepfake.COMPETITION, ["predict", *common, f"images={folder}", f"out={out}"]) == 0
    answers = pd.read_csv(out)
    assert answers.file.tolist() == [p.name for p in chosen]
    submission = pd.read_csv(run / "submission.csv").set_index("filename")
    np.testing.assert_allclose(answers.p_fake, submission.loc[answers.file, "label"], atol=1e-5)
    counts = pd.read_csv(tmp_path / "answers.faces.csv")  # the detection counts beside the answers
    assert counts.video.tolist() == [p.name for p in chosen]
    assert (counts.frames_with_face <= counts.frames_sampled).all() and (counts.frames_sampled > 0).all()

    pytest.importorskip("onnxruntime")
    assert main(deepfake.COMPETITION, ["export", *common, f"out={tmp_path / 'onnx'}"]) == 0
    spec = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert spec["output"]["name"] == "logits" and "temperature" in json.dumps(spec["postprocessing"])
    assert spec["models"][0]["max_abs_difference_vs_torch"] < 1e-3


def test_unreadable_video_gets_one_half_and_a_warning(smoke_run, demo, tmp_path):
    _, run, _ = smoke_run
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    good = sorted((demo / "test_videos").glob("*.mp4"))[0]
    predictor = VideoPredictor.load(run, device="cpu", progress=False)
    with pytest.warns(UnreadableVideoWarning) as caught:
        probs = predictor.predict([broken, tmp_path / "missing.mp4", good])
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.mp4" in messages and "missing.mp4: video file not found; predicting 0.5" in messages
    assert probs[0] == UNKNOWN and probs[1] == UNKNOWN
    eps = predictor.calibration["clip_eps"]
    assert eps <= probs[2] <= 1 - eps
    assert predictor.failures == [str(broken), str(tmp_path / "missing.mp4")]
    assert predictor.cfg.infer.workers == 2  # the default: two videos in flight, answers and records in order
    assert [r["video"] for r in predictor.records] == ["broken.mp4", "missing.mp4", good.name]
    records = list(predictor.records)
    for workers, read_ahead in ((1, 1), (1, 0)):  # one at a time, with the next video decoded meanwhile or not
        predictor.cfg.infer.workers, predictor.cfg.infer.read_ahead = workers, read_ahead
        predictor.records.clear(), predictor.failures.clear()
        with pytest.warns(UnreadableVideoWarning):
            np.testing.assert_array_equal(predictor.predict([broken, tmp_path / "missing.mp4", good]), probs)
        assert predictor.records == records and predictor.failures == [str(broken), str(tmp_path / "missing.mp4")]


def test_self_blend_only_trains_on_real_videos(demo, tmp_path, capsys):
    """`blend.mode=only`: no fake video in training, yet a classifier and a valid submission come out."""
    args = ["train", *FAST, "blend.mode=only", "train.epochs=1", f"data.root={demo}", f"run.root={tmp_path}",
            "run.name=sbi", f"data.cache_dir={tmp_path / 'cache'}", "infer.tta_flip=false"]
    assert main(deepfake.COMPETITION, args) == 0
    run = tmp_path / "deepfake" / "sbi"
    n_real = SMALL["n_real"] // 2  # fold 0 of 2 trains on the other half of the groups, reals only
    assert re.search(rf"fold 0: {n_real} training videos \(\d+ crops, real only \+ self-blends\)", capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["oof_logloss"] > 0
    validate_submission(pd.read_csv(run / "submission.csv"), pd.read_csv(demo / "sample_submission.csv"))


# --- format ---------------------------------------------------------------------------------


def _sample(n=3):
    return pd.DataFrame({"filename": [f"v{i}.mp4" for i in range(n)], "label": 0.5})


def test_submission_validation_names_the_problem():
    sample = _sample()
    good = sample.assign(label=[0.1, 0.9, 0.5])
    validate_submission(good, sample)
    cases = {
        "columns must be filename,label": good.rename(columns={"label": "prob"}),
        "rows": good.iloc[:2],
        "same videos, same order": good.iloc[::-1].reset_index(drop=True),
        "appears twice": pd.DataFrame({"filename": ["a.mp4", "a.mp4"], "label": [0.1, 0.2]}),
        "probability in \\[0, 1\\]": good.assign(label=[0.1, 1.5, 0.5]),
    }
    for message, frame in cases.items():
        with pytest.raises(DataError, match=message):
            validate_submission(frame, sample if message != "appears twice" else None)
    with pytest.raises(DataError, match="v1.mp4"):
        validate_submission(good.assign(label=[0.1, float("nan"), 0.5]), sample)


def test_write_submission_refuses_a_wrong_video_list(demo, tmp_path):
    test = COMPETITION.read_test(demo)
    with pytest.raises(DataError, match="sample_submission.csv"):
        COMPETITION.write_submission(test.video[::-1].tolist(), np.full(len(test), 0.5), tmp_path / "s.csv", demo)
    assert not (tmp_path / "s.csv").exists()


# --- folds ----------------------------------------------------------------------------------


def test_folds_keep_each_fake_with_its_original(demo):
    train = COMPETITION.read_train(demo)
    fakes = train[train.label == 1]
    assert (fakes.group == fakes.original).all() and fakes.original.isin(train.video).all()
    folds = group_folds(train.label, train.group, n_folds=2, seed=0)
    by_video = dict(zip(train.video, folds))
    assert all(by_video[v] == by_video[o] for v, o in zip(fakes.video, fakes.original))
    assert_groups_within_folds(folds, train.group)
    leaking = folds.copy()
    leaking[np.flatnonzero(train.video == fakes.video.iloc[0])] = 1 - by_video[fakes.original.iloc[0]]
    with pytest.raises(AssertionError, match="fold leak"):
        assert_groups_within_folds(leaking, train.group)


def test_missing_original_is_a_clear_error_or_kept_on_request(demo, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo, root)
    meta_path = root / TRAIN_DIR / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    original = next(e["original"] for e in metadata.values() if e["label"] == "FAKE")
    del metadata[original]
    (root / TRAIN_DIR / original).unlink()
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=rf"metadata.json.*names original {original}.*missing_original=keep"):
        COMPETITION.read_train(root)
    kept = COMPETITION.read_train(root, load_config(COMPETITION.config_path, ["video.missing_original=keep"]))
    orphans = kept[kept.original == original]
    assert len(orphans) == SMALL["fakes_per_real"] and (orphans.group == original).all()


def test_bad_metadata_label_names_the_file_and_video(demo, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo, root)
    meta_path = root / TRAIN_DIR / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    video = sorted(metadata)[0]
    metadata[video]["label"] = "MAYBE"
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=rf"metadata.json: video {video} has label 'MAYBE'"):
        COMPETITION.read_train(root)


# --- aggregation, calibration, clipping -----------------------------------------------------


def test_frame_probability_is_the_most_suspicious_face():
    probs = np.array([0.1, 0.7, 0.2, 0.3])
    frames = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(frame_probabilities(probs, frames), [0.7, 0.3])


def test_aggregation_strategies_on_constructed_frames():
    swap_in_a_third = np.array([0.95, 0.9, 0.92, 0.85, 0.93] + [0.3] * 7)  # 5 of 12 frames confidently fake
    assert aggregate(swap_in_a_third, "mean") == pytest.approx(swap_in_a_third.mean())
    assert aggregate(swap_in_a_third, "median") == pytest.approx(0.3)
    assert aggregate(swap_in_a_third, "confident") == pytest.approx(np.mean([0.95, 0.9, 0.92, 0.85, 0.93]))
    mostly_real = np.array([0.05] * 11 + [0.6])
    assert aggregate(mostly_real, "confident") == pytest.approx(0.05)
    undecided = np.array([0.9, 0.1, 0.5, 0.6])  # 1 of 4 confident: below the share, plain mean
    assert aggregate(undecided, "confident") == pytest.approx(undecided.mean())
    assert aggregate(swap_in_a_third, "confident", share=0.5) == pytest.approx(swap_in_a_third.mean())
    with pytest.raises(ConfigError, match="unknown aggregation"):
        aggregate(undecided, "vote")


def test_clip_eps_protects_against_a_confident_mistake_and_ties_go_to_larger_eps():
    y = np.array([1] * 9 + [0])
    p = np.array([0.999] * 9 + [0.999])  # the last one is confidently wrong
    eps, losses = tune_clip_eps(p, y, [0.001, 0.01, 0.1, 0.25])
    assert eps == 0.1 and losses[2] == min(losses) and losses[0] > losses[2]
    assert log_loss(y, np.clip(p, eps, 1 - eps)) < log_loss(y, p)
    assert calibrate(p, 1.0, eps).max() == pytest.approx(1 - eps)
    tie, _ = tune_clip_eps(np.array([0.3, 0.6, 0.7]), np.array([0, 1, 1]), [0.001, 0.01, 0.05])
    assert tie == 0.05  # nothing near the edges: every eps scores the same, the safest wins


def test_temperature_softens_overconfident_and_sharpens_timid_predictions():
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.05, 0.95, 4000)
    y = (rng.random(4000) < true_p).astype(int)  # outcomes drawn from the true probabilities
    overconfident = calibrate(true_p, temperature=0.25)  # logits x4
    timid = calibrate(true_p, temperature=4.0)
    assert fit_temperature(overconfident, y) == pytest.approx(4.0, rel=0.15)
    assert fit_temperature(timid, y) == pytest.approx(0.25, rel=0.15)
    assert log_loss(y, calibrate(overconfident, fit_temperature(overconfident, y))) < log_loss(y, overconfident)


def test_class_weights_balance_five_fakes_per_real():
    w_real, w_fake = class_weights(np.array([0] * 10 + [1] * 50))
    assert w_real * 10 == pytest.approx(w_fake * 50)


@pytest.mark.parametrize("blend_p", [0.0, 0.3])
def test_sampler_gives_half_positives_after_self_blending(blend_p):
    labels = np.array([0] * 10 + [1] * 50)
    weights = balanced_sample_weights(labels, blend_p)
    real_share = weights[labels == 0].sum() / weights.sum()
    assert real_share * (1 - blend_p) == pytest.approx(0.5)  # reals that stay real: half the batch
    assert np.allclose(balanced_sample_weights(np.zeros(5), 0.5), 0.2)  # real videos alone: uniform


# --- inference input matches training input -------------------------------------------------


def test_inference_normalisation_matches_the_training_transform():
    from common.data.augment import IMAGENET_MEAN, IMAGENET_STD, build_transform
    from common.video.inference import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD

    assert (MEAN, STD) == (IMAGENET_MEAN, IMAGENET_STD)
    crops = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expected = torch.stack([build_transform("none", (16, 16))(image=c)["image"] for c in crops])
    torch.testing.assert_close(to_tensor(crops, "cpu"), expected, atol=1e-5, rtol=1e-5)


# --- the face cache -------------------------------------------------------------------------


def test_face_cache_is_built_once_and_records_unreadable_videos(demo, tmp_path):
    from common.video.face_cache import FaceCache, FaceExtractor

    videos = sorted((demo / "test_videos").glob("*.mp4"))[:2]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"garbage")
    cache = FaceCache(FaceExtractor(frames=3, size=24), tmp_path / "cache", progress=False)
    errors = cache.build([*videos, broken])
    assert list(errors) == [str(broken)] and "broken.mp4" in errors[str(broken)]
    faces = cache.load(videos[0])
    assert faces.crops.shape == (3, 24, 24, 3) and faces.crops.dtype == np.uint8 and faces.found_faces
    stamps = {p: cache.crop_file(p).stat().st_mtime_ns for p in videos}
    again = FaceCache(FaceExtractor(frames=3, size=24), tmp_path / "cache", progress=False)
    assert again.build([*videos, broken]) == errors  # nothing recomputed, the error remembered
    assert {p: again.crop_file(p).stat().st_mtime_ns for p in videos} == stamps
    other = FaceCache(FaceExtractor(frames=2, size=24), tmp_path / "cache", progress=False)
    assert other.directory != cache.directory and not other.is_done(videos[0])  # new settings, new crops
    between = FaceCache(FaceExtractor(frames=3, size=24, detect_every=2, between="interpolate"), tmp_path / "cache",
                        progress=False)
    assert between.directory not in (cache.directory, other.directory)
    with pytest.raises(ConfigError, match="faces.mode=largest"):
        FaceExtractor(frames=3, size=24, mode="all", detect_every=2, between="interpolate")


def test_bad_choices_fail_before_any_folder_is_made(tmp_path, capsys):
    for override, message in [("faces.mode=some", "faces.mode=some; choose from largest, all"),
                              ("blend.mode=sometimes", "blend.mode=sometimes"),
                              ("data.image_size=[64,48]", "face crops are square"),
                              ("infer.aggregation=vote", "infer.aggregation=vote"),
                              ("faces.between=guess", "faces.between=guess; choose from look, interpolate")]:
        assert main(deepfake.COMPETITION, ["train", override, f"run.root={tmp_path}"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "deepfake").exists()


# --- real clips ------------------------------------------------------------------------------


def test_self_blend_only_on_real_clips_writes_a_valid_submission(shared_data, tmp_path, capsys):
    """Train on real faces alone (`blend.mode=only`, the real MTCNN detector, actor folds), from the
    shared real clips: carphone cut into three segments (one actor) plus the real DFDC clip; the test
    set is the third carphone segment and the FAKE DFDC clip. A valid submission must come out."""
    pytest.importorskip("facenet_pytorch")
    from common.video.frames import read_frames, video_info

    carphone = shared_data / "video" / "carphone_pristine.mp4"
    dfdc = shared_data / "dfdc_sample" / "train_sample_videos"
    if not carphone.is_file() or not (dfdc / "lynaeydofd.mp4").is_file():
        pytest.skip("the shared real clips are absent")
    root = tmp_path / "real"
    (root / TRAIN_DIR).mkdir(parents=True)
    (root / "test_videos").mkdir()
    frames = read_frames(carphone, video_info(carphone)["frames"])  # every frame
    thirds = np.array_split(np.arange(len(frames)), 3)
    for name, part, folder in (("car0", thirds[0], TRAIN_DIR), ("car1", thirds[1], TRAIN_DIR),
                               ("car2", thirds[2], "test_videos")):
        write_mp4(root / folder / f"{name}.mp4", frames[part])
    shutil.copy(dfdc / "lynaeydofd.mp4", root / TRAIN_DIR)
    shutil.copy(dfdc / "abofeumbvv.mp4", root / "test_videos")
    metadata = {f"{v}.mp4": {"label": "REAL", "split": "train", "original": None} for v in ("car0", "car1", "lynaeydofd")}
    (root / TRAIN_DIR / "metadata.json").write_text(json.dumps(metadata))
    sample = pd.DataFrame({"filename": ["abofeumbvv.mp4", "car2.mp4"], "label": 0.5})
    sample.to_csv(root / "sample_submission.csv", index=False)

    args = ["train", "preset=smoke", "video.frames=4", "train.epochs=1", "progress=false", "data.num_workers=0",
            "blend.mode=only", "faces.detector=mtcnn", "infer.tta_flip=false", f"data.root={root}",
            f"run.root={tmp_path}", "run.name=real_sbi", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(deepfake.COMPETITION, args) == 0
    out = capsys.readouterr().out
    assert "2 actors estimated among 3 real videos" in out  # the carphone segments are one person
    run = tmp_path / "deepfake" / "real_sbi"
    folds = pd.read_csv(run / "folds.csv")
    car = folds[folds.video.str.startswith("car")]
    assert car.fold.nunique() == 1 and car.fold_group.nunique() == 1
    submission = pd.read_csv(run / "submission.csv")
    validate_submission(submission, sample)
    found = re.search(r"faces: found in ([\d.]+)% of 8 sampled frames \(2 videos\)", out)
    assert found and float(found.group(1)) >= 75  # MTCNN on real faces (abofeumbvv loses one of 4 frames)
    counts = pd.read_csv(run / "submission.faces.csv")
    assert counts.set_index("video").loc["car2.mp4", "frames_with_face"] == 4


def test_real_preset_is_a_valid_config():
    """`preset=real` (README: deepfake on real clips) loads, validates and sets what it documents."""
    from common.core.validate import validate_config
    from common.tasks import TASKS

    cfg = load_config(COMPETITION.config_path, ["preset=real"])
    validate_config(cfg, TASKS.get(COMPETITION.task))
    assert (cfg.model.pretrained, cfg.augment.train, cfg.augment.part_dropout, cfg.video.frames) == \
        ("pypi", "face_real", 0.3, 32)
    assert (cfg.faces.detect_every, cfg.faces.between) == (4, "interpolate")


def test_pretrain_on_cached_face_crops_then_train_starts_from_it(demo, tmp_path, capsys):
    """`deepfake pretrain`: a pretext task on every cached crop of train and test videos; micle
    pairs frames of one video; `train model.init=.../backbone.pt` loads the pretrained backbone."""
    common = [*FAST, f"data.root={demo}", f"run.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(deepfake.COMPETITION, ["pretrain", *common, "ssl.method=micle", "ssl.epochs=1", "run.name=ssl"]) == 0
    out = capsys.readouterr().out
    n_videos = len(json.loads((demo / TRAIN_DIR / "metadata.json").read_text()))
    n_test = len(pd.read_csv(demo / "sample_submission.csv"))
    assert re.search(rf"of \d+ face crops of {n_videos} train \+ {n_test} test videos", out)
    run = tmp_path / "deepfake" / "ssl"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == n_videos * 4 + n_test * 4 and metrics["chance_loss"] > 0  # 4 frames, a face in each
    backbone = torch.load(run / "backbone.pt", map_location="cpu")

    from common.video.inference import build_classifier

    cfg = load_config(COMPETITION.config_path, [*FAST, f"model.init={run / 'backbone.pt'}"])
    model = build_classifier(cfg)
    for key, value in backbone.items():
        assert torch.equal(model.state_dict()[key], value), key
    conv = next(k for k, v in backbone.items() if v.ndim == 4)
    assert not torch.equal(build_classifier(cfg, pretrained=False).state_dict()[conv], backbone[conv])  # no init
