"""Galleries of the video task: per out-of-fold video, a strip of its sampled face crops, each with
the fold model's P(fake) for that crop, then the video's calibrated probability and the truth.

Shown: the videos that cost the most log loss (confident mistakes) and a sample of the others, so
that a player sees whether the model looks at faces, at the background, or at a detector failure.
Crops come from the run's face cache (what training read); a video whose crops are not cached is
listed without its strip.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from common.core.paths import cache_root
from common.report.build import REPORTS, Context
from common.report.html import cell, escape, thumbnail_uri
from common.video.face_cache import FaceCache, FaceExtractor

CROPS_PER_VIDEO = 16


def face_cache(ctx: Context) -> tuple[FaceCache | None, dict[str, str]]:
    if ctx.root is None:
        return None, {}
    listed = ctx.comp.read_train(ctx.root, ctx.cfg)
    cache = FaceCache(FaceExtractor.from_config(ctx.cfg), cache_root(ctx.cfg) / ctx.comp.name / "faces", progress=False)
    return cache, dict(zip(listed.video.astype(str), listed.path.astype(str)))


@REPORTS.register("video")
def video(page, ctx: Context) -> None:
    videos = ctx.csv("oof.csv", dtype={"video": str})
    frames = pd.concat([pd.read_csv(ctx.run / f"fold{f}" / "oof_frames.csv", dtype={"video": str})
                        for f in sorted(videos.fold.unique())], ignore_index=True)
    p = videos.prediction.astype(float).clip(1e-15, 1 - 1e-15)
    videos["logloss"] = -(videos.label * np.log(p) + (1 - videos.label) * np.log(1 - p))
    cache, paths = face_cache(ctx)

    def strip(r) -> str:
        truth = "FAKE" if int(r.label) == 1 else "REAL"
        mistake = (r.prediction >= 0.5) != (int(r.label) == 1)
        head = (f'<p><b>{escape(r.video)}</b> · truth <span class="tag">{truth}</span> · P(fake) '
                f'<b class="{"bad" if mistake else "good"}">{r.prediction:.3f}</b> · log loss {r.logloss:.3f}</p>')
        mine = frames[frames.video == r.video].reset_index(drop=True)
        path = paths.get(r.video)
        if cache is None or path is None or not cache.is_done(path):
            return head + '<p class="note">face crops not in the cache</p>'
        faces = cache.load(path)
        chosen = np.unique(np.linspace(0, len(mine) - 1, min(CROPS_PER_VIDEO, len(mine))).round().astype(int))
        cells = []
        for k in chosen:
            prob = float(mine.prob.iat[k])
            kind = "right" if (prob >= 0.5) == (truth == "FAKE") else "wrong"
            found = "" if faces.score[k] > 0 else " (no face: centre crop)"
            cells.append(cell(thumbnail_uri(np.asarray(faces.crops[k]), 72), [f"frame {int(mine.frame_idx.iat[k])}{found}",
                                                                              f"p {prob:.2f}"], kind))
        return head + '<div class="strip">' + "".join(cells) + "</div>"

    n = ctx.examples
    worst = videos.sort_values("logloss", ascending=False).head(n)
    rest = videos.drop(worst.index)
    sample = rest.sample(min(n, len(rest)), random_state=0) if len(rest) else rest
    note = "" if cache is not None else "the run's videos were not found (pass data.root=DIR to `report`): no crops. "
    page.add(f"Out-of-fold videos that cost the most log loss ({len(videos)} videos)",
             "".join(strip(r) for r in worst.itertuples()),
             note + "per crop: the frame it came from and the fold model's P(fake) (green: on the side of the truth)")
    page.add("A sample of the other videos", "".join(strip(r) for r in sample.itertuples()) or "none", note)
