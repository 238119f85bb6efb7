"""Full-batch L-BFGS on the primal objective (eq. 2): polishing an Adam-trained network.

Minibatch Adam stops short of a local minimum of eq. 2 on small training sets (MRI: 16 images
in batches of 2, 1,600 steps); comparing such a network with the convex dual's optimum compares
two different accuracies. `polish_primal` continues from the network's weights with L-BFGS
(strong-Wolfe line search) on the *full* eq. 2 objective, in outer steps of `inner` iterations,
until an outer step lowers it by less than `tol` (relative) or `max_steps` / `max_seconds` run
out. The gradient is accumulated over image chunks, so memory stays that of one chunk.

    res = polish_primal(model, noisy, clean, PolishConfig(beta=beta, max_steps=30),
                        eval_set=(test_noisy, test_clean))
    res.history[-1]["train_objective_mean"]          # eq. 2 / N after the last step

With `checkpoint_path`, the weights and history are written atomically after every outer step;
a rerun resumes from them (the L-BFGS curvature memory starts afresh: it is not saved).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from convexnn.model.losses import Loss
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.validation import as_images, as_targets, check_int, check_positive
from convexnn.train.checkpoint import fingerprint, resume_checkpoint, save_checkpoint
from convexnn.train.device import resolve_device, resolve_dtype
from convexnn.train.distributed import DistInfo
from convexnn.train.loop import TrainingDivergedError
from convexnn.train.primal import PrimalTrainResult, evaluate_objective

__all__ = ["PolishConfig", "polish_primal"]


@dataclass
class PolishConfig:
    """Options of `polish_primal`. `beta`: eq. 2's weight decay (sum scale)."""

    beta: float = 1e-3
    loss: str = "squared"
    huber_delta: float = 1.0
    max_steps: int = 50             # outer steps, `inner` L-BFGS iterations each
    inner: int = 20
    history_size: int = 50
    tol: float = 1e-6               # stop when an outer step lowers eq. 2 by less (relative)
    chunk: int = 64                 # images per forward pass of the full-batch gradient
    max_seconds: float | None = None
    device: str | None = None
    dtype: Any = "float32"
    checkpoint_path: str | None = None
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive(self.beta, "beta")
        for name in ("max_steps", "inner", "history_size", "chunk"):
            check_int(getattr(self, name), name)
        check_positive(self.tol, "tol")
        if self.max_seconds is not None:
            check_positive(self.max_seconds, "max_seconds")


@dataclass
class _Problem:
    """The full-batch eq. 2 problem of one `polish_primal` call and its evaluation count."""

    model: TwoLayerConvDenoiser
    x: torch.Tensor
    y: torch.Tensor
    xe: torch.Tensor | None
    ye: torch.Tensor | None
    loss: Loss
    beta: float
    chunk: int
    device: torch.device
    dtype: torch.dtype
    npix: float
    info: DistInfo = field(default_factory=DistInfo)
    evals: int = 0          # objective and gradient passes so far

    def evaluate(self) -> dict[str, float]:
        out = evaluate_objective(self.model, self.x, self.y, self.beta, self.loss, self.info,
                                 "train")
        if self.xe is not None:
            out.update(evaluate_objective(self.model, self.xe, self.ye, self.beta, self.loss,
                                          self.info, "test"))
        return out


def _prepare(model: TwoLayerConvDenoiser, noisy, clean, eval_set,
             cfg: PolishConfig) -> _Problem:
    """Check and convert the images, move `model` to the device and dtype of `cfg`."""
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    loss = Loss(cfg.loss, cfg.huber_delta)
    x = as_images(noisy, "noisy", dtype=dtype, device=device)
    y = as_targets(clean, x)
    if x.shape[1] != model.in_channels:
        raise ValueError(f"noisy: the model takes {model.in_channels} channel(s), got "
                         f"{x.shape[1]}")
    xe = ye = None
    if eval_set is not None:
        if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
            raise TypeError("eval_set: expected a pair (noisy, clean) of held-out images")
        xe = as_images(eval_set[0], "eval_set noisy", dtype=dtype, device=device)
        ye = as_targets(eval_set[1], xe, "eval_set clean")
    model.to(device=device, dtype=dtype)
    npix = float(x.shape[0] * x.shape[2] * x.shape[3])
    return _Problem(model=model, x=x, y=y, xe=xe, ye=ye, loss=loss, beta=cfg.beta,
                    chunk=cfg.chunk, device=device, dtype=dtype, npix=npix)


def _fingerprint(cfg: PolishConfig, prob: _Problem) -> str:
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("max_steps", "max_seconds", "device", "checkpoint_path", "resume",
                             "progress")}
    settings["dtype"] = str(prob.dtype)
    model = prob.model
    return fingerprint("primal-lbfgs", {**settings, "n_filters": model.n_filters,
                                       "kernel_size": model.kernel_size,
                                       "residual": model.residual},
                       {"noisy": prob.x, "clean": prob.y})


