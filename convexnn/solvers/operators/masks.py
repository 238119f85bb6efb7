"""Seeded k-space sampling masks: Cartesian lines and variable-density Poisson disc.

Masks are in centred k-space (DC at ``(H // 2, W // 2)``), as used by ``MRI`` (centred FFT),
fastMRI and SigPy; they come back as float tensors of 0/1 with the default dtype, shape (H, W).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["cartesian_mask", "poisson_disc_mask", "acceleration_of"]

# Poisson-disc exclusion radius at the calibration box, in pixels between jittered positions;
# below 1 so that R = 2 stays reachable (SigPy's Bridson sampler packs denser than greedy
# dart throwing, which at radius 1 tops out near R = 2.5 on a 64 x 64 grid).
_MIN_DISTANCE = 0.5


def _check_shape2(shape: Any, where: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
        ok = h >= 1 and w >= 1 and tuple(shape) == (h, w)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: shape: expected two positive integers (H, W), got {shape!r}")
    return h, w


def _check_accel(acceleration: Any, where: str) -> float:
    try:
        r = float(acceleration)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: acceleration: expected a number >= 1, got "
                        f"{acceleration!r}") from None
    if not math.isfinite(r) or r < 1:
        raise ValueError(f"{where}: acceleration: expected a finite number >= 1, got "
                         f"{acceleration!r}")
    return r


def _check_seed(seed: Any, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def acceleration_of(mask: Any) -> float:
    """``numel / number of sampled entries`` of a 0/1 mask."""
    m = torch.as_tensor(mask)
    n = float((m != 0).sum())
    if n == 0:
        raise ValueError("acceleration_of: the mask samples nothing")
    return m.numel() / n


def cartesian_mask(shape: tuple[int, int], acceleration: float,
                   center_fraction: float = 0.08, center_lines: int | None = None,
                   seed: int = 0) -> Tensor:
    """Random phase-encoding lines (columns, the last axis) with a fully sampled centre.

    ``round(W / acceleration)`` columns in all: the ``center_lines`` central ones (default
    ``round(center_fraction * W)``), the rest uniformly at random without replacement (fastMRI's
    random mask, with the line count fixed so the acceleration is exact up to rounding).
    """
    h, w = _check_shape2(shape, "cartesian_mask")
    r = _check_accel(acceleration, "cartesian_mask")
    if center_lines is None:
        if not (isinstance(center_fraction, (int, float)) and 0 <= center_fraction <= 1):
            raise ValueError(f"cartesian_mask: center_fraction: expected a number in [0, 1], "
                             f"got {center_fraction!r}")
        n_center = int(round(center_fraction * w))
    else:
        if isinstance(center_lines, bool) or not isinstance(center_lines, int) or not (
                0 <= center_lines <= w):
            raise ValueError(f"cartesian_mask: center_lines: expected an integer in [0, {w}], "
                             f"got {center_lines!r}")
        n_center = center_lines
    n_total = max(1, int(round(w / r)))
    if n_center > n_total:
        raise ValueError(f"cartesian_mask: {n_center} fully sampled centre lines exceed the "
                         f"{n_total} lines of acceleration {r} on width {w}; lower "
                         f"center_fraction/center_lines or the acceleration")
    start = w // 2 - n_center // 2
    cols = np.zeros(w, dtype=bool)
    cols[start:start + n_center] = True
    rng = np.random.default_rng(_check_seed(seed, "cartesian_mask"))
    rest = rng.choice(np.flatnonzero(~cols), size=n_total - n_center, replace=False)
    cols[rest] = True
    mask = np.broadcast_to(cols[None, :], (h, w)).astype(np.float64)
    return torch.from_numpy(mask).to(torch.get_default_dtype())


def _normalised_radius(h: int, w: int, calib: tuple[int, int]) -> np.ndarray:
    """SigPy's variable-density radius: distance from the calibration box, 1 at the edges."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    x = np.maximum(np.abs(x - w / 2) - calib[1] / 2, 0)
    y = np.maximum(np.abs(y - h / 2) - calib[0] / 2, 0)
    x /= max(x.max(), 1e-12)
    y /= max(y.max(), 1e-12)
    return np.sqrt(x**2 + y**2)


