"""PODM, the propagation and optimality based deep model (Liu, Cheng, Liu, Ma, Fan, Luo, "A
Bridging Framework for Model Optimization and Deep Propagation", NeurIPS 2018), with the
relaxed variant RPODM and FISTA / proximal-gradient baselines.

Model (eq. 1): ``Phi(x) = f(x) + g(x)``, ``f(x) = 1/2 ||A x - y||^2`` for any operator A
(``L = ||A||^2 = physics.norm()``), g a prior with an exact prox (``convexnn.solvers.prox``).
Distance of eq. 2 with ``H = mu I / 2``: ``d(x, x_A) = mu/2 ||x - x_A||^2``. Stage l:

1. network:      ``x_A = A(x^{l-1})`` (any denoiser ``denoiser(x, sigma)``, or None = identity)
2. propagation:  ``x~ = F(x_A) = argmin_x f(x) + mu/2 ||x - x_A||^2``              (eq. 3)
                 closed form for circular Blur (FFT), Downsample (Woodbury on the low-res
                 grid) and Identity; conjugate gradient otherwise
3. momentum prox: ``x_G = prox_{gamma g}(x~ - gamma (grad f(x~) + mu (x~ - x^{l-1})))`` (eq. 7)
4. optimality error ``psi = (x~ - x_G)/gamma - mu/2 (2 x~ - x_G - x^{l-1})
                 + H (x_G - x^{l-1}) + grad f(x_G) - grad f(x~)``          (after eq. 7)
5. check ``||psi|| <= c ||x_G - x^{l-1}||`` (eq. 5): ``x^l = x_G`` if it holds, else the
   proximal-gradient feedback ``x^l = prox_{gamma g}(x^{l-1} - gamma grad f(x^{l-1}))`` (eq. 6).

Prop. 1 turns a passed check into ``Phi(x_G) <= Phi(x^{l-1}) - (mu/4 - c^2/mu) ||x_G -
x^{l-1}||^2``, but it assumes x_G globally minimises eq. 4; for nonconvex g (l_p, l_0) the
momentum prox step only gives a critical point of eq. 4. ``descent_check=True`` (default)
therefore also tests that inequality itself (Phi is cheap) and falls back when it fails; the
feedback step decreases Phi for ``gamma < 1/L`` (Prop. 1, second part), and a stage whose
feedback step would still raise Phi (rounding, or a step >= 1/L) keeps ``x^{l-1}``. So Phi
never increases, whatever the network does.

``optimality="always"`` is RPODM (Sec. 4.2, ``x^l = G(F(A(x^{l-1})))``, no check);
``optimality="none"`` drops the optimality module (``x^l = F(A(x^{l-1}))``, the naive
IRCNN-style network-in-the-loop iteration the paper compares with).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .denoisers import call_denoiser
from .history import History
from .operators import LinearOperator
from .pnp_run import PnPConfig, SolverRun
from .propagation import Propagation
from .prox import Prox

__all__ = ["PODMConfig", "OPTIMALITY_MODES", "Propagation", "momentum_prox_step",
           "optimality_error", "podm", "fista", "proximal_gradient"]

OPTIMALITY_MODES = ("check", "always", "none")


def _positive(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"PODMConfig: {name}: expected a finite number > 0"
                         f"{' or None' if allow_none else ''}, got {value!r}")


@dataclass
class PODMConfig:
    """Options of `podm` (and of the `fista` / `proximal_gradient` baselines, which use
    n_stages, step, tol, lipschitz, x0, data_range, compute_ssim).

    n_stages : number of stages l (iterations); stop earlier when rel_change < tol.
    mu : weight of the learned prior, ``d(x, x_A) = mu/2 ||x - x_A||^2`` (H = mu I / 2).
    c : tolerance constant of eq. 5; None -> mu / 4. Prop. 1 gives descent for c < mu / 2.
    step : gamma of eqs. 6-7; None -> 0.99 / L (Prop. 1 needs gamma < 1/L).
    sigma : noise level passed to the network, ``denoiser(x, sigma)``.
    optimality : "check" (PODM, eqs. 5-6), "always" (RPODM: accept x_G), "none" (x = F(A(x))).
    descent_check : also require the descent inequality of Prop. 1 before accepting x_G.
    lipschitz : L = ||A||^2 when known (skips physics.norm()).
    x0 : start; None -> A^T y.
    propagation : "auto" (closed form where known, else CG) or "cg".
    """

    n_stages: int = 100
    mu: float = 1e-2
    c: float | None = None
    step: float | None = None
    tol: float = 1e-6
    sigma: float | None = None
    optimality: str = "check"
    descent_check: bool = True
    lipschitz: float | None = None
    x0: Tensor | None = None
    propagation: str = "auto"
    cg_iter: int = 100
    cg_tol: float = 1e-10
    data_range: float | None = None
    compute_ssim: bool = True

    to_dict = PnPConfig.to_dict   # field -> value, tensors as "tensor(shape)"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        n = self.n_stages
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PODMConfig: n_stages: expected a positive integer, got {n!r}")
        _positive(self.mu, "mu")
        _positive(self.c, "c", allow_none=True)
        _positive(self.step, "step", allow_none=True)
        _positive(self.lipschitz, "lipschitz", allow_none=True)
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"PODMConfig: tol: expected a number >= 0, got {self.tol!r}")
        if self.optimality not in OPTIMALITY_MODES:
            raise ValueError(f"PODMConfig: optimality: expected one of "
                             f"{list(OPTIMALITY_MODES)}, got {self.optimality!r}")
        if self.propagation not in ("auto", "cg"):
            raise ValueError(f"PODMConfig: propagation: expected 'auto' or 'cg', got "
                             f"{self.propagation!r}")
        _positive(self.data_range, "data_range", allow_none=True)
        for name in ("cg_iter",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PODMConfig: {name}: expected a positive integer, got {v!r}")
        if self.x0 is not None and not isinstance(self.x0, Tensor):
            raise TypeError(f"PODMConfig: x0: expected a torch.Tensor or None, got "
                            f"{type(self.x0).__name__}")

    @property
    def c_value(self) -> float:
        return self.mu / 4.0 if self.c is None else float(self.c)


# ---------------------------------------------------------------------------- eqs. 5-7
def momentum_prox_step(x_t: Tensor, x_prev: Tensor, grad_t: Tensor, prox: Prox, step: float,
                       mu: float) -> Tensor:
    """``x_G = prox_{gamma g}(x~ - gamma (grad f(x~) + mu (x~ - x^{l-1})))`` (eq. 7)."""
    return prox(x_t - step * (grad_t + mu * (x_t - x_prev)), step)


def optimality_error(x_t: Tensor, x_g: Tensor, x_prev: Tensor, grad_t: Tensor,
                     grad_g: Tensor, step: float, mu: float) -> Tensor:
    """``psi(eps) = (x~ - x_G)/gamma - mu/2 (2 x~ - x_G - x^{l-1}) + H (x_G - x^{l-1})
    + grad f(x_G) - grad f(x~)`` with H = mu I / 2 (the computable form after eq. 7)."""
    return ((x_t - x_g) / step - 0.5 * mu * (2.0 * x_t - x_g - x_prev)
            + 0.5 * mu * (x_g - x_prev) + grad_g - grad_t)


# ---------------------------------------------------------------------------- a solve
def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


class _Problem:
    """Phi = f + g for one solve: input checks, L and gamma, the history records (through the
    bookkeeping of `convexnn.solvers.pnp`, so every solver's History means the same)."""

    def __init__(self, name: str, y, physics, prox, config: PODMConfig | None, x_ref) -> None:
        cfg = PODMConfig() if config is None else config
        if not isinstance(cfg, PODMConfig):
            raise TypeError(f"{name}: config: expected PODMConfig, got {type(cfg).__name__}")
        cfg.validate()
        if not isinstance(prox, Prox):
            raise TypeError(f"{name}: prox: expected a convexnn.solvers.prox.Prox (L1, Lp, Box, "
                            f"...), got {type(prox).__name__}")
        if x_ref is not None and not isinstance(x_ref, Tensor):
            raise TypeError(f"{name}: x_ref: expected a torch.Tensor or None, got "
                            f"{type(x_ref).__name__}")
        self.cfg, self.physics, self.prox = cfg, physics, prox
        self.run = run = SolverRun(name, y, physics, None, PnPConfig(
            step=cfg.step, lipschitz=cfg.lipschitz, max_iter=cfg.n_stages, tol=cfg.tol,
            x0=cfg.x0, reference=x_ref, cg_iter=cfg.cg_iter, cg_tol=cfg.cg_tol,
            energy=lambda x: self.evaluate(x)[0], data_range=cfg.data_range,
            compute_ssim=cfg.compute_ssim))
        run.hist.config = cfg.to_dict()
        self.y, self.x0, self.hist = run.y, run.x0, run.hist
        self.x_ref = None if x_ref is None else x_ref.detach().to(self.x0)
        L = run.lipschitz()
        self.step = float(cfg.step) if cfg.step is not None else 0.99 / L
        self.hist.flags.update(step=self.step, step_below_1_over_L=self.step * L < 1.0)
        self.phi0 = self.hist.flags["phi0"] = self.evaluate(self.x0)[0]

    def evaluate(self, x: Tensor, grad: bool = False) -> tuple[float, Tensor | None]:
        """``(Phi(x), grad f(x) or None)``."""
        r = self.physics.A(x) - self.y
        phi = 0.5 * float((r * r).sum()) + float(self.prox.value(x).sum())
        return phi, (self.physics.A_adjoint(r) if grad else None)

    def prox_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        """``prox_{gamma g}(x - gamma grad f(x))`` (eq. 6, second case)."""
        return self.prox(x - self.step * grad, self.step)

    def record(self, x_new: Tensor, x_old: Tensor, **flags) -> bool:
        """Append one stage (the four panels of the paper's Fig. 2 and more); True = stop."""
        flags["rel_error"] = _norm(x_new - x_old) / (_norm(x_old) or 1.0)  # paper's Fig. 2a
        if self.x_ref is not None:
            flags["recon_error"] = _norm(x_new - self.x_ref) / (_norm(self.x_ref) or 1.0)
        return self.run.record(x_new, x_old, self.step, **flags)


def _network(denoiser, x: Tensor, sigma) -> Tensor:
    """``x_A = A(x)``: the denoiser in its own dtype (first parameter), cast back."""
    if denoiser is None:
        return x
    param = next(iter(denoiser.parameters()), None) if isinstance(denoiser,
                                                                  torch.nn.Module) else None
    xin = x.to(param.dtype) if param is not None and param.is_floating_point() else x
    with torch.no_grad():
        out = call_denoiser(denoiser, xin, sigma)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"podm: denoiser: expected an output of the input's shape "
                         f"{tuple(x.shape)}, got {got}")
    return out.to(x)


