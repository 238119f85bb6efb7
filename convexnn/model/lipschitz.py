"""Certified Lipschitz bounds of the primal network rebuilt from a dual solution (eq. 5).

For `Q(x) = sum_j alpha_j relu(conv(x, u_j))` the Jacobian is
`sum_j alpha_j diag(1[conv(x, u_j) > 0]) C_{u_j}`, so with `alpha_j u_j = v_j` (or `-w_j`)

    Lip(Q) <= sum_i ||C_{v_i}|| + ||C_{w_i}||,                                   (*)

a convex function of the dual variables. `||C_v||`, the norm of the 'same' zero-padded
convolution, is at most `sup_omega ||V(omega)||_2` (V the 2-D DTFT of the kernel, a vector over
input channels): the padded operator is a compression of the bi-infinite convolution.
On an M x M frequency grid, Bernstein's inequality for trigonometric polynomials of degree
`n = (k - 1) / 2` per axis gives `sup ||V|| <= max_grid ||V|| / (1 - 2 pi n / M)`, which makes
the grid value a certificate, not an estimate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["conv_norm_bound", "conv_norm_grid", "dual_lipschitz_bound", "dtft_matrices",
           "bernstein_factor"]


def bernstein_factor(kernel_size: int, grid: int) -> float:
    """`1 / (1 - 2 pi n / M)` with `n = (k - 1) / 2`: grid maximum -> certified supremum."""
    n = (kernel_size - 1) / 2
    slack = 1.0 - 2.0 * math.pi * n / grid
    if slack <= 0:
        raise ValueError(f"grid: expected M > 2 pi (k - 1) / 2 = {2 * math.pi * n:.1f}, got {grid}")
    return 1.0 / slack


def conv_norm_grid(filters: torch.Tensor, grid: int = 512, block: int = 32) -> torch.Tensor:
    """`max_omega ||V(omega)||_2` over an M x M grid for filters `(P, C, k, k)`: a lower estimate
    of each convolution's operator norm. Streams `block` filters at a time (memory
    `block * C * M * (M/2 + 1)` complex numbers; real kernels need only half the spectrum)."""
    f = filters.detach().to(torch.float64)
    out = []
    for p0 in range(0, f.shape[0], block):
        spec = torch.fft.rfft2(f[p0:p0 + block], s=(grid, grid))     # (b, C, M, M/2 + 1)
        out.append(spec.abs().pow(2).sum(1).sqrt().flatten(1).max(1).values)
    return torch.cat(out) if out else f.new_zeros(0)


def conv_norm_bound(filters: torch.Tensor, grid: int = 512) -> torch.Tensor:
    """Certified upper bound of `||C_f||` for each filter `(P, C, k, k)` (Bernstein, above)."""
    return conv_norm_grid(filters, grid) * bernstein_factor(filters.shape[-1], grid)


def dual_lipschitz_bound(v: torch.Tensor, w: torch.Tensor, grid: int = 512) -> float:
    """Certificate (*) of the primal rebuilt from dual filters `v, w` `(P, C, k, k)`."""
    return float(conv_norm_bound(v, grid).sum() + conv_norm_bound(w, grid).sum())


def dtft_matrices(kernel_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary DTFT rows `(G, k^2)` on the half grid (real kernels: |V(-w)| = |V(w)|).

    Row g applied to a flattened k x k kernel gives Re / Im of `sum_m f[m] exp(-i omega_g . m)`.
    """
    r = kernel_size // 2
    m1, m2 = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    w = 2.0 * np.pi * np.arange(grid) / grid
    w1, w2 = np.meshgrid(w, w[: grid // 2 + 1], indexing="ij")  # half plane in the 2nd axis
    phase = w1.reshape(-1, 1) * m1.reshape(1, -1) + w2.reshape(-1, 1) * m2.reshape(1, -1)
    return np.cos(phase), -np.sin(phase)