def _poisson_once(r: np.ndarray, slope: float, order: np.ndarray, jitter: np.ndarray,
                  calib_box: tuple[slice, slice], crop: np.ndarray) -> np.ndarray:
    """Greedy dart throwing over the grid cells in a fixed random order.

    Grid cell p stands for the continuous position ``p + jitter[p]`` (``jitter`` in [0, 1)^2,
    which smooths the density-vs-radius steps of a bare integer grid); it is kept unless that
    position lies inside the exclusion ellipse ``(dx / rx)^2 + (dy / ry)^2 < 1`` around the
    position of an already kept point, whose radii are
    ``d0 (1 + r slope) * (W, H) / max(H, W)`` with ``d0 = _MIN_DISTANCE``.
    """
    h, w = r.shape
    scale = _MIN_DISTANCE * (1.0 + r * slope)  # exclusion radius grows linearly in r
    rx = scale * w / max(h, w)
    ry = scale * h / max(h, w)
    pad = int(math.ceil(max(rx.max(), ry.max()))) + 1
    wp = w + 2 * pad
    blocked = np.zeros((h + 2 * pad, wp), dtype=bool)
    flat_blocked = blocked.reshape(-1)
    jy, jx = np.pad(jitter[0], pad), np.pad(jitter[1], pad)  # padding cells are never tried
    mask = np.zeros(h * w, dtype=bool)
    rx_flat, ry_flat = rx.reshape(-1).tolist(), ry.reshape(-1).tolist()
    offsets: dict[tuple[int, int], np.ndarray] = {}
    for idx in order.tolist():
        py, px = divmod(idx, w)
        y0, x0 = py + pad, px + pad
        if flat_blocked[y0 * wp + x0]:
            continue
        mask[idx] = True
        ax, ay = rx_flat[idx], ry_flat[idx]
        a, b = int(ay) + 1, int(ax) + 1
        grid = offsets.get((a, b))
        if grid is None:
            grid = offsets[(a, b)] = np.mgrid[-a:a + 1, -b:b + 1].astype(np.float64)
        win = (slice(y0 - a, y0 + a + 1), slice(x0 - b, x0 + b + 1))
        qy = (grid[0] + jy[win] - jy[y0, x0]) / ay  # offsets between the jittered positions
        qx = (grid[1] + jx[win] - jx[y0, x0]) / ax
        blocked[win] |= qx * qx + qy * qy < 1  # inside the kept point's exclusion ellipse
    mask = mask.reshape(h, w) & crop
    mask[calib_box] = True
    return mask


def poisson_disc_mask(shape: tuple[int, int], acceleration: float,
                      calib: tuple[int, int] = (16, 16), seed: int = 0,
                      crop_corner: bool = True, tol: float = 0.01, max_iter: int = 40) -> Tensor:
    """Variable-density 2-D Poisson-disc mask with a fully sampled ``calib`` centre.

    The set-up of the convex-dual paper (fastMRI knees, SigPy ``mri.poisson``, R = 2, 4, 8 and
    a 16 x 16 calibration region): the exclusion radius grows linearly with the normalised
    distance r from the calibration box (SigPy's r: 0 at the box, 1 at the k-space edges),
    ``d0 (1 + slope r)``; ``slope`` is searched (bracketing, then safeguarded regula falsi) until
    ``H W / #samples`` is within ``tol`` (relative) of ``acceleration``; a ``ValueError`` says so
    when no slope gets within 5%. With ``crop_corner`` nothing is sampled beyond ``r = 1``
    (the k-space corners). Our own seeded implementation (greedy dart throwing in a random order
    with sub-pixel jitter), not SigPy's: the masks are alike in law, not bit for bit; the same
    seed gives the same mask. Cost: about 0.2-0.5 s at 128 x 128 and 2-3 s at 256 x 256 on one core.
    """
    h, w = _check_shape2(shape, "poisson_disc_mask")
    r_target = _check_accel(acceleration, "poisson_disc_mask")
    seed = _check_seed(seed, "poisson_disc_mask")
    try:
        ch, cw = (int(c) for c in calib)
        ok = 0 <= ch <= h and 0 <= cw <= w and tuple(calib) == (ch, cw)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"poisson_disc_mask: calib: expected two integers within the shape "
                         f"{(h, w)}, got {calib!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"poisson_disc_mask: tol: expected a number in (0, 1), got {tol!r}")
    calib_box = (slice(int(h / 2 - ch / 2), int(h / 2 + ch / 2)),
                 slice(int(w / 2 - cw / 2), int(w / 2 + cw / 2)))
    n_calib = max(ch * cw, 1)
    if h * w / n_calib < r_target * (1 - tol):
        raise ValueError(f"poisson_disc_mask: acceleration {r_target} is unreachable: the "
                         f"{ch} x {cw} calibration region alone gives {h * w / n_calib:.3g} on a "
                         f"{h} x {w} grid")
    r = _normalised_radius(h, w, (ch, cw))
    crop = r < 1 if crop_corner else np.ones((h, w), dtype=bool)
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(crop.reshape(-1))
    order = rng.permutation(candidates)
    jitter = rng.random((2, h, w))
    # bracket the slope by doubling/halving from 1, then safeguarded regula falsi on log(R)
    lo, hi = (0.0, math.log(r_target * (1 - tol))), (math.inf, math.inf)
    slope, slope_max = 1.0, 8.0 * max(h, w)
    best, best_err = None, math.inf
    for _ in range(max_iter):
        mask = _poisson_once(r, slope, order, jitter, calib_box, crop)
        accel = h * w / mask.sum()
        err = abs(accel - r_target) / r_target
        if err < best_err:
            best, best_err = mask, err
        if err <= tol:
            break
        if accel < r_target:
            lo = (slope, math.log(accel))
        else:
            hi = (slope, math.log(accel))
        if hi[0] == math.inf:
            if slope >= slope_max:
                break
            slope = min(2.0 * slope, slope_max)
        elif lo[0] == 0.0 and slope > 1e-6:
            slope = 0.5 * slope
        else:
            span = hi[1] - lo[1]
            frac = (math.log(r_target) - lo[1]) / span if span > 0 else 0.5
            slope = lo[0] + (hi[0] - lo[0]) * min(max(frac, 0.1), 0.9)
    if best is None or best_err > max(tol, 0.05):
        raise ValueError(f"poisson_disc_mask: could not reach acceleration {r_target} within "
                         f"5% on a {h} x {w} grid with calib {calib} (closest: relative error "
                         f"{best_err:.3g}); change the acceleration, shape or calib")
    return torch.from_numpy(best.astype(np.float64)).to(torch.get_default_dtype())
