"""The 2-D toy of Figs. 2-3: ``E(u) = 1/2 (u1 + u2 - f)^2``, training points near (0, 5).

Three vector fields ``-d(u)`` (the motion of Algorithm 1): plain gradient descent, the
energy-dissipating network after training on gradient-descent iterates only (Fig. 3), and after
further lagged updates of the training distribution (Fig. 2 right). Network: MLP on
``[u, A^T f / ||A||^2, g]``, projection onto ``<d, g> >= zeta ||g||^2`` (eq. 21 with zeta
scaled by ``||g||``, the variant of Fig. 2 right). Starts: uniform in [-2, 8]^2.

    PYTHONPATH=. python experiments/ed_toy2d.py            # default (about a minute)
    PYTHONPATH=. python experiments/ed_toy2d.py --quick    # CI
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from convexnn.solvers.energies import DataFidelity, MatrixOperator  # noqa: E402
from convexnn.solvers.energy_dissipation import (  # noqa: E402
    MLP,
    DescentConfig,
    DirectionNetwork,
    GradientDirection,
    HalfSpaceProjection,
    LaggedTrainingConfig,
    TrainingProblem,
    energy_dissipating_descent,
    train_lagged,
)
from experiments.ed_setup import default_out, setup, write_json  # noqa: E402

CENTER = torch.tensor([0.0, 5.0], dtype=torch.float64)
OP = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))


def energy_of(f: torch.Tensor) -> DataFidelity:
    return DataFidelity(OP, f, lipschitz=2.0)


def evaluate(direction, starts: torch.Tensor, iters: int) -> dict:
    f = torch.full((starts.shape[0], 1), 5.0, dtype=torch.float64)
    u, h = energy_dissipating_descent(energy_of(f), starts, direction,
                                      DescentConfig(max_iter=iters, grad_tol=1e-10))
    e = [h.flags["initial_energy"]] + h.energy
    return {"mean_distance_to_training_points": float((u - CENTER).norm(dim=1).mean()),
            "final_energy": e[-1], "monotone": all(b <= a for a, b in zip(e, e[1:], strict=False)),
            "iterations": h.n_iter}


def paths(direction, starts: torch.Tensor, iters: int) -> np.ndarray:
    f = torch.full((starts.shape[0], 1), 5.0, dtype=torch.float64)
    out, u = [starts.numpy().copy()], starts.clone()
    for _ in range(iters):
        u, _ = energy_dissipating_descent(energy_of(f), u, direction,
                                          DescentConfig(max_iter=1, record_history=False))
        out.append(u.numpy().copy())
    return np.stack(out, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--steps-gd", type=int, default=1500)
    ap.add_argument("--steps-lagged", type=int, default=1500)
    ap.add_argument("--regenerate-every", type=int, default=500)
    ap.add_argument("--zeta", type=float, default=0.05)
    ap.add_argument("--out", default=default_out())
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.steps_gd, a.steps_lagged, a.regenerate_every = 128, 150, 150, 50
    setup(a.seed)
    tag = "quick" if a.quick else "full"
    gen = torch.Generator().manual_seed(a.seed)
    targets = CENTER + 0.3 * torch.randn(a.n_train, 2, generator=gen, dtype=torch.float64)
    targets[:, 1] = 5.0 - targets[:, 0]           # on the solution line u1 + u2 = f = 5
    f = torch.full((a.n_train, 1), 5.0, dtype=torch.float64)
    starts = -2 + 10 * torch.rand(a.n_train, 2, generator=gen, dtype=torch.float64)
    problem = TrainingProblem(targets, f, energy_of, starts)
    torch.manual_seed(a.seed)
    net = DirectionNetwork(MLP(6, 2, hidden=64, depth=3).double(),
                           HalfSpaceProjection(a.zeta, scale_with_grad=True))
    cfg = LaggedTrainingConfig(steps=a.steps_gd, batch_size=64, lr=3e-3, lagged=False,
                               max_descent_steps=10, gd_scale=0.25, seed=a.seed,
                               progress=not a.quiet)
    r1 = train_lagged(net, problem, cfg)                               # Fig. 3: GD iterates only
    net_gd = copy.deepcopy(net)
    r2 = train_lagged(net, problem, replace(cfg, steps=a.steps_lagged, lagged=True,
                                            regenerate_every=a.regenerate_every,
                                            seed=a.seed + 1))          # Fig. 2 right: lagged
    test_starts = -2 + 10 * torch.rand(200, 2, generator=gen, dtype=torch.float64)
    methods = {"gradient descent": GradientDirection(0.25), "ED, GD iterates only": net_gd,
               "ED, lagged updates": net}
    metrics = {k: evaluate(d, test_starts, 30) for k, d in methods.items()}
    out = Path(a.out)
    payload = {"experiment": "energy_dissipation_toy2d", "args": vars(a), "metrics": metrics,
               "training_loss": {"gd_only_final": float(np.mean(r1.losses[-50:])),
                                 "lagged_final": float(np.mean(r2.losses[-50:])),
                                 "regenerations": r2.regenerations}}
    write_json(out / f"ed_toy2d_{tag}.json", payload)
    plot(methods, targets, out / f"ed_toy2d_{tag}.png")
    if not a.quiet:
        for k, m in metrics.items():
            print(f"{k:22s} mean distance to (0,5): {m['mean_distance_to_training_points']:.3f} "
                  f"final energy {m['final_energy']:.2e} monotone {m['monotone']}")
    return payload


def plot(methods, targets, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    xs = np.linspace(-2, 8, 15)
    grid = torch.tensor([[x, y] for y in xs for x in xs], dtype=torch.float64)
    f = torch.full((grid.shape[0], 1), 5.0, dtype=torch.float64)
    e = energy_of(f)
    g = e.gradient(grid)
    fig = Figure(figsize=(13, 4.2))
    for i, (name, d) in enumerate(methods.items()):
        ax = fig.add_subplot(1, 3, i + 1)
        with torch.no_grad():
            v = -(d.direction(grid, g, e)).numpy()
        n = np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
        ax.quiver(grid[:, 0], grid[:, 1], v[:, 0] / n[:, 0], v[:, 1] / n[:, 0],
                  np.log10(n[:, 0]), cmap="viridis", scale=25)
        ax.plot([-2, 8], [7, -3], "k--", lw=0.8)
        ax.plot(targets[:40, 0], targets[:40, 1], "rx", ms=4)
        starts = torch.tensor([[0.0, 0.0], [6.0, 6.0], [-1.5, -1.0], [7.0, 1.0]],
                              dtype=torch.float64)
        with torch.no_grad():
            p = paths(d, starts, 20)
        for q in p:
            ax.plot(q[:, 0], q[:, 1], "-o", ms=2, lw=1)
        ax.set_xlim(-2, 8)
        ax.set_ylim(-2, 8)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
