"""`ConvexShrinkageDenoiser`: a certified firmly nonexpansive denoiser trained by a convex QP.

The network is `convexnn.model.shrinkage.ShrinkageNetwork`, `J(x) = x - sum_j C_j^T psi_j(C_j x)`
with fixed filters `C_j` (the DCT frame or the multiscale frame, `shrinkage_frame`), ReLU ramps
on a knot grid and nonnegative slopes `c`.
`N(y) = sum_jm c_jm C_j^T r_m(C_j y)` is linear in `c`, so training is least squares:

    min_{c, L}  1/2 ||sum_jm c_jm g_jm(y) - (y - x)||^2 + eps/2 ||c||^2
    s.t.        0 <= c_jm <= L_j,   sum_j L_j |C_j(omega)|^2 <= 1  for every frequency omega   (QP)

a convex QP (the Gram `G = sum_pixels g g^T` is streamed over the training pairs, float64).
The frequency constraint is imposed on a grid and tightened by cutting planes from a finer
grid; the solution is then certified on a fine grid with Bernstein's factor (S in
`convexnn.model.shrinkage`) and scaled by `1 / S` when `S > 1`, so the shipped `J` is firmly
nonexpansive by proof. The Lagrangian dual of the gridded QP, evaluated at the solver's
multipliers, is a lower bound for the (semi-infinite) problem: `solve_info_` reports it with
the certified relative gap of the final, feasible slopes. `eps` (a 1e-9 relative ridge) makes
the QP strongly convex; it is part of the reported objective.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from convexnn.model.denoiser import Denoiser
from convexnn.model.problem import ConvexSolverError, SolveInfo
from convexnn.model.shrinkage import (
    FRAMES,
    ShrinkageNetwork,
    frame_response,
    frequency_grid,
    potential_smoothness_bound,
    potential_smoothness_grid,
    ramp_knots,
    shrinkage_features,
    shrinkage_frame,
)
from convexnn.model.validation import as_images, as_targets, check_int, check_positive

__all__ = ["ConvexShrinkageDenoiser", "ShrinkageConfig", "ShrinkageGram", "shrinkage_gram"]


@dataclass(frozen=True)
class ShrinkageConfig:
    """Hyper-parameters: the frame (`shrinkage_frame`: "multiscale", the default, or "dct"; the
    local filters of multiscale make PnP-HQS deblurring 0.4 dB better, `pnp_solvers_deblur.py`)
    and its kernel size, the ramp grid (n_bins on +-span sigma), whether to impose (and certify)
    firm nonexpansiveness, and the frequency grids."""

    kernel_size: int = 7
    frame: str = "multiscale"
    n_bins: int = 16
    span: float = 4.0
    firmly_nonexpansive: bool = True
    qp_grid: int = 64             # frequency constraints in the QP (half grid)
    cut_grid: int = 1024          # cutting planes come from this grid
    certify_grid: int = 2048      # Taylor-Bernstein certificate of S
    max_cuts: int = 2             # cutting-plane rounds
    ridge: float = 1e-9           # relative to mean(diag G)
    batch_pixels: int = 1 << 15   # Gram streaming block
    solver: str = "CLARABEL"

    def __post_init__(self) -> None:
        check_int(self.kernel_size, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size, got {self.kernel_size}")
        if self.frame not in FRAMES:
            raise ValueError(f"frame: expected one of {list(FRAMES)}, got {self.frame!r}")
        check_int(self.n_bins, "n_bins")
        check_positive(self.span, "span")
        for name in ("qp_grid", "cut_grid", "certify_grid", "batch_pixels"):
            check_int(getattr(self, name), name, minimum=4 * self.kernel_size)


@dataclass
class ShrinkageGram:
    """The QP data streamed over the training pairs: `G = F^T F`, `b = F^T n`, `||n||^2`."""

    gram: torch.Tensor
    rhs: torch.Tensor
    target_sq: float
    n_pixels: int


def shrinkage_gram(noisy: torch.Tensor, clean: torch.Tensor, filters: torch.Tensor,
                   knots: torch.Tensor, width: float, batch_pixels: int = 1 << 15,
                   progress: bool = False) -> ShrinkageGram:
    """Stream `(n, 1, H, W)` pairs in blocks of about `batch_pixels` pixels (float64)."""
    d = filters.shape[0] * knots.numel()
    gram = torch.zeros(d, d, dtype=torch.float64)
    rhs = torch.zeros(d, dtype=torch.float64)
    target_sq, per = 0.0, max(1, batch_pixels // (noisy.shape[-1] * noisy.shape[-2]))
    t0 = time.perf_counter()
    for i in range(0, noisy.shape[0], per):
        y = noisy[i:i + per].to(torch.float64)
        feats = shrinkage_features(y, filters, knots, width).transpose(0, 1).reshape(d, -1)
        n = (y - clean[i:i + per].to(torch.float64)).reshape(-1)
        gram += feats @ feats.T
        rhs += feats @ n
        target_sq += float(n @ n)
        if progress and (i // per) % 20 == 0:
            print(f"  gram: {min(i + per, noisy.shape[0])}/{noisy.shape[0]} images, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return ShrinkageGram(gram, rhs, target_sq, int(noisy[:, :1].numel()))


class ConvexShrinkageDenoiser(Denoiser):
    """Estimator: `fit(noisy, clean)` solves (QP) exactly; then `model(x)` denoises.

    sigma : the training noise level on the image scale (knots scale with it); None estimates
        it from the training pairs as `std(noisy - clean)`.
    config : `ShrinkageConfig`, or its fields as keyword options.

    Fitted: `network_` (`ShrinkageNetwork`), `solve_info_` (status, objective, lower bound,
    certified relative gap, S before and after scaling, cutting-plane rounds, timings),
    `sigma_`. `lipschitz_certificate` bounds `Lip(2 J - I)`; it is 1 (J firmly
    nonexpansive) whenever `firmly_nonexpansive=True`.
    """

    def __init__(self, sigma: float | None = None, config: ShrinkageConfig | None = None,
                 **options) -> None:
        super().__init__()
        if config is not None and not isinstance(config, ShrinkageConfig):
            raise TypeError(f"config: expected ShrinkageConfig, got {type(config).__name__}")
        base = asdict(config) if config is not None else {}
        unknown = sorted(set(options) - set(ShrinkageConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; ShrinkageConfig accepts "
                            f"{sorted(ShrinkageConfig.__dataclass_fields__)}")
        self.config = ShrinkageConfig(**{**base, **options})
        self.sigma = None if sigma is None else check_positive(sigma, "sigma")

    @property
    def lipschitz_certificate(self) -> float | None:
        return self.network_.lipschitz_certificate if hasattr(self, "network_") else None

    def fit(self, noisy, clean, progress: bool = False) -> ConvexShrinkageDenoiser:
        """Solve (QP) on the pairs `(n, 1, H, W)` (or `(n, H, W)`), certify, keep the network."""
        y = as_images(noisy, "noisy", dtype=torch.float64)
        x = as_targets(clean, y, "clean").to(torch.float64)
        if y.shape[1] != 1:
            raise ValueError(f"noisy: expected one channel (n, 1, H, W), got {tuple(y.shape)}")
        cfg, t0 = self.config, time.perf_counter()
        sigma = self.sigma if self.sigma is not None else float((y - x).std())
        if not sigma > 0:
            raise ValueError("sigma: noisy equals clean, so the noise level cannot be "
                             "estimated; pass sigma=")
        filters = shrinkage_frame(cfg.frame, cfg.kernel_size)
        knots, width = ramp_knots(sigma, cfg.n_bins, cfg.span)
        data = shrinkage_gram(y, x, filters, knots, width, cfg.batch_pixels, progress)
        t_gram = time.perf_counter() - t0
        slopes, info = solve_shrinkage_qp(data, filters, cfg, progress)
        self.network_ = ShrinkageNetwork(filters, knots, width, slopes, cfg.certify_grid)
        info.details.update(gram_seconds=t_gram, training_pixels=data.n_pixels, sigma=sigma,
                            smoothness_certificate=self.network_.smoothness)
        info.total_seconds = time.perf_counter() - t0
        self.solve_info_, self.sigma_ = info, sigma
        return self

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        if not hasattr(self, "network_"):
            raise RuntimeError("ConvexShrinkageDenoiser: call fit(noisy, clean) first")
        return self.network_(x, sigma)

    predict = forward


def solve_shrinkage_qp(data: ShrinkageGram, filters: torch.Tensor, cfg: ShrinkageConfig,
                       progress: bool = False) -> tuple[torch.Tensor, SolveInfo]:
    """(QP) by CVXPY, cutting planes on the frequency constraint, then certify and scale."""
    import cvxpy as cp

    n_filters, d = filters.shape[0], data.gram.shape[0]
    ridge = cfg.ridge * float(data.gram.diagonal().mean())
    gram = data.gram + ridge * torch.eye(d, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(gram)
    root = (evecs * evals.clamp_min(0).sqrt()).T.numpy()
    c = cp.Variable(d)
    lam = cp.Variable(n_filters)
    objective = cp.Minimize(0.5 * cp.sum_squares(root @ c) - data.rhs.numpy() @ c)
    omega = frequency_grid(cfg.qp_grid)
    rounds, t0 = 0, time.perf_counter()
    while True:
        response = frame_response(filters, omega).numpy()
        cons = [c >= 0]
        if cfg.firmly_nonexpansive:
            cons += [cp.reshape(c, (n_filters, d // n_filters), order="C")
                     <= cp.reshape(lam, (n_filters, 1), order="C") @ np.ones((1, d // n_filters)),
                     response @ lam <= 1]
        prob = cp.Problem(objective, cons)
        prob.solve(solver=cfg.solver)
        if prob.status not in ("optimal", "optimal_inaccurate"):
            raise ConvexSolverError(f"shrinkage QP: {cfg.solver} returned status {prob.status!r}")
        slopes = torch.from_numpy(np.maximum(c.value, 0.0)).reshape(n_filters, -1)
        if not cfg.firmly_nonexpansive or rounds >= cfg.max_cuts:
            break
        values, grid_omega = potential_smoothness_grid(filters, slopes.amax(1), cfg.cut_grid)
        worst = torch.topk(values, 64)
        if progress:
            print(f"  QP round {rounds}: {prob.status}, {len(omega)} frequencies, grid max "
                  f"{float(worst.values[0]):.6f}, {time.perf_counter() - t0:.0f} s", flush=True)
        if float(worst.values[0]) <= 1.0 + 1e-4:
            break
        omega = torch.cat([omega, grid_omega[worst.indices[worst.values > 1.0]]])
        rounds += 1
    return certify_and_scale(data, gram, slopes, filters, cfg, prob, cons, response, rounds,
                             time.perf_counter() - t0)


def certify_and_scale(data, gram, slopes, filters, cfg, prob, cons, response, rounds,
                      seconds) -> tuple[torch.Tensor, SolveInfo]:
    """Scale to a certified S <= 1, then the Lagrangian lower bound and the relative gap."""
    smooth = potential_smoothness_bound(filters, slopes.amax(1), cfg.certify_grid)
    scale = 1.0 / (smooth * (1 + 1e-12)) if cfg.firmly_nonexpansive and smooth > 1.0 else 1.0
    slopes = slopes * scale
    flat = slopes.reshape(-1)
    value = 0.5 * float(flat @ gram @ flat) - float(data.rhs @ flat) + 0.5 * data.target_sq
    lower = lagrangian_bound(data, gram, cons, response, filters.shape[0],
                             cfg.firmly_nonexpansive)
    gap = max(value - lower, 0.0) / max(value, 1e-300)
    info = SolveInfo(solver=f"shrinkage-qp/{cfg.solver}", status=prob.status, solve_seconds=seconds,
                     reported_objective=float(prob.value) + 0.5 * data.target_sq,
                     details={"objective": value, "objective_per_pixel": value / data.n_pixels,
                              "lower_bound": lower, "certified_gap": gap,
                              "smoothness_before_scaling": smooth, "scaled_by": scale,
                              "cut_rounds": rounds, "frequencies": int(response.shape[0])})
    return slopes, info


def lagrangian_bound(data: ShrinkageGram, gram: torch.Tensor, cons, response: np.ndarray,
                     n_filters: int, lipschitz: bool) -> float:
    """The dual function of (QP) at the solver's multipliers (clipped to >= 0): a lower bound.

    L is boxed by implied bounds `0 <= L_j <= 1 / max_omega |C_j(omega)|^2`, so the minimum
    over L is finite for any multipliers; the minimum over c is `-q^T G^-1 q / 2`."""
    lam0 = np.maximum(cons[0].dual_value, 0.0)
    q = data.rhs.numpy() + lam0
    bound = 0.5 * data.target_sq
    if lipschitz:
        lam1 = np.maximum(cons[1].dual_value, 0.0)               # (J, M)
        mu = np.maximum(cons[2].dual_value, 0.0)
        q = q - lam1.reshape(-1)
        coef = response.T @ mu - lam1.sum(1)
        upper = 1.0 / response.max(0)
        bound += float(np.minimum(coef, 0.0) @ upper) - float(mu.sum())
    qt = torch.from_numpy(q)
    return bound - 0.5 * float(qt @ torch.linalg.solve(gram, qt))
