"""DistributedDataParallel on CPU (gloo): 2 processes reach the single-process result."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _train(whale_demo, runs, name, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    args = [sys.executable, "-m", "competitions.whales", "train", "preset=smoke", f"data.root={whale_demo}",
            f"run.root={runs}", f"run.name={name}", "progress=false", "data.num_workers=0", "gpus=0",
            f"data.cache_dir={runs / 'cache'}", "augment.train=none", "train.batch_size=16", *extra]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((runs / "whales" / name / "metrics.json").read_text()), done.stdout


def test_ddp_two_gloo_processes_match_single_process(whale_demo, tmp_path):
    single, _ = _train(whale_demo, tmp_path, "single")
    double, out = _train(whale_demo, tmp_path, "ddp", "nproc=2")
    assert "launching 2 process(es)" in out
    assert double["processes"] == 2 and single["processes"] == 1
    run = tmp_path / "whales" / "ddp"
    assert (run / "submission.csv").exists() and (run / "fold0" / "best.pt").exists()
    print({k: (single[k], double[k]) for k in ("oof_map5", "oof_map5_closed", "test_map5")})
    # same seed, same global batches: only per-process BatchNorm statistics differ
    for key in ("oof_map5", "oof_map5_closed", "test_map5"):
        assert abs(double[key] - single[key]) < 0.08, (key, single[key], double[key])
