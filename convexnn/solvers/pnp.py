"""Plug-and-play algorithms: a denoiser J in place of a proximal operator.

Data term `f(x) = 1/2 ||A x - y||^2`, `grad f = A^T (A x - y)`, L = ||A||^2 = `physics.norm()`,
`prox_{gamma f}(v) = (I + gamma A^T A)^{-1} (v + gamma A^T y)` (closed form for a circular blur,
downsampling and the identity, conjugate gradients otherwise: `propagation.Propagation`).

- `pnp_pgd`: x_{k+1} = x_k + lambda_k (J(x_k - gamma grad f(x_k)) - x_k)   (PnP-FB / PnP-MMO)
- `pnp_admm`: x_{k+1} = prox_{gamma f}(z_k - u_k); z_{k+1} = J(x_{k+1} + u_k);
  u_{k+1} = u_k + x_{k+1} - z_{k+1}; estimate z
- `pnp_hqs`: x_{k+1} = prox_{gamma f}(z_k); z_{k+1} = J(x_{k+1}); estimate z
- `pnp_drs`: u_k = prox_{gamma f}(z_k); v_k = J(2 u_k - z_k); z_{k+1} = z_k + lambda (v_k - u_k);
  estimate u
- `red`: x_{k+1} = x_k - gamma (grad f(x_k) + lam (x_k - J(x_k)))   (RED, gradient form)

Each is `solver(y, physics, denoiser, PnPConfig(...)) -> (x, History)` and stops when
`rel_change = ||x_k - x_{k-1}|| / ||x_0|| < tol`.

Convergence (Pesquet, Repetti, Terris, Wiaux 2021): with J firmly nonexpansive, PnP-FB
converges for gamma in (0, 2/L) and relaxation lambda in [eps, delta - eps],
delta = min(1, 1/(gamma L)) + 1/2; DRS/ADMM for any gamma > 0 and DRS relaxation in (0, 2);
HQS (composition of two firmly nonexpansive maps) for any gamma > 0 when a fixed point exists;
RED when I - J is firmly nonexpansive (it is when J is) and gamma < 2 / (L + lam).
`require_convergence=True` checks these and, unless the denoiser declares
`firmly_nonexpansive = True`, estimates `||grad (2J - I)(x_0)||` and raises above 1.
"""

from __future__ import annotations

import math

import torch

from .pnp_run import ConvergenceError, PnPConfig, SolverRun, data_prox, norm

__all__ = ["PnPConfig", "ConvergenceError", "pnp_pgd", "pnp_admm", "pnp_hqs", "pnp_drs", "red",
           "data_prox", "PNP_SOLVERS"]


# ---------------------------------------------------------------------------- algorithms
@torch.no_grad()
def pnp_pgd(y, physics, denoiser, config: PnPConfig | None = None):
    """PnP forward-backward with relaxation (PnP-MMO, Pesquet et al. 2021):
    `x_{k+1} = x_k + lambda (J(x_k - gamma A^T (A x_k - y)) - x_k)`. Returns (x, History)."""
    run = SolverRun("pnp_pgd", y, physics, denoiser, config)
    cfg = run.cfg
    gamma = run.step()
    L = run.lipschitz()
    lam = cfg.relaxation
    run.hist.flags.update(step=gamma, step_bound=2.0 / L if L > 0 else math.inf)
    if L > 0 and gamma >= 2.0 / L:
        msg = (f"step {gamma:.4g} >= 2/L = {2.0 / L:.4g} (L = ||A||^2 = {L:.4g}): "
               f"forward-backward needs gamma < 2/L")
        if gamma > 2.0 / L or cfg.require_convergence:
            run.fail(msg)
    delta = min(1.0, 1.0 / (gamma * L)) + 0.5 if L > 0 else 1.5   # relaxation bound (PnP-FB)
    run.hist.flags["relaxation_bound"] = delta
    if cfg.require_convergence and not lam < delta:
        run.fail(f"relaxation {lam} must lie in (0, delta), delta = min(1, 1/(gamma L)) + 1/2 "
                 f"= {delta:.4g}")
    run.check_denoiser_fne()

    def step(x):                     # forward (gradient) step, relaxed backward step: PnP-MMO
        return x + lam * (run.denoise(x - gamma * run.grad_f(x)) - x), {}

    return run.loop(run.x0, step, gamma), run.done()


