"""The Kaggle side of every competition: download its data, submit a run, build and push an offline kernel.

The `kaggle` executable, its credentials and its failures are `common.kaggle.client`'s: a user gets
one clear line before anything is sent, never the CLI's help page.

Commands (registered for every competition in `common.core.cli.COMMANDS`):

    download                            kaggle competitions download -> inputs/<slug>/ (unzipped)
    submit run.name=NAME [message=...]  validate the run's submission.csv, then kaggle competitions submit
    kernel run.name=NAME [push=true]    the kernel folders of `common.kaggle.kernel` (+ upload and push them)

Inside a kernel, `kernel_predict(weights_dir, out)` is the generic entry point the kernel script calls:
the run in the weights dataset predicts the competition's test set (found under /kaggle/input) into
/kaggle/working/submission.csv, with /kaggle/temp as scratch.
"""
from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

from common.core.errors import DataError
from common.core.paths import REPO_ROOT, kaggle_input_dirs, kaggle_root, run_dir
from common.kaggle.client import (_NOT_FOUND, KaggleError, credential_source, explain_failure,  # noqa: F401
                                  require_credentials, run_kaggle)

DOWNLOAD_MARKER = ".complete"  # written once a download is unzipped (the demo data uses the same marker)
DEMO_MARKER = "test_truth.csv"  # the demo data's answers: Kaggle's own data never has them
KERNEL_ENTRY_POINT = "common.kaggle.commands:kernel_predict"  # what the kernel script calls
DATASET_PARTS = ("code", "weights", "wheels")  # the datasets of a kernel folder (common.kaggle.kernel)
DATASET_READY_TIMEOUT_S = 900
DATASET_POLL_S = 10


# --- download -------------------------------------------------------------------------------


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def unzip_and_remove(archive: Path, dest: Path) -> None:
    """Extract `archive` into `dest` (zipfile drops `..` and absolute prefixes), then delete it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    except zipfile.BadZipFile:
        raise DataError(f"{archive}: not a complete zip file (an interrupted download?); delete it and run "
                        "download again") from None
    archive.unlink()


def download_command(comp, cfg, args) -> Path:
    """`download [data.root=DIR]`: the competition's files into inputs/<slug>/ (or DIR), unzipped."""
    attached = [d for d in kaggle_input_dirs(comp.slug) if _non_empty(d)]
    if attached and not cfg.data.get("root"):
        print(f"the competition data is already attached at {attached[0]}: nothing to download")
        return attached[0]
    dest = Path(cfg.data.root).expanduser().resolve() if cfg.data.get("root") else REPO_ROOT / "inputs" / comp.slug
    if (dest / DOWNLOAD_MARKER).exists():
        print(f"{comp.slug} is already downloaded in {dest} (delete {dest / DOWNLOAD_MARKER} to download again)")
        return dest
    require_credentials()
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.zip"))
    run_kaggle(["competitions", "download", "-c", comp.slug, "-p", dest], slug=comp.slug)
    expected = dest / f"{comp.slug}.zip"
    archives = [expected] if expected.exists() else sorted(set(dest.glob("*.zip")) - before)
    if not archives:
        raise KaggleError(f"kaggle competitions download reported success but left no zip in {dest}")
    for archive in archives:
        print(f"unzipping {archive.name} ...", flush=True)
        unzip_and_remove(archive, dest)
    (dest / DOWNLOAD_MARKER).write_text(f"downloaded {time.strftime('%Y-%m-%d %H:%M')}\n")
    use = "uses it from now on" if not cfg.data.get("root") else f"uses it with data.root={dest}"
    print(f"{comp.slug} is in {dest}: `./run.sh {comp.name} train` {use}")
    return dest


# --- submit ---------------------------------------------------------------------------------


def is_demo_root(root: Path) -> bool:
    root = Path(root).resolve()
    return (root / DEMO_MARKER).exists() or (REPO_ROOT / "inputs" / "demo") in root.parents


def kaggle_data_dirs(slug: str) -> list[Path]:
    """Where Kaggle's own copy of the competition data may be: inputs/<slug>/, then the kernel's inputs."""
    return [REPO_ROOT / "inputs" / slug, *kaggle_input_dirs(slug)]


def read_metrics(run: Path) -> dict:
    path = run / "metrics.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def submission_data_root(comp, cfg, metrics: dict) -> Path:
    """The data root whose sample_submission.csv the file must match: `data.root`, else the run's own
    (metrics.json `data_root`) when it is Kaggle data, else Kaggle's data in inputs/<slug> or /kaggle/input."""
    if cfg.data.get("root"):
        return Path(cfg.data.root).expanduser().resolve()
    recorded = Path(metrics["data_root"]) if metrics.get("data_root") else None
    if recorded is not None and (recorded / "sample_submission.csv").exists() and not is_demo_root(recorded):
        return recorded
    for candidate in kaggle_data_dirs(comp.slug):
        if (candidate / "sample_submission.csv").exists():
            return candidate
    if recorded is not None and is_demo_root(recorded):
        return recorded  # refused by the caller with an explanation
    raise DataError(f"no sample_submission.csv to check the submission against in {' or '.join(map(str, kaggle_data_dirs(comp.slug)))}: "
                    f"run `./run.sh {comp.name} download` first, or pass data.root=DIR")


