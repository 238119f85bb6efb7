"""Parallel-beam CT: the Radon transform as a sparse matrix built once, adjoint = transpose.

Geometry of ``skimage.transform.radon``: angle theta (degrees), detector offset ``s`` and ray
parameter ``t`` (both in pixels from the centre) sample the image at
``row = c - sin(theta) s + cos(theta) t``, ``col = c + cos(theta) s + sin(theta) t``
(``c = n // 2``) with bilinear interpolation (zero outside the image); a line integral is the sum
over ``t`` at unit steps. The sinogram is ``(B, C, n_detectors, n_angles)``, the layout of
skimage and deepinv.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .base import LinearOperator

__all__ = ["CT", "radon_matrix"]


def _check_angles(angles: Any) -> np.ndarray:
    if isinstance(angles, (int, np.integer)) and not isinstance(angles, bool):
        if angles < 1:
            raise ValueError(f"CT: angles: expected a positive count or a sequence of degrees, "
                             f"got {angles!r}")
        return np.linspace(0.0, 180.0, int(angles), endpoint=False)
    try:
        arr = np.asarray(angles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"CT: angles: expected a count or a sequence of angles in degrees, got "
                        f"{angles!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"CT: angles: expected a non-empty sequence of finite degrees, got "
                         f"{angles!r}")
    return arr


def radon_matrix(theta_deg: np.ndarray, img_size: int, n_detectors: int) -> sp.csr_matrix:
    """Sparse ``(n_detectors * n_angles, img_size^2)`` Radon matrix; row ``d * n_angles + a``."""
    n, nd, na = img_size, n_detectors, theta_deg.size
    c, cd = n // 2, nd // 2
    s = (np.arange(nd) - cd).astype(np.float64)[:, None]  # detector offsets
    t = (np.arange(nd) - cd).astype(np.float64)[None, :]  # ray samples, unit steps
    blocks = []
    for a, th in enumerate(np.deg2rad(theta_deg)):
        cos_a, sin_a = np.cos(th), np.sin(th)
        row = c - sin_a * s + cos_a * t  # (nd, nd): detector x sample
        col = c + cos_a * s + sin_a * t
        r0, c0 = np.floor(row), np.floor(col)
        fr, fc = row - r0, col - c0
        det = np.broadcast_to(np.arange(nd)[:, None], row.shape)
        rows, cols, vals = [], [], []
        for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                            (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):  # bilinear weights
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n) & (wgt != 0)
            rows.append(det[ok] * na + a)
            cols.append((rr[ok] * n + cc[ok]).astype(np.int64))
            vals.append(wgt[ok])
        blocks.append(sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                            np.concatenate(cols))),
                                    shape=(nd * na, n * n)))
    mat = blocks[0]
    for blk in blocks[1:]:
        mat = mat + blk
    mat = sp.csr_matrix(mat)
    mat.sum_duplicates()
    return mat


def _to_torch_csr(mat: sp.csr_matrix) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # "beta state" notice
        return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)),
                                       torch.from_numpy(mat.indices.astype(np.int64)),
                                       torch.from_numpy(mat.data.astype(np.float64)),
                                       size=mat.shape, check_invariants=False)


class CT(LinearOperator):
    """Parallel-beam Radon transform of ``img_size x img_size`` images, every channel alike.

    ``angles``: a count (equispaced in [0, 180) degrees) or a sequence of degrees.
    ``n_detectors``: default ``img_size`` (skimage ``radon(circle=True)``); about
    ``ceil(sqrt(2) img_size)`` sees the whole square (skimage ``circle=False``). Memory: the
    matrix has about ``2.5 n_angles n_detectors img_size`` non-zeros (and its transpose is kept),
    e.g. 60 angles at 128 x 128 is about 2.5 million.
    """

    def __init__(self, angles: Any, img_size: int, n_detectors: int | None = None) -> None:
        if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or \
                img_size < 1:
            raise ValueError(f"CT: img_size: expected a positive integer, got {img_size!r}")
        n = int(img_size)
        nd = n if n_detectors is None else n_detectors
        if isinstance(nd, bool) or not isinstance(nd, (int, np.integer)) or nd < 1:
            raise ValueError(f"CT: n_detectors: expected a positive integer, got "
                             f"{n_detectors!r}")
        super().__init__((1, n, n), fixed_channels=False)
        self.angles = _check_angles(angles)
        self.img_size, self.n_detectors = n, int(nd)
        mat = radon_matrix(self.angles, n, self.n_detectors)
        self._mats: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._master = (_to_torch_csr(mat), _to_torch_csr(mat.T.tocsr()))

    @property
    def n_angles(self) -> int:
        return int(self.angles.size)

    def _matrices(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (dtype, device)
        if key not in self._mats:
            self._mats[key] = tuple(m.to(device=device, dtype=dtype)  # type: ignore[assignment]
                                    for m in self._master)
        return self._mats[key]

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        x = self._check_image(x, "A: x")
        b, c = x.shape[:2]
        mat, _ = self._matrices(x.dtype, x.device)
        y = mat @ x.reshape(b * c, -1).T  # sinogram = R x, one column per image
        return y.T.reshape(b, c, self.n_detectors, self.n_angles)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        y = self._check_measurement(y, (None, None, self.n_detectors, self.n_angles),
                                    "A_adjoint: y")
        b, c = y.shape[:2]
        _, mat_t = self._matrices(y.dtype, y.device)
        x = mat_t @ y.reshape(b * c, -1).T  # back-projection R^T y
        return x.T.reshape(b, c, self.img_size, self.img_size)
