"""Galleries of the retrieval tasks, from the out-of-fold answers (oof.csv), where the truth is known.

identification (whales, happywhale): the worst queries (confident mistakes: the truth is nowhere in
the 5 answers although the first answer scored high) and a sample of the best, each with the gallery
image behind every answer, the new-class threshold drawn where the unknown label was inserted; then
the identities most often taken for one another.
recognition (landmarks): the queries the distractor re-ranking rescued (a right answer moved up the
confidence order, a wrong one or a distractor moved down) and the ones it suppressed (the reverse).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from common.data.tables import resolve_distractors
from common.report.build import REPORTS, Context
from common.report.html import cell, escape, table

NO_DATA = "the run's images were not found (pass data.root=DIR to `report`): no thumbnails"


def train_paths(ctx: Context) -> tuple[dict[str, str], pd.DataFrame | None]:
    """image name -> path of the training images, and the training table (None without data)."""
    if ctx.root is None:
        return {}, None
    train = ctx.comp.read_train(ctx.root, ctx.cfg)
    return dict(zip(train.image.astype(str), train.path.astype(str))), train


def first_image_of(train: pd.DataFrame | None) -> dict[str, str]:
    """label -> one of its training images (a face for the identity when no neighbour was stored)."""
    if train is None:
        return {}
    first = train.drop_duplicates("label")
    return dict(zip(first.label.astype(str), first.image.astype(str)))


def average_precision(prediction: list[str], truth: str, k: int = 5) -> float:
    return next((1.0 / (i + 1) for i, p in enumerate(prediction[:k]) if p == truth), 0.0)


@REPORTS.register("identification")
def identification(page, ctx: Context) -> None:
    oof = ctx.csv("oof.csv", dtype=str)
    new_label = ctx.comp.new_label
    threshold = float(ctx.metrics.get("threshold", np.nan))
    paths, train = train_paths(ctx)
    thumbs, representative = ctx.thumbnails(paths), first_image_of(train)
    score_cols = sorted((c for c in oof.columns if c.startswith("score")), key=lambda c: int(c[5:]))
    oof["ap"] = [average_precision(p.split(), t) for p, t in zip(oof.prediction, oof.truth)]
    oof["top_score"] = pd.to_numeric(oof[score_cols[0]], errors="coerce") if score_cols else 0.0

    def row_html(r) -> str:
        ranked, truth = r.ranked.split(), r.truth
        scores = [float(r[c]) for c in score_cols]
        neighbours = r.neighbours.split() if "neighbours" in r.index and r.neighbours else []
        by_label = {label: (scores[i] if i < len(scores) else np.nan, neighbours[i] if i < len(neighbours) else
                            representative.get(label)) for i, label in enumerate(ranked)}
        cells = [cell(thumbs(r.image), [escape(r.image), f"truth <b>{escape(truth)}</b>",
                                        f"AP@5 {r.ap:.2f}"], "query")]
        for rank, label in enumerate(r.prediction.split()):
            kind = "right" if label == truth else ("wrong" if rank == 0 else "")
            if label == new_label:
                cells.append('<div class="threshold" title="new-class threshold"></div>')
                cells.append(cell(None, [f"<b>{escape(label)}</b>", f"below {threshold:.3f}"], kind, new_label))
                continue
            score, image = by_label.get(label, (np.nan, representative.get(label)))
            cells.append(cell(thumbs(image) if image else None, [f"<b>{escape(label)}</b>", f"{score:.3f}"], kind))
        return '<div class="row">' + "".join(cells) + "</div>"

    n = ctx.examples
    worst = oof[oof.ap == 0].sort_values("top_score", ascending=False).head(n)
    best = oof[oof.ap == 1]
    best = best.sample(min(n, len(best)), random_state=0) if len(best) else best
    note = NO_DATA if ctx.root is None else ""
    page.add(f"Worst out-of-fold queries ({int((oof.ap == 0).sum())} of {len(oof)} have AP@5 = 0)",
             "".join(row_html(r) for _, r in worst.iterrows()) or "none",
             (note + " ") + f"the truth is in none of the 5 answers; most confident first. Green: the truth; red: a wrong "
             f"first answer; striped: {escape(new_label)} inserted at the threshold (orange bar).")
    page.add(f"A sample of the best ({int((oof.ap == 1).sum())} queries answered right first)",
             "".join(row_html(r) for _, r in best.iterrows()) or "none", note)
    confused_identities(page, ctx, oof, thumbs, representative, new_label)


def confused_identities(page, ctx: Context, oof: pd.DataFrame, thumbs, representative: dict, new_label: str) -> None:
    """Pairs (truth, first known answer) over the known queries answered wrong, most frequent first."""
    first = oof.ranked.str.split().str[0].fillna("")
    wrong = oof[(oof.truth != new_label) & (first != oof.truth) & (first != "")]
    pairs = pd.DataFrame({"truth": wrong.truth, "answer": first[wrong.index]}).value_counts().head(ctx.examples)
    rows = []
    for (truth, answer), count in pairs.items():
        rows.append([cell(thumbs(representative.get(truth)), [f"<b>{escape(truth)}</b>"]),
                     cell(thumbs(representative.get(answer)), [f"<b>{escape(answer)}</b>"]), int(count)])
    page.add("Identities most often confused", table(rows, ["truth", "taken for", "queries"]) if rows else "none",
             "over the out-of-fold queries of known identities whose first known answer was another identity")


@REPORTS.register("recognition")
def recognition(page, ctx: Context) -> None:
    oof = ctx.csv("oof.csv", dtype=str)
    if "prediction_rerank" not in oof.columns or not ctx.metrics.get("rerank_enabled"):
        page.add("Distractor re-ranking", "re-ranking was off in this run (no distractors): nothing to compare")
        return
    paths, train = train_paths(ctx)
    if ctx.root is not None:
        folder, files = resolve_distractors(ctx.cfg, ctx.root)
        paths.update({p.relative_to(folder).as_posix(): str(p) for p in files})
    thumbs, representative = ctx.thumbnails(paths), first_image_of(train)
    n_rows = len(oof)

    def standing(prediction: pd.Series, confidence: pd.Series) -> np.ndarray:
        """+rank share for a right answer, -rank share for a wrong one: GAP rewards right answers high in
        the confidence order and wrong ones (distractors included) low."""
        share = pd.to_numeric(confidence, errors="coerce").rank(pct=True).to_numpy()
        right = (prediction == oof.truth).to_numpy() & (oof.truth != "").to_numpy()
        return np.where(right, share, -share)

    gain = standing(oof.prediction_rerank, oof.confidence_rerank) - standing(oof.prediction, oof.confidence)
    oof["gain"] = gain

    def answer_cell(label: str, confidence: str, truth: str) -> str:
        kind = "right" if label and label == truth else "wrong"
        image = representative.get(label)
        return cell(thumbs(image) if image else None, [f"<b>{escape(label or '-')}</b>", f"conf {float(confidence):.3f}"],
                    kind, "no answer")

    def rows_html(frame: pd.DataFrame) -> str:
        out = []
        for r in frame.itertuples():
            truth = r.truth or "(no landmark)"
            out.append('<div class="row">'
                       + cell(thumbs(r.image), [escape(r.image[:24]), f"{escape(r.kind)}", f"truth <b>{escape(truth)}</b>"],
                              "query")
                       + answer_cell(r.prediction, r.confidence, r.truth) + '<div class="threshold"></div>'
                       + answer_cell(r.prediction_rerank, r.confidence_rerank, r.truth)
                       + f'<div class="cell">standing {r.gain:+.2f}</div></div>')
        return "".join(out)

    n = ctx.examples
    note = (NO_DATA + " " if ctx.root is None else "") + (
        "query · plain vote · (bar) · with re-ranking. Standing: the answer's place in the confidence order "
        "(share of queries below it), counted + for a right answer and - for a wrong one.")
    page.add(f"Queries the distractor re-ranking rescued ({int((gain > 0.05).sum())} of {n_rows} moved the right way)",
             rows_html(oof.sort_values("gain", ascending=False).head(n)), note)
    page.add(f"Queries it suppressed ({int((gain < -0.05).sum())} moved the wrong way)",
             rows_html(oof.sort_values("gain").head(n)), note)
