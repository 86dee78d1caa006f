"""Out-of-fold calibration of per-video probabilities: aggregation over frames, a temperature on
the logit and a clipping eps, each tuned on OOF log loss; `calibration.json` holds the choice and
`common.video.inference` applies it as is (in `predict` and in the Kaggle kernel)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from common.core.files import write_csv_atomic
from common.core.registry import Registry
from common.metrics.scores import log_loss
from common.video.inference import DEFAULT_CALIBRATION, aggregate, aggregation_params, calibrate, frame_probabilities, logit, sigmoid


def balanced_log_loss(y_true, p) -> float:
    """Log loss with both classes weighted equally: the score a set with half positives would give.

    Why: DFDC trains on about 5 fakes per real but scores on a test set about half fake, and the
    balanced sampler already trains at a 50/50 prior; tuning calibration on the raw out-of-fold
    mix would teach it the training prior instead. Equal to `log_loss` when the classes are balanced.
    """
    y, p = np.asarray(y_true), np.asarray(p, np.float64)
    if y.min() == y.max():
        return log_loss(y, p)
    return 0.5 * (log_loss(y[y == 1], p[y == 1]) + log_loss(y[y == 0], p[y == 0]))


OBJECTIVES = Registry("calibration objective", keys=("calibrate.objective",))
OBJECTIVES.add("logloss", log_loss)
OBJECTIVES.add("balanced_logloss", balanced_log_loss)


def fit_temperature(p, y, bounds: tuple[float, float] = (0.05, 20.0), loss=log_loss) -> float:
    """T minimising the log loss of sigmoid(logit(p) / T) (T < 1 sharpens, T > 1 softens)."""
    z = logit(p)
    result = minimize_scalar(lambda log_t: loss(y, sigmoid(z / math.exp(log_t))),
                             bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded")
    return float(math.exp(result.x))


def tune_clip_eps(p, y, grid, loss=log_loss) -> tuple[float, list[float]]:
    """The eps of `grid` with the lowest log loss after clipping to [eps, 1 - eps]; ties go to the
    larger eps (the safer bet on unseen data). Returns (eps, losses in grid order)."""
    p = np.asarray(p, np.float64)
    losses = [loss(y, np.clip(p, e, 1 - e)) for e in grid]
    best = min(losses)
    eps = max(e for e, value in zip(grid, losses) if value <= best + 1e-9 + 1e-7 * best)
    return float(eps), losses


def tune_postprocessing(raw: dict[str, np.ndarray], y: np.ndarray, cfg) -> tuple[dict, dict]:
    """For each aggregation: temperature, then eps, on OOF by `calibrate.objective`.
    Returns (chosen calibration, per-strategy table)."""
    y = np.asarray(y)
    loss = OBJECTIVES.get(cfg.calibrate.objective, "calibrate.objective")
    grid = sorted(float(e) for e in cfg.calibrate.eps_grid)
    bounds = tuple(float(b) for b in cfg.calibrate.temperature_bounds)
    both_classes = 0 < y.sum() < len(y)
    if not both_classes:
        print("warning: out-of-fold videos hold one class only: no temperature, default clip eps", flush=True)
    table = {}
    for strategy, p in raw.items():
        temperature = fit_temperature(p, y, bounds, loss) if cfg.calibrate.temperature and both_classes else 1.0
        scaled = calibrate(p, temperature)
        eps, losses = tune_clip_eps(scaled, y, grid, loss) if both_classes else (DEFAULT_CALIBRATION["clip_eps"], None)
        table[strategy] = {"objective": loss(y, calibrate(p, temperature, eps)), "temperature": temperature,
                           "clip_eps": eps, "eps_losses": losses}
    wanted = cfg.infer.aggregation
    chosen = wanted if wanted != "auto" else min(table, key=lambda s: table[s]["objective"])
    calibration = {"aggregation": chosen, "temperature": table[chosen]["temperature"],
                   "clip_eps": table[chosen]["clip_eps"], "objective": cfg.calibrate.objective,
                   "aggregation_params": aggregation_params(cfg.infer)}
    return calibration, table


def video_probabilities(frames: pd.DataFrame, strategy: str, params: dict) -> pd.Series:
    """Crop rows (video, frame_idx, prob) -> one aggregated probability per video."""
    return frames.groupby("video", sort=False).apply(
        lambda g: aggregate(frame_probabilities(g.prob.to_numpy(), g.frame_idx.to_numpy()), strategy, **params),
        include_groups=False)


def reliability_plot(p, y, path: Path, title: str, n_bins: int = 10) -> None:
    """Predicted probability against the observed positive rate per bin, and how predictions spread."""
    import matplotlib.pyplot as plt

    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    filled = [b for b in range(n_bins) if np.any(which == b)]
    top.plot([p[which == b].mean() for b in filled], [y[which == b].mean() for b in filled], "o-",
             label="videos per bin")
    top.set_ylabel("observed share positive")
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.hist([p[y == 0], p[y == 1]], bins=edges, label=["negative", "positive"], stacked=True)
    bottom.set_xlabel("predicted probability")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roc_auc(y, p) -> float:
    """ROC AUC, NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def evaluate_oof(frames: pd.DataFrame, cfg, run: Path) -> tuple[dict, dict]:
    """Every aggregation strategy on the OOF frames, calibrated; the best one becomes the run's choice.
    Writes oof.csv and the plots; returns (metrics, calibration)."""
    from common.metrics import plots
    from common.video.inference import AGGREGATIONS

    params = aggregation_params(cfg.infer)
    raw = {s: video_probabilities(frames, s, params) for s in AGGREGATIONS}
    videos = raw["mean"].index
    y = frames.groupby("video", sort=False).label.first().loc[videos].to_numpy()
    raw = {s: r.loc[videos].to_numpy() for s, r in raw.items()}
    calibration, table = tune_postprocessing(raw, y, cfg)
    final = calibrate(raw[calibration["aggregation"]], calibration["temperature"], calibration["clip_eps"])
    fold = frames.groupby("video", sort=False).fold.first().loc[videos].to_numpy()
    oof = pd.DataFrame({"video": videos, "label": y, "fold": fold, **{f"p_{s}": r for s, r in raw.items()},
                        "prediction": final})
    write_csv_atomic(oof, run / "oof.csv")
    metrics = {
        "oof_logloss": float(log_loss(y, final)),
        "oof_balanced_logloss": float(balanced_log_loss(y, final)),
        "baseline_logloss": float(log_loss(y, np.full(len(y), 0.5))),
        "oof_prior_logloss": float(log_loss(y, np.full(len(y), y.mean()))),
        "oof_logloss_raw": float(log_loss(y, raw["mean"])),
        **{f"oof_logloss_{s}": float(log_loss(y, calibrate(raw[s], t["temperature"], t["clip_eps"])))
           for s, t in table.items()},
        **{f"oof_{cfg.calibrate.objective}_{s}_tuned": float(t["objective"]) for s, t in table.items()},
        "aggregation": calibration["aggregation"],
        "temperature": calibration["temperature"],
        "clip_eps": calibration["clip_eps"],
        "oof_auc": roc_auc(y, final),
        "oof_accuracy": float(np.mean((final > 0.5) == (y == 1))),
        "oof_videos": int(len(y)),
        "oof_positive_share": float(y.mean()),
    }
    reliability_plot(final, y, run / "reliability.png", f"out-of-fold videos ({calibration['aggregation']}, calibrated)")
    losses = table[calibration["aggregation"]]["eps_losses"]
    if losses is not None:
        plots.threshold_curve(sorted(float(e) for e in cfg.calibrate.eps_grid), losses, calibration["clip_eps"],
                              metrics["baseline_logloss"], run / "logloss_vs_eps.png",
                              metric=f"OOF {cfg.calibrate.objective.replace('_', ' ')}",
                              what="clip eps: predictions in [eps, 1 - eps]")
    return metrics, calibration
