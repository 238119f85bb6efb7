"""Zero duality gap on MNIST denoising (paper Sec. 5.1, Fig. 2 and 3).

Primal: 512 filters, k = 3 'same', Adam. Dual: 8,000 sampled sign patterns, hinge-penalised Adam
(App. B). Batch 25 for the primal (the paper's), 1 for the dual (`AdamConfig`'s default: its
step size is bounded per step, so it needs steps, see docs/adam.md). Writes
`results/mnist_zero_gap_sigma{s}.json` and `.png` (train/test objective curves of both,
Fig. 2) and `_recon.png` (reconstructions, Fig. 3).

    PYTHONPATH=. python experiments/mnist_zero_gap.py --sigma 0.5 --eval-every 5   # paper scale
    PYTHONPATH=. python experiments/mnist_zero_gap.py --quick         # CI (seconds)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments.mnist_setup import (  # noqa: E402
    BETA_MEAN,
    RESULTS,
    final_objectives,
    load_data,
    plot_curves,
    plot_reconstructions,
    run_dual,
    run_primal,
    write_json,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--quick", action="store_true", help="tiny CI version")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--filters", type=int, default=512)
    ap.add_argument("--patterns", type=int, default=8000)
    ap.add_argument("--epochs-primal", type=int, default=100)
    ap.add_argument("--epochs-dual", type=int, default=30)
    ap.add_argument("--dual-lr", type=float, default=None)
    ap.add_argument("--dual-batch-size", type=int, default=1,
                    help="images per Adam step of the dual (the primal uses 25, the paper's)")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--max-minutes-dual", type=float, default=None)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.filters, a.patterns = 25, 25, 32, 200
        a.epochs_primal, a.epochs_dual = 10, 10
        if a.sigma == [0.25, 0.5, 0.75]:
            a.sigma = [0.5]
    out = Path(a.out)
    summary = {}
    for sigma in a.sigma:
        x, y, xe, ye = load_data(a.n_train, a.n_test, sigma)
        beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
        tag = f"mnist_zero_gap_sigma{sigma:g}" + ("_quick" if a.quick else "")
        ck = (lambda name, tag=tag: str(Path(a.checkpoint_dir) / f"{tag}_{name}.pt")) \
            if a.checkpoint_dir else (lambda name: None)
        t = time.perf_counter()
        primal, pres = run_primal(x, y, xe, ye, a.filters, beta, a.epochs_primal,
                                  quiet=a.quiet, checkpoint=ck("primal"),
                                  eval_every=a.eval_every)
        t_primal = time.perf_counter() - t
        extra = {"lr": a.dual_lr} if a.dual_lr else {}
        extra["batch_size"] = min(a.dual_batch_size, x.shape[0])
        dual, t_dual = run_dual(x, y, xe, ye, a.patterns, beta, a.epochs_dual, quiet=a.quiet,
                                checkpoint=ck("dual"), eval_every=a.eval_every,
                                max_seconds=a.max_minutes_dual * 60 if a.max_minutes_dual
                                else None, **extra)
        # training wall time from the histories (a resumed run's own time is only the tail)
        t_primal = pres.history[-1]["elapsed_seconds"] if pres.history else t_primal
        t_dual = dual.history_[-1]["elapsed_seconds"] if dual.history_ else t_dual
        finals = final_objectives(primal, dual, x, y, xe, ye, beta)
        last = dual.history_[-1]
        payload = {
            "experiment": "mnist_zero_gap", "quick": a.quick, "sigma": sigma,
            "n_train": a.n_train, "n_test": a.n_test, "kernel_size": 3, "batch_size": 25,
            "dual_batch_size": extra["batch_size"],
            "primal_filters": a.filters, "dual_patterns_sampled": a.patterns,
            "dual_patterns_kept": int(dual.generators_.shape[0]),
            "beta_sum": beta, "beta_mean": BETA_MEAN,
            "primal_epochs": pres.epochs_run, "primal_status": pres.status,
            "primal_seconds": t_primal, "dual_epochs": dual.solve_info_.details["epochs_run"],
            "dual_status": dual.solve_info_.status, "dual_seconds": t_dual,
            "dual_rho": dual.solve_info_.details["rho"],
            "dual_lr": dual.solve_info_.details["lr"],
            "dual_final_violation_max": last.get("train_violation_max"),
            "dual_objective_eq4_train": last.get("train_objective"),
            "final": finals,
            "primal_history": pres.history, "dual_history": dual.history_,
        }
        write_json(out / f"{tag}.json", payload)
        plot_curves(out / f"{tag}.png", pres.history, dual.history_,
                    f"MNIST sigma={sigma:g}: primal {a.filters} filters vs dual "
                    f"{a.patterns} patterns")
        plot_reconstructions(out / f"{tag}_recon.png", xe, ye, primal, dual)
        summary[sigma] = finals
        if not a.quiet:
            print(f"sigma={sigma:g}: " + ", ".join(
                f"{s} primal {v['primal']:.6g} dual {v['dual_rebuilt_primal']:.6g} "
                f"({100 * v['relative_difference']:+.2f}%)" for s, v in finals.items()))
    return summary


if __name__ == "__main__":
    main()
