"""Lipschitz tools for denoisers (Pesquet, Repetti, Terris, Wiaux 2021).

- `jacobian_spectral_norm(d, x, mode="J"|"Q")`: `||grad J(x)||_2` or `||grad Q(x)||_2` with
  `Q = 2J - I`, by power iteration on `Jac^T Jac` through autograd: `Jac^T u` is one vjp,
  `Jac v` the "double backward trick" (differentiate the vjp `w -> Jac^T w` in w).
- `firm_nonexpansiveness_penalty(d, x_clean, x_noisy)`: the relaxed penalty
  `max(||grad Q(x~)||^2, 1 - eps)` at random convex combinations `x~` of clean and denoised
  points, differentiable in the denoiser's parameters.
- `fft_conv_norm(weight, shape)`: exact operator norm of a circular convolution (for tests).
- `conv_norm_upper_bound`, `network_lipschitz_upper_bound`: crude layer-wise bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .denoisers import call_denoiser

__all__ = ["LipschitzEstimate", "jacobian_spectral_norm", "firm_nonexpansiveness_penalty",
           "fft_conv_norm", "conv_norm_upper_bound", "network_lipschitz_upper_bound"]

_MODES = ("J", "Q")


@dataclass
class LipschitzEstimate:
    """Power-iteration estimate of the Jacobian spectral norm at the given points.

    `value` is the max over the batch; `per_sample` one value per batch element (a tensor that
    carries the autograd graph when `create_graph=True`); `history` the max estimate after
    each iteration; `converged` whether the relative change fell below `tol`.
    """

    value: float
    per_sample: torch.Tensor
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    mode: str = "J"

    def __float__(self) -> float:
        return self.value


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    return mode


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _unit(t: torch.Tensor) -> torch.Tensor:
    n = _per_sample_norm(t).clamp_min(torch.finfo(t.dtype).tiny)
    return t / n.reshape((-1,) + (1,) * (t.ndim - 1))


def _jacobian_power(fn, x: torch.Tensor, n_iter: int, tol: float, seed: int | None,
                    create_graph: bool):
    """Power iteration for the largest singular value of `Jac fn(x)`, per batch element.

    Returns `(sigma (B,), history, n_done, converged)`. Iterations run without a graph; with
    `create_graph=True` a final evaluation `||Jac u||` at the converged direction u keeps the
    graph (envelope theorem: d sigma_max = u^T d(Jac^T Jac) u / (2 sigma_max)).
    """
    if n_iter < 1:
        raise ValueError(f"n_iter: expected >= 1, got {n_iter}")
    x = x.detach().clone().requires_grad_(True)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(0 if seed is None else int(seed))
    u = _unit(torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device))
    history: list[float] = []
    prev = None
    converged = False
    with torch.enable_grad():
        out = fn(x)
        if out.shape != x.shape:
            raise ValueError(f"the map must preserve the shape: input {tuple(x.shape)}, "
                             f"output {tuple(out.shape)}")
        w = torch.ones_like(out, requires_grad=True)
        (jt_w,) = torch.autograd.grad(out, x, w, create_graph=True)   # Jac^T w, linear in w
        n_done = 0
        for it in range(n_iter):
            # double backward trick: d/dw <Jac^T w, u> = Jac u
            (ju,) = torch.autograd.grad(jt_w, w, u, retain_graph=True)
            (jtju,) = torch.autograd.grad(out, x, ju, retain_graph=True)   # Jac^T Jac u
            sig = _per_sample_norm(ju)                                    # ||Jac u||, ||u||=1
            n_done = it + 1
            history.append(float(sig.max()))
            if prev is not None:
                rel = ((sig - prev).abs() / sig.clamp_min(1e-30)).max()
                if float(rel) < tol:
                    converged = True
                    u = _unit(jtju).detach()
                    break
            prev = sig
            u = _unit(jtju).detach()
            if not bool(torch.isfinite(u).all()) or float(_per_sample_norm(jtju).min()) == 0.0:
                break
        if create_graph:
            (ju,) = torch.autograd.grad(jt_w, w, u, create_graph=True)
            sig = _per_sample_norm(ju)
        else:
            (ju,) = torch.autograd.grad(jt_w, w, u, retain_graph=False)
            sig = _per_sample_norm(ju).detach()
    return sig, history, n_done, converged


def jacobian_spectral_norm(denoiser, x: torch.Tensor, n_iter: int = 50, tol: float = 1e-6,
                           seed: int | None = 0, mode: str = "J", sigma=None,
                           create_graph: bool = False) -> LipschitzEstimate:
    """`||grad J(x)||_2` (mode "J") or `||grad (2J - I)(x)||_2` (mode "Q") by power iteration.

    `x` is `(B, C, H, W)`; the Jacobian is taken per batch element (the batched map is
    block-diagonal). A local estimate from below of the Lipschitz constant: the max over many
    points lower-bounds it; for a linear denoiser it is the operator norm.
    """
    mode = _check_mode(mode)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x: expected a tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")

    def fn(z):
        out = call_denoiser(denoiser, z, sigma)
        return 2.0 * out - z if mode == "Q" else out   # Q = 2J - I

    sig, hist, n_done, conv = _jacobian_power(fn, x, n_iter, tol, seed, create_graph)
    return LipschitzEstimate(float(sig.max()), sig, hist, n_done, conv, mode)


def firm_nonexpansiveness_penalty(denoiser, x_clean: torch.Tensor, x_noisy: torch.Tensor,
                                  eps: float = 0.05, n_iter: int = 5, sigma=None,
                                  seed: int | None = None, tol: float = 1e-3,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed firm-nonexpansiveness penalty, mean over the batch of
    `max(||grad Q(x~)||^2, 1 - eps)`, `Q = 2J - I` (Pesquet et al., training loss).

    `x~ = tau x_clean + (1 - tau) J(x_noisy)`, tau ~ U[0, 1] per sample (the random convex
    combinations of ground truth and denoised points of the paper). The value is a scalar
    tensor differentiable in the denoiser's parameters: add `lambda * penalty` to the loss.
    """
    if x_clean.shape != x_noisy.shape:
        raise ValueError(f"x_clean and x_noisy must have the same shape, got "
                         f"{tuple(x_clean.shape)} and {tuple(x_noisy.shape)}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps: expected 0 <= eps < 1, got {eps}")
    if generator is None:
        generator = torch.Generator(device=x_clean.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    with torch.no_grad():
        denoised = call_denoiser(denoiser, x_noisy, sigma)
    tau = torch.rand((x_clean.shape[0],) + (1,) * (x_clean.ndim - 1), generator=generator,
                     dtype=x_clean.dtype, device=x_clean.device)
    x_tilde = (tau * x_clean + (1.0 - tau) * denoised).detach()

    def fn(z):
        return 2.0 * call_denoiser(denoiser, z, sigma) - z

    sig, _, _, _ = _jacobian_power(fn, x_tilde, n_iter, tol,
                                   int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
                                   create_graph=True)
    return torch.clamp(sig.pow(2), min=1.0 - eps).mean()


def fft_conv_norm(weight: torch.Tensor, shape: tuple[int, int]) -> float:
    """Exact `||.||_2` of the circular convolution (cross-correlation) with `weight` on images
    of spatial `shape`: max over frequencies of the largest singular value of the
    `(out, in)` frequency response. `weight` is `(k, k)`, `(in, k, k)` or `(out, in, k, k)`."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    while w.ndim < 4:
        w = w.unsqueeze(0)
    h, wd = int(shape[0]), int(shape[1])
    if w.shape[-2] > h or w.shape[-1] > wd:
        raise ValueError(f"kernel {tuple(w.shape[-2:])} larger than the image {shape}")
    resp = torch.fft.fft2(w, s=(h, wd))                 # (out, in, H, W)
    mats = resp.permute(2, 3, 0, 1)                     # (H, W, out, in)
    return float(torch.linalg.svdvals(mats).max())


def conv_norm_upper_bound(conv: nn.Conv2d | torch.Tensor) -> float:
    """Crude bound on the operator norm of a stride-1 convolution with any zero/circular
    padding: `sum_p ||W_p||_2` over kernel positions p (each shift has norm <= 1)."""
    w = conv.weight if isinstance(conv, nn.Conv2d) else torch.as_tensor(conv)
    if isinstance(conv, nn.Conv2d) and (conv.stride != (1, 1) or conv.groups != 1):
        raise ValueError("conv_norm_upper_bound supports stride 1, groups 1 convolutions")
    w = w.detach().to(torch.float64)
    mats = w.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1])   # (k*k, out, in)
    return float(torch.linalg.matrix_norm(mats, ord=2).sum())


_ONE_LIPSCHITZ = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Tanh, nn.Dropout)


def network_lipschitz_upper_bound(net) -> float:
    """Product of layer-wise bounds for conv/ReLU chains (crude upper bound).

    Supports `nn.Conv2d`, 1-Lipschitz activations, `nn.Sequential` of those,
    `TwoLayerConvDenoiser` (eq. 1, residual adds 1) and any module with a
    `lipschitz_upper_bound()` method (e.g. `DnCNN`).
    """
    from convexnn.model.primal import TwoLayerConvDenoiser

    if hasattr(net, "lipschitz_upper_bound"):
        return float(net.lipschitz_upper_bound())
    if isinstance(net, TwoLayerConvDenoiser):
        b = conv_norm_upper_bound(net.conv1) * conv_norm_upper_bound(net.conv2)
        return b + 1.0 if net.residual else b
    if isinstance(net, nn.Conv2d):
        return conv_norm_upper_bound(net)
    if isinstance(net, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(net, nn.Sequential):
        b = 1.0
        for layer in net:
            b *= network_lipschitz_upper_bound(layer)
        return b
    raise TypeError(f"no layer-wise Lipschitz bound for {type(net).__name__}")
