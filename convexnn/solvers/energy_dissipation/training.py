"""Training with the lagged distribution of iterates (Sec. 4.2) and the square loss of eq. 7.

The input distribution ``X_theta`` of eq. 7 depends on the parameters; it is approximated
"lagged": bootstrap the pool of training inputs with gradient-descent iterates (0 ...
``max_descent_steps`` steps, uniformly), then every ``regenerate_every`` minibatches replace it
by the iterates of Algorithm 1 with the current, frozen network (again 0 ... max steps,
uniformly; older samples are discarded, as in Sec. 5.1). Loss per minibatch:
``mean ||u - G(u, f, grad E(u); theta) - u*||^2`` (eq. 7 with the square loss, divided by the
number of entries). Checkpoints are atomic and resume exactly (``convexnn.train.checkpoint``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from convexnn.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

from ..energies import Energy
from .descent import DescentConfig, energy_dissipating_descent
from .networks import DirectionNetwork, GradientDirection

__all__ = ["TrainingProblem", "LaggedTrainingConfig", "LaggedTrainingResult",
           "generate_iterates", "train_lagged"]


@dataclass
class TrainingProblem:
    """Training pairs: ground truth ``targets`` ``u*`` (N, ...), the data ``measurements``
    (N, ...) that define each sample's energy through ``energy_fn(measurements[idx])``, and the
    starting points ``starts`` (N, ...) of the descent (default: zeros like the targets)."""

    targets: Tensor
    measurements: Tensor
    energy_fn: Callable[[Tensor], Energy]
    starts: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.targets, Tensor) or not isinstance(self.measurements, Tensor):
            raise TypeError("TrainingProblem: targets and measurements must be tensors")
        if self.targets.shape[0] != self.measurements.shape[0] or self.targets.shape[0] < 1:
            raise ValueError(f"TrainingProblem: expected as many targets as measurements (>= 1),"
                             f" got {self.targets.shape[0]} and {self.measurements.shape[0]}")
        if self.starts is not None and self.starts.shape != self.targets.shape:
            raise ValueError(f"TrainingProblem: starts: expected the shape of the targets "
                             f"{tuple(self.targets.shape)}, got {tuple(self.starts.shape)}")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def start(self, energy: Energy, idx: Tensor) -> Tensor:
        if self.starts is None:
            return torch.zeros_like(self.targets[idx])
        return self.starts[idx].clone()


@dataclass
class LaggedTrainingConfig:
    """Options of ``train_lagged``.

    steps, batch_size, lr : Adam minibatches, their size and learning rate.
    regenerate_every : K, minibatches between two regenerations of the pool (Sec. 4.2).
    max_descent_steps : iterates are taken after 0 ... max steps, uniformly.
    lagged : False keeps the bootstrap (gradient-descent) pool for the whole run (Fig. 3).
    gd_scale : the bootstrap direction ``gd_scale * grad E`` (e.g. ``1/L``).
    descent : line-search options of the regenerating runs (max_iter is set per run).
    chunk : samples per regeneration batch (memory).
    """

    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    regenerate_every: int = 100
    max_descent_steps: int = 10
    lagged: bool = True
    gd_scale: float = 1.0
    descent: DescentConfig = field(default_factory=lambda: DescentConfig(record_history=False))
    chunk: int = 64
    seed: int = 0
    checkpoint_path: str | Path | None = None
    checkpoint_every: int = 100
    resume: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "regenerate_every", "chunk", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise ValueError(f"LaggedTrainingConfig: {name}: expected a positive integer, "
                                 f"got {v!r}")
        if self.max_descent_steps < 0:
            raise ValueError(f"LaggedTrainingConfig: max_descent_steps: expected >= 0, got "
                             f"{self.max_descent_steps!r}")
        if not self.lr > 0 or not self.gd_scale > 0:
            raise ValueError(f"LaggedTrainingConfig: expected lr > 0 and gd_scale > 0, got "
                             f"{self.lr!r}, {self.gd_scale!r}")

    def trajectory_settings(self) -> dict:
        """What determines the trajectory (the fingerprint); not steps, paths or progress."""
        d = asdict(self)
        for k in ("steps", "checkpoint_path", "checkpoint_every", "resume", "progress"):
            d.pop(k)
        d["descent"] = self.descent.summary()
        return d


@dataclass
class LaggedTrainingResult:
    """Loss per minibatch, the minibatch indices of the regenerations, wall time."""

    losses: list[float] = field(default_factory=list)
    regenerations: list[int] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


def generate_iterates(problem: TrainingProblem, direction, n_steps: Tensor,
                      descent: DescentConfig, chunk: int = 64) -> Tensor:
    """The iterate after ``n_steps[i]`` steps of Algorithm 1 (``direction``: a network, or a
    ``GradientDirection`` for the bootstrap) from each sample's start."""
    out = torch.empty_like(problem.targets)
    cfg = DescentConfig(**{**asdict(descent), "record_history": False, "reference": None,
                           "max_iter": 1})
    for b0 in range(0, len(problem), chunk):
        idx = torch.arange(b0, min(b0 + chunk, len(problem)))
        energy = problem.energy_fn(problem.measurements[idx])
        u = problem.start(energy, idx)
        ks = n_steps[idx]
        for k in range(int(ks.max()) if ks.numel() else 0):
            move = ks > k
            if not bool(move.any()):
                break
            sub = torch.nonzero(move).flatten()
            u_sub, _ = energy_dissipating_descent(energy.select(sub), u[sub], direction, cfg)
            u[sub] = u_sub
        out[idx] = u
    return out


