"""The PNGs a run leaves behind: where a picture beats a table."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(log_csv: Path, path: Path) -> None:
    """Loss and every validation metric per epoch, one line per fold."""
    if not Path(log_csv).exists():
        return
    log = pd.read_csv(log_csv)
    skip = {"fold", "epoch", "lr", "frozen", "seconds", "train_seconds", "threshold"}
    columns = [c for c in log.columns if c not in skip and pd.api.types.is_numeric_dtype(log[c])]
    fig, axes = plt.subplots(1, len(columns) + 1, figsize=(4 * (len(columns) + 1), 3.2))
    for ax, column in zip(axes, columns + ["lr"]):
        for fold, rows in log.groupby("fold"):
            ax.plot(rows.epoch, rows[column], marker="o", label="full fit" if fold == -1 else f"fold {fold}")
        ax.set_title(column)
        ax.set_xlabel("epoch")
    axes[0].legend()
    _save(fig, path)


def threshold_curve(thresholds, values, best_threshold: float, baseline: float, path: Path,
                    metric: str = "MAP@5", what: str = "new_whale threshold") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(thresholds, values, label=f"OOF {metric}")
    ax.axvline(best_threshold, color="C3", linestyle="--", label=f"tuned {best_threshold:.3f}")
    ax.axhline(baseline, color="grey", linestyle=":", label=f"trivial baseline {baseline:.3f}")
    ax.set_xlabel(what)
    ax.set_ylabel(metric)
    ax.legend()
    _save(fig, path)


def similarity_histograms(embeddings: np.ndarray, labels, path: Path, max_pairs: int = 200_000, seed: int = 0) -> None:
    """Cosine similarity of same-identity vs different-identity pairs: their overlap is the error."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=object)
    i, j = np.triu_indices(len(labels), k=1)
    if len(i) > max_pairs:
        pick = rng.choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    sims = np.einsum("nd,nd->n", embeddings[i], embeddings[j])
    same = labels[i] == labels[j]
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-1, 1, 81)
    ax.hist(sims[~same], bins=bins, density=True, alpha=0.6, label=f"different identity ({(~same).sum()} pairs)")
    ax.hist(sims[same], bins=bins, density=True, alpha=0.6, label=f"same identity ({same.sum()} pairs)")
    ax.set_xlabel("cosine similarity")
    ax.legend()
    _save(fig, path)


def roc_curve_plot(fpr, tpr, auc: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(np.maximum(fpr, 1e-6), tpr, label=f"AUC {auc:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("verification ROC (all validation pairs)")
    ax.legend(loc="lower right")
    _save(fig, path)


def penalty_curve(table: pd.DataFrame, chosen, baseline: float, path: Path) -> None:
    no_penalty = (table.query_penalty == 0) & (table.gallery_penalty == 0)
    same = table[(table.k == chosen.k) & (table.gallery_penalty == chosen.gallery_penalty)
                 & ((table.topm == chosen.topm) | no_penalty)].sort_values("query_penalty")
    threshold_curve(same.query_penalty.to_numpy(), same.gap.to_numpy(), chosen.query_penalty, baseline, path,
                          metric="GAP", what=f"query penalty x distractor similarity (k={chosen.k}, "
                                             f"gallery penalty {chosen.gallery_penalty})")


def confidence_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], is_distractor: np.ndarray,
                          path: Path) -> None:
    """Per panel (title, confidences, answer is right): confidence of right answers, wrong answers on
    members and answers on distractors. GAP wants the first group above the other two; re-ranking
    should push the distractors down."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, conf, correct) in zip(axes[0], panels):
        groups = [("right class", correct & ~is_distractor), ("wrong class", ~correct & ~is_distractor),
                  ("distractor", is_distractor)]
        bins = np.linspace(float(np.min(conf)), float(np.max(conf)) + 1e-6, 40)
        for name, mask in groups:
            if mask.any():
                ax.hist(conf[mask], bins=bins, alpha=0.55, label=f"{name} ({mask.sum()})")
        ax.set_title(f"OOF confidence {title}")
        ax.set_xlabel("confidence")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
