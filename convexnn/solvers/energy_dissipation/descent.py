"""Algorithm 1: learned energy dissipation with an Armijo line search.

``u^{k+1} = u^k - tau_k d^k`` (eq. 5) with ``d^k = G(u^k, f, grad E(u^k); theta)`` (eq. 3),
``tau_k`` from backtracking: start at ``tau = 1`` and multiply by ``rho`` until
``E(u - tau d) <= E(u) - c tau <d, grad E(u)>``. Each batch sample is its own problem with its
own step. Stops when every sample has ``||grad E|| <= grad_tol``, meets the discrepancy principle
``||A u - f|| <= delta`` (eq. 2), or after ``max_iter`` iterations. ``step_rule="constant"``
uses ``tau = zeta1 / (zeta2^2 L)`` of Prop. 2 instead of the line search.

Safeguards that keep ``E(u^{k+1}) <= E(u^k)`` for any direction (Prop. 1, eq. 10): a sample
whose direction is not a descent direction (``<d, g> <= 0``, only possible without a projection
layer or below the ``1e-6`` gradient floor) or whose line search exhausts ``max_backtracks``
does not move and is marked; NaN/inf energies, gradients or directions raise ``EnergyError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..energies import Energy, EnergyError, check_batch
from ..history import History
from .projection import TwoSidedProjection

__all__ = ["DescentConfig", "energy_dissipating_descent", "gradient_descent"]

Direction = Callable[[Tensor, Tensor, Energy], Tensor]


@dataclass
class DescentConfig:
    """Options of Algorithm 1.

    c, rho : Armijo constant in (0, 0.5) and backtracking factor in (0, 1).
    max_iter : iterations; grad_tol : stop when ``||grad E|| <= grad_tol`` (every sample).
    discrepancy : delta of eq. 2 (a number or a per-sample tensor); stop when every sample has
        ``||A u - f|| <= delta``.
    step_rule : ``"armijo"`` (Algorithm 1) or ``"constant"`` (Prop. 2: ``zeta1/(zeta2^2 L)``).
    zeta1, zeta2, lipschitz : for the constant step; default from the network's
        ``TwoSidedProjection`` and ``energy.lipschitz()``.
    initial_step : the first trial step of the line search (Algorithm 1: 1).
    max_backtracks : a sample that needs more does not move (flagged).
    reference, data_range, compute_ssim : PSNR/SSIM per iteration in the history.
    """

    c: float = 1e-4
    rho: float = 0.5
    max_iter: int = 100
    grad_tol: float = 1e-8
    discrepancy: float | Tensor | None = None
    step_rule: Literal["armijo", "constant"] = "armijo"
    zeta1: float | None = None
    zeta2: float | None = None
    lipschitz: float | None = None
    initial_step: float = 1.0
    max_backtracks: int = 60
    reference: Tensor | None = None
    data_range: float | None = None
    compute_ssim: bool = False
    record_history: bool = True

    def __post_init__(self) -> None:
        def real(name: str, what: str, ok) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
                raise ValueError(f"DescentConfig: {name}: expected {what}, got {v!r}")

        def integer(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"DescentConfig: {name}: expected an integer >= 0, got {v!r}")

        real("c", "0 < c < 0.5", lambda v: 0 < v < 0.5)
        real("rho", "0 < rho < 1", lambda v: 0 < v < 1)
        integer("max_iter")
        real("grad_tol", ">= 0", lambda v: v >= 0)
        if self.step_rule not in ("armijo", "constant"):
            raise ValueError(f"DescentConfig: step_rule: expected 'armijo' or 'constant', got "
                             f"{self.step_rule!r}")
        real("initial_step", "> 0", lambda v: math.isfinite(v) and v > 0)
        integer("max_backtracks")
        for name in ("zeta1", "zeta2", "lipschitz"):
            if getattr(self, name) is not None:
                real(name, "a positive finite number or None",
                     lambda v: math.isfinite(v) and v > 0)
        if self.discrepancy is not None:
            d = self.discrepancy
            ok = (isinstance(d, Tensor) and d.is_floating_point()) or (
                isinstance(d, (int, float)) and not isinstance(d, bool))
            if not ok or not bool(torch.all(torch.as_tensor(d) >= 0)):
                raise ValueError(f"DescentConfig: discrepancy: expected delta >= 0 (a number "
                                 f"or a per-sample tensor), got {d!r}")

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("reference")
        if isinstance(d["discrepancy"], Tensor):
            d["discrepancy"] = d["discrepancy"].tolist()
        return d


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _direction(direction, u: Tensor, g: Tensor, energy: Energy) -> Tensor:
    if direction is None:
        return g
    if hasattr(direction, "direction"):
        return direction.direction(u, g, energy)
    return direction(u, g, energy)


def _finite(name: str, t: Tensor, k: int) -> None:
    if not bool(torch.isfinite(t).all()):
        raise EnergyError(f"energy_dissipating_descent: iteration {k}: the {name} holds "
                          f"{int((~torch.isfinite(t)).sum())} NaN/inf values")


def _constant_step(direction, energy: Energy, u: Tensor, cfg: DescentConfig) -> float:
    z1, z2 = cfg.zeta1, cfg.zeta2
    proj = getattr(direction, "projection", None)
    if (z1 is None or z2 is None) and isinstance(proj, TwoSidedProjection):
        z1, z2 = proj.zeta1, proj.zeta2
    if direction is None and (z1 is None or z2 is None):
        z1 = z2 = 1.0                     # d = g lies in C(1, 1, g)
    if z1 is None or z2 is None:
        raise ValueError("step_rule='constant' (Prop. 2) needs zeta1 and zeta2: set them in "
                         "DescentConfig or use a network with a TwoSidedProjection (eq. 15)")
    if not (0 < z1 <= z2):
        raise ValueError(f"step_rule='constant': expected 0 < zeta1 <= zeta2, got zeta1 = {z1},"
                         f" zeta2 = {z2}")
    lip = cfg.lipschitz if cfg.lipschitz is not None else energy.lipschitz(u)
    if lip is None or not lip > 0:
        raise ValueError(f"step_rule='constant' (Prop. 2) needs the Lipschitz constant L of "
                         f"grad E; the energy {type(energy).__name__} does not know it: pass "
                         f"DescentConfig(lipschitz=...)")
    return z1 / (z2 * z2 * lip)          # Prop. 2: tau = zeta1 / (zeta2^2 L)


@dataclass
class _Descent:
    """Algorithm 1's run: fixed settings, the iterate ``u^k`` with its energy and gradient, the
    samples that stalled, and the history being written."""

    energy: Energy
    direction: Direction | None
    cfg: DescentConfig
    delta: Tensor | None
    tau_const: float | None
    hist: History
    x0n: float
    t0: float
    u: Tensor
    e: Tensor
    g: Tensor
    stalled: Tensor


@dataclass
class _Step:
    """One iteration's per-sample outcome: the next iterate (eq. 5) with its energy, the
    accepted step, backtracking counts and the safeguard flags."""

    u: Tensor
    e: Tensor
    tau: Tensor
    backtracks: Tensor
    failed: Tensor
    not_descent: Tensor


def _check_energy(energy: Energy) -> None:
    if not isinstance(energy, Energy):
        raise TypeError(f"energy: expected a convexnn.solvers.energies.Energy, got "
                        f"{type(energy).__name__}")
    if not energy.differentiable:
        raise EnergyError(f"{type(energy).__name__} is not differentiable; Algorithm 1 needs a "
                          f"continuously differentiable energy (e.g. CharbonnierTV with eps > 0)")


def _start(energy: Energy, u: Tensor, direction: Direction | None,
           cfg: DescentConfig) -> _Descent:
    """Discrepancy level, constant step, history and ``E(u^0)``, ``grad E(u^0)``."""
    delta = None if cfg.discrepancy is None else torch.as_tensor(
        cfg.discrepancy, dtype=u.dtype, device=u.device).expand(u.shape[0])
    tau_const = _constant_step(direction, energy, u, cfg) if cfg.step_rule == "constant" \
        else None
    hist = History("energy_dissipation" if direction is not None else "gradient_descent",
                   config=cfg.summary())
    e, g = energy.value_and_gradient(u)
    _finite("energy", e, 0)
    _finite("gradient", g, 0)
    hist.flags.update(initial_energy=float(e.sum()), initial_energy_per_sample=e.tolist())
    x0n = float(u.norm()) or 1.0
    t0 = time.perf_counter()
    stalled = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
    return _Descent(energy, direction, cfg, delta, tau_const, hist, x0n, t0, u, e, g, stalled)


def _stopping(run: _Descent) -> tuple[Tensor, tuple[str, bool] | None]:
    """The samples that are done, and ``(reason, converged)`` when the whole batch stops."""
    cfg = run.cfg
    gnorm = run.g.flatten(1).norm(dim=1)
    done = gnorm <= cfg.grad_tol
    if bool((gnorm == 0).all()):
        return done, ("zero gradient", True)
    if bool(done.all()):
        return done, (f"||grad E|| <= {cfg.grad_tol:g}", True)
    if run.delta is not None:
        res = run.energy.residual(run.u)
        done = done | (res <= run.delta)
        if bool((res <= run.delta).all()):
            return done, ("discrepancy principle ||A u - f|| <= delta", True)
    if bool((done | run.stalled).all()):
        return done, ("every sample converged or stalled", bool(done.all()))
    return done, None


def _checked_direction(run: _Descent, k: int) -> Tensor:
    """``d^k`` (eq. 3), checked for shape and NaN/inf, in the dtype of ``u``."""
    u = run.u
    d = _direction(run.direction, u, run.g, run.energy)
    if not isinstance(d, Tensor) or d.shape != u.shape:
        raise ValueError(f"direction: expected a tensor of the shape of u "
                         f"{tuple(u.shape)}, got "
                         f"{tuple(d.shape) if isinstance(d, Tensor) else type(d)}")
    d = d.to(u.dtype)
    _finite("direction", d, k + 1)
    return d


def _line_search(run: _Descent, d: Tensor, slope: Tensor,
                 active: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Trial point, its energy, step and backtracking counts: the constant step, or Armijo
    backtracking from ``initial_step`` for the active samples."""
    u, e, cfg, tau_const = run.u, run.e, run.cfg, run.tau_const
    tau = torch.where(active, torch.full_like(e, tau_const or cfg.initial_step),
                      torch.zeros_like(e))
    backtracks = torch.zeros_like(e, dtype=torch.long)
    u_new = u - _bcast(tau, u) * d               # eq. 5
    e_new = run.energy.value(u_new)
    if tau_const is None:
        for _ in range(cfg.max_backtracks):
            # Algorithm 1, line 6: E(u^{k+1}) > E(u^k) - c tau <d^k, grad E(u^k)>
            bad = active & ~(e_new <= e - cfg.c * tau * slope)
            if not bool(bad.any()):
                break
            tau = torch.where(bad, tau * cfg.rho, tau)
            backtracks += bad.long()
            u_try = u - _bcast(tau, u) * d
            e_try = run.energy.value(u_try)
            u_new = torch.where(_bcast(bad, u), u_try, u_new)
            e_new = torch.where(bad, e_try, e_new)
    return u_new, e_new, tau, backtracks


