"""The Kaggle kernel folder: built from a run, and its script run locally against a fake /kaggle."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import run_kernel_script
import torch

import competitions.deepfake as deepfake
from common.core.cli import main
from common.core.config import load_config, save_config
from common.video.inference import build_classifier
from common.kaggle.kernel import (WHEELS_LIST, KernelPlan, build_kernel, install_wheels, kernel_script, pip_install_command,
                           slugify)
from competitions.deepfake.demo import write_demo
from competitions.deepfake.submission import validate_submission

SLUG = "deepfake-k1"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory as `train` leaves it (untrained weights: the kernel does not care)."""
    runs = tmp_path_factory.mktemp("runs")
    run = runs / "deepfake" / "k1"
    (run / "fold0").mkdir(parents=True)
    cfg = load_config(deepfake.COMPETITION.config_path, ["preset=smoke", "data.image_size=[32,32]", "video.frames=3",
                                             "model.backbone=resnet10t", "run.name=k1", f"run.root={runs}"])
    save_config(cfg, run / "config.yaml")
    torch.save({"model": build_classifier(cfg).state_dict(), "epoch": 1}, run / "fold0" / "best.pt")
    (run / "calibration.json").write_text(json.dumps({"aggregation": "confident", "temperature": 1.5, "clip_eps": 0.02}))
    (run / "metrics.json").write_text(json.dumps({"oof_logloss": 0.6, "aggregation": "confident"}))
    return run


@pytest.fixture(scope="module")
def kernel(run) -> Path:
    runs = run.parent.parent
    assert main(deepfake.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "kernel.username=tester"]) == 0
    return run / "kaggle"


def test_kernel_folder_is_ready_to_push(kernel):
    meta = json.loads((kernel / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"tester/{SLUG}" and meta["kernel_type"] == "script" and meta["language"] == "python"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == ["deepfake-detection-challenge"]
    assert meta["dataset_sources"] == [f"tester/{SLUG}-{part}" for part in ("code", "weights", "wheels")]
    assert (kernel / "kernel" / meta["code_file"]).is_file()
    code = kernel / "code"
    for name in ["common/video/inference.py", "common/kaggle/kernel.py", "competitions/deepfake/__init__.py", "run.sh",
                 "requirements.txt", "dataset-metadata.json"]:
        assert (code / name).is_file(), name
    assert not list(code.rglob("__pycache__"))
    for name in ["config.yaml", "calibration.json", "fold0/best.pt", "dataset-metadata.json"]:
        assert (kernel / "weights" / name).is_file(), name
    assert json.loads((kernel / "weights" / "dataset-metadata.json").read_text())["id"] == f"tester/{SLUG}-weights"
    wheels = kernel / "wheels"
    assert (wheels / WHEELS_LIST).read_text().split() == ["timm", "av", "facenet-pytorch"]
    assert "pip download" in (wheels / "NOTE.md").read_text() and not list(wheels.glob("*.whl"))
    assert "kaggle kernels push -p" in (kernel / "README.md").read_text()


def test_script_runs_offline_against_a_fake_kaggle(kernel, tmp_path):
    root = tmp_path / "kaggle"
    data = root / "input" / "deepfake-detection-challenge"
    demo = write_demo(tmp_path / "demo", n_real=1, fakes_per_real=0, n_test=3, n_frames=6, progress=False)
    shutil.copytree(demo / "test_videos", data / "test_videos")
    (data / "test_videos" / "broken.mp4").write_bytes(b"not a video")
    sample = pd.read_csv(demo / "sample_submission.csv")
    sample = pd.concat([sample, pd.DataFrame({"filename": ["broken.mp4"], "label": [0.5]})], ignore_index=True)
    sample.to_csv(data / "sample_submission.csv", index=False)
    (root / "working").mkdir()
    result = run_kernel_script(kernel, root, SLUG, tmp_path, timeout=180)
    assert "no wheels to install" in result.stdout
    submission = pd.read_csv(root / "working" / "submission.csv")
    validate_submission(submission, sample)
    assert submission.label.iloc[-1] == 0.5  # the unreadable video
    assert submission.label.iloc[:-1].between(0.02, 0.98).all()  # calibration.json's clip eps applied
    assert "broken.mp4" in result.stdout + result.stderr


def test_wheels_are_installed_offline_from_the_wheels_dataset(tmp_path):
    calls = []

    def runner(command):
        calls.append(command)
        return SimpleNamespace(returncode=0)

    assert install_wheels(None, runner) is False
    (tmp_path / WHEELS_LIST).write_text("timm\nav\n")
    assert install_wheels(tmp_path, runner) is False and not calls  # a list but no wheels: nothing to do
    (tmp_path / "timm-1.0.0-py3-none-any.whl").write_bytes(b"")
    assert install_wheels(tmp_path, runner) is True
    assert calls == [pip_install_command(tmp_path, ["timm", "av"])]
    command = calls[0]
    assert command[command.index("--find-links") + 1] == str(tmp_path) and "--no-index" in command


def test_wheels_option_downloads_with_pip(run, tmp_path):
    calls = []
    plan = KernelPlan(username="u", slug="x-run", competition="some-competition", entry_point="m:f",
                      requirements=["timm"])
    build_kernel(plan, run, ["config.yaml"], tmp_path / "k", repo_root=Path(deepfake.__file__).parents[2],
                 wheels=True, python_version="3.11", platforms=["manylinux2014_x86_64"],
                 runner=lambda c: calls.append(c) or SimpleNamespace(returncode=0))
    (command,) = calls
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert command[command.index("-d") + 1] == str(tmp_path / "k" / "wheels") and command[-1] == "timm"
    assert "--python-version" in command and "--platform" in command and not (tmp_path / "k" / "wheels" / "NOTE.md").exists()


def test_script_names_the_datasets_and_entry_point():
    plan = KernelPlan(username="u", slug=slugify("Deepfake_Run 01!"), competition="c", entry_point="pkg.mod:go")
    assert plan.slug == "deepfake-run-01"
    script = kernel_script(plan)
    compile(script, "kernel.py", "exec")
    for text in ["deepfake-run-01-code", "deepfake-run-01-weights", "deepfake-run-01-wheels", "pkg.mod:go",
                 "sys.path.insert(0, str(code))", "KAGGLE_ROOT"]:
        assert text in script


def test_kernel_needs_a_finished_run(tmp_path, capsys):
    (tmp_path / "deepfake" / "half").mkdir(parents=True)
    assert main(deepfake.COMPETITION, ["kernel", f"run.root={tmp_path}", "run.name=half"]) == 2
    assert "no config.yaml" in capsys.readouterr().err
