"""One ADMM iteration of `solve_admm` (eq. 4): the u-, z- and q-steps with over-relaxation,
their residuals (Boyd et al. 2011, sec. 3.3) and residual balancing of rho (OSQP)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convexnn.solve.admm.cones import ConeProx
from convexnn.solve.admm.linear import CgSolver, DirectSolver
from convexnn.solve.admm.ops import PatternOperators

__all__ = ["AdmmIterate", "AdmmSetup", "Residuals", "admm_step", "balance_rho"]


def _loss_prox(x: torch.Tensor, name: str, t: float, delta: float) -> torch.Tensor:
    """Prox of `t * loss` at residual x (Appendix E losses, pixel-wise)."""
    if name == "l1":
        return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)
    # Huber h_delta: quadratic region when |x| <= delta (1 + t)
    return torch.where(x.abs() <= delta * (1.0 + t), x / (1.0 + t), x - t * delta * torch.sign(x))


@dataclass
class AdmmSetup:
    """What one `solve_admm` run works with: operators, data, constants (internal units)."""

    ops: PatternOperators
    lin: DirectSolver | CgSolver
    prox: ConeProx
    y: torch.Tensor          # target / sy
    aty: torch.Tensor        # A^T y
    loss: str
    dlt: float               # internal Huber delta
    beta: float              # internal beta
    split: bool              # l1 / Huber: third copy q = A (v - w)
    sx: float
    sy: float
    device: torch.device
    dt: torch.dtype
    obj_scale: float         # objective in the caller's units = internal one x obj_scale
    kappa: float = 1.0       # rho_q = kappa rho


@dataclass
class AdmmIterate:
    """The ADMM iterate (internal units), updated in place from one iteration to the next."""

    z: torch.Tensor                   # (2P, d) cone-feasible group copy of u = [v; w]
    lam: torch.Tensor                 # (2P, d) scaled dual of u = z
    q: torch.Tensor                   # (N,) loss copy of A (v - w)
    nu: torch.Tensor                  # (N,) scaled dual of q = A (v - w)
    rho: float
    aq: torch.Tensor | None = None    # A^T (q - nu), split losses only
    anu: torch.Tensor | None = None   # A^T nu of the last iteration, split losses only


@dataclass
class Residuals:
    """Primal / dual residual norms and their tolerance scales (Boyd et al. 2011, sec. 3.3)."""

    r_pri: float = float("nan")
    r_dual: float = float("nan")
    e_pri: float = float("nan")
    e_dual: float = float("nan")

    @property
    def rel_pri(self) -> float:
        return self.r_pri / self.e_pri

    @property
    def rel_dual(self) -> float:
        return self.r_dual / self.e_dual


def admm_step(s: AdmmSetup, st: AdmmIterate, alpha: float, eps_abs: float) -> Residuals:
    """One over-relaxed ADMM iteration on `st` (in place); returns its residuals."""
    ops, p, rho, kappa = s.ops, s.ops.n_patterns, st.rho, s.kappa
    z, lam = st.z, st.lam
    # ---- u-step: (F^T F + rho I) u = F^T y + rho (z - lam), in (a, b) = (v - w, v + w)
    rv = rho * (z - lam)
    rhs_a = rv[:p] - rv[p:] + (2.0 * kappa * rho * st.aq if s.split else 2.0 * s.aty)
    a = s.lin.solve_a(rhs_a)
    b = (rv[:p] + rv[p:]) / rho
    u = torch.cat([0.5 * (b + a), 0.5 * (b - a)])
    # ---- relaxed z-step: exact prox of beta ||.|| + cone indicator, then dual update
    uh = alpha * u + (1.0 - alpha) * z
    z_old = z
    z = s.prox(uh + lam, s.beta / rho)
    lam = lam + uh - z
    st.z, st.lam = z, lam
    r2 = float((u - z).pow(2).sum())
    n_u, n_z = float(u.pow(2).sum()), float(z.pow(2).sum())
    dres = rho * (z - z_old)
    ydual = rho * lam
    if s.split:
        pred = ops.A(a)
        ph = alpha * pred + (1.0 - alpha) * st.q
        q_old = st.q
        q = s.y + _loss_prox(ph + st.nu - s.y, s.loss, 1.0 / (kappa * rho), s.dlt)
        nu = st.nu + ph - q
        st.q, st.nu = q, nu
        st.aq, adq, st.anu = ops.At(torch.stack([q - nu, q - q_old, nu], 1))
        r2 += float((pred - q).pow(2).sum())
        n_u += float(pred.pow(2).sum())
        n_z += float(q.pow(2).sum())
        dres = dres + kappa * rho * torch.cat([adq, -adq])
        ydual = ydual + kappa * rho * torch.cat([st.anu, -st.anu])
    return Residuals(r_pri=math.sqrt(r2), r_dual=float(dres.norm()),
                     e_pri=math.sqrt(max(n_u, n_z)) + eps_abs,
                     e_dual=float(ydual.norm()) + eps_abs)


def balance_rho(s: AdmmSetup, st: AdmmIterate, res: Residuals) -> None:
    """Residual balancing (OSQP rule on normalised residuals); rescales the scaled duals."""
    ratio = math.sqrt(res.rel_pri / max(res.rel_dual, 1e-300))
    if ratio > 3.0 or ratio < 1.0 / 3.0:
        new = st.rho * min(max(ratio, 0.1), 10.0)
        f = st.rho / new
        st.lam = st.lam * f
        if s.split:
            st.nu = st.nu * f
            st.aq, st.anu = s.ops.At(st.q - st.nu), st.anu * f
        st.rho = new
        s.lin.set_rho(st.rho, s.kappa)
