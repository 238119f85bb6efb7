"""What every plug-and-play solve shares: its options (`PnPConfig`), the data prox, and the
run (`SolverRun`: input checks, the convergence conditions, the history, stopping), so that
each algorithm in `pnp` and `podm` is only its own update rule."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from .denoisers import call_denoiser, check_denoiser
from .fidelity import L2, data_prox
from .history import History
from .propagation import Propagation

__all__ = ["PnPConfig", "ConvergenceError", "SolverRun", "data_prox", "norm"]


class ConvergenceError(ValueError):
    """A convergence guarantee was requested (`require_convergence=True`) but a condition of
    the theorem does not hold."""


@dataclass
class PnPConfig:
    """Options shared by the PnP solvers.

    step : gamma; None -> 1 / L with L = physics.norm() (= ||A||^2).
    lipschitz : L = ||A||^2 when known (skips the power iteration of physics.norm()).
    sigma : noise level passed to the denoiser `denoiser(x, sigma)`.
    relaxation : lambda (PGD: lambda_k, DRS: z-update relaxation); ignored by ADMM/HQS/RED.
    lam : RED regularisation weight.
    max_iter, tol : stop at max_iter or when rel_change < tol.
    x0 : start; None -> A^T y.
    reference : ground truth for PSNR/SSIM in the history (data_range default: its range).
    require_convergence : raise ConvergenceError when the step/relaxation/denoiser conditions
        of the convergence theorem fail (see the module docstring).
    lipschitz_iter, lipschitz_tol : power iterations and slack of the `||grad Q(x0)|| <= 1`
        check under require_convergence.
    cg_iter, cg_tol : conjugate-gradient solve of the data prox (ADMM, HQS, DRS).
    energy : optional callable x -> scalar (or (B,)) tensor recorded as the energy (PnP has no
        explicit objective in general; None otherwise).
    compute_ssim : compute SSIM when a reference is given (costs a little per iteration).
    """

    step: float | None = None
    lipschitz: float | None = None
    sigma: float | None = None
    relaxation: float = 1.0
    lam: float = 1.0
    max_iter: int = 100
    tol: float = 1e-6
    x0: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    require_convergence: bool = False
    lipschitz_iter: int = 30
    lipschitz_tol: float = 1e-3
    cg_iter: int = 100
    cg_tol: float = 1e-10
    energy: Callable[[torch.Tensor], Any] | None = None
    data_range: float | None = None
    compute_ssim: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = f"tensor{tuple(v.shape)}"
            elif callable(v):
                v = getattr(v, "__name__", type(v).__name__)
            out[f.name] = v
        return out


# ---------------------------------------------------------------------------- helpers
def _real(value: Any, name: str, what: str) -> float:
    """`value` as a float; TypeError naming the option when it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def _check_config(config: PnPConfig | None) -> PnPConfig:
    cfg = PnPConfig() if config is None else config
    if not isinstance(cfg, PnPConfig):
        raise TypeError(f"config: expected PnPConfig, got {type(cfg).__name__}")
    for name in ("max_iter", "cg_iter", "lipschitz_iter"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if not _real(cfg.tol, "tol", "a number >= 0") >= 0:
        raise ValueError(f"tol: expected >= 0, got {cfg.tol}")
    if cfg.step is not None and not (math.isfinite(_real(cfg.step, "step", "a number"))
                                     and cfg.step > 0):
        raise ValueError(f"step: expected a positive finite number or None (= 1/L), got "
                         f"{cfg.step}")
    if cfg.lipschitz is not None and not (math.isfinite(_real(cfg.lipschitz, "lipschitz",
                                                              "a number"))
                                          and cfg.lipschitz >= 0):
        raise ValueError(f"lipschitz: expected ||A||^2 >= 0 or None, got {cfg.lipschitz}")
    if not (math.isfinite(_real(cfg.relaxation, "relaxation", "a number > 0"))
            and cfg.relaxation > 0):
        raise ValueError(f"relaxation: expected > 0, got {cfg.relaxation}")
    if not (math.isfinite(_real(cfg.lam, "lam", "a number >= 0")) and cfg.lam >= 0):
        raise ValueError(f"lam: expected >= 0, got {cfg.lam}")
    for name in ("lipschitz_tol", "cg_tol"):
        if not _real(getattr(cfg, name), name, "a number >= 0") >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {getattr(cfg, name)!r}")
    if cfg.data_range is not None and not (
            math.isfinite(_real(cfg.data_range, "data_range", "a positive number or None"))
            and cfg.data_range > 0):
        raise ValueError(f"data_range: expected a positive finite number or None, got "
                         f"{cfg.data_range!r}")
    if cfg.energy is not None and not callable(cfg.energy):
        raise TypeError(f"energy: expected a callable x -> tensor or None, got "
                        f"{type(cfg.energy).__name__}")
    return cfg


def _check_finite(t: torch.Tensor, what: str) -> None:
    """Measurements, starts and references must be real, floating and finite."""
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{what}: expected a real floating-point tensor, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: expected finite values, got "
                         f"{int((~torch.isfinite(t)).sum())} NaN/Inf entries")


