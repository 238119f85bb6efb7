"""Sign-pattern ablation (paper App. B.3, Fig. 10): dual with P sampled patterns vs the
512-filter primal, sigma in {0.1, 0.5}. Writes results/mnist_pattern_ablation.json + .png.

    PYTHONPATH=. python experiments/mnist_pattern_ablation.py          # paper scale (hours)
    PYTHONPATH=. python experiments/mnist_pattern_ablation.py --quick  # CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.mnist_setup import (  # noqa: E402
    BETA_MEAN,
    RESULTS,
    final_objectives,
    load_data,
    run_dual,
    run_primal,
    write_json,
)


def plot(rows: list[dict], sigmas: list[float], path: Path) -> None:
    """Objective (mean) against P, dual vs the primal, one panel per sigma (Fig. 10)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sigmas), figsize=(5 * len(sigmas), 3.5), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas, strict=True):
        sel = [r for r in rows if r["sigma"] == sigma]
        for split in ("train", "test"):
            ax.plot([r["patterns"] for r in sel],
                    [r[f"{split}_dual_rebuilt_primal_mean"] for r in sel], "o-",
                    label=f"dual {split}")
            ax.axhline(sel[0][f"{split}_primal_mean"], ls="--", color="k" if split == "train"
                       else "gray", label=f"primal {split}")
        ax.set_xscale("log")
        ax.set_xticks([r["patterns"] for r in sel], [str(r["patterns"]) for r in sel])
        ax.minorticks_off()
        ax.set_xlabel("sampled sign patterns P")
        ax.set_ylabel("objective (mean)")
        ax.set_title(f"sigma = {sigma:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--patterns", type=int, nargs="+",
                    default=[125, 250, 500, 1000, 2000, 4000, 8000])
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--filters", type=int, default=512)
    ap.add_argument("--epochs-primal", type=int, default=40)
    ap.add_argument("--epochs-dual", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.filters, a.patterns = 25, 25, 32, [25, 100]
        a.epochs_primal = a.epochs_dual = 8
    out = Path(a.out)
    tag = "mnist_pattern_ablation" + ("_quick" if a.quick else "")
    rows = []
    for sigma in a.sigma:
        x, y, xe, ye = load_data(a.n_train, a.n_test, sigma)
        beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
        primal, pres = run_primal(x, y, xe, ye, a.filters, beta, a.epochs_primal,
                                  quiet=a.quiet, eval_every=a.eval_every)
        for p in a.patterns:
            dual, secs = run_dual(x, y, xe, ye, p, beta, a.epochs_dual, quiet=a.quiet,
                                  eval_every=a.eval_every)
            f = final_objectives(primal, dual, x, y, xe, ye, beta)
            rows.append({"sigma": sigma, "patterns": p, "seconds": secs, **{
                f"{s}_{k}": v for s, d in f.items() for k, v in d.items()}})
            if not a.quiet:
                print(f"sigma={sigma:g} P={p}: train dual/primal "
                      f"{f['train']['dual_rebuilt_primal']:.6g}/{f['train']['primal']:.6g}")
    write_json(out / f"{tag}.json", {"experiment": "mnist_pattern_ablation", "quick": a.quick,
                                     "n_train": a.n_train, "n_test": a.n_test,
                                     "primal_filters": a.filters, "rows": rows})
    plot(rows, a.sigma, out / f"{tag}.png")
    return {"rows": rows}


if __name__ == "__main__":
    main()
