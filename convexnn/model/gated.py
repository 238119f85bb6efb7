"""The gated dual network and its constraint residuals, streamed over blocks of patterns.

Prediction (eq. 4, and eq. 8 pixel-wise): `sum_i D_i(x) * conv(x, f_i)` with
`D_i(x) = 1[conv(x, g_i) >= 0]` and `f_i = v_i - w_i`. Constraint of eq. 4:
`(2 D_i(x) - 1) * conv(x, v_i) >= 0`; its hinge violation is `relu(-(2 D_i - 1) conv(x, v_i))`.
Neither ever materialises more than `block_patterns` pattern maps at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convexnn.model.patches import conv_same

__all__ = ["gated_predict", "HingeViolation", "hinge_violation"]


def gated_predict(x: torch.Tensor, generators: torch.Tensor, filters: torch.Tensor,
                  block_patterns: int = 512) -> torch.Tensor:
    """`(n, 1, H, W)`: `sum_i 1[conv(x, g_i) >= 0] conv(x, f_i)`; differentiable in x and f."""
    out = x.new_zeros((x.shape[0], 1, x.shape[2], x.shape[3]))
    g_all = generators.to(device=x.device, dtype=x.dtype)
    f_all = filters.to(device=x.device, dtype=x.dtype)
    for p0 in range(0, g_all.shape[0], block_patterns):
        g = g_all[p0:p0 + block_patterns]
        f = f_all[p0:p0 + block_patterns]
        both = conv_same(x, torch.cat([g, f], 0))
        gate, lin = both[:, :g.shape[0]], both[:, g.shape[0]:]
        out = out + (lin * (gate >= 0)).sum(1, keepdim=True)
    return out


@dataclass(frozen=True)
class HingeViolation:
    """Violation of the cone constraints of eq. 4 on a data set.

    `max` and `total` are the largest and summed hinge residuals
    `relu(-(2 D_i - 1) conv(x, u_i))` over u in {v, w}; `relative` divides `max` by the
    largest `|conv(x, u_i)|`, so it does not depend on the scale of the data.
    """

    max: float
    total: float
    relative: float


def hinge_violation(x: torch.Tensor, generators: torch.Tensor, v: torch.Tensor,
                    w: torch.Tensor, block_patterns: int = 512,
                    block_elements: int = 2 ** 25) -> HingeViolation:
    vmax, total, scale = 0.0, 0.0, 0.0
    g_all = generators.to(device=x.device, dtype=x.dtype)
    v_all = v.to(device=x.device, dtype=x.dtype)
    w_all = w.to(device=x.device, dtype=x.dtype)
    per_image = 3 * min(block_patterns, max(g_all.shape[0], 1)) * x.shape[2] * x.shape[3]
    nb = max(1, block_elements // per_image)           # images per pass: bounded temporaries
    with torch.no_grad():
        for p0, i0 in ((p, i) for p in range(0, g_all.shape[0], block_patterns)
                       for i in range(0, x.shape[0], nb)):
            g = g_all[p0:p0 + block_patterns]
            pb = g.shape[0]
            maps = conv_same(x[i0:i0 + nb],
                             torch.cat([g, v_all[p0:p0 + pb], w_all[p0:p0 + pb]], 0))
            sign = 2.0 * (maps[:, :pb] >= 0).to(x.dtype) - 1.0
            lin = maps[:, pb:]
            viol = torch.relu(-sign.repeat(1, 2, 1, 1) * lin)
            vmax = max(vmax, float(viol.max()))
            total += float(viol.sum())
            scale = max(scale, float(lin.abs().max()))
    return HingeViolation(vmax, total, vmax / scale if scale > 0 else 0.0)
