"""`report.html` of a run: what a player opens first, to *see* the run rather than read its CSVs.

Every report has the headline metrics beside the trivial baseline on the same data, the run's plots
and its settings; then the task's own galleries of real examples (REPORTS, one entry per task:
`common.report.retrieval`, `common.report.video`). `train` writes it at the end; the `report` command
rebuilds it from the files a finished run left (`./run.sh <competition> report run.name=NAME`).

Images come from the run's data root (metrics.json's `data_root`); when it has moved, pass
`data.root=DIR`, and when it is gone the galleries say so and the rest of the report is written.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.core.config import fill_missing, read_saved_config
from common.core.errors import DataError
from common.core.files import write_text_atomic
from common.core.paths import run_dir
from common.core.registry import Registry
from common.data.images import load_rgb
from common.report.html import Page, escape, png_tag, table, thumbnail_uri

REPORTS = Registry("report")  # task name -> fn(page, context): the task's own sections

PLOT_ORDER = ("curves", "map5_vs_threshold", "gap_vs_query_penalty", "roc", "similarity_hist",
              "confidence_hist", "reliability", "reliability_test", "logloss_vs_eps")


@dataclass
class Context:
    """What a task's sections read: the run's files, its saved config and its data (if still there)."""
    comp: object
    cfg: object
    run: Path
    metrics: dict
    root: Path | None
    examples: int
    thumb: int

    def csv(self, name: str, **kwargs) -> pd.DataFrame:
        return pd.read_csv(self.run / name, keep_default_na=False, **kwargs)

    def thumbnails(self, paths: dict[str, str]) -> "Thumbnails":
        return Thumbnails(paths, self.thumb)


class Thumbnails:
    """name -> inlined JPEG thumbnail of that image, decoded once; None when the file is gone."""

    def __init__(self, paths: dict[str, str], size: int):
        self.paths, self.size, self.done = paths, size, {}

    def __call__(self, name) -> str | None:
        name = str(name)
        if name not in self.done:
            path = self.paths.get(name)
            try:
                self.done[name] = thumbnail_uri(load_rgb(path), self.size) if path else None
            except (DataError, OSError, ValueError):
                self.done[name] = None
        return self.done[name]


def fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4f}")
    return escape(value)


def headline(task, metrics: dict) -> str:
    """The task's metric on out-of-fold and test answers, beside the trivial baseline on the same data."""
    metric, lower = task.metric, task.lower_is_better
    rows = []
    for where, label in (("oof", "out-of-fold"), ("test", "test (truth in the data root)")):
        value = metrics.get(f"{where}_{metric}")
        if value is None:
            continue
        baseline = metrics.get(f"{where}_baseline_{metric}", metrics.get(f"baseline_{metric}") if where == "oof" else None)
        if baseline is None:
            rows.append([label, fmt(value), "", ""])
            continue
        gain = (baseline - value) if lower else (value - baseline)
        verdict = "good" if gain > 0 else "bad"
        rows.append([label, fmt(value), fmt(baseline),
                     f'<span class="{verdict}">{"better" if gain > 0 else "not better"} by {abs(gain):.4f}</span>'])
    for key, label in (("oof_gap_rerank", "out-of-fold, with distractor re-ranking"),
                       ("test_gap_plain", "test, without re-ranking"),
                       ("oof_map5_plain", "out-of-fold, without post-processing"),
                       ("oof_map5_unfused", "out-of-fold, before the verification fusion")):
        if key in metrics:
            rows.append([label, fmt(metrics[key]), "", ""])
    if metrics.get("postprocess"):
        rows.append(["post-processing chosen on OOF", escape(str(metrics["postprocess"])), "", ""])
    return table(rows, ["answers", f"{metric} ({'lower' if lower else 'higher'} is better)", "trivial baseline",
                        "against the baseline"])


def plots(run: Path) -> str:
    found = {p.stem: p for p in sorted(run.glob("*.png"))}
    ordered = [found.pop(name) for name in PLOT_ORDER if name in found] + list(found.values())
    tags = [png_tag(p, wide=p.stem == "curves") for p in ordered]  # the curves are a row of small panels
    return '<div class="plots">' + "".join(tags) + "</div>" if tags else "no plots"


def settings(cfg) -> str:
    keys = ["model.backbone", "model.pretrained", "model.head", "model.loss", "model.embedding_dim",
            "data.image_size", "train.folds", "train.run_folds", "train.epochs", "train.batch_size", "train.lr",
            "train.sampler", "augment.train", "infer.tta_flip", "data.resize", "data.boxes", "train.ema",
            "train.full_fit", "infer.verify", "seed"]
    rows = []
    for key in keys:
        try:
            rows.append([escape(key), escape(cfg.get_path(key))])
        except (KeyError, AttributeError):
            continue
    return table(rows, ["key", "value"])


def data_root(cfg, metrics: dict) -> Path | None:
    """Where the run's images are now: data.root given to `report`, else the one the run trained on."""
    for candidate in (cfg.data.get("root"), metrics.get("data_root")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def build_report(comp, cfg, run: Path, root: Path | None = None) -> Path:
    """Write `run/report.html` from the run's files; returns its path."""
    from common.tasks import TASKS

    task = TASKS.get(comp.task)
    metrics = json.loads((run / "metrics.json").read_text())
    ctx = Context(comp, cfg, run, metrics, root if root is not None else data_root(cfg, metrics),
                  int(cfg.report.examples), int(cfg.report.thumbnail))
    page = Page(f"{comp.name} · run {run.name}",
                f"{task.name} task · {metrics.get('train_minutes', '?')} min of training · data {ctx.root or 'not found'}")
    page.add("Headline", headline(task, metrics))
    page.add("Plots", plots(run))
    REPORTS.get(task.name, f"report of the {task.name} task")(page, ctx)
    scalars = [[escape(k), fmt(v)] for k, v in metrics.items() if isinstance(v, (int, float, str, bool))]
    page.add("Settings", settings(cfg))
    page.add("Every metric", table(scalars, ["metric", "value"]), "as in metrics.json")
    return write_text_atomic(run / "report.html", page.render())


def report_command(comp, cfg) -> Path:
    """`report run.name=NAME [data.root=DIR]`: rebuild report.html of a finished run."""
    run = run_dir(cfg, comp.name, create=False)
    if not (run / "metrics.json").exists():
        raise DataError(f"{run / 'metrics.json'}: missing (run '{run.name}' did not finish)")
    saved = read_saved_config(run / "config.yaml")
    fill_missing(saved, cfg)  # a run saved before some keys existed
    if cfg.data.get("root"):
        saved.data.root = cfg.data.root
    saved.report = cfg.report
    path = build_report(comp, saved, run)
    print(f"report: {path}", flush=True)
    return path


# the tasks' sections register themselves
from common.report import retrieval as _retrieval  # noqa: E402,F401
from common.report import video as _video  # noqa: E402,F401
