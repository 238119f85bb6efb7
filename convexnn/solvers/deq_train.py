"""Networks for ``convexnn.solvers.deq.DEQ``, their contraction control, and minibatch Adam
training.

Networks: ``deq_network_from_convex`` builds ``S_theta`` / ``R_theta`` from a convex-dual
solution (``ConvexRegulariser`` for the gradient form); ``spectral_normalize`` freezes layer
spectral norms.

Training (``train_deq``) on (measurement, clean) pairs. Loss per minibatch: ``mean ||x*(d) -
x||^2`` (pixel-averaged), with the gradient the DEQ's ``config.backward`` selects (JFB or the
implicit eq. (1)), plus an optional contraction penalty ``lipschitz_penalty * mean max(||dT/dx
(x*)||_2, target)^2`` (power iteration through autograd, ``convexnn.solvers.lipschitz``; the
relaxed penalty of Pesquet et al. applied to T instead of 2J - I). History per epoch: loss, PSNR of
the training outputs, validation PSNR, seconds (forward solve and backward separately), mean
forward/backward iterations and the fraction of solves that stopped at max_iter. Checkpoints are
atomic and resume exactly (``convexnn.train.checkpoint``: temp file + ``os.replace``,
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from convexnn.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

from .denoisers import call_denoiser
from .deq import DEQ, DEQ_FORMS, FixedPointStats, eval_mode
from .history import psnr
from .lipschitz import jacobian_spectral_norm

__all__ = ["DEQTrainConfig", "DEQTrainResult", "train_deq", "contraction_penalty",
           "ConvexRegulariser", "spectral_normalize", "deq_network_from_convex"]


class ConvexRegulariser(nn.Module):
    """Gradient-form term ``S(x) = a x + b (x - D(x))`` from a denoiser ``D``.

    ``x - r grad f - S(x)`` is then a gradient step on ``f + a/(2r) ||x||^2 + b/r R(x)`` with
    the RED gradient ``x - D(x)`` for ``R``; ``a`` (damping) and ``b`` (weight) are trainable
    scalars unless ``trainable_scalars=False``. A damping ``a > 0`` makes ``T`` contract at
    frequencies the blur removes, where ``I - r A^T A`` has eigenvalue 1.
    """

    def __init__(self, denoiser: nn.Module, damping: float = 0.1, weight: float = 0.1,
                 trainable_scalars: bool = True) -> None:
        super().__init__()
        self.denoiser = denoiser
        ref = next(iter(denoiser.parameters()), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        values = torch.tensor([float(damping), float(weight)], dtype=dtype)
        if trainable_scalars:
            self.scalars = nn.Parameter(values)
        else:
            self.register_buffer("scalars", values)

    def forward(self, x: Tensor, sigma: float | None = None) -> Tensor:
        # r grad(a/(2r) ||x||^2 + b/r R_RED(x)), R as on slide "Classical Approach Cont."
        return self.scalars[0] * x + self.scalars[1] * (x - call_denoiser(self.denoiser, x))


class _FixedScale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, w: Tensor) -> Tensor:
        return self.scale * w


def spectral_normalize(module: nn.Module, scale: float | None = None) -> nn.Module:
    """Spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``) of every
    ``Conv2d``/``Linear`` in ``module`` (in place), times a fixed factor: ``scale``, or by
    default each layer's spectral norm (of the reshaped ``(out, in k k)`` weight) at this call,
    so the function is unchanged now and the layers' norms stay frozen during training."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"spectral_normalize: scale: expected a positive number, got {scale!r}")
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"spectral_normalize: no Conv2d/Linear layer in "
                         f"{type(module).__name__}")
    for layer in layers:
        w = layer.weight.detach()
        s = scale if scale is not None else float(
            torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).double(), ord=2))
        nn.utils.parametrizations.spectral_norm(layer)
        parametrize.register_parametrization(layer, "weight", _FixedScale(s))
    return module


