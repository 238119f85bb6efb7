"""`ConvexDualDenoiser`: the exact convex dual (eq. 4) of the two-layer conv ReLU denoiser.

Estimator API in the scikit-learn style: hyper-parameters in `__init__`, `fit(noisy, clean,
solver=...)`, fitted attributes ending in `_`, `predict`. It is also a torch module with the
denoiser call convention `model(x, sigma=None)`, so it plugs into the iterative solvers.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from dataclasses import fields
from typing import Any

import torch

from convexnn.model.denoiser import Denoiser
from convexnn.model.gated import HingeViolation, gated_predict, hinge_violation
from convexnn.model.lipschitz import dual_lipschitz_bound
from convexnn.model.losses import LOSSES, Loss
from convexnn.model.patterns import (
    PatternSelection,
    check_generators,
    sample_generators,
    select_unique_patterns,
)
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.problem import DualProblem, DualSolution, SolveInfo
from convexnn.model.validation import (
    as_images,
    as_targets,
    check_choice,
    check_in_range,
    check_int,
    check_kernel_size,
    check_positive,
    check_seed,
)
from convexnn.solve.registry import choose_solver, get_solver
from convexnn.train.distributed import all_reduce_sum, dist_info, setup_distributed

__all__ = ["ConvexDualDenoiser"]

_FITTED_TENSORS = ("generators_", "v_", "w_")

def _make_config(config_cls, config, options: dict[str, Any], solver: str = "this solver"):
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"config: expected {config_cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {solver}; "
                        f"{config_cls.__name__} accepts {sorted(names)}")
    if config is None:
        return config_cls(**options)
    if options:
        values = {f.name: getattr(config, f.name) for f in fields(config_cls)}
        values.update(options)
        return config_cls(**values)
    return config


class ConvexDualDenoiser(Denoiser):
    """Convex dual of `TwoLayerConvDenoiser` (eq. 4), solved over sampled sign patterns.

    Parameters
    ----------
    kernel_size : odd first-layer kernel size k ('same' padding).
    n_patterns : number of Gaussian generator filters to sample (ignored with `generators`).
    beta : weight-decay parameter of eq. 2 (group-norm weight of eq. 4), > 0.
    loss : "squared" (eq. 4), "l1" or "huber" (Appendix E); `huber_delta` its threshold.
    residual : fit `clean - noisy` and add the input back (Corollary 1.1).
    generators : optional explicit generator filters `(P, C, k, k)`.
    dedupe : drop generators whose pattern on the training set repeats one already kept,
        and generators whose pattern is all zero (neither changes the optimum).
    lipschitz_bound : if set, constrain the rebuilt primal to `Lip <= lipschitz_bound` by the
        convex certificate of `convexnn.model.lipschitz` (solver="cvxpy"); after the solve the
        certificate is re-evaluated on a fine grid and the filters scaled down if needed, so
        `lipschitz_certificate_ <= lipschitz_bound` always holds.
    seed : seed of the generator sampling.

    Fitted attributes: `generators_`, `v_`, `w_` (P, C, k, k) float64, `objective_` (dual
    objective, reduction="sum"), `solve_info_`, `history_`, `pattern_selection_`,
    `n_channels_`, `lipschitz_certificate_` (certified upper bound of the Lipschitz constant
    of `to_primal()`).
    """

    def __init__(self, kernel_size: int = 3, n_patterns: int = 8000, beta: float = 1e-3,
                 loss: str = "squared", residual: bool = False, generators=None,
                 seed: int | None = 0, huber_delta: float = 1.0, dedupe: bool = True,
                 lipschitz_bound: float | None = None) -> None:
        super().__init__()
        self.kernel_size = check_kernel_size(kernel_size)
        if generators is None:
            n_patterns = check_int(n_patterns, "n_patterns")
        self.n_patterns = n_patterns
        self.beta = check_positive(beta, "beta")
        self.loss = check_choice(loss, "loss", LOSSES)
        self.huber_delta = check_positive(huber_delta, "huber_delta")
        self.residual = bool(residual)
        self.generators = generators
        self.seed = check_seed(seed)
        self.dedupe = bool(dedupe)
        self.lipschitz_bound = (None if lipschitz_bound is None
                                else check_positive(lipschitz_bound, "lipschitz_bound"))

    # ------------------------------------------------------------------ helpers
    @property
    def loss_(self) -> Loss:
        return Loss(self.loss, self.huber_delta)

    def _check_fitted(self) -> None:
        if not hasattr(self, "v_"):
            raise RuntimeError("this ConvexDualDenoiser is not fitted yet: call fit(noisy, "
                               "clean, solver=...) or load a saved model first")

    def _inputs(self, noisy, name: str = "noisy") -> torch.Tensor:
        x = as_images(noisy, name, dtype=torch.float64)
        if hasattr(self, "n_channels_") and x.shape[1] != self.n_channels_:
            raise ValueError(f"{name}: the model was fitted on {self.n_channels_} channel(s), "
                             f"got images with {x.shape[1]}")
        return x

    def __setattr__(self, name: str, value: Any) -> None:
        # the fitted tensors are buffers: they travel with .to() and are in state_dict()
        if name in _FITTED_TENSORS and isinstance(value, torch.Tensor) \
                and name not in self._buffers:
            self.register_buffer(name, value)
            return
        super().__setattr__(name, value)

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters of `__init__` (scikit-learn convention; `deep` is accepted for
        compatibility: there are no nested estimators)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def saved_params(self) -> dict[str, Any]:
        """`get_params()` without `generators` (saved as a tensor beside the header)."""
        return {k: v for k, v in self.get_params().items() if k != "generators"}

    def set_params(self, **params: Any) -> ConvexDualDenoiser:
        """Set hyper-parameters, validated as `__init__` validates them; refit afterwards."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ValueError(f"set_params: unknown parameter(s) {unknown}; expected some of "
                             f"{self._param_names()}")
        checked = type(self)(**{**self.get_params(), **params})
        for name in params:
            object.__setattr__(self, name, getattr(checked, name))
        return self

    # ------------------------------------------------------------------ fitting
    def choose_solver(self, noisy) -> tuple[str, str]:
        """(solver, reason) that `fit(noisy, ...)` takes without a solver argument."""
        x = as_images(noisy, "noisy", dtype=torch.float64)
        p = int(self.generators.shape[0]) if self.generators is not None else self.n_patterns
        return choose_solver(self.loss, self.lipschitz_bound, x.shape[0] * x.shape[2]
                             * x.shape[3], p, x.shape[1] * self.kernel_size ** 2)

    def make_problem(self, noisy, clean, eval_set=None) -> DualProblem:
        """Validate data, sample/check generators, select unique patterns (sets
        `generators_`, `pattern_selection_`, `n_channels_`) and return the eq. 4 instance."""
        x = as_images(noisy, "noisy", dtype=torch.float64)
        y = as_targets(clean, x)
        c = x.shape[1]
        if self.residual and c != 1:
            raise ValueError(f"residual=True needs one-channel inputs, got {c} channels")
        if self.generators is not None:
            g = check_generators(self.generators, c, self.kernel_size).to(torch.float64)
        else:
            g = sample_generators(self.n_patterns, c, self.kernel_size, self.seed)
        if self.dedupe:
            selection = select_unique_patterns(x, g)
        else:
            selection = PatternSelection(torch.arange(g.shape[0]), g.shape[0], 0, 0)
        if selection.keep.numel() == 0:
            raise ValueError("every generator gives the all-zero sign pattern on these images; "
                             "pass other generators or more patterns")
        self.n_channels_ = c
        self.generators_ = g[selection.keep].contiguous()
        self.pattern_selection_ = selection
        target = y - x if self.residual else y
        problem = DualProblem(x, target, self.generators_, self.beta, self.loss_)
        if eval_set is not None:
            if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
                raise TypeError("eval_set: expected a pair (noisy, clean) of held-out images")
            xe = as_images(eval_set[0], "eval_set noisy", dtype=torch.float64)
            if xe.shape[1:] != x.shape[1:]:
                raise ValueError(f"eval_set: expected images of shape (n, {c}, {x.shape[2]}, "
                                 f"{x.shape[3]}) like the training set, got {tuple(xe.shape)}")
            ye = as_targets(eval_set[1], xe, "eval_set clean")
            problem.eval_noisy = xe
            problem.eval_target = ye - xe if self.residual else ye
        return problem

    def fit(self, noisy, clean, solver: str | None = None, config=None, eval_set=None,
            **options: Any) -> ConvexDualDenoiser:
        """Solve eq. 4 on training pairs.

        `solver=None` takes the fastest exact path for the problem (`convexnn.solve.registry`:
        "ipm" for the squared loss, with pattern pricing at large P; "cvxpy" for a Lipschitz
        bound and for l1 / Huber where it fits, else "admm"); the choice and its reason are in
        `solve_info_.details["solver_choice"]`. Name one of `SOLVERS` to choose yourself.
        Solver options go in `config` (the solver's dataclass, e.g. `IpmConfig`) or as
        keywords (`progress=True`, `cvxpy_solver="SCS"`, ...). `eval_set=(noisy, clean)` is a
        held-out pair that iterative solvers score every epoch in `history_`. Raises
        `ConvexSolverError` when the solver does not reach a trustworthy solution.
        """
        reason = "named by the caller"
        if solver is None:
            solver, reason = self.choose_solver(noisy)
        entry = get_solver(solver)
        entry.check(self.loss, self.lipschitz_bound)
        solve, config_cls = entry.load()
        named = f"solver={entry.name!r}" + ("" if reason == "named by the caller" else
                                             " (chosen automatically: name another solver)")
        cfg = _make_config(config_cls, config, options, named)
        t0 = time.perf_counter()
        shards = entry.name == "ipm" and setup_distributed(cfg.distributed).enabled
        problem = self.make_problem(noisy, clean, eval_set)
        t_patterns = time.perf_counter() - t0
        problem.lipschitz_bound = self.lipschitz_bound
        solution: DualSolution = solve(problem, cfg)
        self._set_solution(solution)
        if self.lipschitz_bound is not None:
            certificate = self.lipschitz_certificate_
            if certificate > self.lipschitz_bound:
                # positive scaling keeps the cone constraints; certify exactly what is returned
                scale = self.lipschitz_bound / certificate * (1.0 - 1e-12)
                self.v_, self.w_ = self.v_ * scale, self.w_ * scale
                self.solve_info_.details["lipschitz_rescale"] = scale
        self.solve_info_.details["pattern_seconds"] = t_patterns
        self.solve_info_.details["solver_choice"] = {"solver": entry.name, "reason": reason}
        if not entry.exact:
            self._certify_inexact(problem.noisy, clean)
        self.objective_ = (self.objective(problem.noisy, clean, reduction="sum") if not shards
                           else self._sharded_objective(problem.noisy, clean))
        self.solve_info_.details["fit_seconds"] = time.perf_counter() - t0
        return self

    def _sharded_objective(self, noisy, clean) -> float:
        """Eq. 4 objective over every process's shard (torchrun, solver='ipm')."""
        local = self.loss_(self.predict(noisy), as_targets(clean, self._inputs(noisy)), "sum")
        total = all_reduce_sum(torch.as_tensor(float(local), dtype=torch.float64), dist_info())
        nv, nw = self.group_norms()
        return float(total) + self.beta * float(nv.sum() + nw.sum())

    def _certify_inexact(self, noisy, clean) -> None:
        """An approximate solver's result with its certificate (App. C): lower bound and
        certified gap over every pattern, in `solve_info_.details["certificate"]`; a warning
        above 1%."""
        from convexnn.analysis.certificate import certify

        cert = certify(self, noisy, clean, check="exact")
        self.solve_info_.details["certificate"] = cert.to_dict()
        if cert.certified_gap > 0.01:
            warnings.warn(
                f"solver={self.solve_info_.solver!r} ended {100 * cert.certified_gap:.1f}% above "
                f"the certified lower bound of eq. 4 (objective of the feasible projection "
                f"{cert.feasible_objective:.6g}, lower bound {cert.lower_bound:.6g}); the exact "
                f"path, fit(noisy, clean) or solver='ipm', solves it to the optimum",
                RuntimeWarning, stacklevel=3)

    def _set_solution(self, solution: DualSolution) -> None:
        self.v_ = solution.v.to(torch.float64).cpu().contiguous()
        self.w_ = solution.w.to(torch.float64).cpu().contiguous()
        self.solve_info_: SolveInfo = solution.info
        self.history_ = list(solution.history)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """Gated dual network on `(B, C, H, W)` in x's dtype/device (differentiable in x)."""
        self._check_fitted()
        self.check_input(x, self.n_channels_)
        f = self.v_ - self.w_
        live = f.flatten(1).abs().amax(1) > 0          # patterns whose filter is zero add 0
        out = gated_predict(x, self.generators_[live], f[live])
        return out + x if self.residual else out

    def predict(self, noisy, batch_size: int = 64) -> torch.Tensor:
        """Dual prediction `sum_i D_i(x) conv(x, v_i - w_i)` (+ x), `(n, 1, H, W)` float64."""
        self._check_fitted()
        batch_size = check_int(batch_size, "batch_size")
        x = self._inputs(noisy)
        with torch.no_grad():
            return torch.cat([self(x[i:i + batch_size])
                              for i in range(0, x.shape[0], batch_size)])

    @property
    def lipschitz_certificate_(self) -> float:
        """Certified upper bound of Lip(`to_primal()`) (convexnn.model.lipschitz, (*));
        computed on access (FFTs of all 2P filters)."""
        self._check_fitted()
        return dual_lipschitz_bound(self.v_, self.w_)

    def group_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(||v_i||_2, ||w_i||_2)` for every pattern i."""
        self._check_fitted()
        return self.v_.flatten(1).norm(dim=1), self.w_.flatten(1).norm(dim=1)

    def objective(self, noisy, clean, reduction: str = "sum") -> float:
        """Dual objective of eq. 4 (Appendix E loss) at the fitted point on these images."""
        x = self._inputs(noisy)
        y = as_targets(clean, x)
        nv, nw = self.group_norms()
        data = self.loss_(self.predict(x), y, reduction)
        return float(data + self.beta * (nv.sum() + nw.sum()))

    def constraint_violation(self, noisy) -> HingeViolation:
        """Max, total and relative hinge violation of eq. 4's constraints on these images."""
        self._check_fitted()
        live = (self.v_.flatten(1).abs().amax(1) > 0) | (self.w_.flatten(1).abs().amax(1) > 0)
        return hinge_violation(self._inputs(noisy), self.generators_[live], self.v_[live],
                               self.w_[live])

    # ------------------------------------------------------------------ primal
    def to_primal(self, tol: float = 0.0) -> TwoLayerConvDenoiser:
        """Primal weights of eq. 5: `u = v / sqrt(||v||)`, `alpha = +-sqrt(||v||)`.

        Groups with norm <= `tol * max norm` are dropped (their contribution is below the
        tolerance); `tol=0` keeps every non-zero group.
        """
        tol = check_in_range(tol, "tol", 0.0, math.inf, low_open=False)
        nv, nw = self.group_norms()
        norms = torch.cat([nv, nw])
        filters = torch.cat([self.v_, self.w_])
        signs = torch.cat([torch.ones_like(nv), -torch.ones_like(nw)])
        cut = tol * float(norms.max()) if norms.numel() else 0.0
        keep = norms > cut
        if not bool(keep.any()):
            first = torch.zeros((1,) + tuple(self.v_.shape[1:]), dtype=torch.float64)
            return TwoLayerConvDenoiser.from_weights(first, torch.zeros(1, dtype=torch.float64),
                                                     self.residual)
        root = norms[keep].sqrt()
        first = filters[keep] / root.reshape(-1, 1, 1, 1)
        return TwoLayerConvDenoiser.from_weights(first, signs[keep] * root, self.residual)