@torch.no_grad()
def podm(y: Tensor, physics: LinearOperator, prox: Prox,
         denoiser: Callable[..., Tensor] | None, config: PODMConfig | None = None,
         x_ref: Tensor | None = None) -> tuple[Tensor, History]:
    """Minimise ``Phi(x) = 1/2 ||A x - y||^2 + g(x)`` by PODM; returns ``(x, History)``.

    Per stage the history holds energy (Phi), rel_change, residual, PSNR/SSIM (with x_ref)
    and the flags rel_error (``||x^l - x^{l-1}|| / ||x^{l-1}||``), recon_error
    (``||x^l - x_gt|| / ||x_gt||``), optimality_error (``||psi||``), optimality_bound
    (``c ||x_G - x^{l-1}||``), fallback (eq. 6 feedback used) and descent_ok.
    """
    P = _Problem("podm", y, physics, prox, config, x_ref)
    cfg, step, mu, c = P.cfg, P.step, float(P.cfg.mu), P.cfg.c_value
    F = Propagation(physics, P.y, mu, cfg.propagation, cfg.cg_iter, cfg.cg_tol)
    kappa = max(mu / 4.0 - c * c / mu, 0.0)           # Prop. 1 descent constant
    P.hist.flags.update(propagation=F.method, c=c, descent_constant=kappa,
                        c_below_mu_over_2=c < mu / 2.0, prox=repr(prox))
    counts = {"n_accepted": 0, "n_fallback": 0, "n_descent_rejected": 0, "n_stalled": 0}
    x, phi = P.x0, P.phi0
    for _ in range(cfg.n_stages):
        x_a = _network(denoiser, x, cfg.sigma)                 # network A
        x_t = F(x_a)                                           # eq. 3: propagation module P
        flags: dict = {"network_finite": bool(torch.isfinite(x_a).all())}
        if cfg.optimality == "none":                           # IRCNN-style: x = F(A(x))
            x_new = x_t
        else:
            g_t = P.evaluate(x_t, grad=True)[1]
            x_g = momentum_prox_step(x_t, x, g_t, prox, step, mu)           # eq. 7
            if cfg.optimality == "always":                     # RPODM: x = G(F(A(x)))
                x_new = x_g
            else:
                phi_g, g_g = P.evaluate(x_g, grad=True)
                psi = optimality_error(x_t, x_g, x, g_t, g_g, step, mu)     # psi(eps^l)
                delta = _norm(x_g - x)
                err, bound = _norm(psi), c * delta
                passed = err <= bound                                       # eq. 5
                descent = phi_g <= phi - kappa * delta ** 2    # Prop. 1 inequality
                accept = passed and (descent or not cfg.descent_check)
                flags.update(optimality_error=err, optimality_bound=bound,
                             check_passed=passed, descent_ok=descent, fallback=not accept)
                if accept:
                    x_new, phi = x_g, phi_g
                    counts["n_accepted"] += 1
                else:                                          # eq. 6: feedback
                    counts["n_fallback"] += 1
                    counts["n_descent_rejected"] += int(passed)
                    x_new = P.prox_grad(x, P.evaluate(x, grad=True)[1])
                    phi_pg = P.evaluate(x_new)[0]
                    if phi_pg <= phi:
                        phi = phi_pg
                    else:                                      # only by rounding / step >= 1/L
                        counts["n_stalled"] += 1
                        x_new = x
        stop = P.record(x_new, x, **flags)
        x = x_new
        if stop:
            break
    P.hist.flags.update(counts)
    return x, P.run.done()