def _descent_step(run: _Descent, d: Tensor, done: Tensor) -> _Step:
    """Line search along ``d``; samples that are done, stalled, not descending, whose line
    search failed or whose energy is not finite keep ``u^k`` (Prop. 1)."""
    u, e, cfg = run.u, run.e, run.cfg
    slope = _dot(d, run.g)                           # <d^k, grad E(u^k)>
    active = ~done & ~run.stalled & (slope > 0)
    not_descent = ~done & ~run.stalled & (slope <= 0)
    u_new, e_new, tau, backtracks = _line_search(run, d, slope, active)
    failed = active & ~(e_new <= e - cfg.c * tau * slope) if run.tau_const is None \
        else active & ~(e_new <= e)
    keep = ~active | failed | ~torch.isfinite(e_new)
    tau = torch.where(keep, torch.zeros_like(tau), tau)
    u_new = torch.where(_bcast(keep, u), u, u_new)
    e_new = torch.where(keep, e, e_new)
    return _Step(u_new, e_new, tau, backtracks, failed, not_descent)


def _record(run: _Descent, step: _Step, change: float) -> None:
    """Append the iteration just taken (at ``run.u``) to the history."""
    cfg, u = run.cfg, run.u
    residual = None
    try:
        residual = float(run.energy.residual(u).pow(2).sum().sqrt())
    except EnergyError:
        pass
    run.hist.record(change, step=float(step.tau.mean()), energy=float(run.e.sum()),
                    residual=residual, x=u if cfg.reference is not None else None,
                    reference=cfg.reference, data_range=cfg.data_range,
                    compute_ssim=cfg.compute_ssim, time=time.perf_counter() - run.t0,
                    backtracks=step.backtracks.tolist(), tau=step.tau.tolist(),
                    grad_norm=float(run.g.flatten(1).norm(dim=1).max()),
                    line_search_failed=int(step.failed.sum()),
                    not_descent=int(step.not_descent.sum()))


