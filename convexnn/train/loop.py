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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convexnn.model.problem import ConvexSolverError
from convexnn.train.checkpoint import load_checkpoint, save_checkpoint
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
    if info.world_size > spec.batch_size:
        raise ValueError(f"batch_size={spec.batch_size} is smaller than the {info.world_size} "
                         f"processes: every process needs at least one of the "
                         f"{spec.item_name} per step; use batch_size >= {info.world_size}")
    steps_per_epoch = math.ceil(n_items / spec.batch_size)
    total_steps = spec.epochs * steps_per_epoch
    res = LoopResult()
    start_epoch, step_count, best, bad, elapsed0 = 0, 0, math.inf, 0, 0.0
    last_saved: int | None = None
    ckpt = Path(spec.checkpoint_path) if spec.checkpoint_path else None
    if ckpt is not None and ckpt.exists():
        if not spec.resume:
            raise FileExistsError(f"{ckpt}: a checkpoint exists and resume=False; remove it or "
                                  f"choose another checkpoint_path (nothing was overwritten)")
        state = load_checkpoint(ckpt, fp)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step_count = int(state["epoch"]), int(state["step"])
        best, bad = float(state["best"]), int(state["bad_epochs"])
        elapsed0 = float(state["elapsed"])
        res.history = [dict(r) for r in state["history"]]
        res.resumed_from = last_saved = start_epoch
        if state.get("status") in ("plateau", "target", "time_limit"):
            res.status = str(state["status"])
            start_epoch = spec.epochs  # finished before: nothing left to do
    bar = None
    if spec.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.epochs, initial=min(start_epoch, spec.epochs), desc=spec.desc,
                   unit="epoch", leave=False)
    t_start = time.perf_counter()
    good_state = None
    try:
        for epoch in range(start_epoch, spec.epochs):
            t0 = time.perf_counter()
            perm = epoch_permutation(n_items, spec.seed, epoch)
            running, nan_batch = 0.0, None
            for b0 in range(0, n_items, spec.batch_size):
                batch = perm[b0:b0 + spec.batch_size]
                local = batch[info.rank::info.world_size]
                lr = lr_at(spec, step_count, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=False)
                loss = step(local, int(batch.numel())).detach().to(torch.float64).reshape(1)
                loss = all_reduce_sum(loss.cpu(), info) / info.world_size
                value = float(loss)
                if not math.isfinite(value):
                    nan_batch = b0 // spec.batch_size
                    break
                optimizer.step()
                step_count += 1
                running += value * batch.numel() / n_items
            if nan_batch is not None:
                res.status = "nan"
                msg = (f"{kind}: the loss became NaN/Inf at epoch {epoch + 1}, batch "
                       f"{nan_batch + 1}; training stopped")
                if last_saved is not None:
                    msg += f"; the last good checkpoint (epoch {last_saved}) is kept at {ckpt}"
                if good_state is not None:
                    raw.load_state_dict(good_state)
                raise TrainingDivergedError(msg, epoch + 1, last_saved)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_batch_objective": running}
            if (epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.epochs:
                row.update(evaluate(epoch + 1))
                bad_keys = [k for k, v in row.items()
                            if isinstance(v, float) and not math.isfinite(v)]
                if bad_keys:   # an overflow the batch loss did not show: same as a NaN loss
                    res.status = "nan"
                    if good_state is not None:
                        raw.load_state_dict(good_state)
                    raise TrainingDivergedError(
                        f"{kind}: {', '.join(bad_keys)} became NaN/Inf at epoch {epoch + 1}; "
                        f"training stopped" + (f"; the last good checkpoint (epoch "
                                               f"{last_saved}) is kept at {ckpt}"
                                               if last_saved is not None else ""),
                        epoch + 1, last_saved)
            row["epoch_seconds"] = time.perf_counter() - t0
            row["elapsed_seconds"] = elapsed0 + time.perf_counter() - t_start
            res.history.append(_plain(row))
            mon = row.get(spec.monitor, row["train_batch_objective"])
            if mon < best - spec.tol * abs(best) if math.isfinite(best) else True:
                best, bad = mon, 0
            else:
                bad += 1
            status = None
            if bad >= spec.patience:
                status = "plateau"
            if spec.stop_below is not None and row.get(spec.stop_key, math.inf) <= spec.stop_below:
                status = "target"
            if spec.max_seconds is not None and row["elapsed_seconds"] >= spec.max_seconds:
                status = "time_limit"
            last_epoch = epoch + 1 == spec.epochs or status is not None
            if ckpt is not None and ((epoch + 1) % spec.checkpoint_every == 0 or last_epoch):
                if info.is_main:
                    save_checkpoint(ckpt, {
                        "kind": kind, "fingerprint": fp, "epoch": epoch + 1,
                        "step": step_count, "model": raw.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": res.history,
                        "best": float(best), "bad_epochs": bad, "elapsed": row["elapsed_seconds"],
                        "status": status or ("max_epochs" if last_epoch else "running")})
                barrier(info)
                last_saved = epoch + 1
            good_state = {k: v.detach().clone() for k, v in raw.state_dict().items()}
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in (spec.monitor,) if k in row})
            if spec.callback is not None and info.is_main:
                spec.callback(row, raw)
            if status is not None:
                res.status = status
                break
    finally:
        if bar is not None:
            bar.close()
    res.epochs_run = len(res.history)
    res.steps = step_count
    res.seconds = elapsed0 + time.perf_counter() - t_start
    return res
