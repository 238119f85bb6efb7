"""The gradient-form shrinkage network: a denoiser that is firmly nonexpansive by certificate.

    J(x) = x - N(x),   N(x) = sum_j C_j^T psi_j(C_j x),   psi_j(z) = sum_m c_jm r_m(z),  c >= 0

`C_j` are fixed k x k 'same' zero-padded convolutions (the orthonormal DCT frame by default),
`r_m(z) = clip(z - t_m, 0, w) - clip(-t_m, 0, w)` are ReLU ramps (a difference of two ReLUs)
on a grid of knots `t_m` of width `w`: each `psi_j` is a nondecreasing piecewise-linear
function with slope `c_jm` on bin m and `psi_j(0) = 0`. So N is a two-layer ReLU network with
tied layers, and it is the gradient of the convex potential `Phi(x) = sum_j sum_pixels
phi_j((C_j x)_p)`, `phi_j' = psi_j`. Its generalised Hessians `sum_j C_j^T D_j C_j`,
`0 <= D_j <= L_j = max_m c_jm`, lie between 0 and `S I` with

    S = sup_omega sum_j L_j |C_j(omega)|^2                                          (F)

(the padded convolution is a compression of the bi-infinite one). If `S <= 1`, N is firmly
nonexpansive (Baillon-Haddad: the gradient of a convex 1-smooth function is 1-cocoercive), so
is `J = I - N`, and `2 J - I = I - 2 N` has Jacobians with eigenvalues in `[1 - 2 S, 1]`:
`Lip(2 J - I) <= max(1, 2 S - 1)`, the certificate this module reports. `(F)` is a linear
function of `L`, so training `c` under `S <= 1` is a convex QP (`convexnn.shrinkage`).
`S` is certified on an M x M frequency grid with Bernstein's inequality for the trigonometric
polynomial `sum_j L_j |C_j|^2` of degree `k - 1` per axis (`bernstein_factor`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .denoiser import Denoiser

__all__ = ["ShrinkageNetwork", "dct_frame", "FRAMES", "shrinkage_frame", "ramp_knots", "ramps",
           "shrinkage_features", "frame_response", "frequency_grid", "shrinkage_residual",
           "potential_smoothness_grid", "potential_smoothness_bound", "smoothness_kernel"]


def dct_frame(kernel_size: int) -> torch.Tensor:
    """The k^2 orthonormal 2-D DCT-II basis filters `(k^2, 1, k, k)`, float64, DC first."""
    k = int(kernel_size)
    n = np.arange(k)
    basis = np.sqrt(2.0 / k) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * k))
    basis[0] /= np.sqrt(2.0)                                  # rows: frequency, cols: position
    filt = np.einsum("ui,vj->uvij", basis, basis).reshape(k * k, 1, k, k)
    return torch.from_numpy(filt.copy())


FRAMES = ("dct", "multiscale")


def shrinkage_frame(name: str, kernel_size: int) -> torch.Tensor:
    """The analysis filters `C_j` `(J, 1, k, k)` of a named frame, float64, centred.

    "dct": the k x k orthonormal DCT frame (`dct_frame`, k^2 filters, tight).
    "multiscale": that frame, the non-DC DCT filters of every smaller odd size 5, 3 (zero-padded
    to k x k, centred) and the four unit-step finite differences / sqrt 2 (horizontal,
    vertical, both diagonals: the local edge detectors of TV): k^2 + 24 + 8 + 4 filters for
    k = 7. Redundant (not tight), which (F) and the QP handle as they are.
    """
    if name not in FRAMES:
        raise ValueError(f"frame: expected one of {list(FRAMES)}, got {name!r}")
    k = int(kernel_size)
    parts = [dct_frame(k)]
    if name == "multiscale":
        c = k // 2
        for size in range(k - 2, 2, -2):
            small, h = dct_frame(size)[1:], size // 2
            pad = torch.zeros(small.shape[0], 1, k, k, dtype=torch.float64)
            pad[:, :, c - h:c + h + 1, c - h:c + h + 1] = small
            parts.append(pad)
        if k >= 3:
            diff = torch.zeros(4, 1, k, k, dtype=torch.float64)
            for i, (a, b) in enumerate(((0, 1), (1, 0), (1, 1), (1, -1))):
                diff[i, 0, c, c], diff[i, 0, c + a, c + b] = -1.0, 1.0
            parts.append(diff / math.sqrt(2.0))
    return torch.cat(parts)


def ramp_knots(sigma: float, n_bins: int, span: float) -> tuple[torch.Tensor, float]:
    """Knots `t_m` covering `[-span sigma, span sigma]` in `n_bins` bins, and the bin width."""
    width = 2.0 * span * sigma / n_bins
    return torch.arange(n_bins, dtype=torch.float64) * width - span * sigma, float(width)


def ramps(z: torch.Tensor, knots: torch.Tensor, width: float) -> torch.Tensor:
    """`r_m(z)` for every knot: `(..., M)` ramps of `z`, each a difference of two ReLUs."""
    t = knots.to(dtype=z.dtype, device=z.device)
    return (z[..., None] - t).clamp(0.0, width) - (-t).clamp(0.0, width)


def shrinkage_features(y: torch.Tensor, filters: torch.Tensor, knots: torch.Tensor,
                       width: float) -> torch.Tensor:
    """`C_j^T r_m(C_j y)` for every (j, m): `(B, J * M, H, W)`, float64 (FFT transposed conv).

    The feature maps are the columns of the QP's least-squares matrix: `N(y) = features @ c`.
    """
    k = filters.shape[-1]
    p, (h, w) = k // 2, y.shape[-2:]
    f = filters.to(torch.float64)
    z = F.conv2d(y.to(torch.float64), f, padding=p)                       # (B, J, H, W)
    r = ramps(z, knots, width).permute(0, 1, 4, 2, 3)                     # (B, J, M, H, W)
    size = (h + k - 1, w + k - 1)                      # linear (not circular) convolution
    spec = torch.fft.rfft2(r, s=size) * torch.fft.rfft2(f[:, 0], s=size)[None, :, None]
    out = torch.fft.irfft2(spec, s=size)[..., p:p + h, p:p + w]           # C_j^T r_m
    return out.reshape(y.shape[0], -1, h, w)


def frame_response(filters: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """`|C_j(omega)|^2` at frequencies `omega` `(G, 2)` (radians): `(G, J)`, float64."""
    k = filters.shape[-1]
    m = torch.arange(k, dtype=torch.float64)
    om = omega.to(torch.float64)
    e1 = torch.polar(torch.ones(om.shape[0], k, dtype=torch.float64), -om[:, :1] * m)  # (G, k)
    e2 = torch.polar(torch.ones(om.shape[0], k, dtype=torch.float64), -om[:, 1:] * m)
    f = filters.to(torch.complex128)[:, 0]                                          # (J, k, k)
    return torch.einsum("ga,jab,gb->gj", e1, f, e2).abs().pow(2)


def frequency_grid(grid: int) -> torch.Tensor:
    """The half M x (M/2 + 1) grid of `[0, 2 pi)^2` (real filters: |C(-w)| = |C(w)|), `(G, 2)`."""
    w = 2.0 * math.pi * torch.arange(grid, dtype=torch.float64) / grid
    w1, w2 = torch.meshgrid(w, w[: grid // 2 + 1], indexing="ij")
    return torch.stack([w1.reshape(-1), w2.reshape(-1)], 1)


def smoothness_kernel(filters: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """`sum_j L_j autocorr(C_j)`, `(2k-1, 2k-1)`: the coefficients of `sum_j L_j |C_j|^2`."""
    f = filters.to(torch.float64)
    k = f.shape[-1]
    auto = F.conv2d(f.transpose(0, 1), f, padding=k - 1, groups=f.shape[0])[0]   # (J, 2k-1, 2k-1)
    return (slopes.to(torch.float64)[:, None, None] * auto).sum(0)


def potential_smoothness_grid(filters: torch.Tensor, slopes: torch.Tensor,
                              grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sum_j L_j |C_j(omega)|^2` on `frequency_grid(grid)` (one FFT) and those frequencies."""
    kernel = smoothness_kernel(filters, slopes)
    return torch.fft.rfft2(kernel, s=(grid, grid)).abs().reshape(-1), frequency_grid(grid)


