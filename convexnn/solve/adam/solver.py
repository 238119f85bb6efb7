"""Hinge-penalised Adam for the convex dual (eq. 4 with the Appendix B hinge penalty).

Minimises, over `v_i, w_i` (P groups of shape (C, k, k)),

    J(v, w) = [ l(sum_i D_i Yp (v_i - w_i), y)
                + rho * sum_i 1^T ((2 D_i - I) Yp v_i)_- + 1^T ((2 D_i - I) Yp w_i)_- ] / N
              + beta / N * sum_i (||v_i||_2 + ||w_i||_2)                  # eq. 4 + App. B

(`N` training pixels; dividing by N is Appendix B's "sample- and dimension-averaged" scale and
does not move the minimiser). Minibatches of images; each step runs the fused kernels of
`adam_kernels` (gates recomputed from the generators, never an `N x P` array). Use through
`ConvexDualDenoiser.fit(noisy, clean, solver="adam", ...)`.

Defaults and why:
* `rho="auto"`: `rho = rho_scale * max|y|` with `rho_scale = 1`. At an infeasible pixel the
  hinge gradient w.r.t. `(Yp v_i)_n` is `rho`, the data gradient is `D_in r_n`, and
  `|r_n| <= max|y|` at the start (v = w = 0) and far below it later, so the hinge dominates the
  data term wherever a constraint is violated: the exact-penalty regime.
* `lr="auto"`: `lr = lr_scale * max|y| / (P * mean_n ||Yp_n||_1)`, `lr_scale = 1`. Adam moves
  every coordinate by about `lr` per step, so one step changes a prediction by at most about
  `lr * P * ||Yp_n||_1`; the rule caps that at the label scale, for every P (a fixed lr that is
  right for 40 patterns diverges at 2,000). Cosine decay to `lr / 100` over `epochs`,
  Adam betas (0.9, 0.999); the decay is what drives the final constraint violation towards 0
  (the end-of-run "repair": no projection step is done).
* `batch_size=1` (the paper used 25): the lr bound above limits how far one *step* may move
  the predictions, whatever the batch, so progress per epoch grows with the number of steps.
  Measured on MNIST (sigma 0.5, 8,000 patterns, 100 digits, 30 epochs): eq. 5 primal objective
  per pixel 0.0568 / 0.0527 / 0.0420 at batch 25 / 5 / 1 (seconds per epoch: docs/adam.md);
  3x and 10x larger learning rates at batch 25, with warm-up, were worse (0.076, 0.128).
* `batch_pixels=None`: set it to step on that many pixels (rows of `Yp`) drawn from all
  images instead of whole images; the objective is a sum over pixels, so this is the same
  program with more, cheaper steps per epoch. Measured (MNIST sigma 0.5, 2,000 patterns,
  100 digits, 10 epochs, eq. 5 primal per pixel): 0.0370 at one image (784 px) per step,
  0.0354 at 196 px (same 10 s), 0.0489 at 49 px (25 s: per-step overhead and gradient noise).
  It matters for large images (MRI, 80 x 80: 800 px per step instead of 6,400).
* `init_scale=1e-3`: small seeded Gaussian start (exact zero has no norm gradient);
  `warm_start` (a fitted model with the same generators, or `(v, w)`) replaces it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convexnn.model.losses import Loss
from convexnn.model.problem import DualProblem, DualSolution, SolveInfo
from convexnn.model.validation import (
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    check_seed,
)
from convexnn.solve.adam.kernels import data_grad, hinge_pass
from convexnn.solve.adam.prepare import (
    Batches,
    check_eval_set,
    check_representable,
    initial_filters,
    learning_rate,
    make_batches,
    penalty_weight,
)
from convexnn.train.checkpoint import fingerprint
from convexnn.train.device import resolve_device, resolve_dtype
from convexnn.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    setup_distributed,
    wrap_ddp,
)
from convexnn.train.loop import LoopResult, LoopSpec, TrainingDivergedError, run_loop

__all__ = ["AdamConfig", "solve_adam", "DualHingeModule"]

@dataclass
class AdamConfig:
    """Options of `solver="adam"` (see the module docstring for the defaults)."""

    lr: float | str = "auto"
    lr_scale: float = 1.0
    rho: float | str = "auto"
    rho_scale: float = 1.0
    epochs: int = 100
    batch_size: int = 1               # images per step (module docstring: why not 25)
    batch_pixels: int | None = None   # if set: steps on this many pixels of any images instead
    schedule: str = "cosine"          # or "constant"
    lr_min_ratio: float = 0.01
    patience: int = 20                # early stop: epochs without relative improvement > tol
    tol: float = 1e-4
    init_scale: float = 1e-3
    warm_start: Any = None            # fitted ConvexDualDenoiser (same generators) or (v, w)
    device: str | None = None         # None/"auto": cuda if available else cpu
    dtype: Any = "float32"
    seed: int = 0
    eval_every: int = 1               # exact full-data objective every this many epochs
    checkpoint_path: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    progress: bool = True
    max_seconds: float | None = None
    stop_below: float | None = None   # stop when the rebuilt-primal train objective (sum) <= it
    distributed: bool | None = None   # None: auto (torchrun environment)
    kernel: str = "auto"              # "auto" (C++ on CPU, torch elsewhere), "cpp", "torch"
    callback: Callable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("lr", "rho"):
            val = getattr(self, name)
            if not (isinstance(val, str) and val == "auto"):
                if isinstance(val, str):
                    raise ValueError(f"{name}: expected a positive number or 'auto', got "
                                     f"{val!r}")
                check_positive(val, name)
        for name in ("lr_scale", "rho_scale"):
            check_positive(getattr(self, name), name)
        for name in ("tol", "init_scale"):
            check_in_range(getattr(self, name), name, 0.0, math.inf, low_open=False)
        for name in ("epochs", "batch_size", "patience", "eval_every", "checkpoint_every"):
            check_int(getattr(self, name), name)
        if self.batch_pixels is not None:
            check_int(self.batch_pixels, "batch_pixels")
        check_in_range(self.lr_min_ratio, "lr_min_ratio", 0.0, 1.0, False, False)
        check_seed(self.seed)
        check_choice(self.schedule, "schedule", ("cosine", "constant"))
        check_choice(self.kernel, "kernel", ("auto", "cpp", "torch"))
        resolve_dtype(self.dtype)
        if self.max_seconds is not None:
            check_positive(self.max_seconds, "max_seconds")
        if self.stop_below is not None:
            check_in_range(self.stop_below, "stop_below", -math.inf, math.inf)

    def settings(self) -> dict[str, Any]:
        """What determines the trajectory (goes into the checkpoint fingerprint)."""
        skip = {"progress", "checkpoint_path", "checkpoint_every", "resume", "callback",
                "warm_start",
                "eval_every", "device", "max_seconds", "stop_below", "distributed", "kernel"}
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["dtype"] = str(resolve_dtype(self.dtype))
        return d


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """`(n, H W, C k^2)`: each image's rows of `Yp` (eq. 3)."""
    return F.unfold(x, k, padding=k // 2).transpose(1, 2).contiguous()


class _HingeDualLoss(torch.autograd.Function):
    """Scaled `l(pred) + rho * hinge` of one batch; gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, v, w, yp, gt, target, loss, rho, scale, kernel, stats):
        hp = hinge_pass(yp, gt, v.detach().T, w.detach().T, grad=True, kernel=kernel)
        pred = hp.pred_dual.detach().requires_grad_(True)
        with torch.enable_grad():
            data = loss(pred, target, "sum")
            (r,) = torch.autograd.grad(data, pred)
        gf = data_grad(yp, gt, r, kernel=kernel)
        ctx.save_for_backward(((gf + rho * hp.grad_v) * scale).T.contiguous(),
                              ((rho * hp.grad_w - gf) * scale).T.contiguous())
        stats.update(data=float(data), hinge=hp.hinge_sum, hinge_max=hp.hinge_max)
        return (data.detach() + rho * hp.hinge_sum) * scale

    @staticmethod
    def backward(ctx, grad_out):
        gv, gw = ctx.saved_tensors
        return grad_out * gv, grad_out * gw, None, None, None, None, None, None, None, None


class DualHingeModule(nn.Module):
    """Parameters `v, w (P, C k^2)`; `forward` is the scaled penalised batch objective."""

    def __init__(self, generators: torch.Tensor, v0: torch.Tensor, w0: torch.Tensor,
                 beta: float, loss: Loss, rho: float, kernel: str) -> None:
        super().__init__()
        p = generators.shape[0]
        self.v = nn.Parameter(v0.reshape(p, -1).clone())
        self.w = nn.Parameter(w0.reshape(p, -1).clone())
        self.register_buffer("gt", generators.reshape(p, -1).T.contiguous())
        self.beta, self.loss, self.rho, self.kernel = beta, loss, rho, kernel
        self.stats: dict[str, float] = {}

    @staticmethod
    def group_norm_sum(u: torch.Tensor) -> torch.Tensor:
        # sqrt(|u|^2 + tiny): the group norm with gradient 0 (not NaN) at u = 0
        return torch.sqrt(u.pow(2).sum(1) + 1e-30).sum()

    def forward(self, yp, target, data_scale: float, reg_scale: float) -> torch.Tensor:
        pen = _HingeDualLoss.apply(self.v, self.w, yp, self.gt, target, self.loss, self.rho,
                                   data_scale, self.kernel, self.stats)
        reg = self.beta * (self.group_norm_sum(self.v) + self.group_norm_sum(self.w))
        return pen + reg_scale * reg


def _evaluate(mod: DualHingeModule, patches, targets, info: DistInfo, prefix: str,
              kernel: str, chunk: int = 64) -> dict[str, float]:
    """Exact objectives on a data set (this process's share, all-reduced)."""
    n = patches.shape[0]
    mine = torch.arange(info.rank, n, info.world_size)
    sums = torch.zeros(4, dtype=torch.float64)  # dual data, primal data, hinge, pixels
    vmax = torch.zeros(1, dtype=torch.float64)
    vt, wt = mod.v.detach().T.contiguous(), mod.w.detach().T.contiguous()
    with torch.no_grad():
        for i0 in range(0, mine.numel(), chunk):
            idx = mine[i0:i0 + chunk].to(patches.device)
            yp = patches[idx].reshape(-1, patches.shape[-1])
            y = targets[idx].reshape(-1)
            hp = hinge_pass(yp, mod.gt, vt, wt, grad=False, kernel=kernel)
            sums += torch.tensor([float(mod.loss(hp.pred_dual, y, "sum")),
                                  float(mod.loss(hp.pred_primal, y, "sum")),
                                  hp.hinge_sum, float(y.numel())], dtype=torch.float64)
            vmax = torch.maximum(vmax, torch.tensor([hp.hinge_max], dtype=torch.float64))
    sums = all_reduce_sum(sums, info)
    vmax = all_reduce_max(vmax, info)
    reg = mod.beta * float(mod.group_norm_sum(mod.v.detach().double())
                           + mod.group_norm_sum(mod.w.detach().double()))
    npix = float(sums[3])
    dual, primal = float(sums[0]) + reg, float(sums[1]) + reg
    pen = dual + mod.rho * float(sums[2])
    return {f"{prefix}_objective": dual, f"{prefix}_objective_mean": dual / npix,
            f"{prefix}_primal_objective": primal,
            f"{prefix}_primal_objective_mean": primal / npix,
            f"{prefix}_penalized_objective": pen,
            f"{prefix}_penalized_objective_mean": pen / npix,
            f"{prefix}_violation_total": float(sums[2]),
            f"{prefix}_violation_max": float(vmax[0])}


@dataclass
class _Settings:
    """How one run was resolved: device, precision, processes and step sizes."""

    device: torch.device
    dtype: torch.dtype
    info: DistInfo
    rho: float
    lr: float


def _fingerprint(problem: DualProblem, cfg: AdamConfig, rho: float, lr: float,
                 warm: list[torch.Tensor] | None) -> str:
    """What determines the trajectory (a checkpoint of another run is refused)."""
    return fingerprint("dual-adam", {**cfg.settings(), "rho_value": rho, "lr_value": lr,
                                     "beta": problem.beta, "loss": repr(problem.loss)},
                       {"noisy": problem.noisy, "target": problem.target,
                        "generators": problem.generators,
                        **({"warm_v": warm[0], "warm_w": warm[1]} if warm else {})})


def _make_step(module: nn.Module, b: Batches, info: DistInfo,
               device: torch.device) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The loop's step: penalised objective of one minibatch, and its gradient."""
    width = b.patches.shape[-1]

    def step(local: torch.Tensor, global_count: int) -> torch.Tensor:
        # a batch is whole images, or (batch_pixels) rows of Yp from any images: the objective
        # is a sum over pixels, so both are unbiased minibatches of the same eq. 4 + App. B sum
        idx = local.to(device)
        yp = b.patches[idx].reshape(-1, width)
        y = b.targets[idx].reshape(-1)
        # local sums scaled so that DDP's average over processes is the global batch mean
        data_scale = info.world_size / float(global_count * b.item_pixels)
        loss = module(yp, y, data_scale, 1.0 / b.n_total)
        loss.backward()
        return loss

    return step


def _eval_rows(problem: DualProblem, device: torch.device, dtype: torch.dtype,
               k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows of Yp and targets of the eval set (None without one)."""
    if problem.eval_noisy is None:
        return None
    ev_patches = _patches(problem.eval_noisy.to(device, dtype), k)
    ev_targets = problem.eval_target.to(device, dtype).reshape(ev_patches.shape[0], -1)
    return ev_patches, ev_targets


def _make_evaluate(raw: DualHingeModule, info: DistInfo, kernel: str,
                   train: tuple[torch.Tensor, torch.Tensor],
                   test: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> Callable[[int], dict[str, float]]:
    """The loop's evaluation: exact objectives on the training (and eval) set."""

    def evaluate(epoch: int) -> dict[str, float]:
        out = _evaluate(raw, *train, info, "train", kernel)
        if test is not None:
            out.update(_evaluate(raw, *test, info, "test", kernel))
        return out

    return evaluate


def _loop_spec(cfg: AdamConfig, lr: float, p: int, by_pixel: bool) -> LoopSpec:
    """The shared training loop's options (schedule, early stop, checkpoints, progress)."""
    return LoopSpec.from_config(cfg, lr, monitor="train_penalized_objective_mean",
                                stop_key="train_primal_objective", desc=f"dual adam P={p}",
                                batch_size=cfg.batch_pixels or cfg.batch_size,
                                item_name="pixels" if by_pixel else "images")


def _solution(problem: DualProblem, cfg: AdamConfig, st: _Settings, raw: DualHingeModule,
              res: LoopResult, t0: float, t_setup: float) -> DualSolution:
    """The trained filters `v, w (P, C, k, k)` (float64, CPU) and the run's record."""
    shape = problem.generators.shape
    v = raw.v.detach().reshape(shape).to("cpu", torch.float64)
    w = raw.w.detach().reshape(shape).to("cpu", torch.float64)
    if not (bool(torch.isfinite(v).all()) and bool(torch.isfinite(w).all())):
        raise TrainingDivergedError(
            f"solver='adam': the dual filters are not finite after {res.epochs_run} epochs "
            f"({st.dtype} overflow?): rescale the data or use dtype='float64'",
            epoch=res.epochs_run, checkpoint_epoch=None)
    last = res.history[-1] if res.history else {}
    details = {"rho": st.rho, "lr": st.lr, "epochs_run": res.epochs_run,
               "device": str(st.device), "dtype": str(st.dtype),
               "world_size": st.info.world_size,
               "resumed_from_epoch": res.resumed_from, "kernel": cfg.kernel,
               "train_primal_objective": last.get("train_primal_objective"),
               "violation_max": last.get("train_violation_max"),
               "violation_total": last.get("train_violation_total")}
    info_out = SolveInfo(solver="adam", status=res.status, setup_seconds=t_setup,
                         solve_seconds=res.seconds, total_seconds=time.perf_counter() - t0,
                         iterations=res.steps, reported_objective=last.get("train_objective"),
                         details=details)
    return DualSolution(v=v, w=w, info=info_out, history=res.history)


def solve_adam(problem: DualProblem, config: AdamConfig) -> DualSolution:
    """Train eq. 4 (hinge-penalised, App. B) with Adam; returns `v, w (P, C, k, k)`."""
    t0 = time.perf_counter()
    cfg = config
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype)
    if cfg.kernel not in ("auto", "cpp", "torch"):
        raise ValueError(f"kernel: expected 'auto', 'cpp' or 'torch', got {cfg.kernel!r}")
    info = setup_distributed(cfg.distributed, device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    x, target = problem.noisy, problem.target
    n, k = x.shape[0], problem.kernel_size
    check_eval_set(problem)
    rho = penalty_weight(cfg.rho, cfg.rho_scale, target)
    patches = _patches(x.to(device, dtype), k)
    lr = learning_rate(cfg.lr, cfg.lr_scale, problem, patches)
    check_representable(lr, rho, dtype, target)
    st = _Settings(device=device, dtype=dtype, info=info, rho=rho, lr=lr)
    targets = target.to(device, dtype).reshape(n, -1)
    g = problem.generators.to(device, dtype)
    v0, w0, warm = initial_filters(problem, cfg.init_scale, cfg.seed, cfg.warm_start,
                                   device, dtype)
    raw = DualHingeModule(g, v0, w0, problem.beta, problem.loss, rho, cfg.kernel).to(device)
    module = wrap_ddp(raw, info, device)
    opt = torch.optim.Adam(raw.parameters(), lr=lr)
    fp = _fingerprint(problem, cfg, rho, lr, warm)
    batches = make_batches(cfg.batch_pixels, x, patches, targets)
    step = _make_step(module, batches, info, device)
    evaluate = _make_evaluate(raw, info, cfg.kernel, (patches, targets),
                              _eval_rows(problem, device, dtype, k))
    spec = _loop_spec(cfg, lr, g.shape[0], batches.by_pixel)
    t_setup = time.perf_counter() - t0
    res = run_loop(kind="dual-adam", spec=spec, n_items=batches.n_items,
                   module=module, raw=raw,
                   optimizer=opt, step=step, evaluate=evaluate, fp=fp, info=info)
    return _solution(problem, cfg, st, raw, res, t0, t_setup)
