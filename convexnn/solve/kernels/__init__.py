"""Fused products with the sign patterns of eq. 4 over the rows of the patch matrix (eq. 3).

For rows `x_n` of `Yp` (N, d) and generators `g_i` (`D_i = 1[x_n . g_i >= 0]`):

    price(x, g, z)            (P, d)  sum_n D_in z_n          (App. C pricing, A^T y)
    gated_rows(x, g, a)       (N,)    sum_i D_in x_n . a_i    (eq. 4 prediction)
    smallest(x, keep, g, v, r, thr)   per candidate the r smallest of
                                      sgn(x_n . g) (x_n . v) and how many are below thr

On CPU float64 they run in the compiled C kernels of `pattern_kernels.c` (the masks are formed
in registers: one pass over the pixels, nothing N x P is written; about 1.5 s for 470,400
pixels x 8,000 patterns on 2 cores); elsewhere (GPU, other dtypes, no C compiler, or
`CONVEXNN_KERNELS=torch`) in blocked torch code with the same results.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import numpy as np
import torch

from convexnn.solve.kernels.build import KernelBuildError, load_library

__all__ = ["price", "gated_rows", "smallest", "backend"]

_LANES = 8
_BLOCK = 2 ** 22          # elements of one temporary in the torch paths
_state: dict[str, object] = {}


def _library():
    if "lib" not in _state:
        if os.environ.get("CONVEXNN_KERNELS", "").lower() == "torch":
            _state["lib"], _state["reason"] = None, "CONVEXNN_KERNELS=torch"
        else:
            try:
                lib = load_library(verbose=True)
                p, i64 = ctypes.c_void_p, ctypes.c_longlong
                for name in ("cnn_price", "cnn_predict"):
                    getattr(lib, name).argtypes = [i64, i64, i64, p, p, p, p, ctypes.c_int]
                lib.cnn_smallest.argtypes = [i64, i64, i64, p, p, p, p, i64, p, p, p, p,
                                             ctypes.c_int]
                _state["lib"], _state["reason"] = lib, "compiled C kernels"
            except KernelBuildError as exc:
                _state["lib"], _state["reason"] = None, str(exc)
                warnings.warn(f"convexnn: the compiled pattern kernels are unavailable ({exc}); "
                              f"using torch code (10-30x slower on CPU)", RuntimeWarning,
                              stacklevel=3)
    return _state["lib"]


def backend(x: torch.Tensor | None = None) -> str:
    """'c' when the compiled kernels serve tensors like `x` (CPU float64), else 'torch'."""
    lib = _library()
    if lib is None:
        return "torch"
    if x is not None and (x.device.type != "cpu" or x.dtype != torch.float64):
        return "torch"
    return "c"


def _use_c(*ts: torch.Tensor):
    return _library() if all(t.device.type == "cpu" and t.dtype == torch.float64
                             for t in ts) else None


def _padded_t(m: torch.Tensor) -> np.ndarray:
    """(Q, d) -> (d, Qp) contiguous float64, Q padded with zeros to a multiple of 8."""
    q, d = m.shape
    qp = -(-q // _LANES) * _LANES
    out = np.zeros((d, max(qp, _LANES)))
    out[:, :q] = m.detach().numpy().T
    return out


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _rows(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy())


def price(x: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`sum_n 1[x_n . g_i >= 0] z_n` for every generator: (P, d)."""
    n, d = x.shape
    p = g.shape[0]
    lib = _use_c(x, g, z)
    if lib is not None and n and p:
        xa, za, gt = _rows(x), _rows(z), _padded_t(g)
        out = np.empty((gt.shape[1], d))
        lib.cnn_price(n, d, gt.shape[1], _ptr(xa), _ptr(gt), _ptr(za), _ptr(out),
                      torch.get_num_threads())
        return torch.from_numpy(out[:p].copy())
    out = x.new_zeros((p, d))
    step = max(1, _BLOCK // max(p, 1))
    for r0 in range(0, n, step):
        m = (x[r0:r0 + step] @ g.T >= 0).to(x.dtype)
        out.addmm_(m.T, z[r0:r0 + step])
    return out


def gated_rows(x: torch.Tensor, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """`sum_i 1[x_n . g_i >= 0] x_n . a_i` for every row: (N,)."""
    n, d = x.shape
    lib = _use_c(x, g, a)
    if lib is not None and n and g.shape[0]:
        xa, gt, at = _rows(x), _padded_t(g), _padded_t(a)
        out = np.empty(n)
        lib.cnn_predict(n, d, gt.shape[1], _ptr(xa), _ptr(gt), _ptr(at), _ptr(out),
                        torch.get_num_threads())
        return torch.from_numpy(out)
    out = x.new_zeros(n)
    step = max(1, _BLOCK // max(2 * g.shape[0], 1))
    for r0 in range(0, n, step):
        xb = x[r0:r0 + step]
        out[r0:r0 + step] = ((xb @ a.T) * (xb @ g.T >= 0)).sum(1)
    return out


def smallest(x: torch.Tensor, keep: torch.Tensor, g: torch.Tensor, v: torch.Tensor, r: int,
             thresh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per candidate q: the `r` smallest scores `sgn(x_n . g_q) (x_n . v_q)` over rows with
    `keep[n]` (sgn(0) = +1), ascending, as (indices (Q, r), values (Q, r)) with -1 / +inf
    where fewer rows exist, and the number of scores below `thresh[q]` (Q,)."""
    n, d = x.shape
    q = g.shape[0]
    r = int(r)
    lib = _use_c(x, g, v, thresh)
    if lib is not None and q:
        xa, gt, vt = _rows(x), _padded_t(g), _padded_t(v)
        qp = gt.shape[1]
        th = np.full(qp, -np.inf)
        th[:q] = thresh.numpy()
        kp = np.ascontiguousarray(keep.numpy().astype(np.uint8))
        idx = np.empty((qp, r), dtype=np.int64)
        val = np.empty((qp, r))
        cnt = np.empty(qp, dtype=np.int64)
        lib.cnn_smallest(n, d, qp, _ptr(xa), _ptr(kp), _ptr(gt), _ptr(vt), r, _ptr(th),
                         _ptr(idx), _ptr(val), _ptr(cnt), torch.get_num_threads())
        return (torch.from_numpy(idx[:q].copy()), torch.from_numpy(val[:q].copy()),
                torch.from_numpy(cnt[:q].copy()))
    best_v = x.new_full((q, r), float("inf"))
    best_i = torch.full((q, r), -1, dtype=torch.long, device=x.device)
    count = torch.zeros(q, dtype=torch.long, device=x.device)
    step = max(1, _BLOCK // max(2 * q, 1))
    for r0 in range(0, n, step):
        xb = x[r0:r0 + step]
        s = xb @ g.T
        sc = torch.where(s >= 0, xb @ v.T, -(xb @ v.T))
        sc = sc.masked_fill(~keep[r0:r0 + step, None].to(torch.bool), float("inf")).T
        count += (sc < thresh[:, None]).sum(1)
        ids = torch.arange(r0, r0 + xb.shape[0], device=x.device).expand(q, -1)
        allv, alli = torch.cat([best_v, sc], 1), torch.cat([best_i, ids], 1)
        order = torch.sort(allv, dim=1, stable=True).indices[:, :r]
        best_v, best_i = allv.gather(1, order), alli.gather(1, order)
    best_i = best_i.masked_fill(torch.isinf(best_v), -1)
    return best_i, best_v, count
