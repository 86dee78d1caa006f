"""download, submit and kernel against a fake `kaggle` executable on PATH and a fake /kaggle (KAGGLE_ROOT).

The fake CLI appends its arguments as a JSON line to a log and imitates Kaggle's answers: a zip for
`competitions download`, 404 for an unknown dataset, a 403 rules refusal in FAKE_KAGGLE_MODE=rules.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import common.kaggle.commands as kaggle
from conftest import run_kernel_script
import competitions.deepfake as deepfake
import competitions.landmarks as landmarks
import competitions.whales as whales
from common.core.cli import main
from common.core.config import load_config, save_config

FAKE_KAGGLE = '''#!{python}
import json, os, sys, zipfile
from pathlib import Path

args = sys.argv[1:]
log = Path(os.environ["FAKE_KAGGLE_LOG"])
with open(log, "a") as f:
    f.write(json.dumps(args) + "\\n")
created = log.with_name("created.txt")
known = set(os.environ.get("FAKE_KAGGLE_EXISTING", "").split(",")) | set(
    created.read_text().split() if created.exists() else [])
if os.environ.get("FAKE_KAGGLE_MODE") == "rules":
    print("403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/x", file=sys.stderr)
    print("You don't have access to this resource.", file=sys.stderr)
    sys.exit(1)
if args[:2] == ["competitions", "download"]:
    slug, dest = args[args.index("-c") + 1], Path(args[args.index("-p") + 1])
    with zipfile.ZipFile(dest / (slug + ".zip"), "w") as z:
        z.writestr("train.csv", "Image,Id\\na.jpg,w_1\\n")
        z.writestr("sample_submission.csv", "Image,Id\\nb.jpg,new_whale\\n")
        z.writestr("train/a.jpg", b"not really a jpeg")
    print("Downloading " + slug + ".zip to " + str(dest) + "\\r100%")
elif args[:2] == ["competitions", "submit"]:
    print("Successfully submitted to " + args[args.index("-c") + 1])
elif args[:2] == ["datasets", "status"]:
    if args[2] not in known:
        print("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status", file=sys.stderr)
        sys.exit(1)
    print("ready")
elif args[:2] == ["datasets", "create"]:
    meta = json.loads((Path(args[args.index("-p") + 1]) / "dataset-metadata.json").read_text())
    with open(created, "a") as f:
        f.write(meta["id"] + "\\n")
    print("Dataset creation is pending")
elif args[:2] == ["kernels", "push"]:
    if os.environ.get("FAKE_KAGGLE_MODE") == "push_error":  # the CLI reports this one with exit status 0
        print("Kernel push error: The following are not valid dataset sources")
        sys.exit(0)
    print("Kernel version 1 successfully pushed.")
'''

CREDENTIAL_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME",
                   "KAGGLE_KERNEL_RUN_TYPE")


class FakeKaggle:
    def __init__(self, folder: Path):
        self.log = folder / "calls.jsonl"

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch) -> FakeKaggle:
    """A fake `kaggle` first on PATH, no credentials anywhere, an empty home and a fake (absent) /kaggle."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kaggle"
    script.write_text(FAKE_KAGGLE.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))
    for name in CREDENTIAL_VARS + ("FAKE_KAGGLE_MODE", "FAKE_KAGGLE_EXISTING"):
        monkeypatch.delenv(name, raising=False)
    # Kaggle's data is looked for in inputs/<slug> of the repository: keep a user's real download out of the tests
    monkeypatch.setattr(kaggle, "kaggle_data_dirs", lambda slug: [tmp_path / "no-kaggle-data" / slug])
    return FakeKaggle(tmp_path)


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")


# --- download -------------------------------------------------------------------------------


