"""Deeper networks from two-layer blocks (paper Sec. 4.3 and Fig. 5b).

`GreedyConvexStack` trains block after block: block b solves the convex dual (eq. 4, any solver
of `ConvexDualDenoiser`) on the previous block's output `z_{b-1}` with the clean images as
labels; blocks after the first are residual by default (Corollary 1.1: they fit `y - z_{b-1}`
and add their input back). Every block is an exact two-layer convex program, so every block is
interpretable with `convexnn.interpret`.

Relation between depths (residual blocks): `v = w = 0` is feasible for block b and gives
`z_b = z_{b-1}`, so at block b's optimum `l(z_b, y) + beta_b R_b <= l(z_{b-1}, y)`
(`R_b = sum_i ||v_i|| + ||w_i||`): the training data loss never increases with depth and each
block's dual objective is at most the previous depth's data loss (`fit` warns, and sets
`history_[b]["worse_than_zero_block"]`, when a solver returns a block worse than v = w = 0:
proof that it did not reach the optimum). The stack objective
`l(z_B, y) + sum_b beta_b R_b` (= eq. 2 summed over the rebuilt primal blocks) can increase.

`UnrolledDenoiser` is the end-to-end counterpart: `x_t = f_t(x_{t-1})` with every `f_t` a
`TwoLayerConvDenoiser` (2 iterations = the paper's four-layer network of Fig. 5b), trained with
Adam on `l(f(x), y) + beta/2 sum_t (||U_t||^2 + ||alpha_t||^2)` by `train_unrolled`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from convexnn.dual import ConvexDualDenoiser
from convexnn.io import atomic_save_safetensors
from convexnn.model.denoiser import Denoiser
from convexnn.model.losses import Loss
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.problem import SolveInfo
from convexnn.model.validation import as_images, as_targets, check_positive
from convexnn.train.checkpoint import fingerprint
from convexnn.train.device import resolve_device, resolve_dtype
from convexnn.train.distributed import DistInfo
from convexnn.train.loop import LoopSpec, run_loop
from convexnn.train.primal import PrimalTrainConfig, PrimalTrainResult, evaluate_objective

__all__ = ["GreedyStackConfig", "GreedyConvexStack", "UnrolledDenoiser", "train_unrolled",
           "save_stack", "load_stack", "is_stack_file", "STACK_FORMAT"]

STACK_FORMAT = "convexnn-stack-v1"


@dataclass
class GreedyStackConfig:
    """Options of `GreedyConvexStack`. `beta`: one weight decay for every block or one per
    block. `residual`: blocks 2..B are residual (Cor. 1.1); `first_residual`: block 1 too.
    `solver`: None (default) takes each block's fastest exact path (`ConvexDualDenoiser.fit`:
    the interior-point solver for the squared loss); or name one of `convexnn.solve.SOLVERS`.
    `solver_config`: the solver's dataclass (`IpmConfig`, `CvxpyConfig`, `AdamConfig`, ...)."""

    n_blocks: int = 2
    kernel_size: int = 3
    n_patterns: int = 8000
    beta: float | tuple[float, ...] = 1e-3
    loss: str = "squared"
    residual: bool = True
    first_residual: bool = False
    solver: str | None = None
    solver_config: Any = None
    seed: int = 0                 # block b (1-based) samples its generators with seed + b - 1

    def __post_init__(self) -> None:
        if isinstance(self.n_blocks, bool) or not isinstance(self.n_blocks, int) \
                or self.n_blocks < 1:
            raise ValueError(f"n_blocks: expected a positive integer, got {self.n_blocks!r}")
        if isinstance(self.beta, (list, tuple)):
            if len(self.beta) != self.n_blocks:
                raise ValueError(f"beta: expected one value or {self.n_blocks} (one per block), "
                                 f"got {len(self.beta)}")
            self.beta = tuple(check_positive(b, "beta") for b in self.beta)
        else:
            self.beta = check_positive(self.beta, "beta")

    def block_beta(self, b: int) -> float:
        return self.beta[b] if isinstance(self.beta, tuple) else self.beta

    def block_residual(self, b: int) -> bool:
        return self.first_residual if b == 0 else self.residual

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solver_config"}
        d["beta"] = list(d["beta"]) if isinstance(d["beta"], tuple) else d["beta"]
        return d


