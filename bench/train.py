"""`./run.sh bench train`: is the input pipeline the bottleneck?

Measures training images/s of the full pipeline (cached images -> augmentation -> DataLoader ->
forward/backward/step with the real head and objective) against the model alone fed with
ready-made tensors of the same batch and size. The ratio is what data loading costs; the target
on a 2-core machine is >= 85 %. Writes outputs/bench/train.md.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from common.data.augment import build_transform
from common.data.loaders import make_loader
from common.losses.objective import build_objective
from common.models.factory import build_model
from common.core.config import load_config
from common.data.images import ImageCache, ImageDataset
from common.core.paths import REPO_ROOT, cache_root, resolve_data_root


def _step(model, objective, optimizer, images, labels) -> None:
    loss, _ = objective(model(images, labels), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(batches, model, objective, optimizer, warmup: int, steps: int) -> float:
    """Images per second over `steps` batches after `warmup` (the clock includes waiting for data)."""
    done, started = 0, None
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        _step(model, objective, optimizer, images, labels)
        if i >= warmup:
            done += len(labels)
        if i + 1 >= warmup + steps:
            break
    return done / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    from competitions.whales import COMPETITION as whales

    overrides = [a for a in argv if "=" in a]
    cfg = load_config(whales.config_path, overrides)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    steps, warmup = 12, 2
    torch.manual_seed(0)
    root = resolve_data_root(cfg, whales.name, whales.slug, whales.write_demo)
    table = whales.read_train(root, cfg)
    table = table[table.label != whales.new_label].reset_index(drop=True)
    classes = {c: i for i, c in enumerate(sorted(set(table.label)))}
    y = np.array([classes[c] for c in table.label])
    size = tuple(cfg.data.image_size)
    images = ImageCache(table.path, size, cache_root(cfg) / whales.name)
    dataset = ImageDataset(images, np.arange(len(table)), y, build_transform(cfg.augment.train, size))
    batch = cfg.train.batch_size

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg, len(classes)).train()
        return model, build_objective(cfg), torch.optim.AdamW(model.parameters(), lr=1e-4)

    model, objective, optimizer = fresh()
    x = torch.randn(batch, 3, *size)
    t = torch.as_tensor(y[:batch])
    model_only = _timed(iter(lambda: (x, t), None), model, objective, optimizer, warmup, steps)

    model, objective, optimizer = fresh()
    loader = make_loader(cfg, dataset, y, seed=0)

    def endless():
        while True:
            yield from loader

    pipeline = _timed(endless(), model, objective, optimizer, warmup, steps)
    # data alone: how fast the loader can deliver when nothing else runs
    started, n = time.perf_counter(), 0
    for i, (images_, labels_) in enumerate(endless()):
        n += len(labels_)
        if i + 1 >= steps:
            break
    data_only = n / (time.perf_counter() - started)

    ratio = pipeline / model_only
    lines = [
        "# bench train: full pipeline vs model only",
        "",
        f"backbone `{cfg.model.backbone}`, head `{cfg.model.head}`, batch {batch}, images {size[0]}x{size[1]}, "
        f"{cfg.data.num_workers} loader worker(s), {torch.get_num_threads()} torch threads, "
        f"{steps} timed steps after {warmup} warm-up, CPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'yes'}",
        "",
        "| what | images/s |",
        "|---|---|",
        f"| model only (forward + backward + step, tensors ready) | {model_only:.1f} |",
        f"| full pipeline (cache -> augment -> loader -> step) | {pipeline:.1f} |",
        f"| data loading alone | {data_only:.1f} |",
        f"| **pipeline / model only** | **{ratio:.1%}** (target >= 85 %) |",
    ]
    out = REPO_ROOT / "outputs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
