"""Interpretable reconstruction on MNIST (paper Sec. 4.1-4.2, 5.1; Fig. 4 and 5).

1. A convex dual (eq. 4, hinge-penalised Adam, App. B) on `--n-train` noisy digits: path
   sparsity (eq. 7), its largest filters and their frequency responses (Fig. 4).
2. Patch clusters (eq. 8, Fig. 5a): k-means (k = 12) of the per-pixel binary vectors of active
   nonzero paths on clean test digits, for the dual, for two primal two-layer networks (Adam,
   seeds 0 and 1: how alike two independent two-layer nets cluster) and for each iteration of a
   four-layer network of two unrolled two-layer blocks trained end to end (Fig. 5b), with the
   adjusted Rand index / NMI between them.
3. Sparsity against beta: exact solver (cvxpy) on a small crop, and Adam at the size of step 1.

Writes `results/mnist_interpret[_quick].json`, `_filters.png`, `_clusters.png`,
`_sparsity.png` and the dual as `_model.safetensors` (`convexnn interpret` reads it).

    PYTHONPATH=. python experiments/mnist_interpret.py            # ~5 min on 1 busy CPU core
    PYTHONPATH=. python experiments/mnist_interpret.py --quick    # CI (under a minute)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from convexnn.deep import UnrolledDenoiser, train_unrolled  # noqa: E402
from convexnn.interpret import (  # noqa: E402
    beta_sparsity_sweep,
    cluster_patches,
    cluster_similarity,
    path_sparsity,
    save_cluster_maps,
    save_filter_figure,
)
from convexnn.io import load_model, save_model  # noqa: E402
from convexnn.solve.adam.solver import AdamConfig  # noqa: E402
from convexnn.train.primal import PrimalTrainConfig  # noqa: E402
from experiments.mnist_setup import BETA_MEAN, RESULTS, load_data, run_dual, run_primal, write_json  # noqa: E402

DATA_NOTE = ("normalised MNIST digits; without $CONVEXNN_MNIST_DIR both the training and the "
             "test digits come from the shipped official test set (disjoint)")


def train_unrolled_net(x, y, xe, ye, n_filters: int, beta: float, epochs: int, seed: int = 0,
                       quiet: bool = True, iterations: int = 2, lr: float = 1e-2):
    """Two (or more) unrolled two-layer blocks, Adam end to end on the same objective."""
    torch.manual_seed(seed)
    net = UnrolledDenoiser(n_iterations=iterations, n_filters=n_filters, kernel_size=3)
    cfg = PrimalTrainConfig(beta=beta, lr=lr, epochs=epochs, batch_size=25, seed=seed,
                            progress=not quiet, device="cpu", eval_every=epochs)
    return net, train_unrolled(net, x, y, cfg, eval_set=(xe, ye))


def exact_subset(x, y, quick: bool):
    """A problem the exact solver (cvxpy) handles in seconds: the first 2 training digits
    (1 with --quick), centre-cropped to 16 x 16 (12 x 12), and the number of patterns P."""
    n, crop, p = (1, 12, 8) if quick else (2, 16, 24)
    lo = (28 - crop) // 2
    xs, ys = (t[:n, :, lo:lo + crop, lo:lo + crop].double() for t in (x, y))
    return xs, ys, p, f"{n} training digits {crop}x{crop}, P={p}"


def ink_mask(images: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3 x 3 neighbourhood holds ink (above the constant background)."""
    ink = (images > images.amin() + 1e-6).to(torch.float64)
    return torch.nn.functional.max_pool2d(ink, 3, 1, 1)[:, 0] > 0


