"""Direction networks ``G(u, f, grad E(u); theta)`` (eq. 3) and their backbones.

``DirectionNetwork(backbone, projection)`` concatenates ``[u, data, grad_scale * g]`` along the
channel axis (``data = energy.data_image(u)``, e.g. the nearest upsampling of the low-resolution
image), runs the backbone and feeds its output to the projection layer (eq. 21 or eq. 22).
``projection=None`` is the baseline: the same backbone without the guarantee.
``normalize_grad=True`` feeds ``grad_scale * g / rms(g)`` instead (the gradient's direction at a
fixed size; for ill-conditioned operators such as CT, where ``g / L`` shrinks by orders of
magnitude along the iterations and the backbone would otherwise stop seeing it).

Backbones (all map ``(B, C_in, H, W) -> (B, C_out, H, W)``):
- ``PaperDnCNN``: the paper's net (Sec. 5.1, after Zhang et al.): 20 blocks of 3x3 conv with 64
  channels, batch norm and ReLU, then a 3x3 conv to the output channels;
- ``SmallConvNet``: a CPU-friendly conv-ReLU stack (depth 5, 32 channels by default);
- ``MLP``: for vectors ``(B, n)`` (the 2-D toy);
- ``SetNet``: per-cell 1x1 convs plus row / column / 3x3-box means (Sudoku grids, Sec. 5.4);
- ``ConvexDenoiserDirection``: ``z = a (u - J(u - tau g)) + b g`` with a learned convex dual
  denoiser ``J`` (``convexnn.ConvexDualDenoiser``) and two learned scalars.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..denoisers import call_denoiser
from ..energies import Energy
from .projection import GRAD_NORM_FLOOR, HalfSpaceProjection, TwoSidedProjection

__all__ = ["DirectionNetwork", "PaperDnCNN", "SmallConvNet", "MLP", "SetNet",
           "ConvexDenoiserDirection", "GradientDirection"]


class PaperDnCNN(nn.Module):
    """20 blocks of [3x3 conv (64 ch), BN, ReLU] (the first without BN) and a final 3x3 conv
    (Sec. 5.1; 17 blocks for CT, Sec. 5.2)."""

    def __init__(self, in_channels: int, out_channels: int = 1, blocks: int = 20,
                 channels: int = 64) -> None:
        super().__init__()
        if blocks < 1 or channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"PaperDnCNN: expected positive sizes, got in_channels="
                             f"{in_channels}, out_channels={out_channels}, blocks={blocks}, "
                             f"channels={channels}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU()]
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallConvNet(nn.Module):
    """conv-ReLU x (depth - 1), conv: a small CPU-friendly backbone."""

    def __init__(self, in_channels: int, out_channels: int = 1, depth: int = 5,
                 channels: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        if depth < 2 or channels < 1 or kernel_size % 2 != 1:
            raise ValueError(f"SmallConvNet: expected depth >= 2, channels >= 1 and an odd "
                             f"kernel, got depth={depth}, channels={channels}, "
                             f"kernel_size={kernel_size}")
        p = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, kernel_size, padding=p),
                                   nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, kernel_size, padding=p), nn.ReLU()]
        layers.append(nn.Conv2d(channels, out_channels, kernel_size, padding=p))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Fully connected ReLU net for vector problems ``(B, n)``."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64,
                 depth: int = 3) -> None:
        super().__init__()
        dims = [in_features] + [hidden] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _SetBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, h: Tensor) -> Tensor:
        b, c, n, _ = h.shape
        row = h.mean(dim=3, keepdim=True).expand_as(h)
        col = h.mean(dim=2, keepdim=True).expand_as(h)
        k = int(round(n ** 0.5))
        box = nn.functional.avg_pool2d(h, k)
        box = nn.functional.interpolate(box, scale_factor=k, mode="nearest")
        return torch.relu(sum(m(x) for m, x in zip(self.mix, (h, row, col, box), strict=True))) + h


class SetNet(nn.Module):
    """Sudoku backbone: 1x1 conv in, ``depth`` blocks mixing each cell with the means of its
    row, column and 3x3 box (the sets of the feasibility problem), 1x1 conv out."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 6,
                 channels: int = 64) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, channels, 1)
        self.blocks = nn.Sequential(*[_SetBlock(channels) for _ in range(depth)])
        self.out = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(torch.relu(self.inp(x))))


class ConvexDenoiserDirection(nn.Module):
    """``z = a (u - J(u - tau g)) + b g``: a forward-backward direction through a fitted
    denoiser ``J`` (e.g. ``convexnn.ConvexDualDenoiser``), ``a, b`` learned scalars. Takes the
    raw ``(u, data, g)`` triple, so ``DirectionNetwork(..., raw_inputs=True)`` wraps it."""

    def __init__(self, denoiser, tau: float = 1.0, sigma=None, train_denoiser: bool = False
                 ) -> None:
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"ConvexDenoiserDirection: expected a denoiser(x, sigma=None), got "
                            f"{type(denoiser).__name__}")
        self.denoiser = denoiser
        if isinstance(denoiser, nn.Module) and not train_denoiser:
            for p in denoiser.parameters():
                p.requires_grad_(False)
        self.tau, self.sigma = float(tau), sigma
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, u: Tensor, data: Tensor | None, g: Tensor) -> Tensor:
        j = call_denoiser(self.denoiser, (u - self.tau * g).to(self._dtype(u)), self.sigma)
        return self.a.to(u.dtype) * (u - j.to(u.dtype)) + self.b.to(u.dtype) * g

    def _dtype(self, u: Tensor) -> torch.dtype:
        for p in getattr(self.denoiser, "parameters", lambda: iter(()))():
            return p.dtype
        for b in getattr(self.denoiser, "buffers", lambda: iter(()))():
            if b.is_floating_point():
                return b.dtype
        return u.dtype