def _iterate(run: _Descent, done: Tensor, k: int) -> None:
    """Iteration ``k + 1``: move to ``u^{k+1}``, refresh energy and gradient, record."""
    d = _checked_direction(run, k)
    step = _descent_step(run, d, done)
    run.stalled = run.stalled | step.failed | step.not_descent
    change = float((step.u - run.u).norm()) / run.x0n
    run.u = step.u
    run.e, run.g = run.energy.value_and_gradient(run.u)
    if not bool(torch.isfinite(run.e).all()):
        _finite("energy", run.e, k + 1)
    _finite("gradient", run.g, k + 1)
    if run.cfg.record_history:
        _record(run, step, change)


@torch.no_grad()
def energy_dissipating_descent(energy: Energy, u0: Tensor, direction: Direction | None = None,
                               config: DescentConfig | None = None
                               ) -> tuple[Tensor, History]:
    """Algorithm 1 from ``u0`` ``(B, ...)``; ``direction`` a ``DirectionNetwork``, any
    callable ``(u, g, energy) -> d``, or None for the gradient. Returns ``(u, History)``;
    the history's energy is the sum over the batch, its flags hold the per-sample steps and
    backtracking counts."""
    cfg = config or DescentConfig()
    _check_energy(energy)
    u = check_batch(u0, "u0").clone()
    energy.check_input(u)
    was_training = getattr(direction, "training", False)
    if was_training:
        direction.eval()
    run = _start(energy, u, direction, cfg)
    reason, converged = f"max_iter = {cfg.max_iter} reached", False
    try:
        for k in range(cfg.max_iter + 1):
            done, stop = _stopping(run)
            if stop is not None:
                reason, converged = stop
                break
            if k == cfg.max_iter:
                break
            _iterate(run, done, k)
        if bool(run.stalled.any()) and not converged:
            reason += f"; {int(run.stalled.sum())} sample(s) stalled (line search failed or " \
                      f"not a descent direction)"
    finally:
        if was_training:
            direction.train()
    return run.u, run.hist.finish(converged, reason)


def gradient_descent(energy: Energy, u0: Tensor, config: DescentConfig | None = None,
                     scale: float = 1.0) -> tuple[Tensor, History]:
    """Algorithm 1 with the direction ``d = scale * grad E`` (``scale = 1/L``: first trial step
    ``1/L``)."""
    from .networks import GradientDirection
    return energy_dissipating_descent(energy, u0, GradientDirection(scale), config)
