"""Hostile input, replayed: nothing lost, nothing escapes (checkpoints that run code, run names that
are paths, kills during writes, two runs with one name, paths out of the data root, corrupt images,
degenerate labels, a cache that was tampered with). Each case ends in a clear error before anything
is written, or in the previous complete file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.core.cli import main
from common.core.errors import DataError
from common.core.files import load_checkpoint, save_checkpoint, write_json_atomic
from competitions import load

REPO = Path(__file__).resolve().parent.parent
WHALES = load("whales")


class RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint does to a pickle loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from competitions.whales.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("safety") / "demo", n_identities=10, n_train=40, n_test=10, progress=False)


def _copy(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "data"))


def _train(root: Path, runs: Path, *extra: str) -> int:
    return main(WHALES, ["train", "preset=smoke", f"data.root={root}", f"run.root={runs}", "progress=false",
                         "data.num_workers=0", f"data.cache_dir={runs / 'cache'}", *extra])


# --- 1. a checkpoint can run code ---------------------------------------------------------------
def test_a_crafted_init_checkpoint_is_refused_without_running_it(tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": RunsAShellCommand(marker)}, tmp_path / "evil.pt")
    assert _train(tiny, tmp_path / "runs", "run.name=x", f"model.init={tmp_path / 'evil.pt'}") == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


# --- 2. run.name escapes outputs/ ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/abs-run", "a/b", ".."])
def test_run_name_is_a_name_not_a_path(name, tiny, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert _train(tiny, runs, f"run.name={name}") == 2
    assert "is a name, not a path" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "escaped").exists()


# --- 3. writes are atomic ----------------------------------------------------------------------
def test_a_kill_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def killed_midway(state, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_kill_while_writing_metrics_keeps_the_previous_file(tmp_path, monkeypatch):
    write_json_atomic(tmp_path / "metrics.json", {"oof_map5": 0.5})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / "metrics.json", {"oof_map5": 0.9})
    assert (tmp_path / "metrics.json").read_text().count("0.5") == 1


def test_an_empty_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "last.pt")


# --- 4. two runs with one name -----------------------------------------------------------------
def test_a_second_run_with_the_same_name_is_refused_naming_the_first(tiny, tmp_path, capsys):
    run = tmp_path / "runs" / "whales" / "twice"
    run.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from common.core.locks import "
         "hold_run_lock; hold_run_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)", str(run)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(tiny, tmp_path / "runs", "run.name=twice") == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()
    from common.core.locks import hold_run_lock

    hold_run_lock(run)  # the killed holder's lock is free again (flock), and its PID is noted
    assert f"left by process {holder.pid}" in capsys.readouterr().out


def test_two_processes_filling_one_image_cache_entry_take_turns(tiny, tmp_path):
    from common.data.images import ImageCache

    paths = sorted((tiny / "train").glob("*.jpg"))[:12]
    built: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: built.append(np.asarray(
        ImageCache(paths, (32, 32), tmp_path / "cache", workers=1, progress=False).array))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 2 and np.array_equal(built[0], built[1]) and built[0].any()


# --- 5. paths in the data escape the data root -------------------------------------------------
@pytest.mark.parametrize("name", ["../../secret.jpg", "/etc/secret.jpg"])
def test_a_train_row_outside_the_data_root_is_refused(name, tiny, tmp_path, capsys):
    root = _copy(tiny, tmp_path)
    train = pd.read_csv(root / "train.csv")
    train.loc[3, "Image"] = name
    train.to_csv(root / "train.csv", index=False)
    assert _train(root, tmp_path / "runs", "run.name=x") == 2
    err = capsys.readouterr().err
    assert "row 5" in err and "points outside" in err and not (tmp_path / "runs").exists()


def test_a_deepfake_metadata_key_outside_its_folder_is_refused(tmp_path):
    import json

    from competitions.deepfake.demo import write_demo

    root = write_demo(tmp_path / "df", n_real=2, fakes_per_real=1, n_test=1, n_frames=4, progress=False)
    meta_path = next(root.glob("*/metadata.json"))
    meta = json.loads(meta_path.read_text())
    meta["../../video.mp4"] = {"label": "REAL", "split": "train"}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"key '\.\./\.\./video\.mp4'.*points outside"):
        load("deepfake").read_train(root, None)


# --- 6. corrupt images, odd names ---------------------------------------------------------------
def test_a_truncated_jpeg_stops_the_run_naming_it(tiny, tmp_path, capsys):
    root = _copy(tiny, tmp_path)
    victim = sorted((root / "train").glob("*.jpg"))[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert _train(root, tmp_path / "runs", "run.name=x") == 2
    assert f"{victim}: truncated image" in capsys.readouterr().err


def test_a_non_utf8_test_file_name_is_reported_by_its_bytes(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    (root / "sample_submission.csv").unlink()
    name = os.fsdecode(b"bad\xff.jpg")
    shutil.copy(next((root / "test").glob("*.jpg")), root / "test" / name)
    with pytest.raises(DataError, match=r"b'bad\\xff.jpg' is not valid UTF-8"):
        WHALES.read_test(root)


# --- 7. a bad value must not cost the run name; resume keeps what it was trained with ------------
def test_resume_refuses_a_changed_setting_and_accepts_a_resumable_one(tiny, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert _train(tiny, runs, "run.name=r") == 0
    assert _train(tiny, runs, "run.name=r", "resume=true", "train.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 saved, 0.5 given" in err
    assert _train(tiny, runs, "run.name=r", "resume=true", "data.num_workers=0", "threads=1") == 0
    assert "finished earlier" in capsys.readouterr().out


# --- 8. degenerate labels: refused before any folder ------------------------------------------
@pytest.mark.parametrize("case", ["only_new_whale", "one_identity", "sample_duplicates"])
def test_degenerate_whale_data_is_refused_before_any_folder(case, tiny, tmp_path, capsys):
    root = _copy(tiny, tmp_path)
    train = pd.read_csv(root / "train.csv")
    if case == "only_new_whale":
        train["Id"] = "new_whale"
    elif case == "one_identity":
        train["Id"] = np.where(train.Id == "new_whale", "new_whale", "w_0000001")
    else:
        sample = pd.read_csv(root / "sample_submission.csv")
        pd.concat([sample, sample.iloc[:1]]).to_csv(root / "sample_submission.csv", index=False)
    train.to_csv(root / "train.csv", index=False)
    assert _train(root, tmp_path / "runs", "run.name=x") == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "runs" / "cache").exists()


def test_degenerate_landmark_data_is_refused_before_any_folder(tmp_path, capsys):
    from competitions.landmarks.demo import write_demo

    comp = load("landmarks")
    root = write_demo(tmp_path / "lm", n_landmarks=6, n_train=30, n_test=8, n_distractors=4, image_size=32,
                      progress=False)
    args = ["train", "preset=smoke", f"data.root={root}", f"run.root={tmp_path / 'runs'}", "run.name=x"]
    train = pd.read_csv(root / "train.csv", dtype=str)
    singletons = train.drop_duplicates("landmark_id")
    singletons.to_csv(root / "train.csv", index=False)
    assert main(comp, args) == 2
    assert "every class has a single image" in capsys.readouterr().err
    train.to_csv(root / "train.csv", index=False)
    (root / "sample_submission.csv").unlink()
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    assert main(comp, args) == 2
    assert "no test image" in capsys.readouterr().err or "not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- 9. the decoded-image cache trusts itself -------------------------------------------------
def test_a_damaged_or_stale_image_cache_is_rebuilt(tiny, tmp_path, capsys):
    from common.data.images import ImageCache

    root = _copy(tiny, tmp_path)
    paths = sorted((root / "train").glob("*.jpg"))[:10]
    cache = tmp_path / "cache"
    first = np.asarray(ImageCache(paths, (32, 32), cache, workers=1, progress=False).array).copy()
    (entry,) = cache.glob("*.u8")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    assert np.array_equal(ImageCache(paths, (32, 32), cache, workers=1, progress=False).array, first)
    assert "expected" in capsys.readouterr().out
    entry.write_bytes(bytes(entry.stat().st_size))  # overwritten, same size
    assert np.array_equal(ImageCache(paths, (32, 32), cache, workers=1, progress=False).array, first)
    assert "content changed" in capsys.readouterr().out
    stat = paths[0].stat()  # a source image replaced with its size and mtime kept (cp -p, rsync -a)
    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[0].write_bytes(bytes(data))
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert paths[0].stat().st_size == stat.st_size
    ImageCache(paths, (32, 32), cache, workers=1, progress=False)
    assert len(list(cache.glob("*.u8"))) == 2  # a new entry for the new content


def test_the_cases_that_passed_still_pass(tiny, tmp_path, capsys):
    """Missing column, absent and zero-byte images, and kill-then-resume keep working."""
    root = _copy(tiny, tmp_path)
    pd.read_csv(root / "train.csv").rename(columns={"Id": "Identity"}).to_csv(root / "train.csv", index=False)
    assert _train(root, tmp_path / "runs", "run.name=x") == 2
    assert "missing column Id" in capsys.readouterr().err
    root = _copy(tiny, tmp_path / "b")
    victim = sorted((root / "train").glob("*.jpg"))[0]
    victim.write_bytes(b"")
    assert _train(root, tmp_path / "runs", "run.name=y") == 2
    assert str(victim) in capsys.readouterr().err
    victim.unlink()
    assert _train(root, tmp_path / "runs", "run.name=z") == 2
    assert "does not exist" in capsys.readouterr().err