class GradientDirection(nn.Module):
    """``d = scale * g``: plain gradient descent as a direction (``scale = 1/L`` gives the
    step ``1/L`` with Algorithm 1's first trial step ``tau = 1``)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                math.isfinite(scale) and scale > 0):
            raise ValueError(f"GradientDirection: scale: expected a finite number > 0, got "
                             f"{scale!r}")
        self.scale = float(scale)

    def direction(self, u: Tensor, g: Tensor, energy: Energy) -> Tensor:
        return self.scale * g

    def forward(self, u: Tensor, g: Tensor, data: Tensor | None = None) -> Tensor:
        return self.scale * g


class DirectionNetwork(nn.Module):
    """``d = Proj(backbone([u, data, grad_scale g]), g)``: eq. 3 with the last layer eq. 21/22.

    ``projection``: ``HalfSpaceProjection``, ``TwoSidedProjection`` or None (baseline without
    guarantee). ``use_data``: whether ``energy.data_image(u)`` is an input. ``raw_inputs``: the
    backbone is called ``backbone(u, data, g)`` instead of on the concatenation
    (``ConvexDenoiserDirection``). The network works in the backbone's dtype and returns ``d``
    in the dtype of ``u``. ``data_skip=True`` adds ``u - data`` to the backbone output (the
    backbone learns a correction of the step to the data image, e.g. to the nearest
    upsampling in super-resolution; residual learning as in DnCNN/VDSR).
    ``normalize_grad=True`` feeds the gradient channel as ``grad_scale * g / rms(g)``, per
    sample, with ``rms(g) = max(||g||, 1e-6) / sqrt(numel)`` (the floor of Sec. 4.1), in place
    of ``grad_scale * g``: the input then shows where the energy decreases at the same size at
    every iterate. With an ill-conditioned operator (sparse-angle CT) ``||g|| / L`` drops by two
    orders of magnitude within a few iterations, and a backbone fed ``g / L`` beside ``u`` and
    the data image in effect ignores it (see docs/energy_dissipation.md, CT). Only the input
    changes: the projection layer still acts on the raw ``g``, so the guarantee is the same.
    """

    def __init__(self, backbone: nn.Module,
                 projection: HalfSpaceProjection | TwoSidedProjection | None,
                 grad_scale: float = 1.0, use_data: bool = True, raw_inputs: bool = False,
                 data_skip: bool = False, normalize_grad: bool = False) -> None:
        super().__init__()
        if projection is not None and not isinstance(projection, (HalfSpaceProjection,
                                                                  TwoSidedProjection)):
            raise TypeError(f"DirectionNetwork: projection: expected HalfSpaceProjection, "
                            f"TwoSidedProjection or None, got {type(projection).__name__}")
        self.backbone, self.projection = backbone, projection
        self.grad_scale, self.use_data, self.raw_inputs = float(grad_scale), use_data, raw_inputs
        self.data_skip = bool(data_skip)
        self.normalize_grad = bool(normalize_grad)
        if self.normalize_grad and raw_inputs:
            raise ValueError("DirectionNetwork: normalize_grad=True acts on the concatenated "
                             "input; it does not apply with raw_inputs=True")
        if self.data_skip and not use_data:
            raise ValueError("DirectionNetwork: data_skip=True needs use_data=True")

    @property
    def guaranteed(self) -> bool:
        """Whether the output is provably a descent direction (a projection layer is present)."""
        return self.projection is not None

    def _dtype(self, u: Tensor) -> torch.dtype:
        for p in self.backbone.parameters():
            if p.is_floating_point():
                return p.dtype
        return u.dtype

    def grad_input(self, g: Tensor) -> Tensor:
        """The gradient channel fed to the backbone: ``grad_scale * g``, or with
        ``normalize_grad`` ``grad_scale * g / rms(g)`` per sample."""
        if not self.normalize_grad:
            return g * self.grad_scale
        numel = g[0].numel()
        gn = g.flatten(1).norm(dim=1).clamp_min(GRAD_NORM_FLOOR)
        return g * (self.grad_scale * numel**0.5 / gn).view(-1, *([1] * (g.ndim - 1)))

    def raw(self, u: Tensor, g: Tensor, data: Tensor | None = None) -> Tensor:
        """The backbone output ``z`` before the projection."""
        if self.raw_inputs:
            z = self.backbone(u, data, g)
        else:
            dt = self._dtype(u)
            parts = [u, self.grad_input(g)]
            if self.use_data:
                if data is None:
                    raise ValueError("DirectionNetwork: use_data=True but the energy provides "
                                     "no data image (energy.data_image(u) is None)")
                parts.insert(1, data)
            z = self.backbone(torch.cat([p.to(dt) for p in parts], dim=1))
            if self.data_skip:
                z = z + (u - data).to(z.dtype)
        if z.shape != u.shape:
            raise ValueError(f"DirectionNetwork: the backbone returned {tuple(z.shape)}, "
                             f"expected the shape of u {tuple(u.shape)}")
        return z.to(u.dtype)

    def forward(self, u: Tensor, g: Tensor, data: Tensor | None = None) -> Tensor:
        z = self.raw(u, g, data)
        return z if self.projection is None else self.projection(z, g)

    def direction(self, u: Tensor, g: Tensor, energy: Energy) -> Tensor:
        """``G(u, f, grad E(u); theta)`` with the data taken from ``energy``."""
        data = energy.data_image(u) if (self.use_data or self.raw_inputs) else None
        return self(u, g, data)
