"""A content-adaptive filter stage: one linear filter per structure class of the estimate.

    z' = z + W_b(p) [ P_p(z) ; P_p(y - z) ; 1 ],        b(p) = class of pixel p (hash of z)

`P_p(u)` is the k x k patch of `u` around pixel p (reflect padding), `y` the noisy input, `z`
the previous estimate, and `b(p)` a class of the local structure tensor of `z` (a Gaussian
window of std 1.5 over central-difference gradients): its orientation on `n_angles` bins of
[-pi/2, pi/2), its strength `sqrt(lambda_1)` and coherence
`(sqrt lambda_1 - sqrt lambda_2) / (sqrt lambda_1 + sqrt lambda_2)` on quantile thresholds
fitted on the training estimates. That is the hashing of RAISR (Romano, Isidoro and Milanfar,
IEEE TCI 2017), used here as a denoising stage.

The classes play the part of the core paper's sign patterns: with the gates `1[b(p) = b]`
fixed by `z`, the stage is the gated two-layer network `sum_b D_b X u_b` of eq. 4 with
disjoint patterns, linear in its weights, so given the stages before it, training is an exact
least-squares problem that splits into one small system per class
(`convexnn.cascade.fit_adaptive_stage`). The gates depend on `z` only, never on the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveFilterStage", "structure_classes", "structure_tensor", "patch_features"]

WINDOW_STD = 1.5
WINDOW = 7


def _window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.arange(WINDOW, dtype=dtype, device=device) - WINDOW // 2
    g = torch.exp(-t ** 2 / (2 * WINDOW_STD ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, WINDOW, WINDOW)


def structure_tensor(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orientation in [-pi/2, pi/2], strength and coherence of the local structure tensor of
    `z` `(B, 1, H, W)`, each `(B, H, W)` (module docstring)."""
    zp = F.pad(z, (1, 1, 1, 1), mode="replicate")
    gx = (zp[..., 1:-1, 2:] - zp[..., 1:-1, :-2]) / 2
    gy = (zp[..., 2:, 1:-1] - zp[..., :-2, 1:-1]) / 2
    t = torch.cat([gx * gx, gx * gy, gy * gy], 1)
    h = WINDOW // 2
    t = F.conv2d(F.pad(t, (h, h, h, h), mode="replicate"), _window(z.dtype, z.device), groups=3)
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    disc = torch.sqrt((a - c) ** 2 + 4 * b * b)
    s1 = ((a + c + disc) / 2).clamp_min(0).sqrt()
    s2 = ((a + c - disc) / 2).clamp_min(0).sqrt()
    angle = 0.5 * torch.atan2(2 * b, a - c)
    return angle, s1, (s1 - s2) / (s1 + s2 + 1e-12)


def structure_classes(z: torch.Tensor, n_angles: int, strength_thresholds: torch.Tensor,
                      coherence_thresholds: torch.Tensor) -> torch.Tensor:
    """The class `b(p)` of every pixel, `(B, H, W)` int64 in `[0, n_angles * S * C)` with S, C
    one more than the number of thresholds."""
    angle, strength, coherence = structure_tensor(z)
    ia = torch.floor((angle + math.pi / 2) / math.pi * n_angles).long().clamp(0, n_angles - 1)
    n_s, n_c = strength_thresholds.numel() + 1, coherence_thresholds.numel() + 1
    i_s = torch.bucketize(strength, strength_thresholds.to(z))
    i_c = torch.bucketize(coherence, coherence_thresholds.to(z))
    return (ia * n_s + i_s) * n_c + i_c


def patch_features(z: torch.Tensor, y: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`[P_p(z); P_p(y - z); 1]` for every pixel: `(B * H * W, 2 k^2 + 1)`."""
    h = patch_size // 2
    fz = F.unfold(F.pad(z, (h,) * 4, mode="reflect"), patch_size)
    fy = F.unfold(F.pad(y - z, (h,) * 4, mode="reflect"), patch_size)
    feats = torch.cat([fz, fy, torch.ones_like(fz[:, :1])], 1)
    return feats.permute(0, 2, 1).reshape(-1, feats.shape[1])


class AdaptiveFilterStage(nn.Module):
    """`z + W_b(p) [P_p(z); P_p(y - z); 1]` (module docstring); float64 storage.

    weights `(n_classes, 2 k^2 + 1)`, n_angles, the strength and coherence thresholds (sorted,
    1-d). Called as `stage(z, y)` on `(B, 1, H, W)` like `CascadeStage`."""

    def __init__(self, weights: torch.Tensor, n_angles: int, strength_thresholds: torch.Tensor,
                 coherence_thresholds: torch.Tensor) -> None:
        super().__init__()
        weights, s_thr, c_thr = (torch.as_tensor(t, dtype=torch.float64).clone().reshape(shape)
                                 for t, shape in ((weights, weights.shape),
                                                  (strength_thresholds, -1),
                                                  (coherence_thresholds, -1)))
        n_classes = int(n_angles) * (s_thr.numel() + 1) * (c_thr.numel() + 1)
        if n_angles < 1 or weights.ndim != 2 or weights.shape[0] != n_classes:
            raise ValueError(f"weights: expected (n_angles * strengths * coherences, 2 k^2 + 1)"
                             f" = ({n_classes}, .), got {tuple(weights.shape)}")
        k = math.isqrt((weights.shape[1] - 1) // 2)
        if 2 * k * k + 1 != weights.shape[1] or k % 2 == 0:
            raise ValueError(f"weights: expected 2 k^2 + 1 columns with k odd, got "
                             f"{weights.shape[1]}")
        if not torch.isfinite(weights).all() or (s_thr.diff() < 0).any() \
                or (c_thr.diff() < 0).any():
            raise ValueError("expected finite weights and sorted thresholds")
        self.register_buffer("weights", weights)
        self.register_buffer("strength_thresholds", s_thr)
        self.register_buffer("coherence_thresholds", c_thr)
        self.n_angles, self.patch_size = int(n_angles), k

    @property
    def n_classes(self) -> int:
        return self.weights.shape[0]

    def classes(self, z: torch.Tensor) -> torch.Tensor:
        return structure_classes(z, self.n_angles, self.strength_thresholds,
                                 self.coherence_thresholds)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = patch_features(z, y, self.patch_size)
        w = self.weights.to(z)[self.classes(z).reshape(-1)]
        return z + (w * feats).sum(1).view_as(z)
