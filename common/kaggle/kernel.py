"""A Kaggle code-competition kernel built from a trained run, ready for `kaggle kernels push -p`.

Why: code competitions (DFDC among them) score a notebook that runs offline on Kaggle's machines,
so the toolkit, the trained weights and any missing packages must travel as Kaggle datasets, and
the kernel must run the same inference code that was validated locally. `build_kernel_for_run`
writes four folders under `<run>/kaggle/`:

    kernel/    kernel-metadata.json + the script (push this one)
    code/      a copy of common/, competitions/, run.sh, requirements.txt + dataset-metadata.json
    weights/   the run's files a prediction needs (config.yaml, fold checkpoints, ...) + metadata
    wheels/    kernel-wheels.txt (packages to install offline), the .whl files when
               `kernel.wheels=true` (needs a network: `pip download`), else a NOTE.md

The script finds each dataset under `$KAGGLE_ROOT/input` (default `/kaggle/input`), puts the
code dataset first on `sys.path` (so the toolkit is never imported from anywhere else), installs
the wheels with `pip install --no-index --find-links`, and calls the competition's entry point
`module:function(weights_dir, out)` with `out = /kaggle/working/submission.csv`. Nothing here
knows a competition: the caller names the entry point and the weight files. This module imports
only the standard library, because the generated script uses it before any wheel is installed.
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

CODE_PATHS = ("common", "competitions", "run.sh", "requirements.txt")
IGNORED = ("__pycache__", "*.pyc", ".pytest_cache")
WHEELS_LIST = "kernel-wheels.txt"  # in the wheels dataset: one requirement per line
PLACEHOLDER_USER = "your-kaggle-username"


@dataclass
class KernelPlan:
    """Names and choices of one kernel and its three datasets."""

    username: str
    slug: str
    competition: str
    entry_point: str  # "package.module:function", called as function(weights_dir, out)
    enable_gpu: bool = True
    requirements: list[str] = field(default_factory=list)
    source: str = ""  # what produced the kernel, written into the script's docstring
    package: str = ""  # the competition's package, imported first so that it registers itself

    @property
    def datasets(self) -> dict[str, str]:
        return {part: f"{self.slug}-{part}" for part in ("code", "weights", "wheels")}


def slugify(text: str, max_len: int = 40) -> str:
    """Kaggle slugs: lowercase letters, digits and hyphens."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return (slug or "kernel")[:max_len].strip("-")


def kernel_metadata(plan: KernelPlan, code_file: str) -> dict:
    user = plan.username
    return {
        "id": f"{user}/{plan.slug}",
        "title": plan.slug,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": bool(plan.enable_gpu),
        "enable_internet": False,
        "dataset_sources": [f"{user}/{d}" for d in plan.datasets.values()],
        "competition_sources": [plan.competition],
        "kernel_sources": [],
    }


def dataset_metadata(username: str, slug: str, title: str) -> dict:
    return {"title": title, "id": f"{username}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


SCRIPT = '''"""Kaggle kernel for {competition}: {source}.

Offline: the toolkit comes from the dataset {code!r}, the trained model from {weights!r}, packages
missing from the Kaggle image from {wheels!r}. Writes /kaggle/working/submission.csv.
"""
import os
import sys
from pathlib import Path

KAGGLE = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
CODE, WEIGHTS, WHEELS = {code!r}, {weights!r}, {wheels!r}
ENTRY_POINT = {entry_point!r}
PACKAGE = {package!r}


def find_dataset(slug, marker, required=True):
    """/kaggle/input/<slug>, or wherever Kaggle mounted a folder holding `marker` (preferring `slug`)."""
    base = KAGGLE / "input"
    if (base / slug / marker).exists():
        return base / slug
    found = [p for depth in range(1, 5) for p in sorted(base.glob("/".join(["*"] * depth) + "/" + marker))]
    roots = [Path(str(p)[: -len(marker) - 1]) for p in found]
    roots.sort(key=lambda r: slug not in r.parts)
    if roots:
        return roots[0]
    if required:
        raise SystemExit(f"dataset {{slug}} (with {{marker}}) is not attached under {{base}}")
    return None


code = find_dataset(CODE, "common/kaggle/kernel.py")
sys.path.insert(0, str(code))  # the toolkit from the code dataset, never from anywhere else
import common  # noqa: E402
from common.kaggle.kernel import install_wheels, run_entry_point  # noqa: E402  (standard library only)

print(f"toolkit: {{Path(common.__file__).resolve().parent}}", flush=True)
if PACKAGE:
    __import__(PACKAGE)  # registers the competition (common/ never imports competitions/ itself)
install_wheels(find_dataset(WHEELS, {wheels_list!r}, required=False))
out = KAGGLE / "working" / "submission.csv"
run_entry_point(ENTRY_POINT, find_dataset(WEIGHTS, "config.yaml"), out)
print(f"wrote {{out}}", flush=True)
'''


def kernel_script(plan: KernelPlan) -> str:
    names = plan.datasets
    return SCRIPT.format(competition=plan.competition, source=plan.source or "generated by common.kaggle.kernel",
                         code=names["code"], weights=names["weights"], wheels=names["wheels"],
                         entry_point=plan.entry_point, package=plan.package, wheels_list=WHEELS_LIST)


# --- used inside the kernel -----------------------------------------------------------------


def pip_install_command(wheels_dir: str | Path, packages: Sequence[str]) -> list[str]:
    """Offline install from a folder of wheels; dependencies are expected in the Kaggle image."""
    return [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels_dir), "--no-deps",
            *packages]


