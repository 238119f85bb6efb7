"""Adam trainer for the primal network `TwoLayerConvDenoiser` on the exact eq. 2 objective.

    J(U, alpha) = [ l(f(Y), X) + beta/2 (||U||_F^2 + ||alpha||^2) ] / N              # eq. 2

(`N` training pixels: Appendix B's sample- and dimension-averaged scale; the history reports
both the eq. 2 sum and the mean). The weight-decay term is part of the loss, not Adam's
`weight_decay`, so the reported objective is exactly eq. 2. Same loop as the dual trainer
(`training.run_loop`): seeded batches, cosine learning rate, plateau stop, atomic checkpoints
and exact resume, DDP under torchrun, NaN stop.

    model = TwoLayerConvDenoiser(n_filters=512)      # Kaiming-uniform init (App. B)
    result = train_primal(model, noisy, clean, PrimalTrainConfig(beta=..., epochs=50),
                          eval_set=(test_noisy, test_clean))
    result.history[-1]["train_objective"]            # eq. 2, reduction="sum"
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convexnn.model.losses import Loss
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.validation import as_images, as_targets, check_int, check_positive
from convexnn.train.checkpoint import fingerprint
from convexnn.train.device import resolve_device, resolve_dtype
from convexnn.train.distributed import DistInfo, all_reduce_sum, setup_distributed, wrap_ddp
from convexnn.train.loop import LoopSpec, TrainingDivergedError, run_loop

__all__ = ["PrimalTrainConfig", "PrimalTrainResult", "train_primal"]


@dataclass
class PrimalTrainConfig:
    """Options of `train_primal`. `beta` is eq. 2's weight decay (sum scale, like the dual's)."""

    beta: float = 1e-3
    loss: str = "squared"
    huber_delta: float = 1.0
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 25
    schedule: str = "cosine"
    lr_min_ratio: float = 0.01
    patience: int = 20
    tol: float = 1e-4
    reinit_seed: int | None = None    # re-draw the Kaiming-uniform init with this seed
    device: str | None = None
    dtype: Any = "float32"
    seed: int = 0                     # batch order
    eval_every: int = 1
    checkpoint_path: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    progress: bool = True
    max_seconds: float | None = None
    stop_below: float | None = None   # stop when the train objective (sum) <= it
    distributed: bool | None = None
    callback: Callable | None = field(default=None, repr=False)

    def settings(self) -> dict[str, Any]:
        skip = {"progress", "checkpoint_path", "checkpoint_every", "resume", "callback",
                "eval_every", "device", "max_seconds", "stop_below", "distributed"}
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["dtype"] = str(resolve_dtype(self.dtype))
        return d


@dataclass
class PrimalTrainResult:
    history: list[dict[str, float]]
    status: str
    epochs_run: int
    steps: int
    seconds: float
    resumed_from: int | None = None


def evaluate_objective(raw: TwoLayerConvDenoiser, x, y, beta, loss, info: DistInfo, prefix: str,
              chunk: int = 100) -> dict[str, float]:
    mine = torch.arange(info.rank, x.shape[0], info.world_size)
    sums = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i0 in range(0, mine.numel(), chunk):
            idx = mine[i0:i0 + chunk].to(x.device)
            out = raw(x[idx])
            sums += torch.tensor([float(loss(out.double(), y[idx].double(), "sum")),
                                  float(y[idx].numel())], dtype=torch.float64)
        sums = all_reduce_sum(sums, info)
        wd64 = getattr(raw, "weight_decay_value", None)  # float64: no float32 overflow
        reg = 0.5 * beta * (wd64() if wd64 is not None else float(raw.weight_decay().double()))
    obj = float(sums[0]) + reg
    return {f"{prefix}_objective": obj, f"{prefix}_objective_mean": obj / float(sums[1]),
            f"{prefix}_data_loss": float(sums[0])}


def _reinit(model: TwoLayerConvDenoiser, seed: int) -> None:
    """Re-draw the Kaiming-uniform init of both convolutions with `seed`."""
    torch.manual_seed(int(seed))
    nn.init.kaiming_uniform_(model.conv1.weight, a=math.sqrt(5))
    nn.init.kaiming_uniform_(model.conv2.weight, a=math.sqrt(5))


def _eval_tensors(eval_set, x: torch.Tensor, dtype: torch.dtype, device: torch.device
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The held-out (noisy, clean) pair as tensors like the training images `x`, or Nones."""
    if eval_set is None:
        return None, None
    if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
        raise TypeError("eval_set: expected a pair (noisy, clean) of held-out images")
    xe = as_images(eval_set[0], "eval_set noisy", dtype=dtype, device=device)
    if xe.shape[1:] != x.shape[1:]:
        raise ValueError(f"eval_set: expected images of shape (n, {x.shape[1]}, "
                         f"{x.shape[2]}, {x.shape[3]}) like the training set, got "
                         f"{tuple(xe.shape)}")
    return xe, as_targets(eval_set[1], xe, "eval_set clean")