def _resume(cfg: PolishConfig, prob: _Problem, fp: str,
            ckpt: Path | None) -> tuple[list[dict[str, float]], int | None]:
    """(history, resumed_from) of the checkpoint at `ckpt` (weights loaded), or ([], None)."""
    state = resume_checkpoint(ckpt, fp, cfg.resume, "pass another checkpoint_path")
    if state is None:
        return [], None
    prob.model.load_state_dict(state["model"])
    history, prob.evals = list(state["history"]), int(state["evaluations"])
    return history, len(history) - 1


def _closure(prob: _Problem, opt: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
    model, x, y, chunk, npix = prob.model, prob.x, prob.y, prob.chunk, prob.npix

    def closure() -> torch.Tensor:      # eq. 2 / N and its gradient over all images
        prob.evals += 1
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64, device=prob.device)
        for i0 in range(0, x.shape[0], chunk):
            part = prob.loss(model(x[i0:i0 + chunk]), y[i0:i0 + chunk], "sum") / npix
            part.backward()
            total += part.detach().double()
        reg = (0.5 * prob.beta / npix) * model.weight_decay()
        reg.backward()
        return (total + reg.detach().double()).to(prob.dtype)

    return closure


def _progress_bar(cfg: PolishConfig, model: TwoLayerConvDenoiser,
                  history: list[dict[str, float]]) -> Any:
    try:
        from tqdm.auto import tqdm
        return tqdm(total=cfg.max_steps, initial=len(history) - 1, disable=not cfg.progress,
                    desc=f"primal l-bfgs m={model.n_filters}")
    except ImportError:                                  # pragma: no cover
        return None


def _outer_steps(cfg: PolishConfig, prob: _Problem, opt: torch.optim.Optimizer,
                 history: list[dict[str, float]], fp: str, ckpt: Path | None) -> str:
    """L-BFGS outer steps appended to `history` (checkpoint after each); returns the status."""
    closure = _closure(prob, opt)
    status = "max_steps"
    bar = _progress_bar(cfg, prob.model, history)
    t_prev = history[-1]["elapsed_seconds"]
    t_run = time.perf_counter()
    while len(history) - 1 < cfg.max_steps:
        before = history[-1]["train_objective"]
        opt.step(closure)
        row = {"step": len(history), **prob.evaluate(), "evaluations": prob.evals,
               "elapsed_seconds": t_prev + time.perf_counter() - t_run}
        if not math.isfinite(row["train_objective"]):
            raise TrainingDivergedError(
                f"primal-lbfgs: the objective became {row['train_objective']} at step "
                f"{row['step']}", int(row["step"]), None)
        history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{row['train_objective_mean']:.4e}")
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "fingerprint": fp, "kind": "primal-lbfgs", "model": prob.model.state_dict(),
                "history": history, "evaluations": prob.evals})
        if before - row["train_objective"] <= cfg.tol * abs(before):
            status = "converged"
            break
        if cfg.max_seconds is not None and time.perf_counter() - t_run > cfg.max_seconds:
            status = "time_limit"
            break
    if bar is not None:
        bar.close()
    return status


def polish_primal(model: TwoLayerConvDenoiser, noisy, clean, config: PolishConfig | None = None,
                  eval_set=None, **options: Any) -> PrimalTrainResult:
    """Minimise eq. 2 over `model`'s weights (in place) with full-batch L-BFGS.

    `history[0]` is the starting point, then one row per outer step: `train_objective` (eq. 2,
    sum), `train_objective_mean`, the test versions with `eval_set`, `evaluations` (objective
    and gradient passes so far), `elapsed_seconds`. Status: "converged" (relative decrease
    below `tol`), "max_steps" or "time_limit".
    """
    cfg = config or PolishConfig()
    if options:
        cfg = PolishConfig(**{**asdict(cfg), **options})
    if not isinstance(model, TwoLayerConvDenoiser):
        raise TypeError(f"model: expected a TwoLayerConvDenoiser, got {type(model).__name__}")
    t0 = time.perf_counter()
    prob = _prepare(model, noisy, clean, eval_set, cfg)
    fp = _fingerprint(cfg, prob)
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    history, resumed_from = _resume(cfg, prob, fp, ckpt)
    if not history:
        history.append({"step": 0, **prob.evaluate(), "evaluations": 0, "elapsed_seconds": 0.0})
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=cfg.inner,
                            history_size=cfg.history_size, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)
    status = _outer_steps(cfg, prob, opt, history, fp, ckpt)
    return PrimalTrainResult(history, status, len(history) - 1, prob.evals,
                             time.perf_counter() - t0, resumed_from)
