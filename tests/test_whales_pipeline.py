"""End to end: `train preset=smoke` on a small generated set, then `predict` on another data root."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import competitions.whales as whales
from common.core.cli import main
from competitions.whales.submission import validate_submission
from common.core.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args) -> int:
    return main(whales.COMPETITION, list(args))


@pytest.fixture(scope="module")
def smoke_run(whale_demo, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = run_cli("train", "preset=smoke", f"data.root={whale_demo}", f"run.root={runs}", "run.name=smoke",
                   "progress=false", "data.num_workers=0", f"data.cache_dir={runs / 'cache'}")
    assert code == 0
    return runs, runs / "whales" / "smoke"


def test_train_writes_a_complete_run_directory(smoke_run, whale_demo):
    _, run = smoke_run
    for name in ["config.yaml", "log.csv", "folds.csv", "oof.csv", "metrics.json", "submission.csv",
                 "curves.png", "map5_vs_threshold.png", "similarity_hist.png", "roc.png", "report.html",
                 "fold0/best.pt", "fold0/last.pt", "fold0/oof.csv"]:
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ["oof_map5", "threshold", "oof_baseline_map5", "test_map5", "test_baseline_map5",
                "verify_roc_auc", "verify_tar_at_far_1e-3"]:
        assert key in metrics, key
    assert 0.0 <= metrics["oof_map5"] <= 1.0
    log = pd.read_csv(run / "log.csv")
    assert {"fold", "epoch", "train_loss", "map5", "lr", "seconds"} <= set(log.columns)
    assert log.epoch.tolist() == [0, 1, 2]  # smoke: one fold, the model before training, two epochs
    sample = pd.read_csv(whale_demo / "sample_submission.csv")
    validate_submission(pd.read_csv(run / "submission.csv"), sample)


def test_rerun_with_same_name_refuses_and_resume_reuses_finished_folds(smoke_run, whale_demo, capsys):
    runs, run = smoke_run
    args = ["train", "preset=smoke", f"data.root={whale_demo}", f"run.root={runs}", "run.name=smoke", "progress=false",
            "data.num_workers=0", f"data.cache_dir={runs / 'cache'}"]
    before = (run / "fold0" / "best.pt").stat().st_mtime_ns
    assert run_cli(*args) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(*args, "resume=true") == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (run / "fold0" / "best.pt").stat().st_mtime_ns == before


def test_predict_on_another_data_root_closed_set(smoke_run, tmp_path):
    runs, _ = smoke_run
    from competitions.whales.demo import write_demo

    other = write_demo(tmp_path / "other", n_identities=10, n_train=40, n_test=12, seed=7, progress=False)
    out = tmp_path / "pred.csv"
    code = run_cli("predict", f"run.root={runs}", "run.name=smoke", f"data.root={other}", "infer.new_whale=false",
                   f"out={out}", "progress=false", f"data.cache_dir={runs / 'cache'}")
    assert code == 0
    sub = pd.read_csv(out)
    validate_submission(sub, pd.read_csv(other / "sample_submission.csv"))
    gallery = set(pd.read_csv(other / "train.csv").Id) - {"new_whale"}
    answers = {label for row in sub.Id for label in row.split()}
    assert "new_whale" not in answers and answers <= gallery  # closed set, answered from the new gallery


# --- a finished run on any folder or file: predict images=, embed, export ----------------------

def _on_files(smoke_run, *args):
    runs, _ = smoke_run
    return run_cli(*args, f"run.root={runs}", "run.name=smoke", "progress=false", f"data.cache_dir={runs / 'cache'}")


def test_predict_images_answers_a_plain_folder_like_the_test_set(smoke_run, whale_demo, tmp_path):
    _, run = smoke_run
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    chosen = sorted((whale_demo / "test").iterdir())[:5]
    for path in chosen:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "answers.csv"
    assert _on_files(smoke_run, "predict", f"images={tmp_path / 'photos'}", f"out={out}") == 0
    answers = pd.read_csv(out)
    assert answers.file.tolist() == [f"nested/{p.name}" for p in chosen]
    assert {"prediction", "ranked", "score1", "score5", "path"} <= set(answers.columns)
    assert (answers.score1 >= answers.score2).all()
    submission = pd.read_csv(run / "submission.csv").set_index("Image")
    assert answers.prediction.tolist() == submission.loc[[p.name for p in chosen], "Id"].tolist()  # same answers

    single = tmp_path / "one.csv"
    assert _on_files(smoke_run, "predict", f"images={chosen[0]}", f"out={single}") == 0
    assert pd.read_csv(single).prediction.tolist() == answers.prediction.tolist()[:1]


def test_embed_writes_the_embeddings_predict_ranks_with(smoke_run, whale_demo, tmp_path):
    out = tmp_path / "emb.npz"
    assert _on_files(smoke_run, "embed", f"images={whale_demo / 'test'}", f"out={out}") == 0
    stored = np.load(out)  # no pickle needed: file names are a str array
    files = sorted(p.name for p in (whale_demo / "test").iterdir())
    assert stored["files"].tolist() == files and len(stored["paths"]) == len(files)
    emb = stored["embeddings"]
    assert emb.dtype == np.float32 and emb.shape[0] == len(files)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_predict_images_bad_input_is_a_clear_error(smoke_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _on_files(smoke_run, "predict", f"images={empty}") == 2
    assert f"{empty}: empty folder" in capsys.readouterr().err
    assert _on_files(smoke_run, "embed", f"images={tmp_path / 'absent'}") == 2
    assert "no such file or folder" in capsys.readouterr().err
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    assert _on_files(smoke_run, "predict", f"images={empty}") == 2
    assert "broken.jpg: unreadable or corrupt image" in capsys.readouterr().err
    assert _on_files(smoke_run, "embed", f"images={empty / 'broken.jpg'}", "out=x.csv") == 2
    assert "writes a .npz file" in capsys.readouterr().err


def test_export_writes_onnx_that_onnxruntime_runs_like_torch(smoke_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    import torch

    from common.core.config import read_saved_config
    from common.tasks.identification import Identification

    _, run = smoke_run
    out = tmp_path / "export"
    assert _on_files(smoke_run, "export", f"out={out}") == 0
    spec = json.loads((out / "preprocessing.json").read_text())
    assert spec["input"]["height"] == 48 and spec["input"]["width"] == 96 and spec["output"]["name"] == "embeddings"
    assert [m["file"] for m in spec["models"]] == ["fold0.onnx"]
    # independently of the command's own check: real images through onnxruntime and through torch
    images = torch.from_numpy(np.random.default_rng(1).random((4, 3, 48, 96), dtype=np.float32) * 4 - 2)
    session = onnxruntime.InferenceSession(str(out / "fold0.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    network = Identification.fold_network(read_saved_config(run / "config.yaml"), run / "fold0")
    with torch.no_grad():
        want = network(images).numpy()
    assert got.shape == (4, spec["models"] and want.shape[1])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_report_is_rebuilt_from_the_run_and_survives_missing_data(smoke_run, whale_demo, tmp_path):
    runs, run = smoke_run
    oof = pd.read_csv(run / "oof.csv", keep_default_na=False)
    first = oof.iloc[0]
    names = set(pd.read_csv(whale_demo / "train.csv").Image)
    assert len(first.neighbours.split()) == len(first.ranked.split()) and set(first.neighbours.split()) <= names
    (run / "report.html").unlink()
    assert run_cli("report", f"run.root={runs}", "run.name=smoke") == 0
    page = (run / "report.html").read_text()
    assert "Worst out-of-fold queries" in page and page.count("data:image/jpeg") > 10  # thumbnails of real images
    copy = tmp_path / "copied" / "whales" / "smoke"  # a downloaded run, its data elsewhere
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({**metrics, "data_root": str(tmp_path / "gone")}))
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(str(whale_demo), str(tmp_path / "gone")))
    assert run_cli("report", f"run.root={tmp_path / 'copied'}", "run.name=smoke") == 0
    page = (copy / "report.html").read_text()
    assert "images were not found" in page and "data:image/jpeg" not in page
    assert "data:image/png" in page  # the plots live in the run itself


def test_predict_needs_an_existing_run(tmp_path, capsys):
    assert run_cli("predict", f"run.root={tmp_path}", "run.name=nope") == 2
    assert "no run named 'nope'" in capsys.readouterr().err


# --- bad input is reported before training, naming the file -----------------------------------

@pytest.fixture
def broken_copy(whale_demo, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(whale_demo, root)
    return root


def _train_on(root, tmp_path):
    return run_cli("train", "preset=smoke", f"data.root={root}", f"run.root={tmp_path / 'runs'}",
                   "progress=false", f"data.cache_dir={tmp_path / 'cache'}")


def test_missing_column(broken_copy, tmp_path, capsys):
    pd.read_csv(broken_copy / "train.csv").rename(columns={"Id": "Whale"}).to_csv(broken_copy / "train.csv", index=False)
    assert _train_on(broken_copy, tmp_path) == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and "missing column Id" in err


def test_listed_image_absent(broken_copy, tmp_path, capsys):
    first = pd.read_csv(broken_copy / "train.csv").Image[0]
    (broken_copy / "train" / first).unlink()
    assert _train_on(broken_copy, tmp_path) == 2
    assert f"{first} does not exist" in capsys.readouterr().err


def test_unreadable_image(broken_copy, tmp_path, capsys):
    first = pd.read_csv(broken_copy / "train.csv").Image[0]
    (broken_copy / "train" / first).write_bytes(b"not a jpeg")
    assert _train_on(broken_copy, tmp_path) == 2
    err = capsys.readouterr().err
    assert first in err and "unreadable" in err
    assert not list((tmp_path / "runs").rglob("log.csv"))  # nothing was trained


def test_empty_test_folder(broken_copy, tmp_path, capsys):
    shutil.rmtree(broken_copy / "test")
    (broken_copy / "test").mkdir()
    assert _train_on(broken_copy, tmp_path) == 2
    assert "empty folder" in capsys.readouterr().err


# --- submission format --------------------------------------------------------------------------

def test_submission_validation():
    sample = pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": ["new_whale w_1 w_2 w_3 w_4"] * 2})
    good = pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": ["w_1 new_whale w_2 w_3 w_4", "w_9 w_1 w_2 w_3 w_4"]})
    validate_submission(good, sample)
    validate_submission(good.assign(Id=["w_1 w_2", "w_9 w_1 w_2 w_3 w_4"]), sample)  # fewer than 5: Kaggle accepts
    with pytest.raises(DataError, match="6 labels"):
        validate_submission(good.assign(Id=["w_1 w_2 w_3 w_4 w_5 w_6", "w_9 w_1 w_2 w_3 w_4"]), sample)
    with pytest.raises(DataError, match="repeats a label"):
        validate_submission(good.assign(Id=["w_1 w_1 w_2 w_3 w_4", "w_9 w_1 w_2 w_3 w_4"]), sample)
    with pytest.raises(DataError, match="same order"):
        validate_submission(good.iloc[::-1].reset_index(drop=True), sample)
    with pytest.raises(DataError, match="1 rows"):
        validate_submission(good.iloc[:1], sample)
    with pytest.raises(DataError, match="columns must be Image,Id"):
        validate_submission(good.rename(columns={"Id": "id"}), sample)


def test_run_sh_help_and_unknown_command_exit_non_zero():
    for args in (["help"], ["frobnicate"]):
        done = subprocess.run([str(REPO / "run.sh"), *args], capture_output=True, text=True)
        assert done.returncode != 0
        assert "usage" in done.stdout + done.stderr


def test_dynamic_margin_head_trains_and_predicts(whale_demo, tmp_path):
    """Dynamic per-class margins need class counts to build; prediction restores them from the checkpoint."""
    code = run_cli("train", "preset=smoke", f"data.root={whale_demo}", f"run.root={tmp_path}", "run.name=dyn",
                   "head.dynamic_margin=true", "train.epochs=1", "progress=false", "data.num_workers=0",
                   f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0
    assert (tmp_path / "whales" / "dyn" / "submission.csv").is_file()


def test_a_run_saved_before_newer_keys_still_predicts_the_same(smoke_run, tmp_path, capsys):
    import yaml

    runs, run = smoke_run
    old = tmp_path / "whales" / "old"
    shutil.copytree(run, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    for section, key in (("train", "full_fit"), ("train", "ema"), ("infer", "verify"), ("data", "resize")):
        del saved[section][key]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    out = tmp_path / "pred.csv"
    assert run_cli("predict", f"run.root={tmp_path}", "run.name=old", f"out={out}", "progress=false",
                   f"data.cache_dir={runs / 'cache'}") == 0
    assert "saved before 4 key(s) existed" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(run / "submission.csv"))
