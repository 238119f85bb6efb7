"""The epoch loop shared by the dual (Adam, hinge) and primal trainers.

Seeded per-epoch permutations (so a resumed run sees the same batches), global minibatches
split across processes (`rank::world_size`), Adam with a per-step learning-rate schedule,
per-epoch exact evaluation, early stop on a plateau, NaN detection, atomic checkpoints and exact
resume, a tqdm bar. The trainers provide a step (forward + backward on the local share of one
batch) and an evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from convexnn.model.problem import ConvexSolverError
from convexnn.train.checkpoint import resume_checkpoint, save_checkpoint
from convexnn.train.distributed import DistInfo, all_reduce_sum, barrier

__all__ = ["LoopSpec", "LoopResult", "TrainingDivergedError", "run_loop", "lr_at",
           "epoch_permutation", "check_loop_spec"]

SCHEDULES = ("cosine", "constant")


class TrainingDivergedError(ConvexSolverError):
    """The loss became NaN/Inf; `epoch` is where, `checkpoint_epoch` the last good save."""

    def __init__(self, message: str, epoch: int, checkpoint_epoch: int | None) -> None:
        super().__init__(message, status="nan")
        self.epoch = epoch
        self.checkpoint_epoch = checkpoint_epoch


@dataclass
class LoopSpec:
    epochs: int
    batch_size: int
    lr: float
    schedule: str = "cosine"
    lr_min_ratio: float = 0.01
    patience: int = 10
    tol: float = 1e-4
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    progress: bool = True
    max_seconds: float | None = None
    eval_every: int = 1
    callback: Callable[[dict, nn.Module], Any] | None = None
    monitor: str = "train_objective_mean"
    stop_below: float | None = None   # stop once history[stop_key] <= stop_below
    stop_key: str = "train_objective"
    desc: str = "train"
    item_name: str = "images"         # what one of the n_items is (error messages)

    @classmethod
    def from_config(cls, cfg: Any, lr: float, monitor: str, stop_key: str, desc: str,
                    **overrides: Any) -> LoopSpec:
        """The loop options a trainer's config shares with `LoopSpec` (epochs, batch_size,
        schedule, early stop, checkpoints, progress), copied by name, with this run's own."""
        own = {"lr": lr, "monitor": monitor, "stop_key": stop_key, "desc": desc, **overrides}
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls)
                  if f.name not in own and hasattr(cfg, f.name)}
        return cls(**shared, **own)


def check_loop_spec(spec: LoopSpec, n_items: int) -> None:
    for name in ("epochs", "batch_size", "patience", "checkpoint_every", "eval_every"):
        val = getattr(spec, name)
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    if spec.batch_size > n_items:
        raise ValueError(f"batch_size={spec.batch_size} is larger than the {n_items} training "
                         f"{spec.item_name}; use batch_size <= {n_items}")
    if not (isinstance(spec.lr, (int, float)) and math.isfinite(spec.lr) and spec.lr > 0):
        raise ValueError(f"lr: expected a positive finite number, got {spec.lr!r}")
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {spec.schedule!r}")
    if not 0 <= spec.lr_min_ratio <= 1:
        raise ValueError(f"lr_min_ratio: expected a number in [0, 1], got {spec.lr_min_ratio}")


def lr_at(spec: LoopSpec, step: int, total_steps: int) -> float:
    """Learning rate at optimisation step `step` (cosine decay to `lr * lr_min_ratio`)."""
    if spec.schedule == "constant" or total_steps <= 1:
        return spec.lr
    t = min(step / (total_steps - 1), 1.0)
    lo = spec.lr * spec.lr_min_ratio
    return lo + 0.5 * (spec.lr - lo) * (1.0 + math.cos(math.pi * t))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = "max_epochs"
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


def _plain(row: dict) -> dict:
    return {k: (float(v) if isinstance(v, float) or hasattr(v, "item") else v)
            for k, v in row.items()}


@dataclass
class _Run:
    """What stays fixed during one `run_loop` call."""

    kind: str
    spec: LoopSpec
    n_items: int
    raw: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, int], torch.Tensor]
    evaluate: Callable[[int], dict[str, float]]
    fp: str
    info: DistInfo
    ckpt: Path | None
    total_steps: int


