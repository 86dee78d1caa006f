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
