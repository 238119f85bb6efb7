"""Deep-equilibrium (implicit) networks for inverse problems, trained by Jacobian-free
backpropagation (JFB).

Fung, Heaton, Li, McKenzie, Osher, Yin, "JFB: Jacobian-free backpropagation for implicit
networks" (2021), as applied to deblurring in Liu, Tong, Zhao, Wu Fung, "Fast training of
implicit networks with applications in inverse problems" (shared/papers/
jfb_implicit_networks.txt; slide titles are quoted in the comments, docs/deq.md maps them).

The network output is the fixed point ``x* = T_theta(x*; d)`` of one of two layers:

- ``form="gradient"``: ``T(x) = x - r A^T (A x - d) - S_theta(x)``     (slide "Implicit Deep
  Learning", gradient descent with the regulariser's gradient replaced by ``S_theta``)
- ``form="prox"``:     ``T(x) = R_theta(x - eta A^T (A x - d))``       (slide "Proximal Gradient
  Descent", the prox replaced by ``R_theta``)

``S``/``R`` is any denoiser ``net(x, sigma=None)`` (``convexnn.solvers.denoisers`` protocol).
Forward: fixed-point iteration (optionally Anderson-accelerated) under ``no_grad`` to a relative
residual tolerance, then one tracked application of ``T``. Backward ``"jfb"`` stops there
(``p_theta = dl/dx dT/dtheta``); ``"implicit"`` replaces the incoming gradient ``g`` by the
solution ``v`` of ``v = g + J^T v`` (eq. (1), ``J = dT/dx`` at ``x*``) through vjps. The networks
built from a convex-dual solution, spectral normalisation, the contraction penalty and the training
loop are in ``convexnn.solvers.deq_train``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .denoisers import call_denoiser
from .fidelity import L2
from .history import History
from .lipschitz import LipschitzEstimate, jacobian_spectral_norm
from .pnp import ConvergenceError

__all__ = ["DEQ", "DEQConfig", "FixedPointStats", "NonContractiveError", "fixed_point", "deq_solve",
           "DEQ_FORMS", "DEQ_BACKWARDS"]

DEQ_FORMS = ("gradient", "prox")
DEQ_BACKWARDS = ("jfb", "implicit")
_STARTS = ("adjoint", "zeros")


class NonContractiveError(ConvergenceError):
    """The fixed-point residual grew over a window of iterations: ``T`` is not a contraction
    around the iterates (no unique fixed point is guaranteed, JFB's descent property is lost)."""


def _int(name: str, v: Any, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"DEQConfig: {name}: expected an integer >= {low}, got {v!r}")


def _num(name: str, v: Any, low: float, high: float = math.inf, open_low: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low) and v <= high
    if not ok:
        rng = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"DEQConfig: {name}: expected a finite number in {rng}, got {v!r}")


