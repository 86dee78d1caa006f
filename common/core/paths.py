"""Where data comes from and where runs go, the same locally and inside a Kaggle kernel.

Data root order: `data.root=DIR`, then `inputs/<slug>/`, then the kernel's input folder
(`/kaggle/input/<slug>` or `/kaggle/input/competitions/<slug>`), then the competition's demo
data, generated on first use. `KAGGLE_ROOT` points the toolkit at a fake `/kaggle` for tests.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from common.core.errors import ConfigError, DataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def kaggle_root() -> Path:
    return Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))


def in_kaggle_kernel() -> bool:
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "input").is_dir()


def kaggle_input_dirs(slug: str) -> list[Path]:
    base = kaggle_root() / "input"
    return [base / slug, base / "competitions" / slug]


def outputs_root(cfg) -> Path:
    """`run.root` if set, `/kaggle/working/outputs` in a kernel, else the repository's `outputs/`."""
    if cfg.run.get("root"):
        return Path(cfg.run.root).expanduser().resolve()
    if in_kaggle_kernel():
        return kaggle_root() / "working" / "outputs"
    return REPO_ROOT / "outputs"


def cache_root(cfg) -> Path:
    if cfg.data.get("cache_dir"):
        return Path(cfg.data.cache_dir).expanduser().resolve()
    if in_kaggle_kernel():
        return kaggle_root() / "temp" / "cache"
    return REPO_ROOT / "inputs" / ".cache"


def _non_empty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def resolve_data_root(cfg, competition: str, slug: str, write_demo: Callable[[Path], Path]) -> Path:
    """The folder holding the competition's files; generates the demo dataset if nothing else exists."""
    if cfg.data.get("root"):
        root = Path(cfg.data.root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"data.root={root} is not a folder")
        return root
    for candidate in [REPO_ROOT / "inputs" / slug, *kaggle_input_dirs(slug)]:
        if _non_empty_dir(candidate):
            return candidate
    demo = REPO_ROOT / "inputs" / "demo" / competition
    if not (demo / ".complete").exists():
        print(f"No Kaggle data found in inputs/{slug}/: generating the demo dataset into {demo} ...", flush=True)
        write_demo(demo)
        (demo / ".complete").write_text("ok\n")
    else:
        print(f"No Kaggle data found in inputs/{slug}/: using the demo dataset in {demo}", flush=True)
    return demo


def run_dir(cfg, competition: str, *, create: bool) -> Path:
    """`outputs/<competition>/<run.name>/`; a new run never reuses another run's folder."""
    if not cfg.run.get("name"):
        if not create:
            raise ConfigError("this command needs run.name=NAME (a finished run's name)")
        cfg.run.name = time.strftime("%Y%m%d-%H%M%S")
    path = outputs_root(cfg) / competition / str(cfg.run.name)
    if create:
        if path.exists() and any(path.iterdir()) and not cfg.get("resume"):
            raise ConfigError(
                f"run directory {path} already exists; pick another run.name or pass resume=true to continue it"
            )
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise ConfigError(f"no run named '{cfg.run.name}' in {path.parent}")
    return path


def open_run(comp, cfg, check=None):
    """A `train` command's run directory and the config it runs with.

    `resume=true` with an existing run continues it with its saved config; `check(cfg)` validates
    choices before any folder is made; with several processes the main one creates the folder and
    the timestamp name is shared.
    """
    from common.engine import distributed
    from common.core.config import read_saved_config

    distributed.init(cfg)  # joins the process group when launched by torchrun
    if cfg.get("resume") and cfg.run.get("name"):
        saved = run_dir(cfg, competition=comp.name, create=False) / "config.yaml"
        if saved.exists():
            cfg = read_saved_config(saved)
            cfg.resume = True
    if check is not None:
        check(cfg)
    if not cfg.run.get("name"):
        cfg.run.name = distributed.broadcast(time.strftime("%Y%m%d-%H%M%S"))
    run = run_dir(cfg, comp.name, create=True) if distributed.is_main() else None
    return Path(distributed.broadcast(str(run))), cfg
