"""The whole resolved config, checked before any run folder, cache entry or fold file exists.

Why here: a bad value found after the run folder was made costs the run name (the corrected rerun
is refused as "already exists") and possibly minutes of caching. Registry names (heads, losses,
augmentations, samplers, ...) come from the registries themselves, so a new entry needs no edit here.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from common.core.config import lookup
from common.core.errors import ConfigError
from common.core.registry import ALL
from common.engine.tracking import check_tracking

# modules whose import fills the registries named in configs
CATALOG = ("common.models.heads", "common.models.pretrained", "common.losses.pair", "common.data.augment",
           "common.data.loaders", "common.ssl.pretext", "common.video.faces", "common.video.inference")

_MISSING = object()


def _value(cfg, key: str) -> Any:
    return lookup(cfg, key, _MISSING)


def _number(cfg, key: str, kind: type, minimum: float, *, strict: bool = False, none_ok: bool = False) -> None:
    value = _value(cfg, key)
    if value is _MISSING or (none_ok and value is None):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{key}={value}: must be {'>' if strict else '>='} {minimum}")


def _choice(cfg, key: str, choices: tuple) -> None:
    value = _value(cfg, key)
    if value is not _MISSING and not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)}")


def _check_registries(cfg, keys: tuple[str, ...]) -> None:
    for module in CATALOG:
        importlib.import_module(module)
    for registry in ALL.values():
        for key in registry.keys_in_config:
            if key in keys and (value := _value(cfg, key)) is not _MISSING:
                registry.check_value(value, key)


def _check_timm_names(cfg) -> None:
    import timm
    import timm.optim

    import common.models.backbones  # noqa: F401  registers the small CPU backbones

    backbone = _value(cfg, "model.backbone")
    if backbone is not _MISSING and not timm.is_model(str(backbone)):
        hint = difflib.get_close_matches(str(backbone), timm.list_models(), n=3)
        raise ConfigError(f"model.backbone={backbone}: not a timm model" + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    optimizer = _value(cfg, "train.optimizer")
    if optimizer is not _MISSING and str(optimizer).lower() not in timm.optim.list_optimizers():
        hint = difflib.get_close_matches(str(optimizer).lower(), timm.optim.list_optimizers(), n=3)
        raise ConfigError(f"train.optimizer={optimizer}: not a timm optimizer" + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    schedulers = ("constant", "cosine", "multistep", "plateau", "poly", "step", "tanh")  # timm's create_scheduler_v2
    scheduler = _value(cfg, "train.scheduler")
    if scheduler is not _MISSING and scheduler not in schedulers:
        raise ConfigError(f"train.scheduler={scheduler}: choose one of {', '.join(schedulers)}")


def _check_sizes(cfg) -> None:
    size = _value(cfg, "data.image_size")
    if size is not _MISSING and size != "auto" and not (isinstance(size, list) and len(size) == 2
                                     and all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in size)):
        raise ConfigError(f"data.image_size={size!r}: expected [height, width], two integers >= 16, or auto")
    for key in ("train.epochs", "train.batch_size", "infer.batch_size", "infer.neighbours", "model.embedding_dim",
                "train.pk_k", "train.accum_steps"):
        _number(cfg, key, int, 1)
    _number(cfg, "train.folds", int, 2)
    _number(cfg, "train.lr", float, 0, strict=True)
    _number(cfg, "train.weight_decay", float, 0)
    _number(cfg, "train.warmup_epochs", int, 0)
    _number(cfg, "train.freeze_epochs", int, 0)
    _number(cfg, "data.num_workers", int, 0)
    _number(cfg, "data.limit", int, 1, none_ok=True)
    _number(cfg, "threads", int, 1, none_ok=True)
    _number(cfg, "data.box_margin", float, 0)
    _number(cfg, "infer.verify_k", int, 1)
    _number(cfg, "infer.verify_features", int, 8)
    _number(cfg, "infer.verify_side", int, 32)
    _choice(cfg, "data.resize", ("stretch", "pad"))
    _choice(cfg, "data.normalize", ("imagenet", "auto"))
    _choice(cfg, "infer.verify", ("none", "sift", "orb", "akaze"))
    _number(cfg, "loss.relation_hidden", int, 1)
    for key in ("train.ema", "train.full_fit", "infer.dba", "infer.query_expansion", "infer.kreciprocal",
                "infer.learned_rerank", "infer.verify_root"):
        _choice(cfg, key, (True, False))
    _number(cfg, "pseudo.rounds", int, 0)
    precision = _value(cfg, "pseudo.precision")
    if precision is not _MISSING and (isinstance(precision, bool) or not isinstance(precision, (int, float))
                                      or not 0 < precision <= 1):
        raise ConfigError(f"pseudo.precision={precision!r}: a share in (0, 1], e.g. 0.9")
    decay = _value(cfg, "train.ema_decay")
    if decay is not _MISSING and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1):
        raise ConfigError(f"train.ema_decay={decay!r}: a number between 0 and 1 (e.g. 0.998)")
    folds, chosen = _value(cfg, "train.folds"), _value(cfg, "train.run_folds")
    if chosen not in (_MISSING, None):
        if not isinstance(chosen, list) or not chosen or any(not isinstance(f, int) or not 0 <= f < folds for f in chosen):
            raise ConfigError(f"train.run_folds={chosen!r}: a list of fold numbers in 0..{folds - 1}, or null for all")


def _check_learned_distance(cfg, task_cls) -> None:
    """`loss.distance=learned` trains a relation head only through a pair loss that uses the distance;
    `infer.learned_rerank` needs that head, and a task that re-ranks retrieval shortlists."""
    from common.core.registry import is_none
    from common.losses.pair import LEARNED, USES_DISTANCE

    distance, loss = _value(cfg, "loss.distance"), _value(cfg, "model.loss")
    if distance == LEARNED and loss is not _MISSING and (is_none(loss) or loss not in USES_DISTANCE):
        raise ConfigError(f"loss.distance=learned needs a pair loss that trains the relation head: model.loss="
                          f"{'|'.join(USES_DISTANCE)} (got model.loss={loss})")
    if _value(cfg, "infer.learned_rerank") is True:
        if distance != LEARNED:
            raise ConfigError(f"infer.learned_rerank=true re-ranks with the relation head, which only loss.distance=learned "
                              f"trains (got loss.distance={distance})")
        if task_cls is not None and not getattr(task_cls, "retrieval_postprocessing", False):
            raise ConfigError(f"infer.learned_rerank: the {task_cls.name} task does not use retrieval post-processing "
                              "(identification does: whales, happywhale)")


def validate_config(cfg, task_cls=None) -> None:
    """ConfigError for the first bad value; `task_cls` adds its registry keys and own checks."""
    _check_sizes(cfg)
    keys = task_cls.registry_keys if task_cls is not None else tuple(k for r in ALL.values() for k in r.keys_in_config)
    _check_registries(cfg, keys)
    _check_timm_names(cfg)
    _check_learned_distance(cfg, task_cls)
    check_tracking(cfg)
    if task_cls is not None:
        task_cls.check(cfg)
