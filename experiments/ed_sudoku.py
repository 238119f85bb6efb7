"""9x9 Sudoku as convex feasibility (paper Sec. 5.3-5.4, Table 2).

Energy eq. 25 over the five sets of ``convexnn.solvers.sudoku`` (cell / row / column / box
simplices and the givens). Rows: gradient descent with step 1 for 100 iterations (= averaged
projections), a baseline network (``SetNet`` without projection, one forward pass from the start
``u^0`` = givens one-hot, 1/9 elsewhere, trained on eq. 7) and the energy-dissipating network
(``SetNet`` + ``TwoSidedProjection``, Algorithm 1, 100 iterations; lagged training with 15 descent
iterations, Sec. 5.4). Puzzles: seeded generator (``generate_puzzles``), "easy" = 36 givens; the
test set has unique solutions. Accuracy = fraction of the 81 cells equal to the solution after
arg-max rounding; solve rate = fraction of grids fully correct.

    PYTHONPATH=. python experiments/ed_sudoku.py            # default
    PYTHONPATH=. python experiments/ed_sudoku.py --quick    # CI
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from convexnn.solvers.energy_dissipation import (  # noqa: E402
    DescentConfig,
    DirectionNetwork,
    LaggedTrainingConfig,
    SetNet,
    TrainingProblem,
    TwoSidedProjection,
    energy_dissipating_descent,
)
from convexnn.solvers.energy_dissipation import train_lagged as train  # noqa: E402
from convexnn.solvers.sudoku import (  # noqa: E402
    SudokuEnergy,
    accuracy,
    generate_puzzles,
    givens_tensor,
    one_hot,
    round_grid,
)
from experiments.ed_setup import default_out, setup, write_json  # noqa: E402


def start_of(givens: torch.Tensor) -> torch.Tensor:
    oh, mask = givens[:, :9], givens[:, 9:10]
    return torch.where(mask > 0, oh, torch.full_like(oh, 1 / 9))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--givens", type=int, default=36)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--regenerate-every", type=int, default=100)
    ap.add_argument("--zeta1", type=float, default=0.2)
    ap.add_argument("--zeta2", type=float, default=5.0)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", default=default_out())
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.steps, a.regenerate_every, a.iters = 64, 10, 30, 15, 30
    setup(a.seed)
    tag = "quick" if a.quick else "full"
    tr_p, tr_s = generate_puzzles(a.n_train, a.givens, seed=a.seed + 1000, unique=False)
    te_p, te_s = generate_puzzles(a.n_test, a.givens, seed=a.seed)
    gv = givens_tensor(tr_p, torch.float32)
    problem = TrainingProblem(one_hot(tr_s, torch.float32), gv, SudokuEnergy, start_of(gv))
    torch.manual_seed(a.seed)
    ed = DirectionNetwork(SetNet(28, 9, depth=4, channels=48),
                          TwoSidedProjection(a.zeta1, a.zeta2))
    cfg = LaggedTrainingConfig(steps=a.steps, batch_size=32, lr=1e-3,
                               regenerate_every=a.regenerate_every, max_descent_steps=15,
                               gd_scale=1.0, seed=a.seed, progress=not a.quiet)
    r_ed = train(ed, problem, cfg)
    torch.manual_seed(a.seed)
    base = DirectionNetwork(SetNet(28, 9, depth=4, channels=48), None)
    r_b = train(base, problem, replace(cfg, max_descent_steps=0, lagged=False))

    gt = givens_tensor(te_p, torch.float32)
    energy = SudokuEnergy(gt)
    u0 = start_of(gt)
    with torch.no_grad():
        u_gd, h_gd = energy_dissipating_descent(energy, u0, None, DescentConfig(
            max_iter=a.iters, step_rule="constant", grad_tol=0))
        u_b = u0 - base.direction(u0, energy.gradient(u0), energy)
        u_ed, h_ed = energy_dissipating_descent(energy, u0, ed, DescentConfig(
            max_iter=a.iters, grad_tol=0))
    table = {}
    for k, u in (("gd", u_gd), ("baseline", u_b), ("ed", u_ed)):
        acc, solved = accuracy(round_grid(u), te_s)
        table[k] = {"accuracy": acc, "solve_rate": solved,
                    "energy": float(energy.value(u).mean())}
    payload = {"experiment": "energy_dissipation_sudoku", "args": vars(a), "table": table,
               "training": {"ed_final_loss": float(np.mean(r_ed.losses[-20:])),
                            "baseline_final_loss": float(np.mean(r_b.losses[-20:])),
                            "regenerations": r_ed.regenerations,
                            "seconds": r_ed.seconds + r_b.seconds},
               "curves": {"gd_energy": h_gd.energy, "ed_energy": h_ed.energy}}
    out = Path(a.out)
    write_json(out / f"ed_sudoku_{tag}.json", payload)
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.semilogy(h_gd.energy, label="GD (averaged projections)")
    ax.semilogy(h_ed.energy, label="energy dissipating")
    ax.set_xlabel("iteration")
    ax.set_title("sum of energies (eq. 25)")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(range(3), [table[k]["accuracy"] for k in table], 0.4, label="accuracy")
    ax.bar(np.arange(3) + 0.4, [table[k]["solve_rate"] for k in table], 0.4, label="solve rate")
    ax.set_xticks(np.arange(3) + 0.2)
    ax.set_xticklabels(list(table))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"ed_sudoku_{tag}.png", dpi=100)
    if not a.quiet:
        for k, v in table.items():
            print(f"{k:9s} acc {100 * v['accuracy']:.1f}%  solve {100 * v['solve_rate']:.1f}%")
    return payload


if __name__ == "__main__":
    main()