@dataclass
class _State:
    """What changes from epoch to epoch; all but `good_state` goes into a checkpoint."""

    start_epoch: int = 0
    step_count: int = 0
    best: float = math.inf
    bad: int = 0
    elapsed0: float = 0.0
    last_saved: int | None = None
    good_state: dict[str, torch.Tensor] | None = None   # weights after the last good epoch


@dataclass
class _EpochPass:
    """One pass of minibatch steps: the last learning rate, the running batch objective and
    the index of the batch whose loss was NaN/Inf (None when all were finite)."""

    lr: float
    running: float
    nan_batch: int | None


def _check_world_size(spec: LoopSpec, info: DistInfo) -> None:
    if info.world_size > spec.batch_size:
        raise ValueError(f"batch_size={spec.batch_size} is smaller than the {info.world_size} "
                         f"processes: every process needs at least one of the "
                         f"{spec.item_name} per step; use batch_size >= {info.world_size}")


def _resume(run: _Run, res: LoopResult) -> _State:
    """Fresh state, or the state of the checkpoint at `run.ckpt` (history into `res`)."""
    st = _State()
    state = resume_checkpoint(run.ckpt, run.fp, run.spec.resume,
                              "choose another checkpoint_path (nothing was overwritten)")
    if state is None:
        return st
    run.raw.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    st.start_epoch, st.step_count = int(state["epoch"]), int(state["step"])
    st.best, st.bad = float(state["best"]), int(state["bad_epochs"])
    st.elapsed0 = float(state["elapsed"])
    res.history = [dict(r) for r in state["history"]]
    res.resumed_from = st.last_saved = st.start_epoch
    if state.get("status") in ("plateau", "target", "time_limit"):
        res.status = str(state["status"])
        st.start_epoch = run.spec.epochs  # finished before: nothing left to do
    return st


def _progress_bar(spec: LoopSpec, info: DistInfo, start_epoch: int) -> Any:
    if not (spec.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=spec.epochs, initial=min(start_epoch, spec.epochs), desc=spec.desc,
                unit="epoch", leave=False)


def _train_epoch(run: _Run, st: _State, epoch: int) -> _EpochPass:
    """Adam steps over the epoch's seeded permutation; stops at the first NaN/Inf loss."""
    spec, info, optimizer = run.spec, run.info, run.optimizer
    perm = epoch_permutation(run.n_items, spec.seed, epoch)
    running, nan_batch = 0.0, None
    for b0 in range(0, run.n_items, spec.batch_size):
        batch = perm[b0:b0 + spec.batch_size]
        local = batch[info.rank::info.world_size]
        lr = lr_at(spec, st.step_count, run.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=False)
        loss = run.step(local, int(batch.numel())).detach().to(torch.float64).reshape(1)
        loss = all_reduce_sum(loss.cpu(), info) / info.world_size
        value = float(loss)
        if not math.isfinite(value):
            nan_batch = b0 // spec.batch_size
            break
        optimizer.step()
        st.step_count += 1
        running += value * batch.numel() / run.n_items
    return _EpochPass(lr, running, nan_batch)


def _diverged(run: _Run, st: _State, res: LoopResult, epoch: int, what: str) -> NoReturn:
    """Restore the last good weights and raise `TrainingDivergedError` ("`what` at epoch")."""
    res.status = "nan"
    msg = f"{run.kind}: {what}; training stopped"
    if st.last_saved is not None:
        msg += f"; the last good checkpoint (epoch {st.last_saved}) is kept at {run.ckpt}"
    if st.good_state is not None:
        run.raw.load_state_dict(st.good_state)
    raise TrainingDivergedError(msg, epoch + 1, st.last_saved)


