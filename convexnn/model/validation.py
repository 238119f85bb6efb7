"""Input checks shared by every entry point: say what was expected and what arrived."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_images",
    "as_targets",
    "check_pair",
    "check_kernel_size",
    "check_positive",
    "check_int",
    "check_in_range",
    "check_choice",
    "check_seed",
    "check_finite_input",
]


def describe(x: Any) -> str:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def as_images(x: Any, name: str = "images", dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Return `x` as a float tensor `(n, C, H, W)`; accepts `(n, H, W)` and numpy arrays."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name}: expected a real-valued array, got {describe(x)}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array of shape (n, C, H, W) "
                        f"or (n, H, W), got {describe(x)}")
    if x.is_complex():
        raise TypeError(f"{name}: expected real values (split real and imaginary parts into "
                        f"separate examples), got {describe(x)}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected shape (n, C, H, W) or (n, H, W), got {describe(x)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: expected non-empty images, got {describe(x)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device or x.device)
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite pixel values, got {n_bad} NaN/Inf entries "
                         f"in {describe(x)}")
    return x


def as_targets(y: Any, noisy: torch.Tensor, name: str = "clean") -> torch.Tensor:
    """Clean images as `(n, 1, H, W)`, matching `noisy` in n, H, W (one output per pixel)."""
    y = as_images(y, name, dtype=noisy.dtype, device=noisy.device)
    if y.shape[1] != 1:
        raise ValueError(f"{name}: expected one output channel (n, 1, H, W) or (n, H, W), "
                         f"got {describe(y)}")
    check_pair(noisy, y)
    return y


def check_pair(noisy: torch.Tensor, clean: torch.Tensor) -> None:
    if noisy.shape[0] != clean.shape[0] or noisy.shape[2:] != clean.shape[2:]:
        raise ValueError("noisy and clean images must have the same count and size: got noisy "
                         f"{tuple(noisy.shape)} and clean {tuple(clean.shape)}")


def check_kernel_size(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size: expected a positive odd integer ('same' padding), "
                         f"got {k!r}")
    return int(k)


def check_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return v


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer (not a bool) >= `minimum`; numpy integers are accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return int(value)


def check_in_range(value: Any, name: str, low: float, high: float, low_open: bool = True,
                   high_open: bool = True) -> float:
    """A real number (not a bool) in the interval from `low` to `high`."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in {interval}, got {value!r}")
    v = float(value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return v


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """None or a non-negative integer (what ``numpy.random.default_rng`` accepts as one int)."""
    if seed is None:
        return None
    return check_int(seed, name, 0)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value.lower()


def check_finite_input(x: torch.Tensor, name: str = "input") -> None:
    """A denoiser's input batch must be finite (NaN/Inf in would be NaN/Inf out)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got {int((~torch.isfinite(x)).sum())} "
                         f"NaN/Inf entries in {describe(x)}")
