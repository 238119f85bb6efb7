"""The Newton step of the interior-point solver for eq. 4 (CVXOPT's coneqp, Vandenberghe 2010).

The KKT system of one iteration is reduced to `H du = r` with `H = J^T K J + blockdiag(S_g)`
(`K = A^T A` the Gram of eq. 3's patterns, `S_g` the cone scalings of group g); `NewtonSolver`
factors it once per iteration and `Linearization` solves it for every right-hand side
(predictor, corrector, Gondzio correctors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convexnn.model.problem import ConvexSolverError
from convexnn.solve.ipm.cones import NtScaling, boundary_rate, det, to_identity

__all__ = ["Point", "least_squares_start", "Linearization", "NewtonSolver", "chol_solve",
           "cholesky_shifted"]


@dataclass
class Point:
    """An iterate (or a direction, or residuals): x = (u, t), LP and SOC slacks and duals."""

    u: torch.Tensor          # (2P, d)
    t: torch.Tensor          # (2P,)
    sl: torch.Tensor         # (M, 2P)
    zl: torch.Tensor | None
    sq: torch.Tensor         # (2P, d + 1)
    zq: torch.Tensor | None

    def moved(self, step: Point, alpha: float) -> Point:
        return Point(*(torch.add(x, dx, alpha=alpha) for x, dx in zip(
            (self.u, self.t, self.sl, self.zl, self.sq, self.zq),
            (step.u, step.t, step.sl, step.zl, step.sq, step.zq), strict=True)))


def least_squares_start(pt0: Point, rows, kg: torch.Tensor, aty: torch.Tensor,
                         beta: float, jd: torch.Tensor, e: torch.Tensor, p: int,
                         refine: int, sign: torch.Tensor) -> Point:
    """CVXOPT's starting point (Vandenberghe 2010, sec. 5.3): the Newton step with identity
    scaling from x = 0, z = 0 solves `P x + G^T z = -q`, `G x - z = 0` (x minimises
    `1/2 x^T P x + q^T x + 1/2 ||G x||^2`); s = -z and z are then shifted into the cones."""
    d = pt0.u.shape[1]
    q = Point(u=-torch.cat([aty.reshape(p, d), -aty.reshape(p, d)]),
               t=torch.full_like(pt0.t, beta), sl=torch.zeros_like(pt0.sl), zl=None,
               sq=torch.zeros_like(pt0.sq), zq=None)
    lin = Linearization(pt0, q, rows, kg, jd, p, refine)
    x = lin.newton(torch.zeros_like(pt0.sl), torch.zeros_like(pt0.sq))

    def shifted(lp: torch.Tensor, soc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # one shift for every cone (CVXOPT): lp + (1 + a) 1, soc + (1 + a) e if a >= 0
        # (lp in signed coordinates: its values are sign o lp, the shift is (1 + a) sign)
        a = max(float((-(sign * lp)).max()) if lp.numel() else -math.inf,
                float((soc[:, 1:].norm(dim=1) - soc[:, 0]).max()))
        if a >= 0:
            return torch.add(lp, sign, alpha=1.0 + a), soc + (1.0 + a) * e
        return lp, soc

    sl, sq = shifted(x.sl, x.sq)
    zl, zq = shifted(x.zl, x.zq)
    return Point(u=x.u, t=x.t, sl=sl, zl=zl, sq=sq, zq=zq)


class Linearization:
    """Nesterov-Todd scaling at an iterate and the Newton step for a complementarity rhs."""

    def __init__(self, pt: Point, res: Point, rows, kg: torch.Tensor,
                 jd: torch.Tensor, p: int, refine: int, accuracy: float = 0.0) -> None:
        self.pt, self.res, self.rows = pt, res, rows
        self.inv_sl = 1.0 / pt.sl
        self.ratio = pt.zl * self.inv_sl                         # LP part: W^{-2} = diag(z / s)
        self.nt = NtScaling(pt.sq, pt.zq, jd)
        self.lam_q = self.nt.apply(pt.zq)
        w2 = self.nt.w2inv
        btt, btu = w2[:, 0, 0], w2[:, 0, 1:]
        blk = w2[:, 1:, 1:] + rows.weighted_grams(self.ratio)
        blk = blk - btu[:, :, None] * btu[:, None, :] / btt[:, None, None]    # t eliminated
        self.solve_x = NewtonSolver(kg, blk, btt, btu, p, refine, accuracy)
        self.zr = res.sl * self.ratio
        nt, lam = self.nt, self.lam_q
        # lam^{-1} o r = Arw(lam)^{-1} r with Arw(x)^{-1} = ((J x)(J x)^T / det x + I - e e^T) / x0
        jl = lam * jd
        arw_inv = jl[:, :, None] * jl[:, None, :] / det(lam)[:, None, None]
        arw_inv.diagonal(dim1=1, dim2=2)[:, 1:] += 1.0
        self.winv_arw = nt.winv @ (arw_inv / lam[:, :1, None])     # r_c -> W^{-1} lam^{-1} o r_c
        self.w2inv_rz = nt.apply_inv(nt.apply_inv(res.sq))         # W^{-2} r_z
        # steps in the cones: s + a ds in K iff e + a G W^{-1} ds in K (G lam = e), likewise
        # z + a dz iff e + a G W dz: one batched product and a norm per direction
        g = to_identity(lam, jd)
        self.step_maps = torch.cat([g @ nt.winv, g @ nt.w])

    def newton(self, rcl: torch.Tensor, rcq: torch.Tensor) -> Point:
        """Solves the KKT system for `lam o (W dz + W^{-1} ds) = r_c` (CVXOPT's coneqp)."""
        res, rows, nt = self.res, self.rows, self.nt
        wds = torch.bmm(self.winv_arw, rcq.unsqueeze(2)).squeeze(2)   # W^{-1} lam^{-1} o r_c
        vl = torch.addcmul(self.zr, rcl, self.inv_sl)            # LP: (z r_z + r_c) / s
        vq = self.w2inv_rz + wds                                 # W^{-1}(W^{-1} r_z + d_s)
        du, dt = self.solve_x(-res.u + rows.adjoint(vl) + vq[:, 1:], -res.t + vq[:, 0])
        dsl = rows.values(du, minus=res.sl)                      # ds = -(G dx + r_z)
        dsq_ = torch.cat([dt[:, None], du], 1) - res.sq
        dzl = torch.addcmul(rcl, self.pt.zl, dsl, value=-1.0).mul_(self.inv_sl)  # (r_c - z ds)/s
        dzq = wds - nt.apply_inv(nt.apply_inv(dsq_))             # W^{-1}(d_s - W^{-1} ds)
        return Point(du, dt, dsl, dzl, dsq_, dzq)

    def max_step(self, d: Point) -> float:
        """Largest alpha keeping every slack and dual in its cone (one host sync)."""
        y = torch.bmm(self.step_maps, torch.cat([d.sq, d.zq]).unsqueeze(2)).squeeze(2)
        rates = [boundary_rate(y).amax()]                        # SOC: a * rate <= 1
        if d.sl.numel():                                          # LP: a * max(-ds / s) <= 1
            rates += [-(d.sl * self.inv_sl).amin(), -(d.zl / self.pt.zl).amin()]
        rate = float(torch.stack(rates).amax())
        return 1.0 / rate if rate > 0 else math.inf


class NewtonSolver:
    """Solves `H du = r` for `H = J^T K J + blockdiag(S_g)`, `J = [I, -I]` (u = [v; w]).

    In `a = v - w`, `b = v + w` (`Sigma = S_v + S_w`, `Delta = S_v - S_w` per pattern):

        [[K + Sigma/4, Delta/4], [Delta/4, Sigma/4]] [a; b] = [(r_v - r_w)/2; (r_v + r_w)/2]

    `b` is eliminated per pattern, leaving `(K + S_v Sigma^{-1} S_w) a = ...`: one Cholesky of
    size P d (not 2 P d) and only `Sigma^{-1}`, which stays usable when `S_v` or `S_w` alone is
    singular to working precision (a solve through `S_v^{-1}`, `S_w^{-1}` lost every digit near
    the optimum in our runs). A solve is refined against `H` itself while its residual is above
    `accuracy` (at most `refine` times). Where `K + S_v Sigma^{-1} S_w` is not positive definite
    in floating point (its blocks are PSD, but computing them loses ~1e-5 of their scale when
    z / s spans ~1e10, met at 600 MNIST digits near the optimum), `H` itself (2 P d) is factored.
    """

    def __init__(self, kg, blk, btt, btu, p: int, refine: int, accuracy: float) -> None:
        self.kg, self.blk, self.btt, self.btu, self.p, self.refine = kg, blk, btt, btu, p, refine
        self.accuracy, self.check = accuracy, True
        d = blk.shape[-1]
        sv, sw = blk[:p], blk[p:]
        self.delta = sv - sw
        self.lsig, r1 = cholesky_shifted(sv + sw)
        finv = sv @ torch.cholesky_solve(sw, self.lsig)         # S_v Sigma^{-1} S_w
        finv = 0.5 * (finv + finv.mT)
        m = kg.clone()     # K + the symmetrised S_v Sigma^{-1} S_w on the diagonal blocks
        m.view(p, d, p, d).diagonal(dim1=0, dim2=2).add_(finv.permute(1, 2, 0))
        self.full = None
        try:
            (upper,), r2 = cholesky_shifted(m[None], upper=True)
            self.lm = upper.mT             # L = U^T (torch factors upper ~25% faster here)
        except ConvexSolverError:
            # S_v Sigma^{-1} S_w is PSD, but when z / s spans ~1e10 (large N near the optimum)
            # its rounding error can exceed every shift: factor H itself (2 P d, 8x the work;
            # its sums of PSD terms do not cancel)
            h = torch.cat([torch.cat([kg, -kg], 1), torch.cat([-kg, kg], 1)])
            h.view(2 * p, d, 2 * p, d).diagonal(dim1=0, dim2=2).add_(blk.permute(1, 2, 0))
            (upper,), r2 = cholesky_shifted(h[None], upper=True)
            self.full = upper.mT
        self.regularization = max(r1, r2)

    def _solve_u(self, ru: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.full is not None:
            return chol_solve(self.full, ru.reshape(-1, 1)).reshape(2 * p, -1)
        ra, rb = 0.5 * (ru[:p] - ru[p:]), 0.5 * (ru[:p] + ru[p:])
        sig_rb = torch.cholesky_solve(rb[:, :, None], self.lsig)                 # Sigma^-1 r_b
        rhs = ra - (self.delta @ sig_rb)[:, :, 0]
        a = chol_solve(self.lm, rhs.reshape(-1, 1)).reshape(p, -1)
        b = torch.cholesky_solve(4.0 * rb[:, :, None] - self.delta @ a[:, :, None],
                                 self.lsig)[:, :, 0]
        return torch.cat([0.5 * (a + b), 0.5 * (b - a)])

    def apply(self, du: torch.Tensor) -> torch.Tensor:
        p = self.p
        ka = (self.kg @ (du[:p] - du[p:]).reshape(-1)).reshape(p, -1)
        return torch.cat([ka, -ka]) + torch.einsum("gij,gj->gi", self.blk, du)

    def __call__(self, ru: torch.Tensor, rt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ru = ru - self.btu * (rt / self.btt)[:, None]
        du = self._solve_u(ru)
        for _ in range(self.refine if self.check else 0):   # refinement against H itself
            r = ru - self.apply(du)
            # the solve's residual is what the step adds to the dual residual: refine until
            # it is a tenth of the dual residual the iterate already has (or of feas_tol)
            if float(r.abs().amax()) <= self.accuracy:
                self.check = False   # this factorisation is accurate: trust its other solves
                break
            du = du + self._solve_u(r)
        return du, (rt - (self.btu * du).sum(1)) / self.btt


def chol_solve(chol: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """`(L L^T)^{-1} r` by two triangular solves. On the CPU through LAPACK's trtrs on a view of
    `L` (scipy): torch's solve_triangular copies the factor at every call, 30x slower for one
    right-hand side at n = 4,000, which made the solves, not the factorisation, the cost of an
    iteration; torch.cholesky_solve copies too."""
    if chol.device.type == "cpu" and chol.ndim == 2 and not chol.requires_grad:
        from scipy.linalg import solve_triangular

        ln = chol.detach().numpy()
        y = solve_triangular(ln, r.detach().numpy(), lower=True, check_finite=False)
        x = solve_triangular(ln, y, lower=True, trans="T", check_finite=False)
        return torch.from_numpy(x).to(r.dtype)
    y = torch.linalg.solve_triangular(chol, r, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def cholesky_shifted(h: torch.Tensor, upper: bool = False) -> tuple[torch.Tensor, float]:
    """Cholesky factors (`L`, or `U = L^T` if `upper`) of a batch of SPD matrices, with the
    smallest diagonal shift (relative to each matrix's largest diagonal entry) that works for
    all of them."""
    scale = h.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)
    for reg in (0.0, 1e-14, 1e-12, 1e-10, 1e-8):
        hh = h if reg == 0.0 else h + (reg * scale)[..., None, None] * torch.eye(
            h.shape[-1], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(hh, upper=upper)
        if not bool((info != 0).any()):
            return chol, reg
    raise ConvexSolverError("solver='ipm': the Newton matrix is not positive definite even "
                            "with a 1e-8 relative diagonal shift (numerical breakdown)",
                            "numerical_error")