@dataclass
class DEQConfig:
    """Options of a ``DEQ``.

    form : "gradient" or "prox" (module docstring).
    step : r (gradient form) or eta (prox form); None -> 1 / ||A||^2 (``physics.norm()``).
    max_iter, tol : forward fixed-point iterations and relative residual
        ``max_b ||T(x) - x|| / ||T(x)||`` at which to stop.
    anderson_m : Anderson memory (0 = plain iteration ``x <- x + relaxation (T(x) - x)``);
        also used for the backward linear fixed point of ``backward="implicit"``.
    anderson_lam : Tikhonov weight of the Anderson least squares, relative to its diagonal.
    relaxation : mixing beta of the update (1 = undamped).
    backward : "jfb" (one tracked application of T) or "implicit" (eq. (1) solved by vjps).
    backward_max_iter, backward_tol : the linear fixed point ``v = g + J^T v``.
    divergence_window, divergence_factor : stop with ``NonContractiveError`` once every
        absolute residual of the last ``window`` iterations exceeds ``factor`` times the
        smallest one seen before that window (or a residual is non-finite).
    start : "adjoint" (``x0 = A^T d``) or "zeros", when ``forward`` gets no ``x0``.
    raise_on_max_iter : raise ``ConvergenceError`` when max_iter ends above tol (else the
        stats say ``converged=False``).
    """

    form: str = "gradient"
    step: float | None = None
    max_iter: int = 100
    tol: float = 1e-4
    anderson_m: int = 5
    anderson_lam: float = 1e-4
    relaxation: float = 1.0
    backward: str = "jfb"
    backward_max_iter: int = 100
    backward_tol: float = 1e-5
    divergence_window: int = 10
    divergence_factor: float = 2.0
    start: str = "adjoint"
    raise_on_max_iter: bool = False

    def __post_init__(self) -> None:
        for name, options in (("form", DEQ_FORMS), ("backward", DEQ_BACKWARDS),
                              ("start", _STARTS)):
            if getattr(self, name) not in options:
                raise ValueError(f"DEQConfig: {name}: expected one of {list(options)}, got "
                                 f"{getattr(self, name)!r}")
        if self.step is not None:
            _num("step", self.step, 0.0, open_low=True)
        for name, low in (("max_iter", 1), ("backward_max_iter", 1), ("anderson_m", 0),
                          ("divergence_window", 1)):
            _int(name, getattr(self, name), low)
        _num("tol", self.tol, 0.0)
        _num("backward_tol", self.backward_tol, 0.0)
        _num("anderson_lam", self.anderson_lam, 0.0)
        _num("relaxation", self.relaxation, 0.0, 1.0, open_low=True)
        _num("divergence_factor", self.divergence_factor, 1.0, open_low=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FixedPointStats:
    """One fixed-point solve: T evaluations, final relative residual (max over the batch),
    its history, and for plain iteration the last ratio of successive absolute residuals
    ``||T x_k - x_k|| / ||T x_{k-1} - x_{k-1}||`` (an empirical contraction factor)."""

    iterations: int = 0
    residual: float = math.inf
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    stop_reason: str = ""
    contraction_ratio: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def fixed_point(fn, x0: Tensor, max_iter: int = 100, tol: float = 1e-4, anderson_m: int = 0,
                anderson_lam: float = 1e-4, relaxation: float = 1.0, divergence_window: int = 10,
                divergence_factor: float = 2.0, what: str = "fixed point"
                ) -> tuple[Tensor, FixedPointStats]:
    """Solve ``x = fn(x)`` from ``x0`` (batched, first dimension independent samples).

    Plain (Krasnosel'skii-Mann) iteration, or Anderson acceleration with memory ``anderson_m``
    (type II: ``x+ = sum_i alpha_i [(1 - beta) x_i + beta fn(x_i)]``, ``alpha`` minimising
    ``||sum_i alpha_i (fn(x_i) - x_i)||`` with ``sum alpha = 1``). Returns ``fn`` of the last
    iterate and the stats. Raises ``NonContractiveError`` when the residual grows over a window.
    """
    t0 = time.perf_counter()
    stats = FixedPointStats()
    b = x0.shape[0]
    x = x0
    abs_res: list[float] = []
    hist_x: Tensor | None = None
    hist_f: Tensor | None = None
    fx = x0
    for k in range(max_iter):
        fx = fn(x)  # Banach fixed-point iteration x_{k+1} = T(x_k) (appendix slide)
        diff = _per_sample_norm(fx - x)
        rel = float((diff / _per_sample_norm(fx).clamp_min(torch.finfo(fx.dtype).tiny)).max())
        a = float(diff.max())
        stats.iterations = k + 1
        stats.residual = rel
        stats.residuals.append(rel)
        abs_res.append(a)
        if not (math.isfinite(a) and math.isfinite(rel)):
            raise NonContractiveError(
                f"{what}: non-finite residual after {k + 1} iterations: T is not a contraction "
                f"(use convexnn.solvers.deq_train.spectral_normalize, a contraction penalty or a "
                f"smaller step)")
        w = divergence_window
        if len(abs_res) > w and min(abs_res[-w:]) > divergence_factor * min(abs_res[:-w]):
            raise NonContractiveError(
                f"{what}: the residual ||T(x) - x|| grew over the last {w} iterations, from "
                f"{min(abs_res[:-w]):.3e} (best before) to {abs_res[-1]:.3e} (now, iteration "
                f"{k + 1}): T is not a contraction here (expected residuals to shrink by a "
                f"factor L < 1 per step); use convexnn.solvers.deq_train.spectral_normalize, a "
                f"contraction penalty or a smaller step")
        if rel <= tol:
            stats.converged, stats.stop_reason = True, f"residual <= tol ({tol:g})"
            break
        if anderson_m == 0 or k == max_iter - 1:
            x = x + relaxation * (fx - x)
            continue
        if hist_x is None:
            hist_x = x.new_zeros((b, anderson_m, x[0].numel()))
            hist_f = torch.zeros_like(hist_x)
        i, n = k % anderson_m, min(k + 1, anderson_m)
        hist_x[:, i] = x.reshape(b, -1)
        hist_f[:, i] = fx.reshape(b, -1)
        g = hist_f[:, :n] - hist_x[:, :n]                       # residuals, (B, n, N)
        h = g @ g.transpose(1, 2)                               # Gram matrix (B, n, n)
        diag = h.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(h.dtype).tiny)
        h = h + (anderson_lam * diag)[:, None, None] * torch.eye(n, dtype=h.dtype,
                                                                 device=h.device)
        try:
            coef = torch.linalg.solve(h, torch.ones((b, n, 1), dtype=h.dtype, device=h.device))
            alpha = coef / coef.sum(dim=1, keepdim=True)         # sum alpha = 1
        except torch.linalg.LinAlgError:      # singular Gram (anderson_lam = 0, equal residuals)
            alpha = None
        if alpha is None or not bool(torch.isfinite(alpha).all()):
            x = x + relaxation * (fx - x)                          # plain step this time
            continue
        mix = relaxation * hist_f[:, :n] + (1.0 - relaxation) * hist_x[:, :n]
        x = (alpha.transpose(1, 2) @ mix).reshape(x.shape)      # Anderson (not in the slides)
    if not stats.converged:
        stats.stop_reason = f"max_iter ({max_iter}) reached"
    if anderson_m == 0 and relaxation == 1.0 and len(abs_res) >= 2 and abs_res[-2] > 0:
        stats.contraction_ratio = abs_res[-1] / abs_res[-2]
    stats.seconds = time.perf_counter() - t0
    return fx, stats