def install_wheels(wheels_dir: str | Path | None, runner: Callable = subprocess.run) -> bool:
    """Install the packages listed in `<wheels_dir>/kernel-wheels.txt` from the wheels beside it.

    Without a wheels dataset, or one without .whl files, prints why and relies on the Kaggle image;
    a failed install is reported, not fatal (the preinstalled version may do).
    """
    if wheels_dir is None:
        print("no wheels dataset attached: using the packages of the Kaggle image", flush=True)
        return False
    wheels_dir = Path(wheels_dir)
    listed = wheels_dir / WHEELS_LIST
    packages = [line.strip() for line in listed.read_text().splitlines()
                if line.strip() and not line.startswith("#")] if listed.exists() else []
    if not packages or not any(wheels_dir.glob("*.whl")):
        print(f"{wheels_dir}: no wheels to install: using the packages of the Kaggle image", flush=True)
        return False
    command = pip_install_command(wheels_dir, packages)
    print("installing:", " ".join(command), flush=True)
    result = runner(command)
    if result.returncode != 0:
        print(f"warning: pip install failed (exit {result.returncode}); continuing with the Kaggle image's packages",
              flush=True)
        return False
    return True


def run_entry_point(entry_point: str, weights_dir: Path, out: Path):
    """Import `module:function` and call it with (weights_dir, out)."""
    module_name, _, function = entry_point.partition(":")
    out.parent.mkdir(parents=True, exist_ok=True)
    return getattr(importlib.import_module(module_name), function)(Path(weights_dir), Path(out))


# --- building the folders -------------------------------------------------------------------