def _read_table(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def check_against_sample(frame, sample, where: str) -> None:
    """The checks every Kaggle submission needs: the sample's columns, and each of its ids exactly once."""
    if list(frame.columns) != list(sample.columns):
        raise DataError(f"{where}: columns {','.join(frame.columns)}, sample_submission.csv has "
                        f"{','.join(sample.columns)}")
    ids, expected = frame.iloc[:, 0], sample.iloc[:, 0]
    if ids.duplicated().any():
        raise DataError(f"{where}: id {ids[ids.duplicated()].iloc[0]} appears twice")
    missing, extra = set(expected) - set(ids), set(ids) - set(expected)
    if missing or extra:
        raise DataError(f"{where}: {len(missing)} id(s) of sample_submission.csv missing (e.g. "
                        f"{sorted(missing)[:1]}), {len(extra)} unknown (e.g. {sorted(extra)[:1]})")


def validate_submission_file(comp, path: Path, root: Path) -> None:
    """The generic check against sample_submission.csv, then the competition's own
    (`comp.validate_submission`); raises DataError naming the file."""
    sample_path = Path(root) / "sample_submission.csv"
    if not sample_path.is_file():
        raise DataError(f"{sample_path}: file not found (needed to check {path})")
    frame, sample = _read_table(Path(path)), _read_table(sample_path)
    check_against_sample(frame, sample, str(path))
    try:
        comp.validate_submission(_typed(frame), sample, str(path))
    except DataError as exc:
        raise DataError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _typed(frame):
    """Numeric columns back as numbers (the file was read as text for the id checks)."""
    import pandas as pd

    out = frame.copy()
    for column in out.columns[1:]:
        numbers = pd.to_numeric(out[column], errors="coerce")
        if numbers.notna().all():
            out[column] = numbers
    return out


def submit_command(comp, cfg, args) -> Path:
    """`submit run.name=NAME [message=TEXT] [submission=FILE]`: check the file, then send it to Kaggle."""
    run = run_dir(cfg, comp.name, create=False)
    path = Path(cfg.submission).expanduser().resolve() if cfg.get("submission") else run / "submission.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such submission file (train the run to the end, or predict with out=FILE "
                        "and pass submission=FILE)")
    metrics = read_metrics(run)
    root = submission_data_root(comp, cfg, metrics)
    if is_demo_root(root):
        raise DataError(f"{path} answers the demo data in {root}: Kaggle would reject it; download the "
                        f"competition (`./run.sh {comp.name} download`), predict on it (`./run.sh {comp.name} "
                        f"predict run.name={cfg.run.name} data.root=inputs/{comp.slug} out=FILE`) and submit "
                        "with submission=FILE")
    try:
        validate_submission_file(comp, path, root)
    except DataError as exc:
        recorded = metrics.get("data_root")
        hint = (f" (the run predicted {recorded}, not {root}: predict on {root} and pass submission=FILE)"
                if recorded and Path(recorded).resolve() != Path(root).resolve() and not cfg.get("submission") else "")
        raise DataError(f"{exc}{hint}; nothing was submitted") from None
    print(f"{path}: matches {root / 'sample_submission.csv'}", flush=True)
    require_credentials()
    message = cfg.get("message") or default_message(comp, cfg, metrics)
    run_kaggle(["competitions", "submit", "-c", comp.slug, "-f", path, "-m", message], slug=comp.slug)
    print(f"submitted; scores appear at https://www.kaggle.com/c/{comp.slug}/submissions")
    return path


def default_message(comp, cfg, metrics: dict) -> str:
    from common.core.runs import key_metric

    text = f"{comp.name} run {cfg.run.name}"
    found = key_metric(metrics)
    return f"{text}: {found[0]} {found[1]:.4f}" if found else text


# --- kernel ---------------------------------------------------------------------------------


def kernel_command(comp, cfg, args) -> Path:
    """`kernel run.name=NAME [push=true] [kernel.username=USER] [kernel.wheels=true]`.

    Builds the folders of `common.kaggle.kernel` under <run>/kaggle/ (kernel, code, weights, wheels); the
    kernel imports the competition's package and calls `kernel_predict` here, which runs the same
    `predict` as a local run. With push=true the three datasets are created (or versioned) and the kernel pushed.
    """
    from common.kaggle.kernel import build_kernel_for_run

    folder = build_kernel_for_run(comp, cfg, entry_point=KERNEL_ENTRY_POINT, weights=comp.weight_files)
    if cfg.get("push"):
        push_kernel_folder(folder, message=cfg.get("message") or f"{comp.name} run {cfg.run.name}")
    return folder