def deq_network_from_convex(model: nn.Module, form: str = "gradient", damping: float = 0.1,
                            weight: float = 0.1, spectral_norm: bool = False,
                            dtype: torch.dtype | None = None,
                            trainable_scalars: bool = True) -> nn.Module:
    """``S_theta`` / ``R_theta`` initialised from a convex-dual solution.

    ``model`` is a fitted ``ConvexDualDenoiser`` (its primal, eq. 5, via ``to_primal()``) or a
    ``TwoLayerConvDenoiser``; it is copied. ``form="prox"``: ``R = D`` itself; ``"gradient"``:
    ``S = ConvexRegulariser(D, damping, weight, trainable_scalars)``. ``spectral_norm=True`` applies
    ``spectral_normalize`` (layer norms frozen at the convex solution's).
    """
    from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser

    if form not in DEQ_FORMS:
        raise ValueError(f"deq_network_from_convex: form: expected one of {list(DEQ_FORMS)}, "
                         f"got {form!r}")
    if isinstance(model, ConvexDualDenoiser):
        net = model.to_primal()
    elif isinstance(model, TwoLayerConvDenoiser):
        net = copy.deepcopy(model)
    else:
        raise TypeError(f"deq_network_from_convex: expected a fitted ConvexDualDenoiser or a "
                        f"TwoLayerConvDenoiser, got {type(model).__name__}")
    if dtype is not None:
        net = net.to(dtype)
    if spectral_norm:
        spectral_normalize(net)
    return net if form == "prox" else ConvexRegulariser(net, damping, weight, trainable_scalars)


@dataclass
class DEQTrainConfig:
    """Options of ``train_deq``.

    epochs, batch_size, lr, seed : Adam on minibatches of a seeded permutation per epoch.
    lipschitz_penalty, contraction_target : weight and target of the contraction penalty
        (0 = off); evaluated on ``penalty_batch`` samples with ``penalty_iter`` power steps.
    grad_clip : clip the gradient's global norm (None = off).
    data_range : PSNR peak value (1.0 for images in [0, 1]).
    checkpoint_path, resume : write a checkpoint after every epoch; resume from it when it
        exists and matches this run's fingerprint (data, initial weights, settings).
    progress : tqdm bar over minibatches (False silences it).
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    lipschitz_penalty: float = 0.0
    contraction_target: float = 0.9
    penalty_iter: int = 5
    penalty_batch: int = 4
    grad_clip: float | None = None
    data_range: float = 1.0
    checkpoint_path: str | Path | None = None
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("penalty_iter", 1),
                          ("penalty_batch", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"DEQTrainConfig: {name}: expected an integer >= {low}, got "
                                 f"{v!r}")
        for name in ("lr", "data_range", "contraction_target"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"DEQTrainConfig: {name}: expected a positive number, got "
                                 f"{v!r}")
        if not (math.isfinite(self.lipschitz_penalty) and self.lipschitz_penalty >= 0):
            raise ValueError(f"DEQTrainConfig: lipschitz_penalty: expected >= 0, got "
                             f"{self.lipschitz_penalty!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"DEQTrainConfig: grad_clip: expected > 0 or None, got "
                             f"{self.grad_clip!r}")

    def trajectory_settings(self) -> dict[str, Any]:
        """What determines the trajectory (hashed into the fingerprint): not epochs, paths
        or progress, so a longer run resumes a shorter one."""
        d = asdict(self)
        for k in ("epochs", "checkpoint_path", "resume", "progress"):
            d.pop(k)
        return d


@dataclass
class DEQTrainResult:
    """Per-epoch curves (one entry per finished epoch, resumed ones included)."""

    epoch_loss: list[float] = field(default_factory=list)
    epoch_psnr: list[float] = field(default_factory=list)
    val_psnr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    forward_seconds: list[float] = field(default_factory=list)
    backward_seconds: list[float] = field(default_factory=list)
    forward_iterations: list[float] = field(default_factory=list)
    backward_iterations: list[float] = field(default_factory=list)
    unconverged_fraction: list[float] = field(default_factory=list)
    backward_unconverged_fraction: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def contraction_penalty(deq: DEQ, d: Tensor, x_star: Tensor, target: float = 0.9,
                        n_iter: int = 5, seed: int = 0) -> Tensor:
    """``mean_b max(||dT/dx (x*_b)||_2, target)^2``, differentiable in the parameters (power
    iteration with ``create_graph=True``; envelope theorem for the final estimate)."""
    d = d.detach()
    with eval_mode(deq.network), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad")  # float(max)
        est = jacobian_spectral_norm(lambda z: deq.T(z, d), x_star.detach(), n_iter=n_iter,
                                     tol=1e-3, seed=seed, create_graph=True)
    return torch.clamp(est.per_sample, min=target).pow(2).mean()   # relaxed penalty on ||J_T||


def _check_data(deq: DEQ, measurements: Any, targets: Any, name: str) -> tuple[Tensor, Tensor]:
    for what, t in (("measurements", measurements), ("targets", targets)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"train_deq: {name} {what}: expected a tensor (N, C, H, W), got "
                             f"{got}")
    if measurements.shape[0] != targets.shape[0] or targets.shape[0] < 1:
        raise ValueError(f"train_deq: {name}: expected as many measurements as targets (>= 1),"
                         f" got {measurements.shape[0]} and {targets.shape[0]}")
    x0 = deq.initial(measurements[:1])
    if tuple(targets.shape[1:]) != tuple(x0.shape[1:]):
        raise ValueError(f"train_deq: {name} targets: expected images (N, "
                         f"{', '.join(map(str, x0.shape[1:]))}) like A^T d, got "
                         f"{tuple(targets.shape)}")
    return measurements.detach(), targets.detach().to(measurements.dtype)


def _evaluate(deq: DEQ, d: Tensor, x: Tensor, batch: int, data_range: float) -> float:
    was = deq.training
    deq.eval()
    vals = []
    with torch.no_grad():
        for b0 in range(0, d.shape[0], batch):
            out = deq(d[b0:b0 + batch])
            vals += [psnr(out[i:i + 1].clamp(0, data_range), x[b0 + i:b0 + i + 1], data_range)
                     for i in range(out.shape[0])]
    deq.train(was)
    return float(sum(vals) / len(vals))


@dataclass
class _EpochSums:
    """Sums over one epoch's minibatches (divided by their count when the epoch ends)."""

    loss: float = 0.0
    psnr: float = 0.0
    fwd: float = 0.0
    bwd: float = 0.0
    it_f: float = 0.0
    it_b: float = 0.0
    unconv: float = 0.0
    unconv_b: float = 0.0
    pen: float = 0.0


