"""Fused kernels of the hinge-penalised dual objective (eq. 4 + Appendix B hinge).

For a minibatch with patch matrix `Yp (N, K)` (eq. 3, `K = C k^2`) and filters stored
transposed, `G, V, W (K, P)`, one pass over pixels x patterns computes, without storing any
`N x P` array:

* `pred_dual[n]   = sum_i D_in (Yp (v_i - w_i))_n`            (eq. 4 prediction, eq. 8)
* `pred_primal[n] = sum_i relu(Yp v_i)_n - relu(Yp w_i)_n`     (the eq. 5 primal's prediction)
* `hinge = sum_{n,i} relu(-(2 D_in - 1)(Yp v_i)_n) + (same for w)` and its max (App. B)
* `dhinge/dV`, `dhinge/dW` (K, P)
* and, in a second pass with the data-loss gradient `r = dl/dpred`:
  `dl/dF = sum_n D_in r_n Yp_n`  (F = V - W; the gradient w.r.t. V is +, w.r.t. W is -).

The gate `D_in = 1[(Yp g_i)_n >= 0]` is recomputed (9 FMAs for k = 3) instead of read from a
cached mask: at k = 3 recomputing costs less than reading even a bit-packed mask from memory,
so masks are never materialised (this is the "chosen automatically" answer for every size).

Two implementations with identical semantics: a C++/OpenMP kernel compiled on first use with
`torch.utils.cpp_extension.load_inline` into convexnn's cache folder (`$CONVEXNN_CACHE_DIR`,
default `~/.cache/convexnn/torch_extensions`), one build per source, flags, torch version,
Python environment and CPU, announced on screen while it compiles (CPU, float32/float64;
vectorised over patterns, parallel over pattern blocks, deterministic for a fixed thread
count), and a blocked torch
implementation (any device, used on GPU and when no compiler is available).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from convexnn.solve.kernels.build import cache_dir

__all__ = ["HingePass", "hinge_pass", "data_grad", "cpp_kernel_available"]

_CPP_SOURCE = r"""
#include <torch/extension.h>
#include <omp.h>
#include <vector>
#include <algorithm>
#include <cmath>

static const int64_t PB = 128;

template <typename T, int KK>
void pass1_impl(const T* Yp, int64_t N, int64_t Kr, const T* G, const T* V, const T* W,
                int64_t P, T* pd, T* pp, T* gV, T* gW, double* hsum_out, double* hmax_out,
                bool grad) {
  const int64_t K = KK > 0 ? KK : Kr;
  const int64_t nblocks = (P + PB - 1) / PB;
  int nt = omp_get_max_threads();
  std::vector<std::vector<T>> pdl(nt), ppl(nt);
  std::vector<double> hs(nt, 0.0), hm(nt, 0.0);
  #pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    pdl[t].assign(N, T(0)); ppl[t].assign(N, T(0));
    T* mypd = pdl[t].data(); T* mypp = ppl[t].data();
    T cv[PB], cw[PB], a1[PB], a2[PB], a3[PB], a4[PB];
    double hsum = 0.0; T hmax = 0;
    #pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * PB, nb = std::min(P, i0 + PB) - i0;
      const T* Gb = G + i0; const T* Vb = V + i0; const T* Wb = W + i0;
      for (int64_t n = 0; n < N; ++n) {
        const T* p = Yp + n * K;
        #pragma omp simd
        for (int64_t j = 0; j < nb; ++j) {
          T g = 0, lv = 0, lw = 0;
          #pragma GCC unroll 16
          for (int64_t k = 0; k < K; ++k) {
            const T pk = p[k];
            g += pk * Gb[k * P + j]; lv += pk * Vb[k * P + j]; lw += pk * Wb[k * P + j];
          }
          const bool d = g >= T(0);
          const T s = d ? T(1) : T(-1);
          a1[j] = d ? lv - lw : T(0);
          a2[j] = (lv > T(0) ? lv : T(0)) - (lw > T(0) ? lw : T(0));
          const T sv = s * lv, sw = s * lw;
          const T hv = sv < T(0) ? -sv : T(0), hw = sw < T(0) ? -sw : T(0);
          a3[j] = hv > hw ? hv : hw; a4[j] = hv + hw;
          cv[j] = sv < T(0) ? -s : T(0); cw[j] = sw < T(0) ? -s : T(0);
        }
        T ad = 0, ap = 0, hsl = 0, hml = 0;
        #pragma omp simd reduction(+:ad,ap,hsl) reduction(max:hml)
        for (int64_t j = 0; j < nb; ++j) {
          ad += a1[j]; ap += a2[j]; hsl += a4[j]; hml = a3[j] > hml ? a3[j] : hml;
        }
        mypd[n] += ad; mypp[n] += ap; hsum += hsl; hmax = hml > hmax ? hml : hmax;
        if (grad) {
          for (int64_t k = 0; k < K; ++k) {
            const T pk = p[k];
            T* gv = gV + k * P + i0; T* gw = gW + k * P + i0;
            #pragma omp simd
            for (int64_t j = 0; j < nb; ++j) { gv[j] += cv[j] * pk; gw[j] += cw[j] * pk; }
          }
        }
      }
    }
    hs[t] = hsum; hm[t] = (double)hmax;
  }
  double hsum = 0.0, hmax = 0.0;
  for (int t = 0; t < nt; ++t) {
    hsum += hs[t]; hmax = std::max(hmax, hm[t]);
    const T* a = pdl[t].data(); const T* c = ppl[t].data();
    for (int64_t n = 0; n < N; ++n) { pd[n] += a[n]; pp[n] += c[n]; }
  }
  *hsum_out = hsum; *hmax_out = hmax;
}

