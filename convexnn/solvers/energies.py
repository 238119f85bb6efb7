"""Differentiable energies for descent methods (Moeller, Moellenhoff, Cremers, ICCV 2019).

Every energy acts on a batch ``u`` of shape ``(B, ...)`` whose samples are independent
problems: ``value(u)`` is ``(B,)``, ``gradient(u)`` has the shape of ``u``. Energies:

- ``DataFidelity(operator, f)``: ``1/2 ||A u - f||^2`` (Sec. 5.1), ``L = ||A||^2``;
- ``CharbonnierTV(eps)``: ``TV_eps(u) = sum sqrt(|D u|^2 + eps^2)`` (Sec. 5.2), ``L <= 8/eps``;
- ``SumEnergy`` / ``data_plus_tv``: ``1/2 ||A u - f||^2 + alpha TV_eps(u)``;
- ``FeasibilityEnergy(projections)``: ``1/(2N) sum_i d_{C_i}(u)^2`` (eq. 25), gradient
  ``1/N sum_i (u - P_i u)``, ``L = 1``;
- ``QuadraticEnergy(H, u_star)``: ``1/2 (u - u*)^T H (u - u*)``, ``L = lambda_max``,
  ``mu = lambda_min`` (strongly convex test energy of Prop. 2);
- ``AutogradEnergy(fn)``: any scalar-per-sample function, gradient by autograd.

``MatrixOperator(M)`` is a dense operator on flat vectors ``(B, n)`` (the 2-D toy ``u1 + u2 = f``).
Energies with a data term answer ``residual(u) = ||A u - f||`` (the discrepancy principle) and
``data_image(u)``, an image-domain view of the data that direction networks take as input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["EnergyError", "Energy", "MatrixOperator", "DataFidelity", "CharbonnierTV",
           "SumEnergy", "data_plus_tv", "FeasibilityEnergy", "QuadraticEnergy",
           "AutogradEnergy", "check_batch"]


class EnergyError(ValueError):
    """An energy is NaN/inf, not differentiable, or does not match its input."""


def describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def check_batch(u, where: str = "u") -> Tensor:
    """``u`` must be a finite real floating tensor ``(B, ...)`` with at least 2 dimensions."""
    if not isinstance(u, Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor of shape (B, ...), got {describe(u)}")
    if u.is_complex() or not u.is_floating_point():
        raise TypeError(f"{where}: expected a real floating-point tensor, got {describe(u)}")
    if u.ndim < 2 or u.shape[0] < 1:
        raise ValueError(f"{where}: expected a batch (B, ...) with B >= 1 and at least 2 "
                         f"dimensions, got {describe(u)}")
    if not bool(torch.isfinite(u).all()):
        raise EnergyError(f"{where}: holds {int((~torch.isfinite(u)).sum())} NaN/inf values")
    return u


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _sq(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).sum(dim=1)


class Energy:
    """Base class: subclasses implement ``value`` and ``gradient`` per batch sample."""

    differentiable: bool = True

    def value(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def gradient(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def value_and_gradient(self, u: Tensor) -> tuple[Tensor, Tensor]:
        return self.value(u), self.gradient(u)

    def lipschitz(self, u: Tensor | None = None) -> float | None:
        """Lipschitz constant ``L`` of the gradient (eq. 13) where known, else None."""
        return None

    def residual(self, u: Tensor) -> Tensor:
        """``||A u - f||`` per sample; only energies with a data term have one."""
        raise EnergyError(f"{type(self).__name__} has no data term A u = f: the discrepancy "
                          f"principle ||A u - f|| <= delta needs a DataFidelity term")

    def data_image(self, u: Tensor) -> Tensor | None:
        """An image-domain view of the data (network input), or None."""
        return None

    def select(self, index: Tensor) -> Energy:
        """The energy of the samples ``index`` of the batch (data-free energies: itself)."""
        return self

    def check_input(self, u: Tensor) -> None:
        """Raise a clear error when ``u`` cannot be fed to this energy."""
        check_batch(u)

    def __add__(self, other: Energy) -> SumEnergy:
        return SumEnergy([self, other])


class MatrixOperator(torch.nn.Module):
    """A dense linear operator ``u -> M u`` on flat vectors ``(B, n)`` (``M`` of shape (m, n))."""

    def __init__(self, matrix) -> None:
        super().__init__()
        m = torch.as_tensor(matrix)
        if m.ndim != 2 or not m.is_floating_point() or m.numel() == 0:
            raise ValueError(f"MatrixOperator: expected a non-empty real matrix (m, n), got "
                             f"{describe(m)}")
        self.register_buffer("matrix", m)

    def _check(self, x: Tensor, n: int, where: str) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != n:
            raise ValueError(f"MatrixOperator.{where}: expected a batch of vectors (B, {n}), "
                             f"got {describe(x)}")
        return x

    def A(self, u: Tensor) -> Tensor:  # noqa: N802
        return self._check(u, self.matrix.shape[1], "A") @ self.matrix.to(u.dtype).T

    def A_adjoint(self, r: Tensor) -> Tensor:  # noqa: N802
        return self._check(r, self.matrix.shape[0], "A_adjoint") @ self.matrix.to(r.dtype)

    def norm(self, x: Tensor | None = None, **_) -> float:
        """Largest singular value squared."""
        return float(torch.linalg.matrix_norm(self.matrix.double(), ord=2) ** 2)


class DataFidelity(Energy):
    """``E(u) = 1/2 ||A u - f||^2`` (Sec. 5.1); ``grad = A^T (A u - f)``; ``L = ||A||^2``.

    ``operator`` has ``A``, ``A_adjoint`` and ``norm()`` (``convexnn.solvers.operators`` or
    ``MatrixOperator``); ``f`` is the batch of measurements (one per sample of ``u``).
    ``lipschitz`` skips the power iteration when ``||A||^2`` is known.
    """

    def __init__(self, operator, f: Tensor, lipschitz: float | None = None) -> None:
        for name in ("A", "A_adjoint"):
            if not callable(getattr(operator, name, None)):
                raise TypeError(f"DataFidelity: operator: expected an object with A(x) and "
                                f"A_adjoint(y), got {type(operator).__name__} without {name}")
        if not isinstance(f, Tensor) or not f.is_floating_point() or f.ndim < 2:
            raise TypeError(f"DataFidelity: f: expected a real floating tensor of measurements "
                            f"(B, ...), got {describe(f)}")
        if not bool(torch.isfinite(f).all()):
            raise EnergyError("DataFidelity: f holds NaN/inf values")
        if lipschitz is not None and not (_is_real(lipschitz) and math.isfinite(lipschitz)
                                          and lipschitz > 0):
            raise ValueError(f"DataFidelity: lipschitz: expected a positive finite number, got "
                             f"{lipschitz!r}")
        self.operator, self.f, self._lipschitz = operator, f, lipschitz

    def _ax(self, u: Tensor) -> Tensor:
        try:
            ax = self.operator.A(u)
        except (ValueError, TypeError, RuntimeError) as e:
            raise EnergyError(f"DataFidelity: the operator {type(self.operator).__name__} does "
                              f"not accept u ({describe(u)}): {e}") from e
        if ax.shape != self.f.shape:
            raise EnergyError(f"DataFidelity: the operator {type(self.operator).__name__} maps "
                              f"u of shape {tuple(u.shape)} to A u of shape {tuple(ax.shape)}, "
                              f"but f has shape {tuple(self.f.shape)}")
        return ax

    def check_input(self, u: Tensor) -> None:
        check_batch(u)
        self._ax(u)

    def value(self, u: Tensor) -> Tensor:
        return 0.5 * _sq(self._ax(u) - self.f)

    def gradient(self, u: Tensor) -> Tensor:
        return self.operator.A_adjoint(self._ax(u) - self.f)

    def value_and_gradient(self, u: Tensor) -> tuple[Tensor, Tensor]:
        r = self._ax(u) - self.f
        return 0.5 * _sq(r), self.operator.A_adjoint(r)

    def residual(self, u: Tensor) -> Tensor:
        return _sq(self._ax(u) - self.f).sqrt()

    def lipschitz(self, u: Tensor | None = None) -> float | None:
        if self._lipschitz is None:
            self._lipschitz = float(self.operator.norm(None if u is None else u[:1]))
        return self._lipschitz

    def data_image(self, u: Tensor) -> Tensor:
        """``A^T f / ||A||^2`` (nearest upsampling for average pooling, a back-projection
        for CT)."""
        return self.operator.A_adjoint(self.f) / self.lipschitz(u)

    def select(self, index: Tensor) -> DataFidelity:
        return DataFidelity(self.operator, self.f[index], self._lipschitz)


def _dx(u: Tensor) -> Tensor:
    """Forward difference along the last axis, zero in the last column (Neumann)."""
    return torch.nn.functional.pad(u[..., 1:] - u[..., :-1], (0, 1))


def _dx_t(p: Tensor) -> Tensor:
    """Exact adjoint of ``_dx``: ``(D^T p)_j = p_{j-1} [j >= 1] - p_j [j <= W-2]``."""
    q = p[..., :-1]
    return torch.nn.functional.pad(q, (1, 0)) - torch.nn.functional.pad(q, (0, 1))


class CharbonnierTV(Energy):
    """``TV_eps(u) = sum_pixels sqrt((D_x u)^2 + (D_y u)^2 + eps^2)`` (Sec. 5.2), on the last
    two axes, forward differences with Neumann boundary; ``L <= ||D||^2 / eps <= 8 / eps``."""

    def __init__(self, eps: float = 1e-2) -> None:
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise EnergyError(f"CharbonnierTV: eps: expected a positive number (eps = 0 is the "
                              f"non-differentiable total variation), got {eps!r}")
        self.eps = float(eps)

    def check_input(self, u: Tensor) -> None:
        check_batch(u)
        if u.ndim < 3:
            raise EnergyError(f"CharbonnierTV: expected images (B, [C,] H, W), got "
                              f"{describe(u)}")
        if self.eps ** 2 < torch.finfo(u.dtype).tiny:   # sqrt(0 + eps^2) = 0: 0/0 gradients
            raise EnergyError(f"CharbonnierTV: eps: expected eps^2 representable in "
                              f"{u.dtype} (eps >= {math.sqrt(torch.finfo(u.dtype).tiny):.2g}), "
                              f"got eps = {self.eps!r}")

    def _mag(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gx, gy = _dx(u), _dx(u.transpose(-1, -2)).transpose(-1, -2)
        return gx, gy, (gx * gx + gy * gy + self.eps**2).sqrt()

    def value(self, u: Tensor) -> Tensor:
        return self._mag(u)[2].flatten(1).sum(dim=1)

    def gradient(self, u: Tensor) -> Tensor:
        gx, gy, m = self._mag(u)
        return _dx_t(gx / m) + _dx_t((gy / m).transpose(-1, -2)).transpose(-1, -2)

    def lipschitz(self, u: Tensor | None = None) -> float:
        return 8.0 / self.eps


class SumEnergy(Energy):
    """``sum_j w_j E_j(u)``; Lipschitz constant ``sum_j w_j L_j`` when every ``L_j`` is known.
    The data term (residual, data image) is the first term that has one."""

    def __init__(self, terms: Sequence[Energy], weights: Sequence[float] | None = None) -> None:
        terms = list(terms)
        if not terms or not all(isinstance(t, Energy) for t in terms):
            raise TypeError(f"SumEnergy: expected a non-empty sequence of Energy, got "
                            f"{[type(t).__name__ for t in terms]}")
        w = [1.0] * len(terms) if weights is None else list(weights)
        if len(w) != len(terms) or not all(_is_real(x) and math.isfinite(x) and x >= 0
                                           for x in w):
            raise ValueError(f"SumEnergy: expected {len(terms)} non-negative finite weights, "
                             f"got {weights!r}")
        w = [float(x) for x in w]
        self.terms, self.weights = terms, w
        self.differentiable = all(t.differentiable for t in terms)

    def check_input(self, u: Tensor) -> None:
        for t in self.terms:
            t.check_input(u)

    def value(self, u: Tensor) -> Tensor:
        return sum(w * t.value(u) for w, t in self._active())

    def gradient(self, u: Tensor) -> Tensor:
        return sum(w * t.gradient(u) for w, t in self._active())

    def lipschitz(self, u: Tensor | None = None) -> float | None:
        ls = [(w, t.lipschitz(u)) for w, t in self._active()]
        return None if any(x is None for _, x in ls) else float(sum(w * x for w, x in ls))

    def _active(self) -> list[tuple[float, Energy]]:
        return [(w, t) for w, t in zip(self.weights, self.terms, strict=True) if w != 0]

    def _data(self) -> Energy | None:
        return next((t for t in self.terms if isinstance(t, (DataFidelity, SumEnergy))
                     and (not isinstance(t, SumEnergy) or t._data() is not None)), None)

    def residual(self, u: Tensor) -> Tensor:
        d = self._data()
        return Energy.residual(self, u) if d is None else d.residual(u)

    def data_image(self, u: Tensor) -> Tensor | None:
        d = self._data()
        return None if d is None else d.data_image(u)

    def select(self, index: Tensor) -> SumEnergy:
        return SumEnergy([t.select(index) for t in self.terms], self.weights)


def data_plus_tv(operator, f: Tensor, alpha: float, eps: float = 1e-2,
                 lipschitz: float | None = None) -> SumEnergy:
    """``E(u) = 1/2 ||A u - f||^2 + alpha TV_eps(u)`` (Sec. 5.2)."""
    if not (_is_real(alpha) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"data_plus_tv: alpha: expected a non-negative number, got {alpha!r}")
    return SumEnergy([DataFidelity(operator, f, lipschitz), CharbonnierTV(eps)], [1.0, alpha])


class FeasibilityEnergy(Energy):
    """``E(u) = 1/(2N) sum_i d_{C_i}(u)^2`` (eq. 25); ``grad = 1/N sum_i (u - P_i u)``
    (``grad d_C^2 = 2 (id - P_C)``), 1-Lipschitz. ``projections``: callables ``u -> P_i(u)``
    acting on the batch."""

    def __init__(self, projections: Sequence[Callable[[Tensor], Tensor]]) -> None:
        projections = list(projections)
        if not projections or not all(callable(p) for p in projections):
            raise TypeError("FeasibilityEnergy: expected a non-empty sequence of projections "
                            "u -> P_C(u)")
        self.projections = projections

    def _dists(self, u: Tensor) -> list[Tensor]:
        out = []
        for i, p in enumerate(self.projections):
            pu = p(u)
            if not isinstance(pu, Tensor) or pu.shape != u.shape:
                raise EnergyError(f"FeasibilityEnergy: projection {i} returned "
                                  f"{describe(pu)}, expected the shape of u "
                                  f"{tuple(u.shape)}")
            out.append(u - pu)
        return out

    def value(self, u: Tensor) -> Tensor:
        d = self._dists(u)
        return sum(_sq(x) for x in d) / (2 * len(d))

    def gradient(self, u: Tensor) -> Tensor:
        d = self._dists(u)
        return sum(d) / len(d)

    def value_and_gradient(self, u: Tensor) -> tuple[Tensor, Tensor]:
        d = self._dists(u)
        return sum(_sq(x) for x in d) / (2 * len(d)), sum(d) / len(d)

    def lipschitz(self, u: Tensor | None = None) -> float:
        return 1.0


class QuadraticEnergy(Energy):
    """``E(u) = 1/2 (u - u*)^T H (u - u*)`` on flat vectors ``(B, n)``, H symmetric positive
    definite: strongly convex, ``L = lambda_max(H)``, PL modulus ``mu = lambda_min(H)``."""

    def __init__(self, hessian: Tensor, u_star: Tensor | None = None) -> None:
        h = torch.as_tensor(hessian)
        if h.ndim != 2 or h.shape[0] != h.shape[1] or not h.is_floating_point():
            raise ValueError(f"QuadraticEnergy: expected a square real matrix, got "
                             f"{describe(h)}")
        if not torch.allclose(h, h.T, atol=1e-10 * float(h.abs().max())):
            raise ValueError("QuadraticEnergy: the Hessian must be symmetric")
        ev = torch.linalg.eigvalsh(h.double())
        if float(ev[0]) <= 0:
            raise ValueError(f"QuadraticEnergy: the Hessian must be positive definite, smallest "
                             f"eigenvalue {float(ev[0]):.3g}")
        self.hessian = h
        self.u_star = torch.zeros(h.shape[0], dtype=h.dtype) if u_star is None else u_star
        self.mu, self.L = float(ev[0]), float(ev[-1])

    def check_input(self, u: Tensor) -> None:
        check_batch(u)
        if u.ndim != 2 or u.shape[1] != self.hessian.shape[0]:
            raise EnergyError(f"QuadraticEnergy: expected u of shape (B, {self.hessian.shape[0]})"
                              f", got {describe(u)}")

    def value(self, u: Tensor) -> Tensor:
        e = u - self.u_star.to(u.dtype)
        return 0.5 * (e * (e @ self.hessian.to(u.dtype))).sum(dim=1)

    def gradient(self, u: Tensor) -> Tensor:
        return (u - self.u_star.to(u.dtype)) @ self.hessian.to(u.dtype)

    def lipschitz(self, u: Tensor | None = None) -> float:
        return self.L


class AutogradEnergy(Energy):
    """``E(u) = fn(u)`` (``(B,)`` values) with the gradient from autograd.

    Raises EnergyError when ``fn`` is not differentiable at ``u`` (no graph, or a NaN/inf
    gradient)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], lipschitz: float | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"AutogradEnergy: expected a callable, got {type(fn).__name__}")
        self.fn, self._lipschitz = fn, lipschitz

    def value(self, u: Tensor) -> Tensor:
        with torch.no_grad():
            v = self.fn(u)
        if not isinstance(v, Tensor) or v.shape != (u.shape[0],):
            raise EnergyError(f"AutogradEnergy: expected fn(u) of shape ({u.shape[0]},), got "
                              f"{describe(v)}")
        return v

    def value_and_gradient(self, u: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = u.detach().requires_grad_(True)
            v = self.fn(x)
            if not isinstance(v, Tensor) or v.shape != (u.shape[0],):
                raise EnergyError(f"AutogradEnergy: expected fn(u) of shape ({u.shape[0]},), "
                                  f"got {describe(v)}")
            if not v.requires_grad:
                raise EnergyError("AutogradEnergy: fn(u) does not depend differentiably on u "
                                  "(no autograd graph)")
            (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
        if g is None:
            raise EnergyError("AutogradEnergy: fn(u) has no gradient with respect to u")
        return v.detach(), g

    def gradient(self, u: Tensor) -> Tensor:
        return self.value_and_gradient(u)[1]

    def lipschitz(self, u: Tensor | None = None) -> float | None:
        return self._lipschitz