def test_kaggle_download_unzips_into_inputs_and_removes_the_zip(fake_kaggle, credentials, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.setattr(kaggle, "REPO_ROOT", tmp_path / "repo")
    dest = tmp_path / "repo" / "inputs" / whales.COMPETITION.slug
    assert main(whales.COMPETITION, ["download"]) == 0
    assert fake_kaggle.calls() == [["competitions", "download", "-c", whales.COMPETITION.slug, "-p", str(dest)]]
    assert (dest / "train.csv").read_text() == "Image,Id\na.jpg,w_1\n"
    assert (dest / "train" / "a.jpg").is_file() and (dest / "sample_submission.csv").is_file()
    assert not list(dest.glob("*.zip")) and (dest / kaggle.DOWNLOAD_MARKER).exists()
    assert "100%" in capsys.readouterr().out  # the CLI's progress reaches the user
    assert main(whales.COMPETITION, ["download"]) == 0  # already there: kaggle is not asked again
    assert len(fake_kaggle.calls()) == 1
    assert "already downloaded" in capsys.readouterr().out


def test_kaggle_download_into_data_root(fake_kaggle, credentials, tmp_path):
    dest = tmp_path / "elsewhere"
    assert main(landmarks.COMPETITION, ["download", f"data.root={dest}"]) == 0
    assert fake_kaggle.calls()[0][-2:] == ["-p", str(dest)] and fake_kaggle.calls()[0][3] == landmarks.COMPETITION.slug
    assert (dest / "train.csv").is_file()


def test_kaggle_download_without_credentials_fails_before_calling_kaggle(fake_kaggle, tmp_path, monkeypatch, capsys):
    config_dir = tmp_path / "empty-config"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    assert main(whales.COMPETITION, ["download", f"data.root={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert "no Kaggle credentials" in err and str(config_dir / "kaggle.json") in err
    assert "KAGGLE_USERNAME" in err and "KAGGLE_API_TOKEN" in err
    assert fake_kaggle.calls() == []


def test_kaggle_download_rules_not_accepted(fake_kaggle, credentials, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_KAGGLE_MODE", "rules")
    assert main(deepfake.COMPETITION, ["download", f"data.root={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert f"https://www.kaggle.com/c/{deepfake.COMPETITION.slug}/rules" in err and "accept" in err
    assert len(fake_kaggle.calls()) == 1
    assert not (tmp_path / "data" / kaggle.DOWNLOAD_MARKER).exists()


def test_kaggle_download_inside_a_kernel_uses_the_attached_data(fake_kaggle, tmp_path, capsys):
    attached = tmp_path / "kaggle" / "input" / "competitions" / whales.COMPETITION.slug
    attached.mkdir(parents=True)
    (attached / "train.csv").write_text("Image,Id\n")
    assert main(whales.COMPETITION, ["download"]) == 0  # no credentials needed: nothing is downloaded
    assert fake_kaggle.calls() == [] and str(attached) in capsys.readouterr().out


def test_kaggle_credentials_sources(fake_kaggle, tmp_path, monkeypatch):
    assert kaggle.credential_source() is None
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert kaggle.credential_source() == "KAGGLE_API_TOKEN"
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    assert kaggle.credential_source() is None  # a user name alone is not enough
    monkeypatch.delenv("KAGGLE_USERNAME")
    home_json = tmp_path / "home" / ".kaggle" / "kaggle.json"
    home_json.parent.mkdir(parents=True)
    home_json.write_text(json.dumps({"username": "u", "key": "k"}))
    assert kaggle.credential_source() == str(home_json)
    other = tmp_path / "cfg"
    other.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(other))  # honoured: ~/.kaggle/kaggle.json is not looked at
    assert kaggle.credential_source() is None
    (other / "kaggle.json").write_text("{\"username\": \"u\"}")
    with pytest.raises(kaggle.KaggleError, match=r"cfg/kaggle.json: needs \"username\" and \"key\""):
        kaggle.credential_source()


# --- submit ---------------------------------------------------------------------------------

# competition module, (sample, a valid submission, an invalid one, what the error says)
FORMATS = {
    "whales": (whales, pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": ["new_whale"] * 2}),
               pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": ["new_whale w_1 w_2 w_3 w_4", "w_1 w_2 w_3 w_4 w_5"]}),
               pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "Id": ["new_whale w_1 w_2 w_3 w_4 w_5", "w_1 w_2 w_3 w_4 w_5"]}),
               "6 labels"),
    "landmarks": (landmarks, pd.DataFrame({"id": ["abc1", "def2"], "landmarks": ["", ""]}),
                  pd.DataFrame({"id": ["abc1", "def2"], "landmarks": ["17 0.9", ""]}),
                  pd.DataFrame({"id": ["abc1", "def2"], "landmarks": ["17", ""]}),
                  "malformed landmarks"),
    "deepfake": (deepfake, pd.DataFrame({"filename": ["a.mp4", "b.mp4"], "label": [0.5, 0.5]}),
                 pd.DataFrame({"filename": ["a.mp4", "b.mp4"], "label": [0.1, 0.9]}),
                 pd.DataFrame({"filename": ["a.mp4", "b.mp4"], "label": [0.1, 1.5]}),
                 "probability in [0, 1]"),
}


def make_run(runs: Path, module, name: str, submission: pd.DataFrame | None, data_root: Path | None,
             metrics: dict | None = None) -> Path:
    run = runs / module.COMPETITION.name / name
    (run / "fold0").mkdir(parents=True)
    save_config(load_config(module.COMPETITION.config_path, [f"run.name={name}"]), run / "config.yaml")
    (run / "fold0" / "best.pt").write_bytes(b"weights")
    (run / "fold0" / "classes.json").write_text("[]")
    (run / "fold0" / "embeddings").mkdir()
    (run / "fold0" / "embeddings" / "distractors.npy").write_bytes(b"stored distractor embeddings")  # landmarks
    metrics = dict(metrics or {"oof_map5": 0.61234, "oof_baseline_map5": 0.4, "threshold": 0.7})
    if data_root is not None:
        metrics["data_root"] = str(data_root)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if submission is not None:
        submission.to_csv(run / "submission.csv", index=False)
    return run


def kaggle_data(root: Path, sample: pd.DataFrame) -> Path:
    root.mkdir(parents=True)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.mark.parametrize("name", list(FORMATS))
def test_kaggle_submit_validates_then_submits(name, fake_kaggle, credentials, tmp_path, capsys):
    module, sample, valid, _, _ = FORMATS[name]
    root = kaggle_data(tmp_path / "data", sample)
    run = make_run(tmp_path / "runs", module, "r1", valid, root)
    assert main(module.COMPETITION, ["submit", f"run.root={tmp_path / 'runs'}", "run.name=r1"]) == 0
    ((*command, message),) = fake_kaggle.calls()
    assert command == ["competitions", "submit", "-c", module.COMPETITION.slug, "-f", str(run / "submission.csv"), "-m"]
    assert message == f"{name} run r1: oof_map5 0.6123"
    assert "Successfully submitted" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(FORMATS))
def test_kaggle_submit_refuses_an_invalid_submission_without_calling_kaggle(name, fake_kaggle, credentials, tmp_path,
                                                                           capsys):
    module, sample, _, invalid, problem = FORMATS[name]
    root = kaggle_data(tmp_path / "data", sample)
    run = make_run(tmp_path / "runs", module, "bad", invalid, root)
    assert main(module.COMPETITION, ["submit", f"run.root={tmp_path / 'runs'}", "run.name=bad"]) == 2
    err = capsys.readouterr().err
    assert problem in err and str(run / "submission.csv") in err and "nothing was submitted" in err
    assert fake_kaggle.calls() == []


def test_kaggle_submit_checks_ids_against_the_sample_and_takes_a_message(fake_kaggle, credentials, tmp_path, capsys):
    _, sample, valid, _, _ = FORMATS["whales"]
    root = kaggle_data(tmp_path / "data", sample)
    make_run(tmp_path / "runs", whales, "r1", valid.assign(Image=["a.jpg", "zzz.jpg"]), root)
    args = ["submit", f"run.root={tmp_path / 'runs'}", "run.name=r1"]
    assert main(whales.COMPETITION, args) == 2
    assert "unknown (e.g. ['zzz.jpg'])" in capsys.readouterr().err and fake_kaggle.calls() == []
    other = tmp_path / "other.csv"  # e.g. written by `predict out=FILE`
    valid.to_csv(other, index=False)
    assert main(whales.COMPETITION, args + [f"submission={other}", "message=arcface 5 folds"]) == 0
    (call,) = fake_kaggle.calls()
    assert call[call.index("-f") + 1] == str(other) and call[-2:] == ["-m", "arcface 5 folds"]


def test_kaggle_submit_refuses_demo_data(fake_kaggle, credentials, tmp_path, capsys):
    _, sample, valid, _, _ = FORMATS["whales"]
    demo = kaggle_data(tmp_path / "demo", sample)
    (demo / "test_truth.csv").write_text("Image,Id\n")  # only the demo data knows the answers
    make_run(tmp_path / "runs", whales, "r1", valid, demo)
    assert main(whales.COMPETITION, ["submit", f"run.root={tmp_path / 'runs'}", "run.name=r1"]) == 2
    err = capsys.readouterr().err
    assert "demo data" in err and "Kaggle would reject it" in err and fake_kaggle.calls() == []


def test_kaggle_submit_without_credentials_or_rules(fake_kaggle, tmp_path, monkeypatch, capsys):
    module, sample, valid, _, _ = FORMATS["deepfake"]
    make_run(tmp_path / "runs", module, "r1", valid, kaggle_data(tmp_path / "data", sample), {"oof_logloss": 0.3})
    args = ["submit", f"run.root={tmp_path / 'runs'}", "run.name=r1"]
    assert main(module.COMPETITION, args) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err and fake_kaggle.calls() == []
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    monkeypatch.setenv("FAKE_KAGGLE_MODE", "rules")
    assert main(module.COMPETITION, args) == 2
    assert f"https://www.kaggle.com/c/{module.COMPETITION.slug}/rules" in capsys.readouterr().err
    assert fake_kaggle.calls()[0][-1] == "deepfake run r1: oof_logloss 0.3000"


def test_kaggle_submit_needs_a_sample_to_check_against(fake_kaggle, credentials, tmp_path, capsys):
    make_run(tmp_path / "runs", whales, "r1", FORMATS["whales"][2], None)
    assert main(whales.COMPETITION, ["submit", f"run.root={tmp_path / 'runs'}", "run.name=r1"]) == 2
    assert "no sample_submission.csv" in capsys.readouterr().err and fake_kaggle.calls() == []


# --- kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [whales, landmarks])
def test_kaggle_kernel_folder_for_a_competition_without_its_own(module, fake_kaggle, tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, module, "k1", None, None)
    assert main(module.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "kernel.username=tester"]) == 0
    folder = run / "kaggle"
    meta = json.loads((folder / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"tester/{module.COMPETITION.name}-k1" and meta["competition_sources"] == [module.COMPETITION.slug]
    script = (folder / "kernel" / meta["code_file"]).read_text()
    assert kaggle.KERNEL_ENTRY_POINT in script
    for name in ["config.yaml", "metrics.json", "fold0/best.pt", "fold0/classes.json", "dataset-metadata.json"]:
        assert (folder / "weights" / name).is_file(), name
    assert (folder / "code" / "common" / "kaggle" / "commands.py").is_file()
    assert (folder / "wheels" / "kernel-wheels.txt").read_text().split() == ["timm", "faiss-cpu"]
    assert fake_kaggle.calls() == []  # building needs no Kaggle; push=true uploads


def test_kaggle_kernel_push_creates_or_versions_datasets_then_pushes(fake_kaggle, credentials, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run = make_run(runs, landmarks, "k1", None, None)
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", "tester/landmarks-k1-code")  # uploaded before: a new version
    assert main(landmarks.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "push=true", "message=v2"]) == 0
    folder = run / "kaggle"
    ids = {part: f"tester/landmarks-k1-{part}" for part in ("code", "weights", "wheels")}
    calls = fake_kaggle.calls()
    assert [c for c in calls if c[1] in ("create", "version", "push")] == [
        ["datasets", "version", "-p", str(folder / "code"), "-m", "v2", "--dir-mode", "zip"],
        ["datasets", "create", "-p", str(folder / "weights"), "--dir-mode", "zip"],
        ["datasets", "create", "-p", str(folder / "wheels"), "--dir-mode", "zip"],
        ["kernels", "push", "-p", str(folder / "kernel")],
    ]
    statuses = [c[2] for c in calls if c[:2] == ["datasets", "status"]]
    assert statuses == list(ids.values()) * 2  # exists? then ready? for each, before the push
    assert calls[-1][:2] == ["kernels", "push"]


def test_kaggle_kernel_push_error_reported_with_exit_status_0_fails(fake_kaggle, credentials, tmp_path, monkeypatch,
                                                                   capsys):
    runs = tmp_path / "runs"
    make_run(runs, whales, "k1", None, None)
    monkeypatch.setenv("FAKE_KAGGLE_MODE", "push_error")
    assert main(whales.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "push=true"]) == 2
    assert "kaggle kernels push failed: Kernel push error" in capsys.readouterr().err
    assert fake_kaggle.calls()[-1][:2] == ["kernels", "push"]


def test_kaggle_kernel_push_needs_a_user_and_credentials(fake_kaggle, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    make_run(runs, whales, "k1", None, None)
    assert main(whales.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "push=true"]) == 2
    assert "kernel.username=NAME" in capsys.readouterr().err
    assert main(whales.COMPETITION, ["kernel", f"run.root={runs}", "run.name=k1", "push=true", "kernel.username=me"]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert fake_kaggle.calls() == []


def test_kaggle_kernel_predict_runs_the_competitions_predict_on_kaggle_paths(fake_kaggle, tmp_path, monkeypatch):
    """Inside the kernel: data from /kaggle/input/competitions/<slug>, a writable run in /kaggle/temp."""
    run = make_run(tmp_path / "runs", landmarks, "k1", None, None)
    data = tmp_path / "kaggle" / "input" / "competitions" / landmarks.COMPETITION.slug
    data.mkdir(parents=True)
    (data / "train.csv").write_text("id,landmark_id\n")
    seen = {}

    def fake_predict(comp, cfg):
        from common.core.paths import run_dir

        seen.update(root=cfg.data.root, out=cfg.out, run=run_dir(cfg, comp.name, create=False))
        (run_dir(cfg, comp.name, create=False) / "predict_embeddings").mkdir()  # predict may write there

    monkeypatch.setattr("common.tasks.engine.predict", fake_predict)
    out = tmp_path / "kaggle" / "working" / "submission.csv"
    assert kaggle.kernel_predict(run, out) == out
    assert seen["root"] == str(data) and seen["out"] == str(out)
    assert seen["run"] == tmp_path / "kaggle" / "temp" / "runs" / "landmarks" / "k1"
    assert (seen["run"] / "fold0" / "best.pt").read_bytes() == b"weights"
    assert not (run / "predict_embeddings").exists()  # the weights dataset is left untouched


def test_kaggle_kernel_script_predicts_whales_offline_on_a_fake_kaggle(fake_kaggle, whale_demo, tmp_path):
    """End to end: an (untrained) whale run -> kernel folders -> the script, run against a fake /kaggle."""
    import torch

    from common.models.factory import build_model
    from competitions.whales.submission import validate_submission

    runs = tmp_path / "runs"
    run = runs / "whales" / "e2e"
    (run / "fold0").mkdir(parents=True)
    cfg = load_config(whales.COMPETITION.config_path, ["preset=smoke", "model.backbone=resnet10t", "run.name=e2e"])
    save_config(cfg, run / "config.yaml")
    classes = sorted(set(pd.read_csv(whale_demo / "train.csv").Id) - {"new_whale"})
    (run / "fold0" / "classes.json").write_text(json.dumps(classes))
    torch.save({"model": build_model(cfg, len(classes)).state_dict()}, run / "fold0" / "best.pt")
    (run / "metrics.json").write_text(json.dumps({"oof_map5": 0.5, "threshold": 0.5}))
    assert main(whales.COMPETITION, ["kernel", f"run.root={runs}", "run.name=e2e", "kernel.username=tester"]) == 0

    root = tmp_path / "kaggle"
    shutil.copytree(whale_demo, root / "input" / whales.COMPETITION.slug, ignore=shutil.ignore_patterns("test_truth.csv"))
    run_kernel_script(run / "kaggle", root, "whales-e2e", tmp_path, timeout=240)
    submission = pd.read_csv(root / "working" / "submission.csv")
    validate_submission(submission, pd.read_csv(whale_demo / "sample_submission.csv"))
    assert (root / "temp" / "runs" / "whales" / "e2e" / "config.yaml").is_symlink()
    assert not (run / "kaggle" / "weights" / "predictions").exists()
