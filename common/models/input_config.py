"""What a backbone expects as input, from timm's pretrained config: `data.image_size=auto`,
`data.normalize=auto`.

timm keeps, per model name (optionally with a pretrained tag, `resnet18.a1_in1k`), a PretrainedCfg
with the `input_size` (C, H, W) its weights were trained at and the `mean`/`std` they were
normalised with; `timm.models.get_pretrained_cfg(name)` returns it without building the model (None
for an architecture without one, e.g. this repository's `small_cnn`).

`resolve_input_config` runs once, right after a command's config is loaded (`common.core.cli`),
before validation and before torchrun relaunches: it replaces `data.image_size: auto` by the
concrete [height, width], which is what the run saves in its config.yaml (so `predict` and `export`
of the run see the size it was trained at), and makes `data.boxes` an absolute path. The mean/std
are not config keys: `data.normalize` stays `imagenet` or `auto`, and `normalization(cfg)` derives
the numbers from the saved backbone name whenever transforms are built.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from common.core.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # common.data.augment imports these
CREATING_COMMANDS = ("train", "pretrain")  # commands whose config becomes a run's: the boxes CSV is checked early
# commands that work from a finished run's saved config (already concrete): the command line's own
# `auto` may stay unresolved there (e.g. the competition's default backbone has no pretrained config,
# but the run was trained with another one given on its command line)
SAVED_RUN_COMMANDS = ("predict", "embed", "export", "report", "kernel", "submit", "runs")


def pretrained_cfg(backbone: str, key: str = "data.image_size=auto"):
    """timm's PretrainedCfg for `backbone` (None when it has none); ConfigError naming `key` for a
    name timm does not know or a pretrained tag it does not have."""
    import timm
    from timm.models import get_pretrained_cfg

    import common.models.backbones  # noqa: F401  (registers small_cnn & co. with timm)

    name = str(backbone)
    if not timm.is_model(name):
        hint = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"{key}: model.backbone={name} is not a timm model"
                          + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    try:
        return get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError as exc:  # a tag the architecture does not have
        raise ConfigError(f"{key}: model.backbone={name}: {exc}") from None


def backbone_input_size(backbone: str) -> list[int]:
    """[height, width] of the backbone's pretrained config (its `input_size`, not the larger
    `test_input_size` some models list); ConfigError when it has none."""
    cfg = pretrained_cfg(backbone)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    if not size or len(size) != 3:
        raise ConfigError(f"data.image_size=auto: model.backbone={backbone} has no pretrained config with an "
                          "input size (e.g. the repository's own small CNNs); give data.image_size=[height,width]")
    return [int(size[1]), int(size[2])]


def backbone_mean_std(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's pretrained mean/std, ImageNet's when it has no pretrained config (or one without them)."""
    cfg = pretrained_cfg(backbone, key="data.normalize=auto")
    mean, std = (getattr(cfg, "mean", None), getattr(cfg, "std", None)) if cfg is not None else (None, None)
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalization(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that `data.normalize` asks for (a saved config without the key: ImageNet's)."""
    if cfg.data.get("normalize", "imagenet") == "auto":
        return backbone_mean_std(cfg.model.backbone)
    return IMAGENET_MEAN, IMAGENET_STD


def image_size(cfg) -> tuple[int, int]:
    """(height, width) of `data.image_size`, resolving `auto` if nobody has yet."""
    size = cfg.data.image_size
    if size == "auto":
        size = backbone_input_size(cfg.model.backbone)
    return int(size[0]), int(size[1])


def resolve_input_config(cfg, command: str | None = None):
    """In place, once per command: `data.image_size: auto` -> [height, width] from the backbone, and
    `data.boxes` -> an absolute path. For `train`/`pretrain` the boxes CSV is also read and checked
    now, so a bad file is refused before a run folder or cache entry exists. A backbone without a
    pretrained config is a ConfigError, except for SAVED_RUN_COMMANDS. Returns `cfg`."""
    data = cfg.get("data")
    if not isinstance(data, dict):
        return cfg
    if data.get("image_size") == "auto" and cfg.get("model") and cfg.model.get("backbone"):
        try:
            data["image_size"] = backbone_input_size(cfg.model.backbone)
        except ConfigError:
            if command not in SAVED_RUN_COMMANDS:
                raise
    if data.get("boxes") not in (None, ""):
        data["boxes"] = str(Path(str(data["boxes"])).expanduser().resolve())
        if command in CREATING_COMMANDS:
            from common.data.boxes import read_boxes

            read_boxes(data["boxes"])
    return cfg