def pip_download_command(dest: str | Path, packages: Sequence[str], python_version: str | None = None,
                         platforms: Sequence[str] = ()) -> list[str]:
    """`pip download` of binary wheels for the Kaggle image's Python and platform (needs a network)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    if python_version:
        command += ["--python-version", str(python_version)]
    for platform in platforms:
        command += ["--platform", platform]
    return command + list(packages)


def _ignore(directory, names):
    return [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in IGNORED)]


def copy_code(repo_root: Path, dest: Path, paths: Sequence[str] = CODE_PATHS) -> list[str]:
    copied = []
    for name in paths:
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=_ignore)
        elif source.is_file():
            shutil.copy2(source, dest / name)
        else:
            continue
        copied.append(name)
    return copied


def copy_weights(run: Path, dest: Path, patterns: Sequence[str]) -> list[str]:
    """Copy the run's files matching `patterns` (relative globs), keeping their relative paths."""
    copied = []
    for pattern in patterns:
        matches = sorted(p for p in run.glob(pattern) if p.is_file())
        if not matches:
            from common.core.errors import DataError

            raise DataError(f"{run}: no {pattern} (train the run to the end before building a kernel)")
        for source in matches:
            target = dest / source.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied.append(str(source.relative_to(run)))
    return copied


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_kernel(plan: KernelPlan, run: Path, weights: Sequence[str], out: Path, *, repo_root: Path,
                 wheels: bool = False, python_version: str | None = None, platforms: Sequence[str] = (),
                 runner: Callable = subprocess.run) -> Path:
    """Write kernel/, code/, weights/, wheels/ and README.md under `out` (replaced if it exists)."""
    if out.exists():
        shutil.rmtree(out)
    folders = {name: out / name for name in ("kernel", "code", "weights", "wheels")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    names, user = plan.datasets, plan.username

    script_name = f"{plan.slug}.py"
    (folders["kernel"] / script_name).write_text(kernel_script(plan))
    _write_json(folders["kernel"] / "kernel-metadata.json", kernel_metadata(plan, script_name))

    copy_code(repo_root, folders["code"])
    _write_json(folders["code"] / "dataset-metadata.json", dataset_metadata(user, names["code"], names["code"]))
    copy_weights(run, folders["weights"], weights)
    _write_json(folders["weights"] / "dataset-metadata.json", dataset_metadata(user, names["weights"], names["weights"]))

    wheels_dir = folders["wheels"]
    (wheels_dir / WHEELS_LIST).write_text("".join(f"{r}\n" for r in plan.requirements))
    _write_json(wheels_dir / "dataset-metadata.json", dataset_metadata(user, names["wheels"], names["wheels"]))
    if wheels and plan.requirements:
        command = pip_download_command(wheels_dir, plan.requirements, python_version, platforms)
        print("downloading wheels:", " ".join(command), flush=True)
        result = runner(command)
        if result.returncode != 0:
            from common.core.errors import ConfigError

            raise ConfigError(f"pip download failed (exit {result.returncode}); kernel.wheels=true needs a network")
    else:
        (wheels_dir / "NOTE.md").write_text(
            "No wheels were downloaded (`kernel.wheels=false`, or this machine has no network).\n"
            f"The kernel then uses the Kaggle image's packages. To bring {', '.join(plan.requirements) or 'packages'} "
            f"offline, run on a machine with a network:\n\n    {' '.join(pip_download_command(wheels_dir, plan.requirements, python_version, platforms))}\n\n"
            "or rebuild with `kernel.wheels=true`, then upload this folder as a dataset.\n")

    (out / "README.md").write_text(
        f"# Kaggle kernel {user}/{plan.slug}\n\n{plan.source}\n\nUpload the datasets, then push the kernel:\n\n"
        f"    kaggle datasets create -p {folders['code']} --dir-mode zip\n"
        f"    kaggle datasets create -p {folders['weights']} --dir-mode zip\n"
        f"    kaggle datasets create -p {folders['wheels']}\n"
        f"    kaggle kernels push -p {folders['kernel']}\n\n"
        "(`kaggle datasets version -p ... -m msg --dir-mode zip` updates an existing dataset.)\n"
        "Run it locally against a copy of /kaggle laid out the same way: `KAGGLE_ROOT=/path/to/fake-kaggle "
        f"python {folders['kernel'] / script_name}`.\n")
    return out


def build_kernel_for_run(comp, cfg, *, entry_point: str, weights: Sequence[str]) -> Path:
    """`<competition> kernel run.name=NAME`: the kernel folders under `<run>/kaggle/`, from `cfg.kernel`."""
    from common.core.paths import REPO_ROOT, run_dir

    run = run_dir(cfg, comp.name, create=False)
    k = cfg.kernel
    username = k.get("username") or os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER
    plan = KernelPlan(username=username, slug=slugify(k.get("slug") or f"{comp.name}-{cfg.run.name}"),
                      competition=comp.slug, entry_point=entry_point, package=type(comp).__module__, enable_gpu=bool(k["enable_gpu"]),
                      requirements=list(k.get("requirements") or []),
                      source=f"generated by `./run.sh {comp.name} kernel run.name={cfg.run.name}` on "
                             f"{time.strftime('%Y-%m-%d %H:%M')}")
    out = build_kernel(plan, run, weights, run / "kaggle", repo_root=REPO_ROOT, wheels=bool(k.get("wheels")),
                       python_version=k.get("python_version"), platforms=list(k.get("platforms") or []))
    print((out / "README.md").read_text())
    if username == PLACEHOLDER_USER:
        print(f"note: no Kaggle user given: the metadata says '{PLACEHOLDER_USER}'; rebuild with kernel.username=NAME "
              "(or set KAGGLE_USERNAME)")
    print(f"kernel folder: {out / 'kernel'}", flush=True)
    return out