template <typename T, int KK>
void pass2_impl(const T* Yp, int64_t N, int64_t Kr, const T* G, int64_t P, const T* r, T* gF) {
  const int64_t K = KK > 0 ? KK : Kr;
  const int64_t nblocks = (P + PB - 1) / PB;
  #pragma omp parallel
  {
    T dr[PB];
    #pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * PB, nb = std::min(P, i0 + PB) - i0;
      const T* Gb = G + i0;
      for (int64_t n = 0; n < N; ++n) {
        const T rn = r[n];
        if (rn == T(0)) continue;
        const T* p = Yp + n * K;
        #pragma omp simd
        for (int64_t j = 0; j < nb; ++j) {
          T g = 0;
          #pragma GCC unroll 16
          for (int64_t k = 0; k < K; ++k) g += p[k] * Gb[k * P + j];
          dr[j] = g >= T(0) ? rn : T(0);
        }
        for (int64_t k = 0; k < K; ++k) {
          const T pk = p[k];
          T* gf = gF + k * P + i0;
          #pragma omp simd
          for (int64_t j = 0; j < nb; ++j) gf[j] += dr[j] * pk;
        }
      }
    }
  }
}

#define K_DISPATCH(K, FN, ...) \
  switch (K) { case 9: FN<scalar_t, 9>(__VA_ARGS__); break; \
               case 25: FN<scalar_t, 25>(__VA_ARGS__); break; \
               default: FN<scalar_t, 0>(__VA_ARGS__); }

std::vector<torch::Tensor> pass1(torch::Tensor Yp, torch::Tensor G, torch::Tensor V,
                                 torch::Tensor W, bool grad) {
  const int64_t N = Yp.size(0), K = Yp.size(1), P = G.size(1);
  auto opts = Yp.options();
  auto pd = torch::zeros({N}, opts), pp = torch::zeros({N}, opts);
  auto gV = torch::zeros({K, P}, opts), gW = torch::zeros({K, P}, opts);
  auto stats = torch::zeros({2}, opts.dtype(torch::kFloat64));
  double hsum = 0.0, hmax = 0.0;
  AT_DISPATCH_FLOATING_TYPES(Yp.scalar_type(), "pass1", [&] {
    K_DISPATCH(K, pass1_impl, Yp.data_ptr<scalar_t>(), N, K, G.data_ptr<scalar_t>(),
               V.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(), P,
               pd.data_ptr<scalar_t>(), pp.data_ptr<scalar_t>(),
               gV.data_ptr<scalar_t>(), gW.data_ptr<scalar_t>(), &hsum, &hmax, grad);
  });
  stats[0] = hsum; stats[1] = hmax;
  return {pd, pp, gV, gW, stats};
}

torch::Tensor pass2(torch::Tensor Yp, torch::Tensor G, torch::Tensor r) {
  const int64_t N = Yp.size(0), K = Yp.size(1), P = G.size(1);
  auto gF = torch::zeros({K, P}, Yp.options());
  AT_DISPATCH_FLOATING_TYPES(Yp.scalar_type(), "pass2", [&] {
    K_DISPATCH(K, pass2_impl, Yp.data_ptr<scalar_t>(), N, K, G.data_ptr<scalar_t>(), P,
               r.data_ptr<scalar_t>(), gF.data_ptr<scalar_t>());
  });
  return gF;
}
"""

_CPP_DECL = """
std::vector<torch::Tensor> pass1(torch::Tensor Yp, torch::Tensor G, torch::Tensor V,
                                 torch::Tensor W, bool grad);
torch::Tensor pass2(torch::Tensor Yp, torch::Tensor G, torch::Tensor r);
"""

_lock = threading.Lock()
_cpp_module = None
_cpp_failed: str | None = None


_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]


def _build_location() -> tuple[str, Path]:
    """(extension name, build folder) keyed by the source, the flags, torch's version, the
    Python environment and the CPU's feature flags: a build is reused only where it was made
    for (`-march=native` code never meets another CPU; another venv or torch gets its own)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu += next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    key = hashlib.sha256("\0".join([_CPP_SOURCE, _CPP_DECL, " ".join(_CFLAGS),
                                     torch.__version__, sys.prefix, cpu]).encode())
    digest = key.hexdigest()[:16]
    return f"convexnn_hinge_{digest}", cache_dir() / "torch_extensions" / digest