@torch.no_grad()
def _first_order(name: str, y, physics, prox, config, x_ref, momentum: bool):
    P = _Problem(name, y, physics, prox, config, x_ref)
    x = z = P.x0
    t = 1.0
    for _ in range(P.cfg.n_stages):
        x_new = P.prox_grad(z, P.evaluate(z, grad=True)[1])     # forward-backward step
        if momentum:                                            # Beck-Teboulle extrapolation
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            z = x_new + ((t - 1.0) / t_new) * (x_new - x)
            t = t_new
        else:
            z = x_new
        stop = P.record(x_new, x)
        x = x_new
        if stop:
            break
    return x, P.run.done()


def proximal_gradient(y: Tensor, physics: LinearOperator, prox: Prox,
                      config: PODMConfig | None = None, x_ref: Tensor | None = None
                      ) -> tuple[Tensor, History]:
    """``x^l = prox_{gamma g}(x^{l-1} - gamma grad f(x^{l-1}))`` (eq. 6 alone, every stage)."""
    return _first_order("proximal_gradient", y, physics, prox, config, x_ref, momentum=False)


def fista(y: Tensor, physics: LinearOperator, prox: Prox, config: PODMConfig | None = None,
          x_ref: Tensor | None = None) -> tuple[Tensor, History]:
    """FISTA (Beck and Teboulle 2009) on the same Phi, step gamma; with a nonconvex g it is
    the usual heuristic (no monotonicity or convergence guarantee)."""
    return _first_order("fista", y, physics, prox, config, x_ref, momentum=True)
