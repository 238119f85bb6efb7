"""Where pattern pricing starts to pay: solver="ipm" with every pattern in one Newton system
(`pricing=False`) vs pattern pricing (`pricing=True`), on real MNIST digits, same optimum.

    PYTHONPATH=. python benchmarks/pricing_crossover.py            # 4 sizes, about 4 minutes
    PYTHONPATH=. python benchmarks/pricing_crossover.py --quick    # the two smallest

The automatic choice of fit() prices patterns once N P^2 > 5e9 (`PRICING_WORK` in
convexnn/solve/ipm/solver.py) or P > 256; this run is what that number rests on. Each solve runs
in a fresh child process (2 threads); the median of `--repeats` runs is reported. Writes
pricing_crossover.{json,png} into --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

from benchmarks.exact_solvers import mnist_pair

OUT = Path(__file__).resolve().parent / "results"
SIZES = ((2, 60), (20, 100), (100, 250), (600, 200))      # (digits, patterns)


def _run(queue, n_images, n_patterns, pricing):
    import torch

    torch.set_num_threads(2)
    from convexnn import ConvexDualDenoiser

    noisy, clean = mnist_pair(n_images)
    beta = 1e-3 * noisy.size                                # 1e-3 per pixel
    t0 = time.perf_counter()
    m = ConvexDualDenoiser(n_patterns=n_patterns, beta=beta, seed=0).fit(
        noisy, clean, solver="ipm", pricing=pricing)
    queue.put({"wall_seconds": time.perf_counter() - t0, "objective": m.objective_,
               "status": m.solve_info_.status})


def timed(n_images, n_patterns, pricing, repeats):
    runs = []
    for _ in range(repeats):
        queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_run,
                                               args=(queue, n_images, n_patterns, pricing))
        proc.start()
        runs.append(queue.get())
        proc.join()
    best = runs[-1]
    return {**best, "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "wall_seconds_runs": [r["wall_seconds"] for r in runs]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the two smallest sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for n, p in SIZES[:2] if a.quick else SIZES:
        plain = timed(n, p, False, a.repeats)
        priced = timed(n, p, True, a.repeats)
        row = {"digits": n, "patterns": p, "n_pixels": n * 784, "work_NP2": n * 784 * p * p,
               "plain": plain, "pricing": priced,
               "relative_objective_difference":
                   abs(plain["objective"] - priced["objective"]) / plain["objective"],
               "pricing_speedup": plain["wall_seconds"] / priced["wall_seconds"]}
        rows.append(row)
        if not a.quiet:
            print(f"{n:4d} digits x {p:4d} patterns  N P^2 {row['work_NP2']:.2e}  "
                  f"plain {plain['wall_seconds']:7.2f} s  pricing {priced['wall_seconds']:7.2f} s"
                  f"  speed-up {row['pricing_speedup']:.2f}  "
                  f"|objective difference| {row['relative_objective_difference']:.1e}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "pricing_crossover" + ("_quick" if a.quick else "")
    (out / f"{name}.json").write_text(json.dumps(
        {"beta_per_pixel": 1e-3, "sigma": 0.5, "threads": 2, "rows": rows}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    work = [r["work_NP2"] for r in rows]
    ax.loglog(work, [r["plain"]["wall_seconds"] for r in rows], "o-", label="ipm, every pattern")
    ax.loglog(work, [r["pricing"]["wall_seconds"] for r in rows], "s-", label="ipm + pricing")
    ax.axvline(5e9, color="grey", ls=":", label="automatic switch (N P$^2$ = 5e9)")
    ax.set_xlabel("N P$^2$ (pixels x patterns$^2$)")
    ax.set_ylabel("wall time (s, median)")
    ax.set_title("eq. 4 on MNIST, same optimum")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    return rows


if __name__ == "__main__":
    main()