@dataclass
class _TrainRun:
    """One ``train_deq`` call: model, checked data, optimiser, generator, checkpoint target and
    the curves so far."""

    deq: DEQ
    cfg: DEQTrainConfig
    params: list[nn.Parameter]
    d_all: Tensor
    x_all: Tensor
    val: tuple[Tensor, Tensor] | None
    opt: torch.optim.Optimizer
    gen: torch.Generator
    fp: str
    path: Path | None
    res: DEQTrainResult
    start: int = 0


def _prepare_run(deq: DEQ, measurements: Tensor, targets: Tensor,
                 config: DEQTrainConfig | None,
                 val: tuple[Tensor, Tensor] | None) -> _TrainRun:
    """Check the arguments; build Adam, the seeded generator and the run's fingerprint."""
    cfg = config or DEQTrainConfig()
    if not isinstance(cfg, DEQTrainConfig):
        raise TypeError(f"train_deq: config: expected DEQTrainConfig, got {type(cfg).__name__}")
    if not isinstance(deq, DEQ):
        raise TypeError(f"train_deq: expected a convexnn.solvers.deq.DEQ, got {type(deq).__name__}")
    params = [p for p in deq.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_deq: the DEQ has no trainable parameters")
    d_all, x_all = _check_data(deq, measurements, targets, "training")
    if val is not None:
        val = _check_data(deq, val[0], val[1], "val")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = DEQTrainResult()
    fp = fingerprint("convexnn.solvers.deq.train_deq", {**cfg.trajectory_settings(),
                                               "deq": deq.config.to_dict()},
                     {"measurements": d_all, "targets": x_all,
                      **{f"init.{k}": v for k, v in deq.state_dict().items()
                         if v.is_floating_point()}})
    path = Path(cfg.checkpoint_path) if cfg.checkpoint_path is not None else None
    return _TrainRun(deq, cfg, params, d_all, x_all, val, opt, gen, fp, path, res)


def _resume(run: _TrainRun) -> None:
    """Restore model, optimiser, generator and curves from the checkpoint when one applies."""
    if run.path is not None and run.cfg.resume and run.path.exists():
        state = load_checkpoint(run.path, run.fp)
        run.deq.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.gen.set_state(state["generator"])
        run.res = DEQTrainResult(**state["result"])
        run.start = run.res.resumed_from = int(state["epoch"])


def _train_step(run: _TrainRun, d: Tensor, x: Tensor,
                sums: _EpochSums) -> tuple[Tensor, FixedPointStats]:
    """One minibatch: forward solve, loss (plus contraction penalty), backward, Adam step;
    adds its loss, PSNR, timings and solver statistics to ``sums``."""
    deq, cfg = run.deq, run.cfg
    t0 = time.perf_counter()
    out = deq(d)
    fstats = deq.last_forward_stats_
    t1 = time.perf_counter()
    loss = (out - x).pow(2).mean()
    total = loss
    if cfg.lipschitz_penalty > 0:
        k = min(cfg.penalty_batch, d.shape[0])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=run.gen))
        pen = contraction_penalty(deq, d[:k], out[:k], cfg.contraction_target,
                                  cfg.penalty_iter, seed)
        total = total + cfg.lipschitz_penalty * pen
        sums.pen += float(pen.detach())
    run.opt.zero_grad(set_to_none=True)
    deq.last_backward_stats_ = None
    total.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    t2 = time.perf_counter()
    sums.loss += float(loss.detach())
    sums.psnr += psnr(out.detach().clamp(0, cfg.data_range), x, cfg.data_range)
    sums.fwd += t1 - t0
    sums.bwd += t2 - t1
    sums.it_f += fstats.iterations
    sums.unconv += 0.0 if fstats.converged else 1.0
    bstats = deq.last_backward_stats_
    if bstats is not None:
        sums.it_b += bstats.iterations
        sums.unconv_b += 0.0 if bstats.converged else 1.0
    return loss, fstats


