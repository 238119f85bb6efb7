"""The designed prior g of PODM (Liu et al., NeurIPS 2018, eq. 1): proximal operators.

Every prior is a small object with

- ``prox(v, step)``: ``argmin_x  g(x) + 1/(2 step) ||x - v||^2`` (a global minimiser, also for
  the nonconvex priors: the convergence proof of PODM, Prop. 1, needs the exact prox);
- ``prox.value(x)``: ``g(x)`` per batch element, shape ``(B,)``;
- ``prox.convex``: whether g is convex.

Priors: ``L1`` (soft threshold), ``L0`` (hard threshold), ``Lp`` (``0 < p <= 1``, the paper's
``l_0.8`` sparse-coding prior, solved exactly per entry), ``Box`` (projection),
``SparseBox`` (the RPODM set ``{||u||_0 <= s, u_i in {0} u [a, b]}``, Sec. 5.2) and
``InBasis`` (``g(x) = h(T x)`` for an orthonormal transform T, e.g. ``HaarWavelet``: the
synthesis sparse-coding model ``min_a ||D W^T a - o||^2 + lam ||a||_p^p`` of Sec. 5.1 written
in the image variable ``x = W^T a``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .operators.base import LinearOperator

__all__ = ["Prox", "L1", "L0", "Lp", "Box", "SparseBox", "InBasis", "HaarWavelet"]


def _nonneg(value: float, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{where}: {name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _check_step(step: float, where: str) -> float:
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (
            math.isfinite(step) and step > 0):
        raise ValueError(f"{where}: step: expected a finite number > 0, got {step!r}")
    return float(step)


class Prox:
    """Base class of a prior g: ``__call__(v, step)`` = ``prox_{step g}(v)``, ``value(x)``."""

    convex: bool = True

    def __call__(self, v: Tensor, step: float) -> Tensor:
        raise NotImplementedError

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class L1(Prox):
    """``g(x) = lam ||x||_1``; prox = soft threshold at ``step * lam``."""

    def __init__(self, lam: float) -> None:
        self.lam = _nonneg(lam, "lam", "L1")

    def __call__(self, v: Tensor, step: float) -> Tensor:
        t = self.lam * _check_step(step, "L1")
        return torch.sign(v) * (v.abs() - t).clamp_min(0.0)

    def value(self, x: Tensor) -> Tensor:
        return self.lam * x.flatten(1).abs().sum(dim=1)


class L0(Prox):
    """``g(x) = lam ||x||_0`` (count of non-zeros); prox = hard threshold: keep ``v_i`` where
    ``v_i^2 > 2 step lam`` (at equality both 0 and ``v_i`` are minimisers; 0 is returned)."""

    convex = False

    def __init__(self, lam: float) -> None:
        self.lam = _nonneg(lam, "lam", "L0")

    def __call__(self, v: Tensor, step: float) -> Tensor:
        t = 2.0 * self.lam * _check_step(step, "L0")
        return torch.where(v * v > t, v, torch.zeros_like(v))

    def value(self, x: Tensor) -> Tensor:
        return self.lam * (x.flatten(1) != 0).sum(dim=1).to(x.dtype)


class Lp(Prox):
    """``g(x) = lam sum_i |x_i|^p`` with ``0 < p <= 1`` (the paper uses p = 0.8).

    The scalar prox ``min_x 1/2 (x - v)^2 + tau |x|^p`` (``tau = step lam``) is solved exactly,
    vectorised: on ``x > 0`` (take ``a = |v|``; the sign of v is restored at the end)
    ``h'(x) = x - a + tau p x^{p-1}`` is convex and increasing right of the inflection point
    ``x* = (tau p (1 - p))^{1/(2-p)}``, so ``h`` has a non-zero local minimiser iff
    ``h'(x*) < 0``, the unique root of ``h'`` in ``(x*, a)``. Newton from ``x = a`` decreases
    monotonically to that root (convex increasing function, start right of the root), in
    float64; the answer is that root or 0, whichever has the smaller ``h``.
    """

    def __init__(self, lam: float, p: float = 0.8, newton_iter: int = 100) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"Lp: p: expected 0 < p <= 1 (use L0 for p = 0), got {p!r}")
        self.lam = _nonneg(lam, "lam", "Lp")
        self.p = float(p)
        self.convex = self.p == 1.0
        if isinstance(newton_iter, bool) or not isinstance(newton_iter, int) or newton_iter < 1:
            raise ValueError(f"Lp: newton_iter: expected a positive integer, got "
                             f"{newton_iter!r}")
        self.newton_iter = newton_iter

    def __call__(self, v: Tensor, step: float) -> Tensor:
        tau = self.lam * _check_step(step, "Lp")
        p = self.p
        if tau == 0.0:
            return v.clone()
        if p == 1.0:
            return torch.sign(v) * (v.abs() - tau).clamp_min(0.0)
        a = v.detach().abs().to(torch.float64)
        x_star = (tau * p * (1.0 - p)) ** (1.0 / (2.0 - p))         # h''(x*) = 0
        active = (x_star - a + tau * p * x_star ** (p - 1.0)) < 0    # h'(x*) < 0: a root exists
        x = torch.where(active, a, torch.ones_like(a))                # start right of the root
        for _ in range(self.newton_iter):
            g = x - a + tau * p * x.pow(p - 1.0)                     # h'(x)
            h2 = 1.0 + tau * p * (p - 1.0) * x.pow(p - 2.0)          # h''(x) > 0 right of x*
            x_new = torch.where(active, (x - g / h2).clamp(min=x_star), x)
            done = bool(((x - x_new).abs() <= 1e-15 * (1.0 + x)).all())
            x = x_new
            if done:
                break
        h_root = 0.5 * (x - a) ** 2 + tau * x.pow(p)
        keep = active & (h_root < 0.5 * a * a)                       # compare with h(0)
        out = torch.where(keep, x, torch.zeros_like(x))
        return (torch.sign(v) * out.to(v.dtype)).to(v.device)

    def value(self, x: Tensor) -> Tensor:
        return self.lam * x.flatten(1).abs().pow(self.p).sum(dim=1)


def _indicator(feasible: Tensor, x: Tensor) -> Tensor:
    zero = torch.zeros(feasible.shape, dtype=x.dtype, device=x.device)
    return torch.where(feasible, zero, torch.full_like(zero, math.inf))


class Box(Prox):
    """``g(x) = indicator of [a, b]^n``; prox = ``clamp(v, a, b)`` (any step)."""

    def __init__(self, a: float = 0.0, b: float = 1.0) -> None:
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and math.isfinite(a) and math.isfinite(b) and a <= b):
            raise ValueError(f"Box: expected finite bounds a <= b, got a={a!r}, b={b!r}")
        self.a, self.b = float(a), float(b)

    def __call__(self, v: Tensor, step: float) -> Tensor:
        _check_step(step, "Box")
        return v.clamp(self.a, self.b)

    def value(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return _indicator(((flat >= self.a) & (flat <= self.b)).all(dim=1), x)


class SparseBox(Box):
    """The RPODM constraint set (Sec. 5.2): ``Omega = {u : ||u||_0 <= s, u_i in {0} u [a, b]}``
    per batch element; prox = projection onto Omega (any step).

    The paper writes it ``HardThre(Proj_[a,b](u))``: clip to [a, b], then keep s entries.
    Here the s kept entries are those with the largest decrease of the distance,
    ``gain_i = u_i^2 - (u_i - c_i)^2`` with ``c = Proj_[a,b](u)``, and entries with
    ``gain_i <= 0`` become 0: this is the exact Euclidean projection onto Omega. It equals the
    paper's ``HardThre(Proj)`` (keep the s largest ``|c_i|``) whenever no entry is clipped
    (then ``gain_i = c_i^2``). ``s=None``: no sparsity limit.
    """

    convex = False

    def __init__(self, a: float, b: float, s: int | None = None) -> None:
        super().__init__(a, b)
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ValueError(f"SparseBox: s: expected a non-negative integer or None, got {s!r}")
        self.s = s

    def __call__(self, v: Tensor, step: float) -> Tensor:
        c = super().__call__(v, step)                          # Proj_[a,b]
        flat_v, flat_c = v.flatten(1), c.flatten(1)
        gain = flat_c * (2.0 * flat_v - flat_c)                # u^2 - (u - c)^2
        keep = gain > 0
        if self.s is not None and self.s < flat_v.shape[1]:   # HardThre: the s best entries
            top = torch.zeros_like(keep)
            top.scatter_(1, gain.topk(self.s, dim=1).indices, True)
            keep &= top
        return torch.where(keep, flat_c, torch.zeros_like(flat_c)).reshape(v.shape)

    def value(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        nonzero = flat != 0
        ok = (~nonzero | ((flat >= self.a) & (flat <= self.b))).all(dim=1)
        if self.s is not None:
            ok &= nonzero.sum(dim=1) <= self.s
        return _indicator(ok, x)


class InBasis(Prox):
    """``g(x) = h(T x)`` for an orthonormal ``T`` (``T^T T = T T^T = I``):
    ``prox_{step g}(v) = T^T prox_{step h}(T v)``, exactly, also for nonconvex h."""

    def __init__(self, prox: Prox, transform: LinearOperator) -> None:
        if not isinstance(prox, Prox):
            raise TypeError(f"InBasis: prox: expected a Prox, got {type(prox).__name__}")
        for attr in ("A", "A_adjoint"):
            if not callable(getattr(transform, attr, None)):
                raise TypeError(f"InBasis: transform: expected an operator with A and "
                                f"A_adjoint, got {type(transform).__name__}")
        self.prox, self.transform = prox, transform
        self.convex = prox.convex

    def __call__(self, v: Tensor, step: float) -> Tensor:
        return self.transform.A_adjoint(self.prox(self.transform.A(v), step))

    def value(self, x: Tensor) -> Tensor:
        return self.prox.value(self.transform.A(x))


class HaarWavelet(LinearOperator):
    """Orthonormal 2-D Haar wavelet transform with ``levels`` levels, per channel.

    ``A`` (analysis) maps ``(B, C, H, W)`` images to coefficients of the same shape, laid out
    as ``pywt.coeffs_to_array(pywt.wavedec2(x, "haar", level=levels))``: approximation top
    left, then at each level cV ('ad') top right, cH ('da') bottom left, cD bottom right.
    ``A_adjoint`` is the inverse (synthesis). H and W must be divisible by ``2**levels``.
    """

    def __init__(self, levels: int = 3) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"HaarWavelet: levels: expected a positive integer, got "
                             f"{levels!r}")
        super().__init__(None, fixed_channels=False)
        self.levels = levels

    def _check(self, x: Tensor, where: str) -> Tensor:
        x = self._check_image(x, where)
        m = 2 ** self.levels
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"HaarWavelet {where}: expected H and W divisible by 2**levels = "
                             f"{m}, got {tuple(x.shape)}")
        return x

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        out = self._check(x, "A: x").clone()
        h, w = out.shape[-2:]
        for _ in range(self.levels):
            lo, hi = _butterfly(out[..., 0:h:2, :w], out[..., 1:h:2, :w])     # along rows
            (ca, cv), (ch, cd) = _butterfly(lo[..., 0::2], lo[..., 1::2]), _butterfly(
                hi[..., 0::2], hi[..., 1::2])                                    # along columns
            h, w = h // 2, w // 2
            out[..., :h, :w], out[..., :h, w:2 * w] = ca, cv
            out[..., h:2 * h, :w], out[..., h:2 * h, w:2 * w] = ch, cd
        return out

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        out = self._check(y, "A_adjoint: y").clone()
        h, w = (s // 2 ** self.levels for s in out.shape[-2:])        # size of cA
        for _ in range(self.levels):
            lo = _interleave(*_butterfly(out[..., :h, :w], out[..., :h, w:2 * w]), dim=-1)
            hi = _interleave(*_butterfly(out[..., h:2 * h, :w], out[..., h:2 * h, w:2 * w]),
                             dim=-1)
            out[..., :2 * h, :2 * w] = _interleave(*_butterfly(lo, hi), dim=-2)
            h, w = 2 * h, 2 * w
        return out


def _butterfly(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The orthonormal Haar pair ``((a + b) / sqrt 2, (a - b) / sqrt 2)``, its own inverse."""
    return (a + b) / math.sqrt(2.0), (a - b) / math.sqrt(2.0)


def _interleave(even: Tensor, odd: Tensor, dim: int) -> Tensor:
    """Entries of ``even`` at even and of ``odd`` at odd positions along ``dim`` (< 0)."""
    return torch.stack((even, odd), dim=dim).flatten(dim - 1, dim)
