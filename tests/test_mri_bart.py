"""Coil-map estimation and the multi-coil MRI operator against BART's reference recon."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convexnn.solvers.operators import calibration_size, estimate_coil_maps, fft2c

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_restoration_data import SHARED, needs_shared  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))


def _smooth_maps(n: int, h: int, w: int) -> torch.Tensor:
    u, v = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                          torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    maps = []
    for c in range(n):
        ang = 2 * np.pi * c / n
        cx, cy = 1.5 * np.cos(ang), 1.5 * np.sin(ang)
        mag = torch.exp(-((u - cx) ** 2 + (v - cy) ** 2) / 3.0)
        maps.append(mag * torch.exp(1j * (0.5 * c + 0.3 * u - 0.2 * v)))
    s = torch.stack(maps)
    return s / s.abs().pow(2).sum(0).sqrt()


def test_calibration_size():
    m = torch.zeros(40, 50)
    m[20 - 6:20 + 6, 25 - 6:25 + 6] = 1
    m[0, :] = 1
    assert calibration_size(m) == 12
    m[20, 25] = 0
    assert calibration_size(m) == 0


def test_estimate_coil_maps_recovers_smooth_maps():
    h = w = 48
    s = _smooth_maps(4, h, w)
    u, v = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                          torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    x = torch.exp(-(u ** 2 + v ** 2) / 0.5).to(torch.complex128)   # smooth, positive object
    k = fft2c(s * x)
    est = estimate_coil_maps(k, calib=24)
    assert est.shape == s.shape and est.dtype == torch.complex128
    sup = x.abs() > 0.3
    err = (est.abs() - s.abs())[:, sup].norm() / s.abs()[:, sup].norm()
    assert err < 0.05
    # sum_c |S_c|^2 = 1 where the signal is above the floor
    one = torch.ones((), dtype=torch.float64)
    assert torch.allclose(est.abs().pow(2).sum(0)[sup], one, atol=1e-9)
    # a wrong calibration side is refused; a real array is refused
    with pytest.raises(ValueError, match="calib"):
        estimate_coil_maps(k, calib=1)
    with pytest.raises(ValueError, match="complex"):
        estimate_coil_maps(k.real, calib=8)
    with pytest.raises(ValueError, match="calibration region"):
        estimate_coil_maps(torch.zeros_like(k), calib=8)


@needs_shared
def test_sense_recon_matches_bart_reference():
    from mri_bart_check import run

    res = run(SHARED, iterations=(10,))
    assert res["calibration_side"] == 20 and 0.12 < res["sampled_fraction"] < 0.135
    m = res["sense"]["10"]
    assert m["nrmse"] < 0.08 and m["correlation"] > 0.97
    # the zero-filled adjoint is aliased: clearly worse than the SENSE reconstruction
    assert res["adjoint"]["nrmse"] > 1.5 * m["nrmse"]
    # controls: a flipped or a 1-pixel shifted reconstruction does not match
    assert res["controls"]["sense_flipped_rows"]["nrmse"] > 0.3
    assert res["controls"]["sense_shifted_1px"]["nrmse"] > 2 * m["nrmse"]
    assert res["sense_data_residual"] < 0.1
