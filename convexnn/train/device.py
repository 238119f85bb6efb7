"""Devices and dtypes of the trainers: one resolution rule for every entry point."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPES:
        return _DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"dtype: expected one of {list(_DTYPES)} or a torch.dtype, got {dtype!r}")


def resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        from .distributed import default_device

        return default_device()
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise ValueError(f"device: expected None, 'auto', 'cpu', 'cuda[:i]' or a torch.device, "
                         f"got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected None, 'auto', 'cpu', 'cuda[:i]' or a torch.device, "
                         f"got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available here (use "
                         f"device='cpu' or None)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected a cpu or cuda device, got {device!r}")
    return dev
