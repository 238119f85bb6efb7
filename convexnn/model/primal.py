"""The primal two-layer convolutional ReLU denoiser of paper eq. 1-2."""

from __future__ import annotations

import math

import torch
from torch import nn

from convexnn.model.denoiser import Denoiser
from convexnn.model.losses import Loss, check_reduction
from convexnn.model.validation import (
    as_images,
    as_targets,
    check_int,
    check_kernel_size,
    check_positive,
)

__all__ = ["TwoLayerConvDenoiser"]


class TwoLayerConvDenoiser(Denoiser):
    """`f(x) = sum_j (x * u_j)_+ alpha_j` (+ x if residual), eq. 1; Corollary 1.1 for residual.

    First layer: conv `C -> m`, k x k, stride 1, 'same' zero padding, no bias; ReLU; second
    layer: conv `m -> 1`, 1 x 1, no bias. Kaiming-uniform initialisation (paper App. B).
    Called as `denoiser(x, sigma=None)` on `(B, C, H, W)` like every convexnn/deepinv denoiser.
    """

    def __init__(self, in_channels: int = 1, n_filters: int = 512, kernel_size: int = 3,
                 residual: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kernel_size = check_kernel_size(kernel_size)
        in_channels = check_int(in_channels, "in_channels")
        n_filters = check_int(n_filters, "n_filters")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype: expected None or a floating torch.dtype, got {dtype!r}")
        if residual and in_channels != 1:
            raise ValueError(f"residual=True adds the input to a one-channel output, so it "
                             f"needs in_channels == 1, got {in_channels}")
        self.in_channels = in_channels
        self.n_filters = n_filters
        self.kernel_size = kernel_size
        self.residual = bool(residual)
        self.conv1 = nn.Conv2d(in_channels, n_filters, kernel_size, padding=kernel_size // 2,
                               bias=False, dtype=dtype)
        self.conv2 = nn.Conv2d(n_filters, 1, 1, bias=False, dtype=dtype)
        nn.init.kaiming_uniform_(self.conv1.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.conv2.weight, a=math.sqrt(5))

    @classmethod
    def from_weights(cls, first: torch.Tensor, second: torch.Tensor,
                     residual: bool = False) -> TwoLayerConvDenoiser:
        """Build from first-layer filters `(m, C, k, k)` and second-layer weights `(m,)`."""
        if first.ndim != 4 or second.ndim != 1 or first.shape[0] != second.shape[0]:
            raise ValueError(f"expected first (m, C, k, k) and second (m,), got "
                             f"{tuple(first.shape)} and {tuple(second.shape)}")
        net = cls(first.shape[1], first.shape[0], first.shape[-1], residual, dtype=first.dtype)
        with torch.no_grad():
            net.conv1.weight.copy_(first)
            net.conv2.weight.copy_(second.reshape(1, -1, 1, 1))
        return net

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """eq. 1 on `(B, C, H, W)`, computed in the weights' dtype/device, returned in x's."""
        self.check_input(x, self.in_channels)
        xc = self.compute_as(x, self.conv1.weight)
        out = self.conv2(torch.relu(self.conv1(xc)))
        if self.residual:
            out = out + xc
        return self.return_as(out, x)

    def dual_point(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This network as a point of eq. 4: `(generators, v, w)`, each `(m, C, k, k)` float64.

        Neuron j gives the generator `u_j` (its pattern `D_j = 1[Yp u_j >= 0]`) and
        `v_j = max(alpha_j, 0) u_j`, `w_j = max(-alpha_j, 0) u_j`, so `D_j Yp (v_j - w_j) =
        (Yp u_j)_+ alpha_j`: the same predictions, every cone constraint of eq. 4 holds exactly
        (`(2 D_j - I) Yp u_j >= 0`), and the group norms sum to `sum_j |alpha_j| ||u_j||`, at
        most the eq. 2 weight decay `1/2 sum_j (||u_j||^2 + alpha_j^2)` (equal when the layers
        are balanced). Use it to seed the dual with this network's patterns (`generators=`,
        `dedupe=False`, and `warm_start=(v, w)`).
        """
        with torch.no_grad():
            u = self.conv1.weight.detach().to("cpu", torch.float64).clone()
            alpha = self.conv2.weight.detach().to("cpu", torch.float64).reshape(-1, 1, 1, 1)
        return u, alpha.clamp_min(0) * u, (-alpha).clamp_min(0) * u

    def weight_decay(self) -> torch.Tensor:
        """`||U||_F^2 + ||alpha||^2` (the bracket of eq. 2)."""
        return self.conv1.weight.pow(2).sum() + self.conv2.weight.pow(2).sum()

    def weight_decay_value(self) -> float:
        """`weight_decay()` summed in float64 (no overflow of float32 weights), as a float."""
        with torch.no_grad():
            return float(sum(p.detach().double().pow(2).sum()
                             for p in (self.conv1.weight, self.conv2.weight)))

    def objective(self, noisy, clean, beta: float, reduction: str = "sum",
                  loss: str | Loss = "squared") -> float:
        """Eq. 2: `l(f(noisy), clean) + beta/2 (||U||_F^2 + ||alpha||^2)`, as a float."""
        beta = check_positive(beta, "beta")
        loss = loss if isinstance(loss, Loss) else Loss(loss)
        p = self.conv1.weight
        x = as_images(noisy, "noisy", dtype=p.dtype, device=p.device)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"noisy: expected {self.in_channels} channel(s), got {x.shape[1]}")
        y = as_targets(clean, x)
        reduction = check_reduction(reduction)
        # images per chunk so that the hidden layer (m x H x W per image) stays near 64 Mi
        # values: at paper scale (16,000 rebuilt filters x 600 images) one pass would be 30 GB
        per_image = max(1, self.conv1.out_channels * x.shape[2] * x.shape[3])
        chunk = max(1, (1 << 26) // per_image)
        data = 0.0
        with torch.no_grad():
            for i0 in range(0, x.shape[0], chunk):   # summed in float64: no float32 overflow
                data += float(loss(self(x[i0:i0 + chunk]).double(), y[i0:i0 + chunk].double(),
                                   "sum"))
            if reduction == "mean":
                data /= y.numel()
            value = data + 0.5 * beta * self.weight_decay_value()
        return float(value)
