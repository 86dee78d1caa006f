"""Where data comes from and where runs go, the same locally and inside a Kaggle kernel.

Data root order: `data.root=DIR`, then `inputs/<slug>/`, then the kernel's input folder
(`/kaggle/input/<slug>` or `/kaggle/input/competitions/<slug>`), then the competition's demo
data, generated on first use. `KAGGLE_ROOT` points the toolkit at a fake `/kaggle` for tests.
"""
from __future__ import annotations

import os
import re
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


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")
# keys a resumed run may change: how it runs, not what it computes
RESUMABLE_KEYS = ("resume", "progress", "threads", "data.num_workers", "data.root", "data.cache_dir",
                  "infer.batch_size", "gpus", "nproc", "nodes", "dist.node_rank", "dist.master_addr",
                  "dist.master_port", "run.name", "run.root", "tracking", "tracking_uri")


def run_dir(cfg, competition: str, *, create: bool) -> Path:
    """`outputs/<competition>/<run.name>/`; a new run never reuses another run's folder.

    `run.name` is a name, not a path (`run.root` puts runs elsewhere): a `..`, a separator or an
    absolute path is refused, so a run never writes outside `<run.root>/<competition>/`.
    """
    if not cfg.run.get("name"):
        if not create:
            raise ConfigError("this command needs run.name=NAME (a finished run's name)")
        cfg.run.name = time.strftime("%Y%m%d-%H%M%S")
    name = str(cfg.run.name)
    if not RUN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"run.name={name!r} is a name, not a path (letters, digits and . _ - = +); "
                          "use run.root=DIR to put runs elsewhere")
    path = outputs_root(cfg) / competition / name
    if create:
        if path.exists() and any(p.name != ".lock" for p in path.iterdir()) and not cfg.get("resume"):
            raise ConfigError(
                f"run directory {path} already exists; pick another run.name or pass resume=true to continue it"
            )
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise ConfigError(f"no run named '{name}' in {path.parent}")
    return path


def run_config(comp, cfg):
    """The config a `train` (or `pretrain`) runs with: with `resume=true` and an existing run, its saved
    config, where the command line may change only RESUMABLE_KEYS; another changed value is refused
    with the differences listed (resuming would silently keep the saved one)."""
    from common.core.config import fill_missing, lookup, read_saved_config

    if not (cfg.get("resume") and cfg.run.get("name")):
        return cfg
    saved_path = run_dir(cfg, competition=comp.name, create=False) / "config.yaml"
    if not saved_path.exists():
        return cfg
    saved = read_saved_config(saved_path)
    fill_missing(saved, cfg)  # keys added since the run started: their defaults are the behaviour from before
    differ = [key for key in cfg.command_line_keys if lookup(saved, key) != lookup(cfg, key)]
    refused = [key for key in differ if key not in RESUMABLE_KEYS]
    if refused:
        listed = "; ".join(f"{k}: {lookup(saved, k)!r} saved, {lookup(cfg, k)!r} given" for k in refused)
        raise ConfigError(f"resume=true continues run '{cfg.run.name}' with its saved settings ({saved_path}), "
                          f"but the command line changes {listed}. Start a new run.name to change them "
                          f"(a resumed run may change only {', '.join(RESUMABLE_KEYS)})")
    for key in differ:
        saved.set_path(key, cfg.get_path(key))
    saved.resume = True
    return saved


def create_run(comp, cfg) -> Path:
    """The run folder, made and locked by the main process (the others learn its path): a second
    process with the same run.name is refused while the first one lives."""
    from common.core.locks import hold_run_lock
    from common.engine import distributed

    if not cfg.run.get("name"):
        cfg.run.name = distributed.broadcast(time.strftime("%Y%m%d-%H%M%S"))
    run = None
    if distributed.is_main():
        run = run_dir(cfg, comp.name, create=True)
        hold_run_lock(run)
    return Path(distributed.broadcast(str(run)))


def open_run(comp, cfg, check=None):
    """run_config -> check(cfg) (before any folder exists) -> create_run; returns (run, cfg)."""
    from common.engine import distributed

    distributed.init(cfg)  # joins the process group when launched by torchrun
    cfg = run_config(comp, cfg)
    if check is not None:
        check(cfg)
    return create_run(comp, cfg), cfg
