"""The least-squares data term `f(x) = 1/2 ||A x - y||^2` shared by every iterative solver.

One place for its value, gradient `A^T (A x - y)`, proximal map (conjugate gradients on
`(I + gamma A^T A) u = v + gamma A^T y`) and smoothness constant `L = ||A||^2` (the only power
iteration of the package: `power_iteration`, used by `LinearOperator.norm` too). The deepinv
counterpart is `deepinv.optim.data_fidelity.L2`; `physics` is any object with `A(x)` and
`A_adjoint(y)` (`convexnn.solvers.operators`, or a deepinv physics through the adapter).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["L2", "power_iteration", "operator_norm", "data_prox"]


def power_iteration(normal: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor,
                    n_iter: int = 200, tol: float = 1e-8) -> float:
    """Largest eigenvalue of the PSD map `normal` (`A^T A`) by power iteration from `v`.

    Returns the Rayleigh quotient `lam = <v, A^T A v>` (`||v|| = 1`, a lower bound of the
    top eigenvalue) after `n_iter` steps or once the eigen-residual
    `||A^T A v - lam v|| <= sqrt(tol) lam`; `lam` is then within about `tol lam / gap` of the
    top eigenvalue (Kato-Temple), `gap` the relative distance to the next one.
    """
    v = v / v.norm()
    lam = 0.0
    for _ in range(n_iter):
        w = normal(v)
        lam = float((v * w).sum().real)            # Rayleigh quotient <v, A^T A v> = ||A v||^2
        w_norm = float(w.norm())
        if w_norm == 0.0:
            return 0.0
        residual = float((w - lam * v).norm())     # ||A^T A v - lam v||
        v = w / w_norm
        if residual <= math.sqrt(tol) * abs(lam):
            break
    return lam


def operator_norm(physics, x: torch.Tensor, n_iter: int = 200, tol: float = 1e-8) -> float:
    """`||A||^2`: `physics.norm(x)` when the physics has one, else power iteration on
    `A^T A` from seeded noise of one image of `x`'s shape."""
    norm = getattr(physics, "norm", None)
    if callable(norm):
        try:
            return float(norm(x[:1]))
        except TypeError:
            return float(norm())
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn((1, *x.shape[1:]), generator=gen, dtype=x.dtype).to(x.device)
    return power_iteration(lambda u: physics.A_adjoint(physics.A(u)), v, n_iter, tol)


def data_prox(physics, v: torch.Tensor, y: torch.Tensor, gamma: float, n_iter: int = 100,
              tol: float = 1e-10, aty: torch.Tensor | None = None) -> torch.Tensor:
    """`prox_{gamma f}(v) = argmin_u gamma/2 ||A u - y||^2 + 1/2 ||u - v||^2`: conjugate
    gradient on `(I + gamma A^T A) u = v + gamma A^T y`, started at v; stops at relative
    residual `tol`."""
    b = v + gamma * (physics.A_adjoint(y) if aty is None else aty)
    u = v.clone()
    r = b - (u + gamma * physics.A_adjoint(physics.A(u)))
    p = r.clone()
    rs = _inner(r, r)
    bnorm = max(float(_inner(b, b)) ** 0.5, 1e-300)
    for _ in range(n_iter):
        if float(rs) ** 0.5 <= tol * bnorm:
            break
        ap = p + gamma * physics.A_adjoint(physics.A(p))
        alpha = rs / _inner(p, ap)
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = _inner(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return u


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).real.sum() if a.is_complex() else (a * b).sum()


class L2:
    """`f(x) = 1/2 ||A x - y||^2` with its gradient, prox and smoothness constant."""

    @staticmethod
    def value(x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """`1/2 ||A x - y||^2` per batch element, shape `(B,)`."""
        r = physics.A(x) - y
        r = r.abs() if r.is_complex() else r
        return 0.5 * r.flatten(1).pow(2).sum(dim=1)

    @staticmethod
    def grad(x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """`A^T (A x - y)`."""
        return physics.A_adjoint(physics.A(x) - y)

    @staticmethod
    def prox(v: torch.Tensor, y: torch.Tensor, physics, gamma: float, n_iter: int = 100,
             tol: float = 1e-10, aty: torch.Tensor | None = None) -> torch.Tensor:
        """`prox_{gamma f}(v)` (conjugate gradients, `data_prox`)."""
        return data_prox(physics, v, y, gamma, n_iter, tol, aty)

    @staticmethod
    def lipschitz(physics, x: torch.Tensor) -> float:
        """`L = ||A||^2`, the Lipschitz constant of `grad f` (`operator_norm`)."""
        return operator_norm(physics, x)