def norm(t: torch.Tensor) -> float:
    """Euclidean norm of a whole tensor, as a float."""
    return float(torch.linalg.vector_norm(t.detach()))


class SolverRun:
    """Shared set-up, input checks, bookkeeping and stopping of one PnP solve."""

    def __init__(self, name: str, y, physics, denoiser, config: PnPConfig | None) -> None:
        self.cfg = cfg = _check_config(config)
        self.name = name
        self.physics = physics
        self.denoiser = denoiser
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{name}: y: expected a torch.Tensor of measurements, got "
                            f"{type(y).__name__}")
        for attr in ("A", "A_adjoint"):
            if not callable(getattr(physics, attr, None)):
                raise TypeError(f"{name}: physics: expected an operator with A(x) and "
                                f"A_adjoint(y), got {type(physics).__name__} without {attr}")
        _check_finite(y, f"{name}: y")
        self.y = y.detach()
        with torch.no_grad():
            self.aty = self._apply(physics.A_adjoint, self.y, "A_adjoint(y)")
            if cfg.x0 is None:
                x0 = self.aty.clone()
            else:
                if not isinstance(cfg.x0, torch.Tensor):
                    raise TypeError(f"{name}: x0: expected a tensor, got {type(cfg.x0).__name__}")
                _check_finite(cfg.x0, f"{name}: x0")
                x0 = cfg.x0.detach().to(dtype=self.aty.dtype, device=self.aty.device).clone()
            self._check_image(x0, "x0")
            ax0 = self._apply(physics.A, x0, "A(x0)")
            if ax0.shape != self.y.shape:
                raise ValueError(f"{name}: physics maps images of shape {tuple(x0.shape)} to "
                                 f"measurements {tuple(ax0.shape)}, but y has shape "
                                 f"{tuple(self.y.shape)}")
        if cfg.reference is not None and not isinstance(cfg.reference, torch.Tensor):
            raise TypeError(f"{name}: reference: expected a tensor, got "
                            f"{type(cfg.reference).__name__}")
        if cfg.reference is not None:
            _check_finite(cfg.reference, f"{name}: reference")
        if cfg.reference is not None and tuple(cfg.reference.shape) != tuple(x0.shape):
            raise ValueError(f"{name}: reference: expected the image shape {tuple(x0.shape)}, "
                             f"got {tuple(cfg.reference.shape)}")
        self.x0 = x0
        self.x0_norm = norm(x0)
        self.hist = History(name, config=cfg.to_dict())
        if self.x0_norm == 0.0:
            self.hist.flags["rel_change_denominator"] = "||x_0|| = 0: using 1"
            self.x0_norm = 1.0
        self.t0 = time.perf_counter()
        self._denoiser_checked = False
        self._prox: Propagation | None = None

    def _apply(self, fn, t, what: str):
        try:
            return fn(t)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{self.name}: physics.{what} failed on a tensor of shape "
                             f"{tuple(t.shape)}: {e}") from e

    def _check_image(self, x: torch.Tensor, what: str) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: {what}: expected images (B, C, H, W), got "
                             f"{tuple(x.shape)}")
        shape = getattr(self.physics, "in_shape", None)
        if shape is not None:
            fixed = getattr(self.physics, "fixed_channels", True)
            ok = tuple(x.shape[-2:]) == tuple(shape[1:]) and (not fixed or x.shape[1] == shape[0])
            if not ok:
                raise ValueError(f"{self.name}: {what} has shape {tuple(x.shape)} but the "
                                 f"physics expects images (B, {shape[0]}, {shape[1]}, "
                                 f"{shape[2]})")

    # ------------------------------------------------------------------ pieces
    def lipschitz(self) -> float:
        """L = ||A||^2 of grad f (physics.norm(), or the norm of A^T A by power iteration)."""
        if "L" not in self.hist.flags and self.cfg.lipschitz is not None:
            self.hist.flags["L"] = float(self.cfg.lipschitz)
        if "L" not in self.hist.flags:
            self.hist.flags["L"] = L2.lipschitz(self.physics, self.x0)
        return self.hist.flags["L"]

    def step(self) -> float:
        if self.cfg.step is not None:
            return float(self.cfg.step)
        L = self.lipschitz()
        if L <= 0:
            raise ValueError(f"{self.name}: physics.norm() = {L}: cannot set step = 1/L; pass "
                             f"PnPConfig(step=...)")
        return 1.0 / L

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        if not self._denoiser_checked:
            self._denoiser_checked = True
            return check_denoiser(self.denoiser, x, self.cfg.sigma)
        return call_denoiser(self.denoiser, x, self.cfg.sigma)

    def prox(self, v: torch.Tensor, gamma: float) -> torch.Tensor:
        """`prox_{gamma f}(v)`: closed form for a circular blur, downsampling or the identity,
        conjugate gradients otherwise (`Propagation` with mu = 1 / gamma, built once per gamma)."""
        if self._prox is None or self._prox.mu != 1.0 / gamma:
            self._prox = Propagation(self.physics, self.y, 1.0 / gamma, cg_iter=self.cfg.cg_iter,
                                     cg_tol=self.cfg.cg_tol)
            self.hist.flags["data_prox"] = self._prox.method
        return self._prox(v)

    def grad_f(self, x: torch.Tensor) -> torch.Tensor:
        return L2.grad(x, self.y, self.physics)

    def fail(self, msg: str) -> None:
        """Raise under require_convergence, else warn; recorded in the history's flags."""
        self.hist.flags.setdefault("convergence_warnings", []).append(msg)
        if self.cfg.require_convergence:
            raise ConvergenceError(f"{self.name}: {msg}")
        warnings.warn(f"{self.name}: {msg}", RuntimeWarning, stacklevel=3)

    def check_denoiser_fne(self) -> None:
        """Under require_convergence: J must be firmly nonexpansive, ||grad(2J - I)|| <= 1."""
        if not self.cfg.require_convergence:
            return
        if getattr(self.denoiser, "firmly_nonexpansive", False):
            self.hist.flags["denoiser_fne"] = "declared"
            return
        from .lipschitz import jacobian_spectral_norm

        try:
            est = jacobian_spectral_norm(self.denoiser, self.x0, n_iter=self.cfg.lipschitz_iter,
                                         tol=1e-4, mode="Q", sigma=self.cfg.sigma)
        except RuntimeError as e:
            raise ConvergenceError(
                f"{self.name}: require_convergence needs ||grad(2J - I)|| <= 1, but the "
                f"denoiser's Jacobian could not be computed by autograd ({e}); set "
                f"`firmly_nonexpansive = True` on a denoiser that is so by construction") from e
        self.hist.flags["denoiser_q_norm_x0"] = est.value
        if est.value > 1.0 + self.cfg.lipschitz_tol:
            self.fail(f"the denoiser is not firmly nonexpansive: ||grad(2J - I)(x0)|| ~ "
                      f"{est.value:.4f} > 1 (train it with lipschitz_penalty > 0, or use "
                      f"Averaged(Q) with a 1-Lipschitz Q)")

    def record(self, x_new: torch.Tensor, x_old: torch.Tensor, step: float | None,
               **flags: Any) -> bool:
        """Append one history record; True when the solver must stop."""
        cfg = self.cfg
        rel = norm(x_new - x_old) / self.x0_norm
        res = norm(self.physics.A(x_new) - self.y)
        energy = None
        if cfg.energy is not None:
            e = cfg.energy(x_new)
            energy = float(e.sum()) if isinstance(e, torch.Tensor) else float(e)
        self.hist.record(rel, step, energy, res, x=x_new, reference=cfg.reference,
                         data_range=cfg.data_range, compute_ssim=cfg.compute_ssim,
                         time=time.perf_counter() - self.t0, **flags)
        if not bool(torch.isfinite(x_new).all()):
            self.hist.finish(False, "non-finite iterate")
            return True
        if rel < cfg.tol:
            self.hist.finish(True, f"rel_change < tol ({cfg.tol:g})")
            return True
        return False

    def loop(self, state, step, gamma: float, estimate=lambda s: s):
        """Iterate `state, flags = step(state)` until the stopping rule (or `max_iter`),
        recording `estimate(state)` every iteration; returns the last estimate. Each PnP
        algorithm is only its `step`."""
        for _ in range(self.cfg.max_iter):
            new, flags = step(state)
            stop = self.record(estimate(new), estimate(state), gamma, **flags)
            state = new
            if stop:
                break
        return estimate(state)

    def done(self) -> History:
        if not self.hist.stop_reason:
            self.hist.finish(False, f"max_iter ({self.cfg.max_iter}) reached")
        self.hist.flags["seconds"] = time.perf_counter() - self.t0
        return self.hist