def potential_smoothness_bound(filters: torch.Tensor, slopes: torch.Tensor,
                               grid: int = 2048) -> float:
    """Certified `S >= sup_omega p(omega)`, `p = sum_j L_j |C_j(omega)|^2` (F), for `L_j >= 0`.

    p is a real cosine polynomial of degree n = k - 1 per axis with coefficients
    `smoothness_kernel`. On an M x M grid (spacing h = 2 pi / M) every frequency lies within
    h/2 per axis of a grid point g, and Taylor's theorem with Bernstein's inequality for the
    second derivatives (`|d_a d_b p| <= n^2 S`) gives
    `p(omega) <= p(g) + (|d_1 p(g)| + |d_2 p(g)|) h/2 + 2 n^2 (h/2)^2 S`, hence
    `S <= max_g [p(g) + (|d_1 p(g)| + |d_2 p(g)|) h/2] / (1 - 2 n^2 (h/2)^2)`.
    """
    if torch.any(slopes < 0):
        raise ValueError("slopes: expected L_j >= 0")
    kernel = smoothness_kernel(filters, slopes)
    n = filters.shape[-1] - 1
    half = math.pi / grid
    slack = 1.0 - 2.0 * n * n * half * half
    if slack <= 0.5:
        raise ValueError(f"grid: expected M >= {math.ceil(2 * math.pi * n)}, got {grid}")
    tau = torch.arange(-n, n + 1, dtype=torch.float64)
    w = 2.0 * math.pi * torch.arange(grid, dtype=torch.float64) / grid
    phase = torch.polar(torch.ones(grid, dtype=torch.float64), n * w)    # undo the offset n

    def dtft(coef: torch.Tensor) -> torch.Tensor:        # sum_tau coef(tau) e^{-i omega tau}
        spec = torch.fft.fft2(coef, s=(grid, grid))
        return (spec * phase[:, None] * phase[None, :]).real

    p = dtft(kernel)
    # d p / d omega_a = sum (-i tau_a) r e^{-i omega tau}: modulus of the transform of tau_a r
    d1 = torch.fft.fft2(kernel * tau[:, None], s=(grid, grid)).abs()
    d2 = torch.fft.fft2(kernel * tau[None, :], s=(grid, grid)).abs()
    return float((p + (d1 + d2) * half).max()) / slack


