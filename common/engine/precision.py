"""One mixed-precision rule for training, embedding and inference.

Why one: a model trained under bf16 autocast and embedded under fp16 (or the reverse) sees other
numerics at test time than the thresholds were tuned on. bf16 where the GPU supports it (no grad
scaler needed), else fp16 with a grad scaler; nothing on the CPU.
"""
from __future__ import annotations

import contextlib

import torch


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for `device`, or None for full precision."""
    device = torch.device(device)
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str, enabled: bool = True):
    """The autocast context of `autocast_dtype` (a no-op context in full precision)."""
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