@contextlib.contextmanager
def eval_mode(module: Any):
    """Evaluate T as one fixed, deterministic map (no dropout/batch statistics, no spectral-norm
    power step between iterations); the caller's train/eval flag is restored."""
    was = getattr(module, "training", None)
    if was:
        module.eval()
    try:
        yield
    finally:
        if was:
            module.train()


def _has_parametrizations(module: Any) -> bool:
    return isinstance(module, nn.Module) and any(parametrize.is_parametrized(m)
                                                 for m in module.modules())


class DEQ(nn.Module):
    """Implicit network ``d -> x*`` with ``x* = T_theta(x*; d)`` (module docstring).

    ``physics``: a ``convexnn.solvers.operators.LinearOperator`` (``A``, ``A_adjoint``, ``norm``);
    ``network``: ``S_theta`` (gradient form) or ``R_theta`` (prox form). After each call,
    ``last_forward_stats_`` (and, after ``backward()`` with ``backward="implicit"``,
    ``last_backward_stats_``) hold the ``FixedPointStats``.
    """

    def __init__(self, physics: nn.Module, network: nn.Module,
                 config: DEQConfig | None = None) -> None:
        super().__init__()
        for attr in ("A", "A_adjoint"):
            if not callable(getattr(physics, attr, None)):
                raise TypeError(f"DEQ: physics: expected an operator with A(x) and "
                                f"A_adjoint(y), got {type(physics).__name__} without {attr}")
        if not callable(network):
            raise TypeError(f"DEQ: network: expected a callable denoiser net(x, sigma=None), "
                            f"got {type(network).__name__}")
        if config is not None and not isinstance(config, DEQConfig):
            raise TypeError(f"DEQ: config: expected DEQConfig, got {type(config).__name__}")
        self.physics = physics
        self.network = network
        self.config = config or DEQConfig()
        self._lipschitz: dict[tuple, float] = {}
        self.last_forward_stats_: FixedPointStats | None = None
        self.last_backward_stats_: FixedPointStats | None = None

    # ------------------------------------------------------------------ the layer T
    def step_size(self, x: Tensor) -> float:
        """r / eta: ``config.step``, else ``1 / ||A||^2`` (power iteration, cached per shape)."""
        if self.config.step is not None:
            return float(self.config.step)
        key = tuple(x.shape[1:])
        if key not in self._lipschitz:
            norm = getattr(self.physics, "norm", None)
            if not callable(norm):
                raise ValueError("DEQ: physics has no norm(); pass DEQConfig(step=...)")
            with torch.no_grad():
                lip = float(norm(x[:1].detach()))
            if not lip > 0:
                raise ValueError(f"DEQ: physics.norm() = {lip}: cannot set step = 1/||A||^2; "
                                 f"pass DEQConfig(step=...)")
            self._lipschitz[key] = lip
        return 1.0 / self._lipschitz[key]

    def T(self, x: Tensor, d: Tensor) -> Tensor:  # noqa: N802 - the paper's name
        """One application of the implicit layer ``T_theta(x; d)``."""
        step = self.step_size(x)
        grad = L2.grad(x, d, self.physics)   # grad of 1/2 ||A x - d||^2
        if self.config.form == "gradient":
            s = self._net(x)
            return x - step * grad - s   # T = x - r grad f - S_theta(x) (slide "Implicit DL")
        return self._net(x - step * grad)   # T = R_theta(x - eta grad f) (slide "Proximal GD")

    def _net(self, x: Tensor) -> Tensor:
        out = call_denoiser(self.network, x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"DEQ: network must map images to images of the same shape: "
                             f"expected {tuple(x.shape)}, got {got}")
        return out

    def initial(self, d: Tensor, x0: Tensor | None = None) -> Tensor:
        """Checked start of the iteration: ``x0``, or ``A^T d`` / zeros (``config.start``)."""
        if not isinstance(d, Tensor) or d.ndim != 4 or not d.is_floating_point():
            got = (f"shape {tuple(d.shape)}, dtype {d.dtype}" if isinstance(d, Tensor)
                   else type(d).__name__)
            raise ValueError(f"DEQ: measurements d: expected a floating tensor (B, C, H, W), "
                             f"got {got}")
        with torch.no_grad():
            try:
                aty = self.physics.A_adjoint(d.detach())
            except (RuntimeError, ValueError, TypeError) as e:
                raise ValueError(f"DEQ: physics.A_adjoint failed on measurements of shape "
                                 f"{tuple(d.shape)}: {e}") from e
            if x0 is None:
                x0 = aty if self.config.start == "adjoint" else torch.zeros_like(aty)
            elif not isinstance(x0, Tensor) or x0.shape != aty.shape:
                got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
                raise ValueError(f"DEQ: x0: expected the image shape {tuple(aty.shape)} "
                                 f"(of A^T d), got {got}")
            ax = self.physics.A(x0)
            if ax.shape != d.shape:
                raise ValueError(f"DEQ: physics maps images {tuple(x0.shape)} to measurements "
                                 f"{tuple(ax.shape)}, but d has shape {tuple(d.shape)}")
        return x0.detach().to(dtype=d.dtype)

    # ------------------------------------------------------------------ forward / backward
    def _solve(self, fn, x0: Tensor, what: str, tol: float, max_iter: int
               ) -> tuple[Tensor, FixedPointStats]:
        c = self.config
        x, stats = fixed_point(fn, x0, max_iter, tol, c.anderson_m, c.anderson_lam,
                               c.relaxation, c.divergence_window, c.divergence_factor, what)
        if c.raise_on_max_iter and not stats.converged:
            raise ConvergenceError(f"DEQ {what}: residual {stats.residual:.3e} > tol {tol:g} "
                                   f"after max_iter = {max_iter} iterations")
        return x, stats

    def fixed_point(self, d: Tensor, x0: Tensor | None = None) -> Tensor:
        """``x*`` without any graph (the no_grad forward solve); sets ``last_forward_stats_``."""
        x_init = self.initial(d, x0)
        d = d.detach()
        if self.training and _has_parametrizations(self.network):
            with torch.no_grad():
                self._net(x_init)   # one spectral-norm power step per training forward
        with torch.no_grad(), eval_mode(self.network):
            x, stats = self._solve(lambda z: self.T(z, d), x_init, "forward",
                                   self.config.tol, self.config.max_iter)
        self.last_forward_stats_ = stats
        return x

    def solve(self, d: Tensor, x0: Tensor | None = None, x_ref: Tensor | None = None
              ) -> tuple[Tensor, History]:
        """Reconstruct without a graph: ``(x*, History)``, the record every iterative solver of
        ``convexnn.solvers`` returns (per iteration: the relative fixed-point residual
        ``||T x - x|| / ||T x||`` and, with ``x_ref``, PSNR/SSIM of the iterate)."""
        iterates: list[Tensor] = []
        x_init = self.initial(d, x0)
        with torch.no_grad(), eval_mode(self.network):
            def step(z: Tensor) -> Tensor:
                out = self.T(z, d.detach())
                if x_ref is not None:
                    iterates.append(out)
                return out
            x, stats = self._solve(step, x_init, "forward", self.config.tol, self.config.max_iter)
        self.last_forward_stats_ = stats
        hist = History("deq", config=asdict(self.config))
        for k, res in enumerate(stats.residuals):
            hist.record(res, residual=res, x=iterates[k] if iterates else None, reference=x_ref)
        hist.flags.update(iterations=stats.iterations, seconds=stats.seconds,
                          contraction_ratio=stats.contraction_ratio)
        return x, hist.finish(stats.converged, stats.stop_reason)

    def forward(self, d: Tensor, x0: Tensor | None = None) -> Tensor:
        x_star = self.fixed_point(d, x0)
        params = any(p.requires_grad for p in self.parameters())
        if not torch.is_grad_enabled() or not (params or d.requires_grad):
            return x_star
        with eval_mode(self.network):
            z = self.T(x_star, d)   # one tracked application: JFB, p = dl/dx dT/dtheta
            if self.config.backward == "implicit":
                z0 = x_star.clone().requires_grad_(True)
                f0 = self.T(z0, d)
                z.register_hook(partial(self._implicit_hook, f0, z0))
        return z

    def _implicit_hook(self, f0: Tensor, z0: Tensor, grad: Tensor) -> Tensor:
        # eq. (1): dl/dtheta = dl/dx (I - J)^{-1} dT/dtheta, i.e. v = g + J^T v, then v dT/dtheta
        def fn(v: Tensor) -> Tensor:
            (jtv,) = torch.autograd.grad(f0, z0, v, retain_graph=True)
            return grad + jtv
        v, stats = self._solve(fn, grad, "implicit backward", self.config.backward_tol,
                               self.config.backward_max_iter)
        self.last_backward_stats_ = stats
        return v

    # ------------------------------------------------------------------ diagnostics
    def contraction_factor(self, d: Tensor, x: Tensor | None = None, n_iter: int = 50,
                           tol: float = 1e-5, seed: int = 0) -> LipschitzEstimate:
        """``||dT/dx||_2`` at ``x`` (default: the fixed point) per sample, by power iteration
        on ``J^T J`` through autograd (``convexnn.solvers.lipschitz``); < 1 is the contraction that
        Banach's theorem and JFB's descent guarantee ask for (slide "JFB Conditions", i.)."""
        if x is None:
            x = self.fixed_point(d)
        d = d.detach()
        with eval_mode(self.network):
            return jacobian_spectral_norm(lambda z: self.T(z, d), x.detach(), n_iter=n_iter,
                                          tol=tol, seed=seed)


def deq_solve(y: Tensor, physics, network, config: DEQConfig | None = None,
              x0: Tensor | None = None, x_ref: Tensor | None = None) -> tuple[Tensor, History]:
    """``(x, History)`` of the deep-equilibrium reconstruction from ``y``: the call shape
    ``solver(y, physics, prior, config)`` of ``pnp_*``, ``podm`` and
    ``energy_dissipation_solve``; ``network`` is the prior (``S_theta`` or ``R_theta``)."""
    return DEQ(physics, network, config).solve(y, x0, x_ref)