def shrinkage_residual(x: torch.Tensor, filters: torch.Tensor, knots: torch.Tensor, width: float,
                       slopes: torch.Tensor) -> torch.Tensor:
    """`sum_j C_j^T psi_j(C_j x)` with `psi_j(z) = sum_m c_jm r_m(z)` (slopes `c` `(J, M)` of any
    sign), in `x`'s dtype. `psi_j` is evaluated as the piecewise-linear function it is: on bin m
    it equals its value at the bin's start plus `c_jm (z - t_m)` (one table lookup, not M
    ramps), so memory stays at one `(B, J, H, W)` map."""
    f = filters.to(x.dtype)
    p, n_bins = f.shape[-1] // 2, knots.numel()
    c = slopes.to(x.dtype)
    base = (c * (-knots.to(x.dtype)).clamp(0.0, width)).sum(1, keepdim=True)
    start = (torch.cumsum(c, 1) - c) * width - base                     # psi_j(t_m), (J, M)
    z = F.conv2d(x, f, padding=p)                                        # (B, J, H, W)
    t0 = float(knots[0])
    idx = torch.floor((z.detach() - t0) / width).clamp(0, n_bins - 1).long()
    frac = (z - t0 - idx.to(x.dtype) * width).clamp(0.0, width)
    flat = idx + n_bins * torch.arange(c.shape[0], device=x.device).view(1, -1, 1, 1)
    psi = start.reshape(-1)[flat] + c.reshape(-1)[flat] * frac
    return F.conv_transpose2d(psi, f, padding=p)


