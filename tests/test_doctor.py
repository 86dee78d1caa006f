"""`./run.sh doctor`: every section on one screen, credentials named by source, never by value."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_doctor_reports_every_section_and_never_prints_a_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KAGGLE_USERNAME": "someone",
           "KAGGLE_KEY": "s3cr3t-value-0123", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "competitions.doctor"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout
    for section in ("system", "disk", "data", "kaggle", "optional"):
        assert f"\n{section}\n" in out
    for what in ("torch", "faiss", "image cache", "data whales", "data deepfake", "face detector haar", "onnxruntime",
                 "chromium"):
        assert what in out, what
    assert "from KAGGLE_USERNAME/KAGGLE_KEY" in out and "s3cr3t" not in out + done.stderr
    assert done.returncode == (1 if "!!" in out else 0)
