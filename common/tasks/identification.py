"""Open-set identification by retrieval (Humpback whales, Happywhale): 5 ranked identities per
image, the unknown class when the animal was never seen. Scored by MAP@5.

Per fold: learn an embedding with a margin head (and/or a pair loss), then answer each held-out
image by kNN over the fold's training images: identities ranked by their best similarity, the
unknown class (`comp.new_label`) inserted at the first rank whose score falls below a threshold.
The threshold is tuned on all out-of-fold answers at once, then applied to the test set, where
the fold models' embeddings are concatenated (cosine of the concatenation = mean cosine).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.core.errors import DataError
from common.core.files import write_csv_atomic, write_json_atomic, write_text_atomic
from common.core.paths import cache_root
from common.data.image_set import ImageSet
from common.data.loaders import make_loader
from common.engine import distributed
from common.engine.folds import assert_disjoint, open_set_folds, open_set_truth
from common.engine.trainer import load_best, seed_everything, train_fold
from common.losses.objective import build_objective
from common.metrics import plots
from common.metrics.scores import map_at_k, roc_curve_pairs, verification_metrics
from common.models.factory import build_model
from common.retrieval.index import build_index, known, rank_classes, search
from common.retrieval import postprocess, pseudo
from common.retrieval.new_class import insert_new_class, tune_threshold
from common.tasks.base import TASKS, EmbeddingTask


def trivial_baseline(train_labels, truth, new_label: str, k: int = 5) -> float:
    """The answer with no model: the unknown class, then the most frequent identities."""
    frequent = pd.Series(list(train_labels))
    frequent = frequent[frequent != new_label].value_counts().index[: k - 1].tolist()
    return map_at_k([[new_label, *frequent]] * len(truth), list(truth), k)


def rank_against_gallery(gallery_emb, gallery_labels, query_emb, neighbours: int, k: int = 5, with_ids: bool = False):
    """Top-k identities (by max similarity) and their scores for every query (`with_ids`: and the
    gallery position of each identity's best image)."""
    index = build_index(gallery_emb)
    sims, ids = search(index, query_emb, neighbours)
    return rank_classes(sims, ids, np.asarray(gallery_labels, dtype=object), top=k, with_ids=with_ids)


def first_answer_rates(answers, ranked, truth, new_label: str, prefix: str = "") -> dict:
    """What a user reads first: for the known animals, how often the first answer is right (with the
    unknown class inserted, and the first known identity alone); for never-seen ones, how often the
    first answer is the unknown class. NaN when the truth holds none of that kind."""
    truth = np.asarray(truth, dtype=object)
    first = np.array([a[0] if a else None for a in answers], dtype=object)
    first_known = np.array([r[0] if r else None for r in ranked], dtype=object)
    seen, new = truth != new_label, truth == new_label
    rate = lambda hits, mask: float(hits[mask].mean()) if mask.any() else float("nan")  # noqa: E731
    return {f"{prefix}top1_known": rate(first == truth, seen), f"{prefix}top1_known_closed": rate(first_known == truth, seen),
            f"{prefix}new_first": rate(first == new_label, new)}


def score_ranking(labels, scores, truth, new_label: str) -> dict:
    """MAP@5 with the threshold tuned here, and closed-set MAP@5 (never answering the unknown class)."""
    threshold, best, _, _ = tune_threshold(scores, labels, truth, new_label=new_label)
    return {"map5": float(best), "map5_closed": float(map_at_k(known(labels), list(truth))),
            "threshold": float(threshold)}


@TASKS.register("identification")
class Identification(EmbeddingTask):
    name, metric = "identification", "map5"
    predict_overrides = ("infer.new_whale",)
    retrieval_postprocessing = True
    full_fit = True
    ensembles = True
    pseudo_rounds = True

    def __init__(self, comp, cfg, root: Path, *, purpose: str):
        super().__init__(comp, cfg, root, purpose=purpose)
        self.new_label = comp.new_label
        self.train_df = comp.read_train(self.root, cfg)
        if cfg.data.limit and purpose == "train":
            self.train_df = self.train_df.iloc[: int(cfg.data.limit)].reset_index(drop=True)
        if purpose == "files":  # the files come later (use_files); the data root needs no test folder
            self.test, self.truth = None, None
        else:
            self.test, self.truth = comp.read_test(self.root), comp.read_truth(self.root)
        self.labels = self.train_df.label.to_numpy(dtype=object)
        self.pseudo = np.zeros(len(self.labels), bool)  # rows that are pseudo-labelled test images
        n_known = len(set(self.labels) - {self.new_label})
        if n_known < 2:
            raise DataError(f"{self.root}: {n_known} known identities in the training data (the others are "
                            f"{self.new_label}); identification needs two or more")
        self.device = distributed.init(cfg)

    def add_pseudo_labels(self, frame: pd.DataFrame) -> None:
        """Test images with confident answers (image, label, path) join the training table, before
        `prepare`: they train every fold and sit in every gallery, but are never validated on."""
        missing = [p for p in frame.path.astype(str) if not Path(p).is_file()]
        if missing:
            raise DataError(f"pseudo-labelled image {missing[0]} does not exist ({len(missing)} missing): the "
                            "run's pseudo_labels.csv names the test images of the data root it was trained on")
        extra = pd.DataFrame({c: frame[c].astype(str) for c in ("image", "label", "path")})
        self.train_df = pd.concat([self.train_df, extra], ignore_index=True)
        self.labels = self.train_df.label.to_numpy(dtype=object)
        self.pseudo = np.append(self.pseudo, np.ones(len(extra), bool))

    def pseudo_labels(self, run: Path) -> tuple[pd.DataFrame, dict] | None:
        """The next round's pseudo-labels from this run's test answers (common/retrieval/pseudo.py),
        at the confidence where the run's OOF first answers reach `pseudo.precision`."""
        oof = pd.read_csv(run / "oof.csv", keep_default_na=False)
        first = oof.ranked.astype(str).str.split(" ").str[0]
        cut = pseudo.confidence_threshold(oof.score1, first == oof.truth.astype(str), float(self.cfg.pseudo.precision))
        if cut is None:
            print(f"pseudo-labels: no OOF first-answer score reaches precision {self.cfg.pseudo.precision}; "
                  "no further round", flush=True)
            return None
        threshold, precision, n_oof = cut
        ranked, scores = self.test_ranking
        frame = pseudo.select(self.test.image.astype(str), self.test.path.astype(str), ranked, scores, threshold)
        info = {"pseudo_threshold": threshold, "pseudo_oof_precision": precision, "pseudo_oof_answers": n_oof,
                "pseudo_images": len(frame)}
        print(f"pseudo-labels: {len(frame)} of {len(ranked)} test images score >= {threshold:.3f}, where "
              f"{precision:.1%} of {n_oof} OOF first answers were right", flush=True)
        return (frame, info) if len(frame) else None

    def prepare(self) -> None:
        self.images = ImageSet(self.cfg, self.comp.name, self.train_df, self.test)

    def embed(self, model, rows, desc: str, tta: bool | None = None) -> np.ndarray:
        return self.images.embed(model, rows, self.device, desc, tta)

    # --- the engine's steps ----------------------------------------------------------------
    def split(self) -> np.ndarray:
        folds = np.full(len(self.labels), -1, dtype=np.int64)  # pseudo-labelled rows: always in training
        folds[~self.pseudo] = open_set_folds(self.labels[~self.pseudo], self.cfg.train.folds, self.cfg.seed,
                                             self.new_label)
        return folds

    def fold_table(self, folds) -> pd.DataFrame:
        return pd.DataFrame({"image": self.train_df.image, "label": self.labels, "fold": folds})

    def describe(self) -> str:
        return (f"{len(self.labels)} train images" + (f" ({int(self.pseudo.sum())} pseudo-labelled test images)"
                                                       if self.pseudo.any() else "")
                + f", {len(set(self.labels) - {self.new_label})} identities, {len(self.test)} test images")

    def _fit_setup(self, cfg, fold: int, train_rows, fold_dir: Path):
        """The model and loader of one fit on `train_rows` (classes.json written beside its checkpoints)."""
        classes = sorted(set(self.labels[train_rows]))
        class_index = {c: i for i, c in enumerate(classes)}
        y = np.array([class_index[c] for c in self.labels[train_rows]])
        fold_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():
            write_text_atomic(fold_dir / "classes.json", json.dumps(classes))
        seed_everything(cfg.seed + fold)
        model = build_model(cfg, len(classes), class_counts=np.bincount(y, minlength=len(classes)).tolist())
        loader = make_loader(cfg, self.images.dataset(train_rows, y, train=True), y, seed=cfg.seed + fold,
                             default=self.default_sampler)
        return model, loader

    def train_fold(self, fold: int, folds: np.ndarray, fold_dir: Path, log_path: Path) -> None:
        cfg, new_label, labels = self.cfg, self.new_label, self.labels
        train_rows = np.flatnonzero((folds != fold) & (labels != new_label))
        val_rows = np.flatnonzero(folds == fold)
        assert_disjoint(train_rows, val_rows)
        truth = open_set_truth(labels[val_rows], labels[train_rows], new_label)
        model, loader = self._fit_setup(cfg, fold, train_rows, fold_dir)

        def evaluate(m) -> dict:
            tta = bool(cfg.train.eval_tta)
            gallery = self.embed(m, train_rows, "embed gallery", tta)
            query = self.embed(m, val_rows, "embed validation", tta)
            ranked, scores = rank_against_gallery(gallery, labels[train_rows], query, cfg.infer.neighbours)
            return score_ranking(ranked, scores, truth, new_label)

        train_fold(cfg, fold=fold, model=model, train_loader=loader, loss_fn=build_objective(cfg), evaluate=evaluate,
                   fold_dir=fold_dir, log_path=log_path, device=self.device, monitor="map5")
        distributed.on_main(self._write_fold_answers, model, fold, train_rows, val_rows, truth, fold_dir)

    def _write_fold_answers(self, model, fold, train_rows, val_rows, truth, fold_dir: Path) -> None:
        model = load_best(model, fold_dir, self.device)
        gallery = self.embed(model, train_rows, "embed gallery")
        query = self.embed(model, val_rows, "embed validation")
        ranked, scores, best = rank_against_gallery(gallery, self.labels[train_rows], query, self.cfg.infer.neighbours,
                                                    with_ids=True)
        # float32: post-processing is tuned on both, and its "off" candidate must rank exactly as oof.csv does
        np.save(fold_dir / "val_embeddings.npy", query.astype(np.float32))
        np.save(fold_dir / "gallery_embeddings.npy", gallery.astype(np.float32))
        write_csv_atomic(self.answer_frame(fold, train_rows, val_rows, truth, ranked, scores, best),
                         fold_dir / self.fold_marker)

    def answer_frame(self, fold: int, train_rows, val_rows, truth, ranked, scores, best) -> pd.DataFrame:
        """A fold's out-of-fold answers as oof.csv holds them: per held-out image its truth, the ranked
        identities, the gallery image behind each (the report shows it) and their scores."""
        names = self.train_df.image.to_numpy()
        frame = pd.DataFrame({"image": names[val_rows], "label": self.labels[val_rows],
                              "truth": truth, "fold": fold, "ranked": [" ".join(r) for r in known(ranked)],
                              "neighbours": [" ".join(names[train_rows[i]] for i in row if i >= 0) for row in best]})
        for r in range(scores.shape[1]):
            frame[f"score{r + 1}"] = scores[:, r]
        return frame

    def train_full(self, fold_dirs, run: Path) -> None:
        """`train.full_fit`: one more model on every known training image, for the folds' mean best epoch
        (nothing is held out, so nothing validates it); the test set is then answered with it alone,
        with the threshold and post-processing tuned on the folds' OOF answers."""
        best = [json.loads((d / "done.json").read_text())["best_epoch"] for d in fold_dirs]
        epochs, full_dir = int(round(float(np.mean(best)))), run / "full"
        if epochs == 0:
            print(f"full fit skipped: the folds' best epochs {best} average to 0 (the model before training); "
                  "the fold models answer the test set", flush=True)
            return
        if (full_dir / "done.json").exists():
            print("full fit: finished earlier", flush=True)
            return
        cfg = copy.deepcopy(self.cfg)
        cfg.train.epochs = epochs
        print(f"full fit: {epochs} epoch(s) (the folds' best: {best}) on all known training images", flush=True)
        rows = np.flatnonzero(self.labels != self.new_label)
        model, loader = self._fit_setup(cfg, -1, rows, full_dir)
        train_fold(cfg, fold=-1, model=model, train_loader=loader, loss_fn=build_objective(cfg), evaluate=None,
                   fold_dir=full_dir, log_path=run / "log.csv", device=self.device, monitor="epoch")

    @staticmethod
    def answering_dirs(fold_dirs, run: Path) -> list[Path]:
        """The models that answer the test set: the full fit when there is one, else every fold."""
        full = Path(run) / "full"
        return [full] if (full / "done.json").exists() else list(fold_dirs)

    # --- post-processing (common/retrieval/postprocess.py), tuned on the out-of-fold answers ---------
    def postprocessing_on(self) -> bool:
        infer = self.cfg.infer
        return any(bool(infer[name]) for name in postprocess.POSTPROCESSORS) or infer.verify != "none"

    def feature_dir(self) -> Path:
        return cache_root(self.cfg) / self.comp.name / "local_features"

    def fold_answers(self, fold_dirs, folds) -> tuple[list[postprocess.FoldAnswers], list[tuple]]:
        """Each fold's held-out queries and gallery as saved by the fold, and their (train, val) rows."""
        paths = self.images.images.paths
        out, rows = [], []
        for d in fold_dirs:
            fold = int(d.name[len("fold"):])
            if not (d / "gallery_embeddings.npy").exists():
                raise DataError(f"{d}: no gallery_embeddings.npy (a fold finished before post-processing existed); "
                                "train a new run to tune infer.dba / query_expansion / kreciprocal / verify")
            train_rows = np.flatnonzero((folds != fold) & (self.labels != self.new_label))
            val_rows = np.flatnonzero(folds == fold)
            truth = pd.read_csv(d / "oof.csv", keep_default_na=False).truth.astype(str).tolist()
            out.append(postprocess.FoldAnswers(
                np.load(d / "val_embeddings.npy").astype(np.float32), np.load(d / "gallery_embeddings.npy").astype(np.float32),
                self.labels[train_rows], truth, [paths[i] for i in val_rows], [paths[i] for i in train_rows],
                self.relation_scorer([d])))
            rows.append((train_rows, val_rows))
        return out, rows

    def relation_scorer(self, dirs) -> "postprocess.RelationScorer | None":
        """The relation heads of these models (`infer.learned_rerank`), None when it is off."""
        if not self.cfg.infer.get("learned_rerank", False):
            return None
        return postprocess.RelationScorer.from_models([self.fold_model(self.cfg, d) for d in dirs])

    def postprocessed_oof(self, answers, rows, fold_dirs, run: Path) -> tuple[pd.DataFrame, dict]:
        """The OOF answers again, after the post-processing chosen on them (saved as postprocess.json)."""
        cfg, new_label, depth = self.cfg, self.new_label, int(self.cfg.infer.neighbours)
        test_items = int((self.labels != new_label).sum()) + (len(self.test) if self.test is not None else 0)
        steps, tried = postprocess.tune_steps(answers, cfg.infer, new_label, depth, test_items)
        lists = [postprocess.shortlist(a.query, a.gallery, depth, steps, a.relation) for a in answers]
        extra = {"oof_map5_plain": tried[0]["oof_map5"]}
        chosen = {"steps": [[name, params] for name, params in steps], "fusion": None, "tried": tried}
        if cfg.infer.verify != "none":
            inliers = [postprocess.verify(cfg, self.feature_dir(), a.query_paths, a.gallery_paths, ids,
                                          f"fold answers {i + 1}/{len(answers)}") for i, (a, (_, ids)) in enumerate(zip(answers, lists))]
            k = min(int(cfg.infer.verify_k), depth)
            same = np.concatenate([postprocess.same_identity(ids[:, :k], a.gallery_labels, a.truth)
                                   for a, (_, ids) in zip(answers, lists)])
            fusion = postprocess.Fusion.fit(np.concatenate([s[:, :k] for s, _ in lists]),
                                            np.concatenate([n[:, :k] for n in inliers]), same)
            extra["oof_map5_unfused"] = postprocess.score(answers, lists, new_label)
            lists = [(fusion(s, n), ids) for (s, ids), n in zip(lists, inliers)]
            chosen["fusion"] = fusion.to_dict()
            print(f"fusion on OOF pairs ({same.size} pairs, {int(same.sum())} same): {fusion!r}", flush=True)
        write_json_atomic(run / "postprocess.json", chosen)
        frames = []
        for a, (sims, ids), (train_rows, val_rows), d in zip(answers, lists, rows, fold_dirs):
            ranked, scores, best = rank_classes(sims, ids, a.gallery_labels, top=5, with_ids=True)
            frames.append(self.answer_frame(int(d.name[len("fold"):]), train_rows, val_rows, a.truth,
                                            ranked, scores, best))
        extra["postprocess"] = postprocess.describe(steps) + (f"; {cfg.infer.verify} fusion" if chosen["fusion"] else "")
        return pd.concat(frames, ignore_index=True), extra

    def postprocessed_test(self, gallery, gallery_rows, query, run: Path, relation_dirs=()):
        """The test shortlist with the post-processing saved at training time (postprocess.json);
        `relation_dirs`: the models whose relation heads a chosen learned_rerank scores with."""
        cfg, depth = self.cfg, int(self.cfg.infer.neighbours)
        saved = run / "postprocess.json"
        chosen = json.loads(saved.read_text()) if saved.exists() else {"steps": [], "fusion": None}
        steps = [(name, dict(params)) for name, params in chosen["steps"]]
        relation = (self.relation_scorer(relation_dirs)
                    if any(name in postprocess.SHORTLIST_STAGE for name, _ in steps) else None)
        sims, ids = postprocess.shortlist(query, gallery, depth, steps, relation)
        if chosen.get("fusion"):
            paths = self.images.images.paths
            inliers = postprocess.verify(cfg, self.feature_dir(), [paths[i] for i in self.images.rows["test"]],
                                         [paths[i] for i in gallery_rows], ids, "test")
            sims = postprocess.Fusion(**chosen["fusion"])(sims, inliers)
        return sims, ids

    def tune(self, fold_dirs, folds, run: Path, answers=None) -> dict:
        """Threshold (and post-processing) on the OOF answers. `answers`: the folds' (FoldAnswers list,
        rows) when the caller has them (an ensemble of runs), else they are read from `fold_dirs`."""
        new_label = self.new_label
        extra = {}
        if answers is not None or self.postprocessing_on():
            answers = answers or self.fold_answers(fold_dirs, folds)
            oof, extra = self.postprocessed_oof(*answers, fold_dirs, run)
        else:
            oof = pd.concat([pd.read_csv(d / "oof.csv", keep_default_na=False) for d in fold_dirs], ignore_index=True)
        ranked = [r.split(" ") if r else [] for r in oof.ranked.astype(str)]
        scores = oof[[c for c in oof.columns if c.startswith("score")]].to_numpy(dtype=np.float64)
        truth = oof.truth.tolist()
        threshold, best, grid, curve = tune_threshold(scores, ranked, truth, new_label=new_label)
        oof["prediction"] = [" ".join(p) for p in insert_new_class(ranked, scores, threshold, new_label=new_label)]
        write_csv_atomic(oof, run / "oof.csv")
        trained = {int(d.name[len("fold"):]) for d in fold_dirs}
        unused = ~np.isin(folds, list(trained)) & ~self.pseudo
        baseline_labels = self.labels[unused] if unused.any() else self.labels[~self.pseudo]
        metrics = {
            "oof_map5": float(best),
            "threshold": float(threshold),
            "oof_map5_closed": float(map_at_k(ranked, truth)),
            "oof_baseline_map5": trivial_baseline(baseline_labels, truth, new_label),
            "oof_images": len(truth),
            "oof_new_share": float(np.mean(np.asarray(truth) == new_label)),
            **extra,
        }
        embeddings = (np.concatenate([a.query for a in answers[0]]) if answers is not None else
                      np.concatenate([np.load(d / "val_embeddings.npy") for d in fold_dirs]).astype(np.float32))
        labels = oof.label.to_numpy(dtype=object)
        seen = labels != new_label
        if seen.sum() > 2:
            verification = verification_metrics(embeddings[seen], labels[seen])
            metrics.update({f"verify_{k}": v for k, v in verification.items() if np.isscalar(v)})
            fpr, tpr, _ = roc_curve_pairs(embeddings[seen], labels[seen])
            plots.roc_curve_plot(fpr, tpr, verification["roc_auc"], run / "roc.png")
            plots.similarity_histograms(embeddings[seen], labels[seen], run / "similarity_hist.png")
        plots.threshold_curve(grid, curve, threshold, metrics["oof_baseline_map5"], run / "map5_vs_threshold.png")
        return metrics

    def fold_embeddings(self, fold_dirs, row_sets) -> list[np.ndarray]:
        """Embeddings of each set of rows with every fold model, concatenated over the folds and scaled so
        that the cosine of two concatenations is the mean of the folds' cosines (the ensemble)."""
        parts: list[list[np.ndarray]] = [[] for _ in row_sets]
        for fold_dir in fold_dirs:
            model = self.fold_model(self.cfg, fold_dir, self.device)
            for part, (rows, what) in zip(parts, row_sets):
                part.append(self.embed(model, rows, f"{fold_dir.name}: embed {what}"))
        return [np.concatenate(p, axis=1) / np.sqrt(len(fold_dirs)) for p in parts]

    def predict(self, fold_dirs, metrics: dict, run: Path, embeddings=None) -> list[list[str]]:
        """Rank the test images against all known train images with every fold model (ensembled);
        `embeddings`: (gallery, test) given by the caller (an ensemble of runs)."""
        cfg, new_label = self.cfg, self.new_label
        gallery_rows = np.flatnonzero(self.labels != new_label)
        answering = self.answering_dirs(fold_dirs, run)
        gallery, query = embeddings or self.fold_embeddings(answering, [(gallery_rows, "gallery"),
                                                                        (self.images.rows["test"], "test")])
        if not distributed.is_main():
            return []  # only the main process writes the submission; post-processing runs once
        sims, ids = self.postprocessed_test(gallery, gallery_rows, query, run, () if embeddings else answering)
        ranked, scores = rank_classes(sims, ids, self.labels[gallery_rows].astype(object), top=5)
        self.test_ranking = (known(ranked), scores)
        if cfg.infer.new_whale:
            return known(insert_new_class(ranked, scores, metrics["threshold"], new_label=new_label))
        return [row[:5] for row in known(ranked)]

    def ensemble(self, members, out: Path) -> tuple[list[list[str]], dict]:
        """`predict run.name=a,b,c`: the runs' models as one model whose cosine is the mean of theirs
        (each run's unit embeddings concatenated, scaled by 1/sqrt(runs)); the threshold and the
        post-processing (this, the first run's, infer settings) are tuned once on the joint OOF answers
        and kept in `out`, then the test set is answered. `members`: (task, run, fold_dirs) of each run,
        all on one split (checked by the caller), this task first."""
        folds = pd.read_csv(members[0][1] / "folds.csv").fold.to_numpy()
        fold_dirs, scale = members[0][2], np.float32(1 / np.sqrt(len(members)))
        if (out / "metrics.json").exists():
            metrics = json.loads((out / "metrics.json").read_text())
            print(f"ensemble: threshold and post-processing tuned earlier ({out})", flush=True)
        else:
            parts = [task.fold_answers(dirs, folds) for task, _, dirs in members]
            joint = [dataclasses.replace(  # relation=None: one run's relation head cannot score the joined embedding
                first, query=np.concatenate([p[0][i].query for p in parts], axis=1) * scale,
                gallery=np.concatenate([p[0][i].gallery for p in parts], axis=1) * scale, relation=None)
                for i, first in enumerate(parts[0][0])]
            metrics = self.tune(fold_dirs, folds, out, answers=(joint, parts[0][1]))
            metrics["members"] = [str(run) for _, run, _ in members]
            write_json_atomic(out / "metrics.json", metrics)
        gallery_rows = np.flatnonzero(self.labels != self.new_label)
        both = [task.fold_embeddings(task.answering_dirs(dirs, run),
                                     [(gallery_rows, f"{run.name}: gallery"), (task.images.rows["test"], f"{run.name}: test")])
                for task, run, dirs in members]
        embeddings = tuple(np.concatenate([b[i] for b in both], axis=1) * scale for i in range(2))
        return self.predict(fold_dirs, metrics, out, embeddings=embeddings), metrics

    def files_frame(self, answers) -> pd.DataFrame:
        ranked, scores = self.test_ranking
        frame = pd.DataFrame({"file": self.test.image, "prediction": [" ".join(a) for a in answers],
                              "ranked": [" ".join(r) for r in ranked]})
        for r in range(scores.shape[1]):
            frame[f"score{r + 1}"] = np.round(scores[:, r], 6)
        frame["path"] = self.test.path.to_numpy()
        return frame

    def embed_test(self, fold_dirs, run: Path) -> np.ndarray:
        return self.fold_embeddings(self.answering_dirs(fold_dirs, run), [(self.images.rows["test"], "images")])[0]

    def score_test(self, answers, metrics: dict) -> dict:
        if self.truth is None:
            return {}
        truth = self.test_truth().tolist()
        return {"test_map5": map_at_k(answers, truth),
                "test_baseline_map5": trivial_baseline(self.labels[~self.pseudo], truth, self.new_label),
                **first_answer_rates(answers, self.test_ranking[0], truth, self.new_label, "test_")}

    def summary(self, metrics: dict) -> str:
        line = (f"OOF MAP@5 {metrics['oof_map5']:.4f} at {self.new_label} threshold {metrics['threshold']:.3f} "
                f"(closed-set {metrics['oof_map5_closed']:.4f}, trivial baseline {metrics['oof_baseline_map5']:.4f})")
        if "oof_map5_plain" in metrics:
            line += (f"\npost-processing: {metrics['postprocess']} (OOF MAP@5 {metrics['oof_map5_plain']:.4f} without"
                     + (f", {metrics['oof_map5_unfused']:.4f} before fusion" if "oof_map5_unfused" in metrics else "") + ")")
        if "pseudo_images" in metrics:
            line += (f"\npseudo-labels: {metrics['pseudo_images']} test images in training and gallery (OOF first answers "
                     f"{metrics['pseudo_oof_precision']:.1%} right above {metrics['pseudo_threshold']:.3f}); the OOF score "
                     "is optimistic in a round (those labels came from a gallery holding the OOF images): judge it on test")
        if "test_map5" in metrics:
            line += f"\ntest MAP@5 {metrics['test_map5']:.4f} (trivial baseline {metrics['test_baseline_map5']:.4f})"
            line += (f"; known animals: first answer right {metrics['test_top1_known']:.1%} "
                     f"(first known identity right {metrics['test_top1_known_closed']:.1%}); "
                     f"never-seen answered {self.new_label} first {metrics['test_new_first']:.1%}")
        return line
