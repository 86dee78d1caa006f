"""Experiment tracking that fits the ecosystem: `tracking=none|tensorboard|mlflow`.

log.csv, metrics.json and report.html are always written; a tracker sends the same numbers where a
team already looks: TensorBoard event files in the run (`tensorboard --logdir outputs/<competition>`),
or MLflow, by default a local file store beside the runs (`outputs/<competition>/mlruns`, no server:
`mlflow ui --backend-store-uri outputs/<competition>/mlruns`), or any `tracking_uri=` MLflow accepts.
MLflow gets every epoch's row of log.csv (as `fold<k>/<column>` at step = epoch), the resolved config
as parameters and as a file, the final metrics, and log.csv, metrics.json, report.html, the plots and
the submission as artifacts; a resumed run continues the same MLflow run.

Both packages are optional: imported only when asked for, and a missing one is a ConfigError before
any run folder exists. Only the main process tracks.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from common.core.errors import ConfigError
from common.core.files import write_json_atomic
from common.core.registry import Registry

TRACKERS = Registry("tracking", keys=("tracking",))
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
ARTIFACTS = ("config.yaml", "log.csv", "metrics.json", "report.html", "submission.csv", "oof.csv")


class Tracker:
    """What the trainer and the engine call; the base class tracks nothing (`tracking=none`)."""

    def __init__(self, cfg=None, run: Path | None = None, competition: str = ""):
        self.cfg, self.run, self.competition = cfg, run, competition

    def log_epoch(self, fold: int, row: dict) -> None:
        """One row of log.csv (fold, epoch, losses, validation metrics, lr, seconds)."""

    def finish(self, metrics: dict) -> None:
        """The run's final metrics and files."""


TRACKERS.add("none", Tracker)


def numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("fold", "epoch") and v == v}


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    """Event files in <run>/tensorboard/fold<k>/, one scalar per log.csv column."""

    def __init__(self, cfg, run: Path, competition: str):
        super().__init__(cfg, run, competition)
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class, self.writers = SummaryWriter, {}

    def log_epoch(self, fold: int, row: dict) -> None:
        writer = self.writers.get(fold)
        if writer is None:
            writer = self.writers[fold] = self._writer_class(log_dir=str(self.run / "tensorboard" / f"fold{fold}"))
        for key, value in numbers(row).items():
            writer.add_scalar(key, value, int(row["epoch"]))
        writer.flush()

    def finish(self, metrics: dict) -> None:
        with self._writer_class(log_dir=str(self.run / "tensorboard" / "run")) as writer:
            for key, value in numbers(metrics).items():
                writer.add_scalar(key, value, 0)
        for writer in self.writers.values():
            writer.close()


def flat(tree, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flat(value, name + ".") if isinstance(value, dict) else {name: str(value)[:500]})
    return out


@TRACKERS.register("mlflow")
class MLflow(Tracker):
    """One MLflow run per toolkit run, in the experiment named after the competition."""

    def __init__(self, cfg, run: Path, competition: str):
        super().__init__(cfg, run, competition)
        # MLflow 3 keeps its file store in maintenance mode behind this switch; it is what "no server" needs
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(cfg.get("tracking_uri") or (run.parent / "mlruns").resolve().as_uri())
        experiment = mlflow.set_experiment(competition)
        state = run / "tracking.json"
        previous = json.loads(state.read_text()).get("mlflow_run_id") if state.exists() else None
        self.active = mlflow.start_run(run_id=previous) if previous else mlflow.start_run(
            run_name=run.name, experiment_id=experiment.experiment_id)
        if previous is None:
            write_json_atomic(state, {"mlflow_run_id": self.active.info.run_id,
                                      "tracking_uri": mlflow.get_tracking_uri()})
            params = flat({k: v for k, v in cfg.items() if k != "command_line_keys"})
            items = list(params.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
                mlflow.log_params(dict(items[start:start + 100]))

    def log_epoch(self, fold: int, row: dict) -> None:
        self.mlflow.log_metrics({f"fold{fold}/{k}": v for k, v in numbers(row).items()}, step=int(row["epoch"]))

    def finish(self, metrics: dict) -> None:
        self.mlflow.log_metrics({k: v for k, v in numbers(metrics).items() if abs(v) != float("inf")})
        for name in ARTIFACTS:
            if (self.run / name).exists():
                self.mlflow.log_artifact(str(self.run / name))
        for plot in sorted(self.run.glob("*.png")):
            self.mlflow.log_artifact(str(plot), artifact_path="plots")
        self.mlflow.end_run()


def check_tracking(cfg) -> None:
    """A tracker that is not installed is refused before any run folder exists, with the install line."""
    name = cfg.get("tracking") or "none"
    TRACKERS.check(name, "tracking")
    if name in PACKAGES:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking={name} needs the optional package {package}: .venv/bin/pip install {package} "
                              "(or tracking=none: log.csv, metrics.json and report.html carry the same numbers)")


_active: Tracker = Tracker()


def start(cfg, run: Path, competition: str) -> Tracker:
    """The run's tracker (the main process only; the others get the silent base class)."""
    global _active
    from common.engine import distributed

    name = (cfg.get("tracking") or "none") if distributed.is_main() else "none"
    _active = TRACKERS.get(name, "tracking")(cfg, run, competition)
    return _active


def active() -> Tracker:
    return _active


def finish(metrics: dict) -> None:
    global _active
    _active.finish(metrics)
    _active = Tracker()