@torch.no_grad()
def pnp_admm(y, physics, denoiser, config: PnPConfig | None = None):
    """PnP-ADMM: `x = prox_{gamma f}(z - u); z = J(x + u); u = u + x - z`; returns (z, History)."""
    run = SolverRun("pnp_admm", y, physics, denoiser, config)
    gamma = run.step()
    run.hist.flags["step"] = gamma
    run.check_denoiser_fne()

    def step(state):
        z, u = state
        x = run.prox(z - u, gamma)
        z_new = run.denoise(x + u)
        return (z_new, u + x - z_new), {"primal_dual_gap": norm(x - z_new) / run.x0_norm}

    z = run.loop((run.x0, torch.zeros_like(run.x0)), step, gamma, estimate=lambda s: s[0])
    return z, run.done()


@torch.no_grad()
def pnp_hqs(y, physics, denoiser, config: PnPConfig | None = None):
    """PnP half-quadratic splitting: `x = prox_{gamma f}(z); z = J(x)`; returns (z, History)."""
    run = SolverRun("pnp_hqs", y, physics, denoiser, config)
    gamma = run.step()
    run.hist.flags["step"] = gamma
    run.check_denoiser_fne()
    z = run.loop(run.x0, lambda z: (run.denoise(run.prox(z, gamma)), {}), gamma)
    return z, run.done()


@torch.no_grad()
def pnp_drs(y, physics, denoiser, config: PnPConfig | None = None):
    """PnP Douglas-Rachford: `u = prox_{gamma f}(z); v = J(2u - z); z = z + lambda (v - u)`;
    returns (u, History)."""
    run = SolverRun("pnp_drs", y, physics, denoiser, config)
    cfg = run.cfg
    gamma = run.step()
    lam = cfg.relaxation
    run.hist.flags["step"] = gamma
    if not lam < 2.0:
        run.fail(f"relaxation {lam} must lie in (0, 2) for Douglas-Rachford")
    run.check_denoiser_fne()

    def step(state):
        z, u = state
        z_new = z + lam * (run.denoise(2.0 * u - z) - u)
        return (z_new, run.prox(z_new, gamma)), {"z_rel_change": norm(z_new - z) / run.x0_norm}

    u = run.loop((run.x0, run.prox(run.x0, gamma)), step, gamma, estimate=lambda s: s[1])
    return u, run.done()


@torch.no_grad()
def red(y, physics, denoiser, config: PnPConfig | None = None):
    """Regularisation by denoising, gradient form (Romano, Elad, Milanfar 2017):
    `x_{k+1} = x_k - gamma (A^T (A x_k - y) + lam (x_k - J(x_k)))`. Returns (x, History)."""
    run = SolverRun("red", y, physics, denoiser, config)
    cfg = run.cfg
    L = run.lipschitz()
    bound = 2.0 / (L + cfg.lam) if (L + cfg.lam) > 0 else math.inf
    gamma = cfg.step if cfg.step is not None else 1.0 / (L + cfg.lam)
    run.hist.flags.update(step=gamma, step_bound=bound)
    if gamma >= bound:
        msg = (f"step {gamma:.4g} >= 2/(L + lam) = {bound:.4g}: the RED gradient step needs "
               f"gamma < 2/(L + lam)")
        if gamma > bound or cfg.require_convergence:
            run.fail(msg)
    run.check_denoiser_fne()

    def step(x):
        g = run.grad_f(x) + cfg.lam * (x - run.denoise(x))
        return x - gamma * g, {"grad_norm": norm(g)}

    return run.loop(run.x0, step, gamma), run.done()


PNP_SOLVERS = {"pgd": pnp_pgd, "admm": pnp_admm, "hqs": pnp_hqs, "drs": pnp_drs, "red": red}
