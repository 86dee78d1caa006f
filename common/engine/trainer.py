"""The fold trainer: one loop for every competition.

It knows nothing about whales, landmarks or videos. A competition hands it a model, a training
DataLoader, a loss function and an `evaluate(model) -> {metric: value}` callback; the trainer
does optimiser and schedule (timm's factories), mixed precision on CUDA, gradient accumulation,
layer-wise learning rates, an optional frozen-backbone warm-up, an optional moving average of the
weights (`train.ema`), best/last checkpoints, resume from the last finished epoch, and one row per
epoch in the run's `log.csv`.

`train.ema=true` keeps timm's `ModelEmaV3` of the weights, updated after every optimizer step with
timm's warm-up (early steps average less, the decay grows towards `train.ema_decay`). Why: small-batch
CPU training ends noisy, and the average of the last epochs' weights is smoother than any one of them;
timm's EMA is what the competition winners trained with. Validation (epoch 0 included, where the EMA
is the model) scores the EMA, so `best.pt` holds the EMA's weights, in the usual format, and everything
that calls `load_best` (OOF answers, predict, export) uses it unchanged; the resume point carries the
EMA, so `resume=true` continues the same average.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from common.core.files import load_checkpoint, save_checkpoint, write_csv_atomic, write_json_atomic
from common.engine import distributed, tracking
from common.engine.precision import autocast, autocast_dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    # PYTHONHASHSEED cannot take effect once Python runs; nothing here depends on str hashing order.


def pick_device(cfg) -> torch.device:
    """This process's device (joining the process group first when launched by torchrun)."""
    return distributed.init(cfg)


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, head_lr_mult: float,
                 weight_decay: float) -> list[dict]:
    """Backbone, neck and head at their own learning rates; no weight decay on biases and norms."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        part = part if part in ("backbone", "head") else "neck"
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        groups.setdefault((part, no_decay), []).append(param)
    mult = {"backbone": backbone_lr_mult, "neck": 1.0, "head": head_lr_mult}
    return [
        {"params": params, "lr": lr * mult[part], "weight_decay": 0.0 if no_decay else weight_decay, "name": part}
        for (part, no_decay), params in groups.items()
    ]


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)


def _plain(value):
    """numpy scalars -> Python numbers: the history is stored in a weights-only checkpoint."""
    return value.item() if isinstance(value, np.generic) else value


def append_log(log_path: Path, row: dict) -> None:
    if not distributed.is_main():
        return
    previous = pd.read_csv(log_path) if log_path.exists() else None  # rewritten whole: a kill never leaves half a row
    write_csv_atomic(pd.concat([previous, pd.DataFrame([row])], ignore_index=True) if previous is not None
                     else pd.DataFrame([row]), log_path)


def _sync_buffers(module: nn.Module) -> None:
    """Under DDP: every process takes the main process's buffers (BatchNorm statistics). An EMA's
    parameters agree across processes already, but each averages its own slice's batch statistics;
    validation embeds a shard per process, so all must score one model."""
    if distributed.world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def train_fold(cfg, *, fold: int, model: nn.Module, train_loader, loss_fn: Callable,
               evaluate: Callable[[nn.Module], dict], fold_dir: Path, log_path: Path,
               device: torch.device, monitor: str, mode: str = "max") -> FoldResult:
    """Train one fold; returns where the best checkpoint (fold_dir/best.pt) came from.

    `loss_fn(model_output, labels) -> (loss, parts_dict)`. Resumes from fold_dir/last.pt when present.
    With several processes the model is wrapped in DistributedDataParallel; `evaluate` runs on every
    rank (embedding is sharded), its result is taken from the main rank, which alone writes files.
    With `train.ema` it is given the EMA of the weights (module docstring), and best.pt holds the EMA.
    `evaluate=None` (a full fit on every training image, `fold=-1`: nothing is held out) trains the
    epochs without validation, and best.pt is the last epoch.
    """
    t = cfg.train
    name = "full fit" if fold < 0 else f"fold {fold}"
    validate = evaluate is not None
    fold_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    main = distributed.is_main()
    groups = param_groups(model, t.lr, t["backbone_lr_mult"], cfg.head["lr_mult"]
                          if "head" in cfg else 1.0, t.weight_decay)
    optimizer = create_optimizer_v2(groups, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                                    momentum=t["momentum"])
    accum = max(1, int(t["accum_steps"]))
    updates_per_epoch = max(1, len(train_loader) // accum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=t.scheduler, num_epochs=t.epochs,
                                       warmup_epochs=t.warmup_epochs, warmup_lr=t.lr * 0.01,
                                       min_lr=t.lr * t["min_lr_ratio"], step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    amp_dtype = autocast_dtype(device, bool(t.amp))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, best_score, best_epoch, history, state = 0, None, -1, [], None
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    distributed.barrier()
    if last_path.exists():
        state = load_checkpoint(last_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_score, best_epoch, history = (state["epoch"] + 1, state["best_score"],
                                                         state["best_epoch"], state["history"])
        torch.set_rng_state(state["rng_cpu"].cpu())  # map_location moved it to the device
        print(f"{name}: resuming after epoch {max(0, state['epoch'])} (best {monitor}={best_score})", flush=True)
    core = model  # the unwrapped model (DDP wraps `model` below): what checkpoints hold
    ema, ema_updates = None, 0
    if t.get("ema", False):
        # of the unwrapped model, on its device; under DDP every process keeps its own copy, identical
        # because the gradients are all-reduced (the BatchNorm statistics are synced before validation)
        ema = ModelEmaV3(core, decay=float(t["ema_decay"]), use_warmup=True)
        if state is not None:  # resumed
            if "ema" in state:
                ema.module.load_state_dict(state["ema"])
                ema_updates = int(state["ema_updates"])
            else:
                print(f"warning: {name}: the resume point has no EMA of the weights (saved with train.ema=false "
                      "or by an older version); the EMA starts again from the current model", flush=True)
    scored = ema.module if ema is not None else core  # what validation scores and best.pt stores

    def save_last(epoch: int) -> None:
        """The resume point: everything needed to continue after `epoch` (-1: after epoch 0's evaluation)."""
        if main:
            extra = {"ema": ema.module.state_dict(), "ema_updates": ema_updates} if ema is not None else {}
            save_checkpoint({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "epoch": epoch, "best_score": best_score,
                             "best_epoch": best_epoch, "history": history, "rng_cpu": torch.get_rng_state(),
                             **extra}, last_path)

    if start_epoch == 0 and not history and t.eval_initial and validate:
        # "epoch 0": the model before any training (ImageNet features, a pretext backbone, an init
        # checkpoint) is a candidate like any epoch, so fine-tuning can never leave a fold worse
        metrics = {k: _plain(v) for k, v in distributed.broadcast(evaluate(scored)).items()}
        best_score, best_epoch = metrics[monitor], 0
        row = {"fold": fold, "epoch": 0, **metrics, "lr": 0.0, "frozen": False, "train_seconds": 0.0, "seconds": 0.0}
        history.append(row)
        append_log(log_path, row)
        tracking.active().log_epoch(fold, row)
        if main:
            save_checkpoint({"model": scored.state_dict(), "epoch": 0, monitor: best_score}, best_path)
        save_last(-1)
        print(f"{name} epoch 0 (before training)  "
              + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)
        distributed.barrier()

    model = distributed.wrap_model(core, device, sync_bn=bool(cfg.dist.sync_bn),
                                   find_unused=distributed.unused_parameters(core, int(t.freeze_epochs)))
    better = (lambda a, b: b is None or a > b) if mode == "max" else (lambda a, b: b is None or a < b)
    freeze_epochs = int(t["freeze_epochs"])
    for epoch in range(start_epoch, t.epochs):
        started = time.time()
        frozen = epoch < freeze_epochs
        for p in getattr(core, "backbone", core).parameters():
            p.requires_grad_(not frozen)
        if hasattr(train_loader.batch_sampler, "set_epoch"):
            train_loader.batch_sampler.set_epoch(epoch)
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(train_loader, desc=f"{name} epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=not cfg["progress"] or not main)
        for step, (images, labels) in enumerate(bar):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, bool(t.amp)):
                output = model(images, labels)
            loss, parts = loss_fn(output, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name} epoch {epoch + 1}: loss is {loss.item()} (lower train.lr?)")
            scaler.scale(loss / accum).backward()
            if (step + 1) % accum == 0 or step + 1 == len(train_loader):
                if t.get("clip_grad"):
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_update(epoch * updates_per_epoch + (step + 1) // accum)
                if ema is not None:  # after each optimizer step (every accum_steps batches), not each batch
                    ema_updates += 1
                    ema.update(core, step=ema_updates)
            n = len(labels)
            seen += n
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
        sums, seen = distributed.sum_over_ranks(sums, seen)
        train_seconds = time.time() - started
        if ema is not None:
            _sync_buffers(ema.module)
        metrics = {k: _plain(v) for k, v in distributed.broadcast(evaluate(scored)).items()} if validate else {}
        row = {"fold": fold, "epoch": epoch + 1,
               **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
               **metrics, "lr": optimizer.param_groups[0]["lr"], "frozen": frozen,
               "train_seconds": round(train_seconds, 2), "seconds": round(time.time() - started, 2)}
        score = metrics[monitor] if validate else float(epoch + 1)  # no validation: the latest epoch is kept
        if better(score, best_score):
            best_score, best_epoch = score, epoch + 1
            if main:
                save_checkpoint({"model": scored.state_dict(), "epoch": epoch + 1, monitor: score}, best_path)
        history.append(row)
        append_log(log_path, row)
        tracking.active().log_epoch(fold, row)
        print(f"{name} epoch {epoch + 1}/{t.epochs}  loss {row['train_loss']:.4f}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
              + f"  lr {row['lr']:.2e}  {row['seconds']:.0f}s", flush=True)
        save_last(epoch)
        distributed.barrier()
    if best_epoch == 0 and t.epochs > 0:
        print(f"warning: {name}: no epoch beat the model before training ({monitor} {best_score:.4f}); best.pt "
              "keeps the initial weights (a lower train.lr, more epochs, or train.freeze_epochs may help)", flush=True)
    result = FoldResult(fold, best_epoch, float(best_score), history)
    if main:
        write_json_atomic(fold_dir / "done.json", {"fold": fold, "best_epoch": best_epoch, monitor: best_score})
    distributed.barrier()
    return result


def load_best(model: nn.Module, fold_dir: Path, device: torch.device | str = "cpu") -> nn.Module:
    model.load_state_dict(load_checkpoint(fold_dir / "best.pt", device)["model"])
    return model.to(device).eval()
