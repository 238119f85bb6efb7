"""Robustness (paper App. B.1, Figs. 8-9): Gaussian vs exponential noise, 25 primal filters vs
8,000 dual patterns. Writes results/mnist_robustness_{kind}.json + .png.

    PYTHONPATH=. python experiments/mnist_robustness.py           # paper scale
    PYTHONPATH=. python experiments/mnist_robustness.py --quick   # CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.mnist_setup import (  # noqa: E402
    BETA_MEAN,
    RESULTS,
    final_objectives,
    load_data,
    plot_curves,
    run_dual,
    run_primal,
    write_json,
)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--filters", type=int, default=25)
    ap.add_argument("--patterns", type=int, default=8000)
    ap.add_argument("--epochs-primal", type=int, default=100)
    ap.add_argument("--epochs-dual", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.filters, a.patterns = 25, 25, 8, 100
        a.epochs_primal = a.epochs_dual = 8
    out = Path(a.out)
    summary = {}
    for kind in ("gaussian", "exponential"):
        x, y, xe, ye = load_data(a.n_train, a.n_test, a.sigma, kind=kind)
        beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
        primal, pres = run_primal(x, y, xe, ye, a.filters, beta, a.epochs_primal,
                                  quiet=a.quiet, eval_every=a.eval_every)
        dual, secs = run_dual(x, y, xe, ye, a.patterns, beta, a.epochs_dual, quiet=a.quiet,
                              eval_every=a.eval_every)
        f = final_objectives(primal, dual, x, y, xe, ye, beta)
        tag = f"mnist_robustness_{kind}" + ("_quick" if a.quick else "")
        write_json(out / f"{tag}.json", {
            "experiment": "mnist_robustness", "noise": kind, "sigma": a.sigma,
            "quick": a.quick, "primal_filters": a.filters, "dual_patterns": a.patterns,
            "beta_sum": beta, "final": f, "primal_history": pres.history,
            "dual_history": dual.history_})
        plot_curves(out / f"{tag}.png", pres.history, dual.history_,
                    f"{kind} noise: primal {a.filters} filters vs dual {a.patterns} patterns")
        summary[kind] = f
        if not a.quiet:
            print(kind, {s: round(v["relative_difference"], 4) for s, v in f.items()})
    return summary


if __name__ == "__main__":
    main()
