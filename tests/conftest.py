"""Shared fixtures: the repository on sys.path, the real-data folder, a small whale dataset."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: a user's fresh clone does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one torch thread avoids oversubscription next to loader workers."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def _faiss_single_thread():
    """faiss's OpenMP pool thrashes on a small shared CI box; one thread keeps tests fast and stable."""
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    yield


@pytest.fixture(scope="session")
def whale_demo(tmp_path_factory) -> Path:
    """A small whale dataset in Kaggle format, generated once per test session."""
    from competitions.whales.demo import write_demo

    root = tmp_path_factory.mktemp("whale_demo")
    return write_demo(root, n_identities=24, n_train=120, n_test=40, progress=False)


def run_kernel_script(kernel_folder: Path, kaggle: Path, prefix: str, cwd: Path, timeout: int):
    """The kernel script of `kernel_folder` (a `kernel` command's output) run offline against a fake
    /kaggle at `kaggle`, with the code dataset copied (so the repository itself cannot be used)."""
    import os
    import shutil
    import subprocess

    shutil.copytree(kernel_folder / "code", kaggle / "input" / f"{prefix}-code")
    for part in ("weights", "wheels"):
        (kaggle / "input" / f"{prefix}-{part}").symlink_to(kernel_folder / part)
    script = next((kernel_folder / "kernel").glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KAGGLE_KERNEL_RUN_TYPE")}
    env.update(KAGGLE_ROOT=str(kaggle), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"toolkit: {kaggle / 'input' / f'{prefix}-code' / 'common'}" in result.stdout
    return result
