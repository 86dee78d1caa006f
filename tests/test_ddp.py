"""DistributedDataParallel on CPU (gloo), for every task: 2 processes write what 1 process writes and
reach its result within noise (same seed, same global batches; only per-process BatchNorm
statistics differ)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _whales(root: Path) -> Path:
    from competitions.whales.demo import write_demo

    return write_demo(root, n_identities=24, n_train=120, n_test=40, progress=False)


def _happywhale(root: Path) -> Path:
    from competitions.happywhale.demo import write_demo

    return write_demo(root, n_identities=20, n_train=100, n_test=30, progress=False)


def _landmarks(root: Path) -> Path:
    from competitions.landmarks.demo import write_demo

    # 48 test images: GAP over 16 moved by 0.24 between two correct runs on one machine (and not on another)
    return write_demo(root, n_landmarks=8, n_train=40, n_test=48, n_distractors=12, image_size=32, progress=False)


def _deepfake(root: Path) -> Path:
    from competitions.deepfake.demo import write_demo

    return write_demo(root, n_real=4, fakes_per_real=2, n_test=4, n_frames=8, progress=False)


# competition -> (demo writer, headline metric, tolerance, extra keys)
CASES = {
    "whales": (_whales, "map5", 0.08, ["augment.train=none", "train.batch_size=16"]),
    "happywhale": (_happywhale, "map5", 0.08, ["augment.train=none", "train.batch_size=16"]),
    "landmarks": (_landmarks, "gap", 0.15, ["augment.train=none", "train.batch_size=16"]),
    "deepfake": (_deepfake, "logloss", 0.1, ["data.image_size=[32,32]", "video.frames=4"]),
}


def _train(name: str, root: Path, runs: Path, run_name: str, *extra: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    args = [sys.executable, "-m", f"competitions.{name}", "train", "preset=smoke", f"data.root={root}",
            f"run.root={runs}", f"run.name={run_name}", "progress=false", "data.num_workers=0", "gpus=0",
            f"data.cache_dir={runs / 'cache'}", "train.eval_initial=false",  # compare trained models, not initial ones
            *CASES[name][3], *extra]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = runs / name / run_name
    return json.loads((run / "metrics.json").read_text()), done.stdout, run


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ddp_two_gloo_processes_match_single_process(name, tmp_path):
    writer, metric, tolerance, _ = CASES[name]
    root = writer(tmp_path / "data")
    single, _, single_run = _train(name, root, tmp_path, "single")
    double, out, double_run = _train(name, root, tmp_path, "ddp", "nproc=2")
    assert "launching 2 process(es)" in out
    assert double["processes"] == 2 and single["processes"] == 1
    assert _files(double_run) == _files(single_run)
    keys = [k for k in single if k.startswith(("oof_", "test_")) and k.endswith(metric)]
    assert f"oof_{metric}" in keys and f"test_{metric}" in keys
    print(name, {k: (round(single[k], 4), round(double[k], 4)) for k in keys})
    for key in keys:
        assert abs(double[key] - single[key]) < tolerance, (key, single[key], double[key])
    _check_report(name, single_run)


# the galleries each task's report must show (common/report/retrieval.py, video.py)
GALLERIES = {"whales": "Worst out-of-fold queries", "happywhale": "Identities most often confused",
             "landmarks": "Queries the distractor re-ranking rescued", "deepfake": "cost the most log loss"}


def _check_report(name: str, run: Path) -> None:
    """The smoke run's report.html: its galleries, and in a real browser (when Chromium is installed)
    every image decodes and the page prints nothing to the console; the screenshot stays in the run."""
    from common.report.browser import check_page, find_browser

    page = (run / "report.html").read_text()
    assert "Headline" in page and "trivial baseline" in page and GALLERIES[name] in page
    assert "src=\"http" not in page and "<img" in page  # self-contained
    if find_browser() is None:
        return
    result = check_page(run / "report.html", run / "report.png")
    assert result.ok, (result.images, result.broken_images, result.console)
    assert result.images > 5 and (run / "report.png").stat().st_size > 10_000


def test_pretrain_under_two_gloo_processes_writes_one_run(tmp_path):
    root = _whales(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    args = [sys.executable, "-m", "competitions.whales", "pretrain", "preset=smoke", "ssl.method=simclr",
            "ssl.epochs=1", "ssl.max_images=64", f"data.root={root}", f"run.root={tmp_path}", "progress=false",
            "data.num_workers=0", "gpus=0", "nproc=2", f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = list((tmp_path / "whales").iterdir())
    assert len(runs) == 1, runs  # one timestamped folder for both processes
    assert (runs[0] / "backbone.pt").is_file() and json.loads((runs[0] / "metrics.json").read_text())["images"] == 64