def _epoch_row(run: _Run, st: _State, res: LoopResult, epoch: int, done: _EpochPass,
               t0: float, t_start: float) -> dict[str, Any]:
    """The epoch's history row (exact evaluation when due), appended to `res.history`."""
    spec = run.spec
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": done.lr,
                           "train_batch_objective": done.running}
    if (epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.epochs:
        row.update(run.evaluate(epoch + 1))
        bad_keys = [k for k, v in row.items()
                    if isinstance(v, float) and not math.isfinite(v)]
        if bad_keys:   # an overflow the batch loss did not show: same as a NaN loss
            _diverged(run, st, res, epoch,
                      f"{', '.join(bad_keys)} became NaN/Inf at epoch {epoch + 1}")
    row["epoch_seconds"] = time.perf_counter() - t0
    row["elapsed_seconds"] = st.elapsed0 + time.perf_counter() - t_start
    res.history.append(_plain(row))
    return row


def _stop_status(spec: LoopSpec, st: _State, row: dict[str, Any]) -> str | None:
    """Update the plateau counter; "plateau", "target", "time_limit" or None (go on)."""
    mon = row.get(spec.monitor, row["train_batch_objective"])
    if mon < st.best - spec.tol * abs(st.best) if math.isfinite(st.best) else True:
        st.best, st.bad = mon, 0
    else:
        st.bad += 1
    status = None
    if st.bad >= spec.patience:
        status = "plateau"
    if spec.stop_below is not None and row.get(spec.stop_key, math.inf) <= spec.stop_below:
        status = "target"
    if spec.max_seconds is not None and row["elapsed_seconds"] >= spec.max_seconds:
        status = "time_limit"
    return status


def _save_if_due(run: _Run, st: _State, res: LoopResult, epoch: int, row: dict[str, Any],
                 status: str | None) -> None:
    """Atomic checkpoint every `checkpoint_every` epochs and at the last one (main process)."""
    spec, info = run.spec, run.info
    last_epoch = epoch + 1 == spec.epochs or status is not None
    if run.ckpt is not None and ((epoch + 1) % spec.checkpoint_every == 0 or last_epoch):
        if info.is_main:
            save_checkpoint(run.ckpt, {
                "kind": run.kind, "fingerprint": run.fp, "epoch": epoch + 1,
                "step": st.step_count, "model": run.raw.state_dict(),
                "optimizer": run.optimizer.state_dict(), "history": res.history,
                "best": float(st.best), "bad_epochs": st.bad, "elapsed": row["elapsed_seconds"],
                "status": status or ("max_epochs" if last_epoch else "running")})
        barrier(info)
        st.last_saved = epoch + 1


def _run_epoch(run: _Run, st: _State, res: LoopResult, bar: Any, epoch: int,
               t_start: float) -> str | None:
    """Train, evaluate, checkpoint and report one epoch; returns the stop status or None."""
    spec = run.spec
    t0 = time.perf_counter()
    done = _train_epoch(run, st, epoch)
    if done.nan_batch is not None:
        _diverged(run, st, res, epoch, f"the loss became NaN/Inf at epoch {epoch + 1}, batch "
                                       f"{done.nan_batch + 1}")
    row = _epoch_row(run, st, res, epoch, done, t0, t_start)
    status = _stop_status(spec, st, row)
    _save_if_due(run, st, res, epoch, row, status)
    st.good_state = {k: v.detach().clone() for k, v in run.raw.state_dict().items()}
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: f"{row[k]:.4g}" for k in (spec.monitor,) if k in row})
    if spec.callback is not None and run.info.is_main:
        spec.callback(row, run.raw)
    return status


def run_loop(*, kind: str, spec: LoopSpec, n_items: int, module: nn.Module, raw: nn.Module,
             optimizer: torch.optim.Optimizer,
             step: Callable[[torch.Tensor, int], torch.Tensor],
             evaluate: Callable[[int], dict[str, float]], fp: str, info: DistInfo
             ) -> LoopResult:
    """Train `module` (maybe DDP-wrapped `raw`) for `spec.epochs` epochs over `n_items`.

    `step(local_indices, global_batch_size)` runs forward + backward and returns the local
    (scaled) loss as a 0-d tensor; `evaluate(epoch)` returns the exact per-epoch metrics.
    """
    check_loop_spec(spec, n_items)
    _check_world_size(spec, info)
    steps_per_epoch = math.ceil(n_items / spec.batch_size)
    run = _Run(kind=kind, spec=spec, n_items=n_items, raw=raw, optimizer=optimizer, step=step,
               evaluate=evaluate, fp=fp, info=info,
               ckpt=Path(spec.checkpoint_path) if spec.checkpoint_path else None,
               total_steps=spec.epochs * steps_per_epoch)
    res = LoopResult()
    st = _resume(run, res)
    bar = _progress_bar(spec, info, st.start_epoch)
    t_start = time.perf_counter()
    try:
        for epoch in range(st.start_epoch, spec.epochs):
            status = _run_epoch(run, st, res, bar, epoch, t_start)
            if status is not None:
                res.status = status
                break
    finally:
        if bar is not None:
            bar.close()
    res.epochs_run = len(res.history)
    res.steps = st.step_count
    res.seconds = st.elapsed0 + time.perf_counter() - t_start
    return res