class GreedyConvexStack(Denoiser):
    """Greedy layer-wise convex training (Sec. 4.3): a stack of convex-dual two-layer blocks.

    Fitted attributes: `blocks_` (list of `ConvexDualDenoiser`), `history_` (per block: its dual
    objective, the training data loss before and after it, seconds), `n_channels_`.
    A torch module with the denoiser call convention `model(x, sigma=None)`.
    """

    def __init__(self, config: GreedyStackConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, GreedyStackConfig):
            raise TypeError(f"config: expected GreedyStackConfig, got {type(config).__name__}")
        self.config = replace(config or GreedyStackConfig(), **overrides)

    def _check_fitted(self) -> None:
        if not hasattr(self, "blocks_"):
            raise RuntimeError("this GreedyConvexStack is not fitted yet: call fit(noisy, clean) "
                               "or load_stack(path) first")

    def fit(self, noisy, clean, eval_set=None, **solver_options: Any) -> GreedyConvexStack:
        """Fit blocks 1..B in turn, each on the previous block's output (Sec. 4.3)."""
        cfg = self.config
        x = as_images(noisy, "noisy", dtype=torch.float64)
        y = as_targets(clean, x)
        loss = Loss(cfg.loss)
        z, ze = x, None
        if eval_set is not None:
            ze = as_images(eval_set[0], "eval_set noisy", dtype=torch.float64)
            eval_set = (ze, as_targets(eval_set[1], ze, "eval_set clean"))
        self.blocks_: list[ConvexDualDenoiser] = []
        self.history_: list[dict[str, Any]] = []
        for b in range(cfg.n_blocks):
            t0 = time.perf_counter()
            # eq. 4 on (z_{b-1}, y); residual blocks fit y - z_{b-1} (Cor. 1.1)
            block = ConvexDualDenoiser(kernel_size=cfg.kernel_size, n_patterns=cfg.n_patterns,
                                       beta=cfg.block_beta(b), loss=cfg.loss,
                                       residual=cfg.block_residual(b), seed=cfg.seed + b)
            block.fit(z, y, solver=cfg.solver, config=cfg.solver_config,
                      eval_set=None if ze is None else (ze, eval_set[1]), **solver_options)
            before = float(loss(z, y, "sum"))
            z = block.predict(z)  # section 4.3: the next block sees this block's output
            if ze is not None:
                ze = block.predict(ze)
            self.blocks_.append(block)
            # v = w = 0 is feasible: it scores `before` (residual block: the identity) or
            # l(0, y); an optimum cannot be worse
            zero = before if block.residual else float(loss(torch.zeros_like(y), y, "sum"))
            worse = float(block.objective_) > zero * (1 + 1e-6)
            if worse:
                used = block.solve_info_.solver
                warnings.warn(f"block {b + 1}: dual objective {float(block.objective_):.6g} is "
                              f"above {zero:.6g}, the value of v = w = 0, so the {used} "
                              f"solution is not optimal; train it longer or use an exact "
                              f"solver", RuntimeWarning, stacklevel=2)
            self.history_.append({"block": b + 1, "dual_objective": float(block.objective_),
                                  "data_loss_before": before,
                                  "data_loss_after": float(loss(z, y, "sum")),
                                  "worse_than_zero_block": bool(worse),
                                  "n_patterns": int(block.generators_.shape[0]),
                                  "status": block.solve_info_.status,
                                  "seconds": time.perf_counter() - t0})
        self.n_channels_ = int(x.shape[1])
        return self

    def _first(self, n_blocks: int | None) -> list[ConvexDualDenoiser]:
        """The first `n_blocks` fitted blocks (all by default)."""
        self._check_fitted()
        if n_blocks is not None and not 1 <= int(n_blocks) <= len(self.blocks_):
            raise ValueError(f"n_blocks: expected 1..{len(self.blocks_)}, got {n_blocks}")
        return self.blocks_[:None if n_blocks is None else int(n_blocks)]

    def forward(self, x: torch.Tensor, sigma: float | None = None,
                n_blocks: int | None = None) -> torch.Tensor:
        for block in self._first(n_blocks):
            x = block(x)
        return x

    def predict(self, noisy, n_blocks: int | None = None, batch_size: int = 64) -> torch.Tensor:
        """Output after the first `n_blocks` blocks (all by default), `(n, 1, H, W)` float64."""
        z = as_images(noisy, "noisy", dtype=torch.float64)
        for block in self._first(n_blocks):
            z = block.predict(z, batch_size)
        return z

    def stages(self, images) -> list[tuple[ConvexDualDenoiser, torch.Tensor]]:
        """`(block, block input)` for every block: what `convexnn.interpret` clusters."""
        z = as_images(images, "images", dtype=torch.float64)
        out = []
        for block in self._first(None):
            out.append((block, z))
            z = block.predict(z)
        return out

    def regularizer(self, n_blocks: int | None = None) -> float:
        """`sum_b beta_b sum_i (||v_i|| + ||w_i||)` over the first `n_blocks` blocks."""
        return float(sum(blk.beta * sum(float(n.sum()) for n in blk.group_norms())
                         for blk in self._first(n_blocks)))

    def objective(self, noisy, clean, reduction: str = "sum", n_blocks: int | None = None
                  ) -> float:
        """`l(z_B, y) + sum_b beta_b R_b` (reduction applies to the data term, like eq. 4)."""
        z = self.predict(noisy, n_blocks)
        y = as_targets(clean, z)
        return float(Loss(self.config.loss)(z, y, reduction)) + self.regularizer(n_blocks)

    def to_primal(self) -> UnrolledDenoiser:
        """The deep primal network: every block rebuilt by eq. 5, chained."""
        return UnrolledDenoiser.from_blocks([b.to_primal() for b in self._first(None)])