def _record_epoch(res: DEQTrainResult, sums: _EpochSums, n_batches: int,
                  seconds: float) -> None:
    """Append one epoch's time and its means over minibatches to the curves."""
    res.epoch_seconds.append(seconds)
    res.forward_seconds.append(sums.fwd)
    res.backward_seconds.append(sums.bwd)
    for total, lst in ((sums.loss, res.epoch_loss), (sums.psnr, res.epoch_psnr),
                       (sums.it_f, res.forward_iterations), (sums.it_b, res.backward_iterations),
                       (sums.unconv, res.unconverged_fraction),
                       (sums.unconv_b, res.backward_unconverged_fraction),
                       (sums.pen, res.penalty)):
        lst.append(total / n_batches)   # means over the epoch's minibatches


def _train_epoch(run: _TrainRun, epoch: int, n_batches: int, bar: Any) -> None:
    """One pass over a seeded permutation of the data, then the epoch's curves, validation PSNR
    and checkpoint."""
    deq, cfg = run.deq, run.cfg
    n = run.d_all.shape[0]
    deq.train()
    perm = torch.randperm(n, generator=run.gen)
    sums = _EpochSums()
    t_epoch = time.perf_counter()
    for b0 in range(0, n, cfg.batch_size):
        idx = perm[b0:b0 + cfg.batch_size]
        loss, fstats = _train_step(run, run.d_all[idx], run.x_all[idx], sums)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.3g}",
                            iters=fstats.iterations)
    res = run.res
    _record_epoch(res, sums, n_batches, time.perf_counter() - t_epoch)
    if run.val is not None:
        res.val_psnr.append(_evaluate(deq, run.val[0], run.val[1], cfg.batch_size,
                                      cfg.data_range))
    if run.path is not None:
        save_checkpoint(run.path, {"fingerprint": run.fp, "kind": "convexnn.solvers.deq.train_deq",
                                   "epoch": epoch + 1, "model": deq.state_dict(),
                                   "optimizer": run.opt.state_dict(),
                                   "generator": run.gen.get_state(), "result": res.to_dict()})


def train_deq(deq: DEQ, measurements: Tensor, targets: Tensor,
              config: DEQTrainConfig | None = None,
              val: tuple[Tensor, Tensor] | None = None) -> DEQTrainResult:
    """Train ``deq`` in place on pairs ``(measurements[i], targets[i])``; returns the curves.

    ``val = (d_val, x_val)`` adds a validation PSNR per epoch (outside the epoch timing).
    """
    run = _prepare_run(deq, measurements, targets, config, val)
    _resume(run)
    cfg = run.cfg
    n_batches = math.ceil(run.d_all.shape[0] / cfg.batch_size)
    bar = None
    if cfg.progress and run.start < cfg.epochs:
        from tqdm import tqdm
        bar = tqdm(total=(cfg.epochs - run.start) * n_batches, desc="train_deq", leave=False)
    t_run = time.perf_counter()
    for epoch in range(run.start, cfg.epochs):
        _train_epoch(run, epoch, n_batches, bar)
    if bar is not None:
        bar.close()
    deq.eval()
    run.res.seconds = time.perf_counter() - t_run
    return run.res