def dataset_exists(dataset_id: str) -> bool:
    """`kaggle datasets status ID` succeeds for an existing dataset and reports 404 for a new one."""
    result = run_kaggle(["datasets", "status", dataset_id], check=False, echo=False)
    if result.returncode == 0:
        return True
    if _NOT_FOUND.search(result.stdout):
        return False
    raise KaggleError(explain_failure(result.stdout, None, f"kaggle datasets status {dataset_id}"))


def wait_until_ready(dataset_id: str, timeout_s: float = DATASET_READY_TIMEOUT_S) -> None:
    """Kaggle processes an upload before a kernel can mount it: poll `datasets status` until `ready`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = run_kaggle(["datasets", "status", dataset_id], check=False, echo=False)
        lines = result.stdout.strip().splitlines()
        status = lines[-1].strip().lower() if result.returncode == 0 and lines else "not visible yet"
        if status == "ready":
            return
        if status in ("failed", "deleted"):
            raise KaggleError(f"Kaggle could not process dataset {dataset_id}: status '{status}'")
        if time.monotonic() > deadline:
            print(f"warning: dataset {dataset_id} is still '{status}' after {timeout_s:.0f} s; pushing the kernel "
                  "anyway (its first run may fail until the dataset is ready)", flush=True)
            return
        time.sleep(DATASET_POLL_S)


def push_kernel_folder(folder: Path, message: str) -> None:
    """Upload <folder>/{code,weights,wheels} as datasets (create, or a new version), then push <folder>/kernel."""
    from common.kaggle.kernel import PLACEHOLDER_USER

    folder = Path(folder)
    ids = {}
    for part in DATASET_PARTS:
        meta_path = folder / part / "dataset-metadata.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: missing (rebuild the kernel folder)")
        ids[part] = json.loads(meta_path.read_text())["id"]
    if any(i.startswith(f"{PLACEHOLDER_USER}/") for i in ids.values()):
        raise KaggleError(f"{folder}: the metadata names no Kaggle user ('{PLACEHOLDER_USER}'); rebuild with "
                          "kernel.username=NAME (or set KAGGLE_USERNAME) before push=true")
    require_credentials()
    for part, dataset_id in ids.items():
        if dataset_exists(dataset_id):
            run_kaggle(["datasets", "version", "-p", folder / part, "-m", message, "--dir-mode", "zip"])
        else:
            run_kaggle(["datasets", "create", "-p", folder / part, "--dir-mode", "zip"])
    for dataset_id in ids.values():
        wait_until_ready(dataset_id)
    run_kaggle(["kernels", "push", "-p", folder / "kernel"])
    kernel_id = json.loads((folder / "kernel" / "kernel-metadata.json").read_text())["id"]
    print(f"pushed: follow it with `kaggle kernels status {kernel_id}` or at https://www.kaggle.com/code/{kernel_id}")


# --- inside the kernel ----------------------------------------------------------------------


def link_run(weights_dir: Path, run: Path) -> Path:
    """A writable run directory mirroring the (read-only) weights dataset, file by file as symlinks."""
    weights_dir = Path(weights_dir).resolve()
    for source in sorted(p for p in weights_dir.rglob("*") if p.is_file()):
        target = run / source.relative_to(weights_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            target.symlink_to(source)
        except OSError:
            shutil.copy2(source, target)
    return run


def kernel_predict(weights_dir: Path, out: Path) -> Path:
    """Kernel entry point for any competition: the run in `weights_dir` (its config.yaml names the
    competition) predicts the test set under /kaggle/input/<slug> into `out`, with /kaggle/temp as scratch."""
    from common.core.competition import COMPETITIONS
    from common.core.config import load_config, read_saved_config
    from common.tasks.engine import predict

    weights_dir = Path(weights_dir)
    saved = read_saved_config(weights_dir / "config.yaml")
    if not saved.get("competition"):
        raise DataError(f"{weights_dir / 'config.yaml'}: no `competition` key: which competition is this run for?")
    comp = COMPETITIONS.get(saved.competition, "competition in config.yaml")  # the kernel script imported it
    roots = [d for d in kaggle_input_dirs(comp.slug) if _non_empty(d)]
    if not roots:
        raise DataError(f"no competition data in {' or '.join(map(str, kaggle_input_dirs(comp.slug)))}: "
                        f"attach the {comp.slug} competition to the kernel")
    runs_root = kaggle_root() / "temp" / "runs"
    name = str(saved.get("run", {}).get("name") or "kernel")
    link_run(weights_dir, runs_root / comp.name / name)
    cfg = load_config(comp.config_path, [f"run.root={runs_root}", f"run.name={name}", f"data.root={roots[0]}",
                                          f"out={out}", "progress=false"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    print(f"{comp.name}: run {name} from {weights_dir} predicts {roots[0]} -> {out}", flush=True)
    predict(comp, cfg)
    return Path(out)