def plot_sweeps(path: Path, sweeps: dict[str, dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.8 * len(sweeps), 3.6), squeeze=False)
    for ax, (name, sw) in zip(axes[0], sweeps.items(), strict=True):
        pts = sw["points"]
        b = [p["beta_mean"] for p in pts]
        ax.plot(b, [p["n_nonzero"] / p["n_paths"] for p in pts], "o-",
                label=f"nonzero paths (tol {sw['tol']:g})")
        ax.plot(b, [p["n_for_90_percent"] / p["n_paths"] for p in pts], "s--",
                label="paths carrying 90% of the path norm")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("beta (mean scale: beta / pixels)")
        ax.set_ylabel("fraction of the 2P paths")
        ax.set_title(f"{name}: {sw['setting']}", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    finish_figure(fig, path, "path sparsity (eq. 7) against weight decay")


def finish_figure(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def base_parser(doc: str) -> argparse.ArgumentParser:
    """Options shared by the MNIST interpretation experiments."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CI version")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=12)
    ap.add_argument("--out", default=str(RESULTS))
    return ap


def main(argv=None) -> dict:
    ap = base_parser(__doc__)
    ap.add_argument("--n-cluster", type=int, default=16, help="clean test digits clustered")
    ap.add_argument("--patterns", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20, help="Adam epochs of the dual")
    ap.add_argument("--filters", type=int, default=64, help="filters per primal/unrolled block")
    ap.add_argument("--epochs-primal", type=int, default=40)
    ap.add_argument("--lr-primal", type=float, default=1e-2,
                    help="Adam learning rate of the primal and unrolled nets")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--model", help="interpret this saved dual instead of training one")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.n_cluster, a.patterns, a.epochs = 25, 25, 4, 100, 3
        a.filters, a.epochs_primal = 16, 5
    torch.set_num_threads(1)
    out, tag = Path(a.out), "mnist_interpret" + ("_quick" if a.quick else "")
    t_all = time.perf_counter()
    x, y, xe, ye = load_data(a.n_train, a.n_test, a.sigma)
    n_pix = x.shape[0] * x.shape[2] * x.shape[3]
    beta = BETA_MEAN * n_pix
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if a.model:
        dual = load_model(a.model)
    else:
        dual, _ = run_dual(x, y, xe, ye, a.patterns, beta, a.epochs, quiet=a.quiet,
                           eval_every=a.epochs)
        save_model(dual, out / f"{tag}_model.safetensors")
    timings["dual"] = time.perf_counter() - t
    primal_rebuilt = dual.to_primal()
    sparsity = path_sparsity(dual, a.tol).to_dict()
    save_filter_figure(out / f"{tag}_filters.png", dual, 16, 32, a.tol,
                       title="dual: 16 largest path filters (v_i, -w_i) and |DFT| (Fig. 4)")

    # --- primal two-layer nets and the four-layer unrolled net (Fig. 5b)
    t = time.perf_counter()
    nets = {f"primal seed {s}": run_primal(x, y, xe, ye, a.filters, beta, a.epochs_primal,
                                           lr=a.lr_primal, seed=s, quiet=True,
                                           eval_every=a.epochs_primal)[0] for s in (0, 1)}
    unrolled, ures = train_unrolled_net(x, y, xe, ye, a.filters, beta, a.epochs_primal,
                                        lr=a.lr_primal)
    timings["primal_and_unrolled"] = time.perf_counter() - t

    # --- clusters on clean test digits (eq. 8, Fig. 5a)
    t = time.perf_counter()
    images = ye[:a.n_cluster].double()
    clusters = {"dual": cluster_patches(dual, images, a.clusters, tol=a.tol)}
    for name, net in nets.items():
        clusters[name] = cluster_patches(net, images.float(), a.clusters, tol=a.tol)
    for i, (block, z) in enumerate(unrolled.stages(images.float()), start=1):
        clusters[f"unrolled iteration {i}"] = cluster_patches(block, z, a.clusters, tol=a.tol)
    timings["clustering"] = time.perf_counter() - t
    pairs = [("unrolled iteration 1", "dual"), ("unrolled iteration 1", "primal seed 0"),
             ("unrolled iteration 2", "dual"), ("unrolled iteration 2", "primal seed 0"),
             ("primal seed 0", "primal seed 1"), ("primal seed 0", "dual"),
             ("unrolled iteration 1", "unrolled iteration 2")]
    ink = ink_mask(images)
    similarity = [{"a": p, "b": q, **cluster_similarity(clusters[p], clusters[q]),
                   "ink_pixels": cluster_similarity(clusters[p], clusters[q], ink)}
                  for p, q in pairs]
    show = min(8, images.shape[0])
    save_cluster_maps(out / f"{tag}_clusters.png", images[:show],
                      [(n, c.labels[:show]) for n, c in clusters.items()], a.clusters,
                      f"k-means (k={a.clusters}) of active nonzero paths per pixel, clean "
                      f"test digits (eq. 8, Fig. 5)")

    # --- sparsity against beta: exact (cvxpy, small crop) and Adam (size of step 1)
    t = time.perf_counter()
    xs, ys, p_small, small = exact_subset(x, y, a.quick)
    runs = {"cvxpy": (xs, ys, [1e-4, 1e-2, 3e-1] if a.quick else
                      [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1], None, p_small,
                      small),
            "adam": (x, y, [1e-3, 1e-1] if a.quick else [1e-3, 1e-2, 1e-1],
                     AdamConfig(epochs=a.epochs, batch_size=25, progress=False, device="cpu",
                                eval_every=a.epochs), a.patterns,
                     f"{a.n_train} digits 28x28, P={a.patterns}, {a.epochs} epochs")}
    sweeps = {}
    for solver, (xa, ya, factors, cfg, n_pat, setting) in runs.items():
        npx = xa.shape[0] * xa.shape[2] * xa.shape[3]
        pts = beta_sparsity_sweep(xa, ya, [f * npx for f in factors], solver=solver,
                                  config=cfg, tol=a.tol,
                                  model_kwargs={"n_patterns": n_pat, "seed": 0})
        sweeps[solver] = {"setting": setting, "tol": a.tol,
                          "points": [{**vars(p), "beta_mean": f}
                                     for p, f in zip(pts, factors, strict=True)]}
        timings[f"sweep_{solver}"] = time.perf_counter() - t
        t = time.perf_counter()
    plot_sweeps(out / f"{tag}_sparsity.png", sweeps)

    last = ures.history[-1]
    payload = {
        "experiment": "mnist_interpret", "quick": a.quick, "sigma": a.sigma,
        "n_train": a.n_train, "n_test": a.n_test, "n_cluster_images": int(images.shape[0]),
        "data": DATA_NOTE,
        "beta_sum": beta, "beta_mean": BETA_MEAN, "kernel_size": 3,
        "dual": {"patterns_sampled": a.patterns, "patterns_kept": int(dual.generators_.shape[0]),
                 "solver": dual.solve_info_.solver, "status": dual.solve_info_.status,
                 "epochs": a.epochs, "train_objective": dual.objective(x, y),
                 "test_objective": dual.objective(xe, ye),
                 "train_objective_per_pixel": dual.objective(x, y) / n_pix,
                 "test_objective_per_pixel": dual.objective(xe, ye) / ye.numel(),
                 "rebuilt_primal_train_objective": primal_rebuilt.objective(x, y, beta)},
        "path_sparsity": sparsity,
        "primal_filters": a.filters, "primal_epochs": a.epochs_primal,
        "primal_lr": a.lr_primal, "ink_pixels": int(ink.sum()),
        "unrolled": {"iterations": 2, "filters_per_block": a.filters, "status": ures.status,
                     "epochs_run": ures.epochs_run, "train_objective": last["train_objective"],
                     "test_objective": last["test_objective"],
                     "train_objective_per_pixel": last["train_objective_mean"],
                     "test_objective_per_pixel": last["test_objective_mean"]},
        "clusters": {n: c.summary() for n, c in clusters.items()},
        "cluster_similarity": similarity,
        "sparsity_sweeps": sweeps,
        "timings_seconds": {**timings, "total": time.perf_counter() - t_all},
        "files": {k: f"{tag}_{k}.png" for k in ("filters", "clusters", "sparsity")},   # in --out
    }
    write_json(out / f"{tag}.json", payload)
    if not a.quiet:
        print(f"nonzero paths {sparsity['n_nonzero']}/{sparsity['n_paths']} "
              f"(90% of the path norm in {sparsity['n_for_90_percent']})")
        for s in similarity:
            print(f"{s['a']:>22} vs {s['b']:<22} ARI {s['adjusted_rand']:.3f} "
                  f"NMI {s['normalized_mutual_info']:.3f}  (ink pixels: ARI "
                  f"{s['ink_pixels']['adjusted_rand']:.3f})")
        print(f"wrote {out / tag}.json ({payload['timings_seconds']['total']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