def _load_cpp():
    global _cpp_module, _cpp_failed
    if _cpp_module is not None or _cpp_failed is not None:
        return _cpp_module
    with _lock:
        if _cpp_module is not None or _cpp_failed is not None:
            return _cpp_module
        if os.environ.get("CONVEXNN_NO_CPP", "") not in ("", "0"):
            _cpp_failed = "disabled by CONVEXNN_NO_CPP"
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            name, folder = _build_location()
            if not any(folder.glob(f"{name}*.so")):
                print(f"convexnn: compiling the C++ hinge kernel of solver='adam' once for this "
                      f"environment and CPU (about a minute) into {folder}", file=sys.stderr,
                      flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            _cpp_module = load_inline(
                name=name, cpp_sources=[_CPP_DECL, _CPP_SOURCE], functions=["pass1", "pass2"],
                extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"], build_directory=str(folder),
                verbose=False)
        except Exception as exc:  # no compiler / headers: fall back to torch
            _cpp_failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"convexnn: the C++ hinge kernel could not be built ({_cpp_failed}); "
                          f"using the slower torch implementation", RuntimeWarning,
                          stacklevel=3)
    return _cpp_module


def cpp_kernel_available() -> bool:
    """Whether the compiled CPU kernel can be used (compiles it on the first call)."""
    return _load_cpp() is not None


@dataclass
class HingePass:
    pred_dual: torch.Tensor     # (N,)
    pred_primal: torch.Tensor   # (N,)
    grad_v: torch.Tensor | None  # (K, P) d hinge / d V^T (unscaled by rho)
    grad_w: torch.Tensor | None
    hinge_sum: float
    hinge_max: float


def _use_cpp(yp: torch.Tensor, kernel: str) -> bool:
    if kernel == "torch" or yp.device.type != "cpu":
        return False
    if yp.dtype not in (torch.float32, torch.float64):
        return False
    ok = _load_cpp() is not None
    if kernel == "cpp" and not ok:
        raise RuntimeError(f"kernel='cpp' requested but the C++ kernel is unavailable: "
                           f"{_cpp_failed}")
    return ok


def hinge_pass(yp: torch.Tensor, gt: torch.Tensor, vt: torch.Tensor, wt: torch.Tensor,
               grad: bool = True, kernel: str = "auto", block: int = 1024) -> HingePass:
    """Predictions, hinge value and hinge gradient on one batch (see the module docstring)."""
    if _use_cpp(yp, kernel):
        pd, pp, gv, gw, stats = _cpp_module.pass1(yp.contiguous(), gt.contiguous(),
                                                  vt.contiguous(), wt.contiguous(), grad)
        return HingePass(pd, pp, gv if grad else None, gw if grad else None,
                         float(stats[0]), float(stats[1]))
    n, p_total = yp.shape[0], gt.shape[1]
    pd = yp.new_zeros(n)
    pp = yp.new_zeros(n)
    gv = torch.zeros_like(vt) if grad else None
    gw = torch.zeros_like(wt) if grad else None
    hsum = yp.new_zeros((), dtype=torch.float64)
    hmax = yp.new_zeros(())
    for p0 in range(0, p_total, block):
        sl = slice(p0, p0 + block)
        g = yp @ gt[:, sl]
        lv = yp @ vt[:, sl]
        lw = yp @ wt[:, sl]
        d = g >= 0
        s = torch.where(d, 1.0, -1.0).to(yp.dtype)
        pd += torch.where(d, lv - lw, 0.0).sum(1)
        pp += (lv.clamp_min(0) - lw.clamp_min(0)).sum(1)
        sv, sw = s * lv, s * lw
        hv, hw = (-sv).clamp_min(0), (-sw).clamp_min(0)
        hsum += hv.sum(dtype=torch.float64) + hw.sum(dtype=torch.float64)
        hmax = torch.maximum(hmax, torch.maximum(hv.max(), hw.max()))
        if grad:
            gv[:, sl] = yp.T @ torch.where(sv < 0, -s, 0.0)
            gw[:, sl] = yp.T @ torch.where(sw < 0, -s, 0.0)
    return HingePass(pd, pp, gv, gw, float(hsum), float(hmax))


def data_grad(yp: torch.Tensor, gt: torch.Tensor, r: torch.Tensor, kernel: str = "auto",
              block: int = 1024) -> torch.Tensor:
    """`(K, P)`: `sum_n D_in r_n Yp_n`, the data-term gradient w.r.t. `F^T = (V - W)^T`."""
    if _use_cpp(yp, kernel):
        return _cpp_module.pass2(yp.contiguous(), gt.contiguous(), r.contiguous())
    out = torch.zeros_like(gt)
    ry = yp * r[:, None]
    for p0 in range(0, gt.shape[1], block):
        d = (yp @ gt[:, p0:p0 + block] >= 0).to(yp.dtype)
        out[:, p0:p0 + block] = ry.T @ d
    return out