class ShrinkageNetwork(Denoiser):
    """`J(x) = x - sum_j C_j^T psi_j(C_j x)` (module docstring) with its certificate.

    filters `(J, 1, k, k)`, knots `(M,)`, bin width, slopes `c` `(J, M) >= 0`; float64 storage.
    `lipschitz_certificate` is `max(1, 2 S - 1)` with S certified by (F): <= 1 exactly when J
    is certified firmly nonexpansive.
    """

    def __init__(self, filters: torch.Tensor, knots: torch.Tensor, width: float,
                 slopes: torch.Tensor, grid: int = 2048) -> None:
        super().__init__()
        filters, knots, slopes = (torch.as_tensor(t, dtype=torch.float64)
                                  for t in (filters, knots, slopes))
        if filters.ndim != 4 or filters.shape[1] != 1 or filters.shape[-1] != filters.shape[-2] \
                or filters.shape[-1] % 2 == 0:
            raise ValueError(f"filters: expected (J, 1, k, k) with k odd, got "
                             f"{tuple(filters.shape)}")
        if slopes.shape != (filters.shape[0], knots.numel()):
            raise ValueError(f"slopes: expected (J, M) = ({filters.shape[0]}, {knots.numel()}), "
                             f"got {tuple(slopes.shape)}")
        if not (width > 0 and math.isfinite(width)) or torch.any(slopes < 0) \
                or not torch.isfinite(slopes).all():
            raise ValueError("expected a positive bin width and finite slopes c >= 0 (psi_j "
                             "nondecreasing: N is the gradient of a convex potential)")
        steps = knots.reshape(-1).diff()
        if steps.numel() and not torch.allclose(steps, torch.full_like(steps, float(width)),
                                                rtol=1e-9, atol=0.0):
            raise ValueError(f"knots: expected equally spaced knots, width {width} apart "
                             f"(ramp_knots), got spacings {steps.tolist()[:4]}...")
        self.register_buffer("filters", filters)
        self.register_buffer("knots", knots.reshape(-1))
        self.register_buffer("slopes", slopes)
        self.width = float(width)
        self.smoothness = potential_smoothness_bound(filters, slopes.amax(1), grid)

    @property
    def lipschitz_certificate(self) -> float:
        return max(1.0, 2.0 * self.smoothness - 1.0)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """`N(x) = sum_j C_j^T psi_j(C_j x)`, the gradient of the convex potential."""
        return shrinkage_residual(x, self.filters, self.knots, self.width, self.slopes)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """`Phi(x) = sum_j sum_pixels phi_j((C_j x)_p)` per image `(B,)`: the convex potential
        whose gradient is `N = x - J(x)` (`phi_j(z) = sum_m c_jm R_m(z)`, `R_m' = r_m`,
        `R_m(0) = 0`). `J` is then the gradient of the convex `|x|^2 / 2 - Phi(x)` (S <= 1),
        i.e. a proximal operator, and RED with this J is gradient descent on `data + lam Phi`.
        """
        self.check_input(x, 1)
        xc = self.compute_as(x, self.filters)
        f = self.filters.to(xc.dtype)
        z = F.conv2d(xc, f, padding=f.shape[-1] // 2)                   # (B, J, H, W)
        w = self.width

        def integral(u: torch.Tensor) -> torch.Tensor:    # int_{-inf}^u clip(s, 0, w) ds
            return 0.5 * u.clamp(0.0, w) ** 2 + w * (u - w).clamp_min(0.0)

        total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for m, t in enumerate(self.knots.tolist()):       # R_m(z) = Q(z - t) - Q(-t) - z r0
            q0 = 0.5 * min(max(-t, 0.0), w) ** 2 + w * max(-t - w, 0.0)         # Q(-t)
            r_m = integral(z - t) - q0 - z * min(max(-t, 0.0), w)
            total = total + (self.slopes[:, m].to(z.dtype).view(1, -1, 1, 1) * r_m).sum((1, 2, 3))
        return total.to(x.dtype)

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        self.check_input(x, 1)
        xc = self.compute_as(x, self.filters)
        return self.return_as(xc - self.residual(xc), x)