class UnrolledDenoiser(Denoiser):
    """`x_t = f_t(x_{t-1})`, `f_t` two-layer conv ReLU blocks (Fig. 5b: 2 iterations, 4 layers).

    Iterations 2..T take the one-channel estimate; `residual`: they add their input back;
    `first_residual`: iteration 1 too. Denoiser call convention `model(x, sigma=None)`.
    """

    def __init__(self, n_iterations: int = 2, n_filters: int = 512, kernel_size: int = 3,
                 in_channels: int = 1, residual: bool = True, first_residual: bool = False,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) \
                or n_iterations < 1:
            raise ValueError(f"n_iterations: expected a positive integer, got {n_iterations!r}")
        self.blocks = nn.ModuleList(
            TwoLayerConvDenoiser(in_channels if t == 0 else 1, n_filters, kernel_size,
                                 first_residual if t == 0 else residual, dtype=dtype)
            for t in range(n_iterations))

    @classmethod
    def from_blocks(cls, blocks: list[TwoLayerConvDenoiser]) -> UnrolledDenoiser:
        if not blocks or not all(isinstance(b, TwoLayerConvDenoiser) for b in blocks):
            raise TypeError("blocks: expected a non-empty list of TwoLayerConvDenoiser")
        net = cls(n_iterations=1, n_filters=1)
        net.blocks = nn.ModuleList(blocks)
        return net

    @property
    def in_channels(self) -> int:
        return self.blocks[0].in_channels

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # Fig. 5b: x_t = f_t(x_{t-1}), f_t of eq. 1
        return x

    def stages(self, images) -> list[tuple[TwoLayerConvDenoiser, torch.Tensor]]:
        """`(iteration block, its input)` for every iteration, for `convexnn.interpret`."""
        p = self.blocks[0].conv1.weight
        z = as_images(images, "images", dtype=p.dtype, device=p.device)
        out = []
        with torch.no_grad():
            for block in self.blocks:
                out.append((block, z))
                z = block(z)
        return out

    def weight_decay(self) -> torch.Tensor:
        """`sum_t ||U_t||_F^2 + ||alpha_t||^2`."""
        return sum(b.weight_decay() for b in self.blocks)

    def objective(self, noisy, clean, beta: float, reduction: str = "sum",
                  loss: str | Loss = "squared") -> float:
        """`l(f(noisy), clean) + beta/2 sum_t (||U_t||^2 + ||alpha_t||^2)` (eq. 2 per block)."""
        beta = check_positive(beta, "beta")
        loss = loss if isinstance(loss, Loss) else Loss(loss)
        p = self.blocks[0].conv1.weight
        x = as_images(noisy, "noisy", dtype=p.dtype, device=p.device)
        y = as_targets(clean, x)
        with torch.no_grad():
            return float(loss(self(x), y, reduction) + 0.5 * beta * self.weight_decay())