def _loss(net: DirectionNetwork, problem: TrainingProblem, pool: Tensor, idx: Tensor
          ) -> Tensor:
    energy = problem.energy_fn(problem.measurements[idx])
    u = pool[idx]
    g = energy.gradient(u)
    d = net.direction(u, g, energy)
    # eq. 7, square loss: ||u - G(u, f, grad E(u); theta) - u*||^2
    return (u - d - problem.targets[idx]).pow(2).mean()


def train_lagged(net: DirectionNetwork, problem: TrainingProblem,
                 config: LaggedTrainingConfig | None = None) -> LaggedTrainingResult:
    """Train ``net`` in place on eq. 7 with the lagged input distribution (Sec. 4.2)."""
    cfg = config or LaggedTrainingConfig()
    if not isinstance(net, DirectionNetwork):
        raise TypeError(f"train_lagged: expected a DirectionNetwork, got {type(net).__name__}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_lagged: the network has no trainable parameters")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = LaggedTrainingResult()
    fp = fingerprint("energy_dissipation.train_lagged", cfg.trajectory_settings(), {
        "targets": problem.targets, "measurements": problem.measurements,
        **{f"init.{k}": v for k, v in net.state_dict().items() if v.is_floating_point()}})
    start = 0
    pool = None
    path = Path(cfg.checkpoint_path) if cfg.checkpoint_path is not None else None
    if path is not None and cfg.resume and path.exists():
        state = load_checkpoint(path, fp)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        pool = state["pool"]
        start = int(state["step"])
        res.losses = list(state["losses"])
        res.regenerations = list(state["regenerations"])
        res.resumed_from = start

    def regenerate(use_net: bool) -> Tensor:
        ks = torch.randint(0, cfg.max_descent_steps + 1, (len(problem),), generator=gen)
        direction = net if use_net else GradientDirection(cfg.gd_scale)
        was = net.training
        net.eval()
        with torch.no_grad():
            p = generate_iterates(problem, direction, ks, cfg.descent, cfg.chunk)
        net.train(was)
        return p

    def checkpoint(step: int) -> None:
        if path is not None:
            save_checkpoint(path, {"fingerprint": fp, "kind": "energy_dissipation",
                                   "step": step, "model": net.state_dict(),
                                   "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                   "pool": pool, "losses": res.losses,
                                   "regenerations": res.regenerations})

    if pool is None:
        pool = regenerate(use_net=False)            # bootstrap: gradient-descent iterates
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc="train_lagged", leave=False)
    t0 = time.perf_counter()
    net.train()
    for step in range(start, cfg.steps):
        if cfg.lagged and step > 0 and step % cfg.regenerate_every == 0 and \
                (not res.regenerations or res.regenerations[-1] != step):
            pool = regenerate(use_net=True)         # Sec. 4.2: iterates of the frozen model
            res.regenerations.append(step)
        idx = torch.randint(0, len(problem), (min(cfg.batch_size, len(problem)),),
                            generator=gen)
        loss = _loss(net, problem, pool, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        res.losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{res.losses[-1]:.3g}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(step + 1)
    if bar is not None:
        bar.close()
    net.eval()
    res.steps = cfg.steps
    res.seconds = time.perf_counter() - t0
    return res