def _loop_spec(cfg: PrimalTrainConfig, lr: float, model: TwoLayerConvDenoiser) -> LoopSpec:
    return LoopSpec.from_config(cfg, lr, monitor="train_objective_mean",
                                stop_key="train_objective",
                                desc=f"primal adam m={model.n_filters}")


def _check_finite(history: list[dict[str, float]], model: TwoLayerConvDenoiser,
                  lr: float) -> None:
    """Raise `TrainingDivergedError` when the last objectives or the weights are not finite."""
    last = history[-1] if history else {}
    bad = [k for k in ("train_objective", "test_objective")
           if k in last and not math.isfinite(last[k])]
    if bad or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        what = f"{bad[0]} is {last[bad[0]]}" if bad else "weights are not finite"
        raise TrainingDivergedError(
            f"primal-adam: training diverged: after epoch {last.get('epoch')} the {what} "
            f"(lr={lr} too large for this data scale?)", int(last.get("epoch", 0)), None)


def train_primal(model: TwoLayerConvDenoiser, noisy, clean, config: PrimalTrainConfig | None = None,
                 eval_set=None, **options: Any) -> PrimalTrainResult:
    """Train `model` in place with Adam on eq. 2; returns the per-epoch history.

    `history[i]` holds `train_objective` (eq. 2, sum), `train_objective_mean`, the test
    versions when `eval_set=(noisy, clean)` is given, `lr`, `epoch_seconds`, `elapsed_seconds`.
    Raises `TrainingDivergedError` (epoch in the message) when the loss becomes NaN.
    """
    cfg = config or PrimalTrainConfig()
    if options:
        cfg = PrimalTrainConfig(**{**asdict(cfg), "callback": cfg.callback, **options})
    if not isinstance(model, TwoLayerConvDenoiser):
        raise TypeError(f"model: expected a TwoLayerConvDenoiser, got {type(model).__name__}")
    beta = check_positive(cfg.beta, "beta")
    lr = check_positive(cfg.lr, "lr")
    if cfg.reinit_seed is not None:
        check_int(cfg.reinit_seed, "reinit_seed", 0)
    loss = Loss(cfg.loss, cfg.huber_delta)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype)
    info = setup_distributed(cfg.distributed, device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    x = as_images(noisy, "noisy", dtype=dtype, device=device)
    y = as_targets(clean, x)
    if x.shape[1] != model.in_channels:
        raise ValueError(f"noisy: the model takes {model.in_channels} channel(s), got "
                         f"{x.shape[1]}")
    y_fit = y  # eq. 2 fits the clean image; a residual model adds x itself
    if cfg.reinit_seed is not None:
        _reinit(model, cfg.reinit_seed)
    model.to(device=device, dtype=dtype)
    xe, ye = _eval_tensors(eval_set, x, dtype, device)
    n, hw = x.shape[0], x.shape[2] * x.shape[3]
    n_total = float(n * hw)
    module = wrap_ddp(model, info, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    fp = fingerprint("primal-adam", {**cfg.settings(), "n_filters": model.n_filters,
                                     "kernel_size": model.kernel_size,
                                     "residual": model.residual},
                     {"noisy": x, "clean": y_fit})

    def step(local: torch.Tensor, global_count: int) -> torch.Tensor:
        idx = local.to(device)
        out = module(x[idx])
        data_scale = info.world_size / float(global_count * hw)
        value = loss(out, y_fit[idx], "sum") * data_scale \
            + (0.5 * beta / n_total) * model.weight_decay()     # eq. 2, mean scale
        value.backward()
        return value

    def evaluate(epoch: int) -> dict[str, float]:
        out = evaluate_objective(model, x, y_fit, beta, loss, info, "train")
        if xe is not None:
            out.update(evaluate_objective(model, xe, ye, beta, loss, info, "test"))
        return out

    res = run_loop(kind="primal-adam", spec=_loop_spec(cfg, lr, model), n_items=n,
                   module=module, raw=model, optimizer=opt, step=step, evaluate=evaluate,
                   fp=fp, info=info)
    _check_finite(res.history, model, cfg.lr)
    return PrimalTrainResult(res.history, res.status, res.epochs_run, res.steps,
                             time.perf_counter() - t0, res.resumed_from)