def train_unrolled(model: UnrolledDenoiser, noisy, clean,
                   config: PrimalTrainConfig | None = None, eval_set=None) -> PrimalTrainResult:
    """End-to-end Adam on the unrolled objective (one process; the loop of `train_primal`:
    seeded batches, cosine schedule, plateau stop, checkpoints). History keys as train_primal."""
    cfg = config or PrimalTrainConfig()
    if not isinstance(model, UnrolledDenoiser):
        raise TypeError(f"model: expected an UnrolledDenoiser, got {type(model).__name__}")
    beta, loss = check_positive(cfg.beta, "beta"), Loss(cfg.loss, cfg.huber_delta)
    lr = check_positive(cfg.lr, "lr")
    t0 = time.perf_counter()
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    x = as_images(noisy, "noisy", dtype=dtype, device=device)
    y = as_targets(clean, x)
    if cfg.reinit_seed is not None:
        torch.manual_seed(int(cfg.reinit_seed))
        for block in model.blocks:
            block.conv1.reset_parameters()
            block.conv2.reset_parameters()
    model.to(device=device, dtype=dtype)
    evals = [("train", x, y)]
    if eval_set is not None:
        xe = as_images(eval_set[0], "eval_set noisy", dtype=dtype, device=device)
        evals.append(("test", xe, as_targets(eval_set[1], xe, "eval_set clean")))
    n, hw = x.shape[0], x.shape[2] * x.shape[3]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    info = DistInfo()

    def step(local: torch.Tensor, count: int) -> torch.Tensor:
        idx = local.to(device)
        value = loss(model(x[idx]), y[idx], "sum") / float(count * hw) \
            + (0.5 * beta / float(n * hw)) * model.weight_decay()   # eq. 2 per block, mean scale
        value.backward()
        return value

    def evaluate(epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, a, b in evals:
            out.update(evaluate_objective(model, a, b, beta, loss, info, prefix))
        return out

    spec = LoopSpec.from_config(cfg, lr, monitor="train_objective_mean",
                                stop_key="train_objective",
                                desc=f"unrolled adam T={len(model.blocks)}")
    fp = fingerprint("unrolled-adam", {**cfg.settings(), "n_blocks": len(model.blocks),
                                       "filters": [b.n_filters for b in model.blocks]},
                     {"noisy": x, "clean": y})
    res = run_loop(kind="unrolled-adam", spec=spec, n_items=n, module=model, raw=model,
                   optimizer=opt, step=step, evaluate=evaluate, fp=fp, info=info)
    return PrimalTrainResult(res.history, res.status, res.epochs_run, res.steps,
                             time.perf_counter() - t0, res.resumed_from)


# ---------------------------------------------------------------------- save / load
def save_stack(stack: GreedyConvexStack, path: str | Path) -> Path:
    """One safetensors file: `block{b}.generators|v|w` tensors; block count in the metadata."""
    stack._check_fitted()
    tensors, blocks = {}, []
    for b, blk in enumerate(stack.blocks_):
        tensors.update({f"block{b}.generators": blk.generators_, f"block{b}.v": blk.v_,
                        f"block{b}.w": blk.w_})
        blocks.append({"params": blk.saved_params(), "objective": float(blk.objective_),
                       "n_channels": int(blk.n_channels_), "solver": blk.solve_info_.solver,
                       "status": blk.solve_info_.status})
    header = {"config": stack.config.to_dict(), "blocks": blocks, "history": stack.history_}
    path = Path(path)
    atomic_save_safetensors(tensors, path, {"format": STACK_FORMAT,
                                            "n_blocks": str(len(blocks)),
                                            "header": json.dumps(header)})
    return path


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a convexnn safetensors model file ({exc})") from None


def is_stack_file(path: str | Path) -> bool:
    """Whether `path` is a `save_stack` file (raises like `load_stack` for missing/bad files)."""
    return _metadata(Path(path)).get("format") == STACK_FORMAT


def load_stack(path: str | Path) -> GreedyConvexStack:
    """Load a stack written by `save_stack` (safetensors: nothing is unpickled)."""
    path = Path(path)
    meta = _metadata(path)
    if meta.get("format") != STACK_FORMAT:
        raise ValueError(f"{path}: expected a '{STACK_FORMAT}' file written by save_stack, got "
                         f"format {meta.get('format')!r} (single models: convexnn.io.load_model)")
    tensors, header = load_file(str(path)), json.loads(meta["header"])
    cfg = header["config"]
    if isinstance(cfg["beta"], list):
        cfg["beta"] = tuple(cfg["beta"])
    stack = GreedyConvexStack(GreedyStackConfig(**cfg))
    stack.blocks_, stack.history_ = [], list(header.get("history", []))
    for b, info in enumerate(header["blocks"][:int(meta["n_blocks"])]):
        g = tensors[f"block{b}.generators"].to(torch.float64)
        params = {k: v for k, v in info["params"].items() if k != "generators"}
        blk = ConvexDualDenoiser(generators=g, **params)
        blk.n_channels_, blk.generators_ = int(info["n_channels"]), g
        blk.v_ = tensors[f"block{b}.v"].to(torch.float64)
        blk.w_ = tensors[f"block{b}.w"].to(torch.float64)
        blk.solve_info_ = SolveInfo(solver=info["solver"], status=info["status"])
        blk.history_, blk.objective_ = [], float(info["objective"])
        stack.blocks_.append(blk)
    stack.n_channels_ = stack.blocks_[0].n_channels_
    return stack
