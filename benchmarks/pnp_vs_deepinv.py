"""PnP-PGD seconds per iteration: `convexnn.solvers.pnp.pnp_pgd` vs deepinv's `optim.PGD`, one run.

Same denoiser, same blur (a Levin motion kernel, circular), same step, same image; the runs
are interleaved and repeated, and the median is reported, so the ratio is what counts on a
shared machine. Also checks that both give the same iterate (max abs difference).

    PYTHONPATH=. python benchmarks/pnp_vs_deepinv.py [--quick]

Writes benchmarks/results/pnp_vs_deepinv[_quick].json and .png. Target: ratio <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import ConvexDualDenoiser
from convexnn.data.training_patches import natural_image_patches
from convexnn.solvers import deepinv_adapter as ad
from convexnn.solvers.dncnn import DnCNN
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd
from experiments.common import use_reference_data


def _kernel(use_levin: bool) -> np.ndarray:
    if use_levin:
        try:
            from convexnn.data import load_levin_kernels

            return load_levin_kernels()[0]
        except (FileNotFoundError, OSError):
            pass
    g = np.exp(-0.5 * (np.arange(-4, 5) / 1.6) ** 2)
    return np.outer(g, g) / np.outer(g, g).sum()


def _convex_denoiser(dtype: torch.dtype) -> torch.nn.Module:
    clean = torch.from_numpy(natural_image_patches(3, 20, seed=0)).unsqueeze(1)
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64)
    model = ConvexDualDenoiser(n_patterns=24, beta=1e-4, residual=True).fit(noisy, clean)
    return model.to_primal().to(dtype).eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: least noise on a shared machine)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    use_reference_data()              # ../shared/datasets unless the variable is set
    torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.iters, args.repeats = 64, 10, 2
    import deepinv as dinv

    torch.manual_seed(0)
    dtype = torch.float32
    from skimage.data import camera

    img = camera()[:args.size, :args.size] / 255.0
    x_true = torch.from_numpy(img).to(dtype).reshape(1, 1, args.size, args.size)
    kernel = _kernel(not args.quick)
    ours_phys = Blur(kernel, padding="circular")
    their_phys = dinv.physics.Blur(filter=torch.from_numpy(kernel)[None, None].to(dtype),
                                   padding="circular")
    y = ours_phys.A(x_true) + 0.01 * torch.randn(x_true.shape, dtype=dtype)
    # deepinv's Blur centres the kernel its own way: compare it on deepinv's own measurement
    y_theirs = their_phys.A(x_true) + (y - ours_phys.A(x_true))
    denoisers = {"dncnn(5x24)": DnCNN(depth=5, channels=24).to(dtype).eval(),
                 "convex-primal(24 pat.)": _convex_denoiser(dtype)}
    gamma = 1.0
    rows = []
    for name, den in denoisers.items():
        dinv_den = ad.to_deepinv_denoiser(den)

        def run_ours(den=den):
            with torch.no_grad():
                return pnp_pgd(y, ours_phys, den, PnPConfig(step=gamma, lipschitz=1.0,
                                                            max_iter=args.iters, tol=0.0,
                                                            compute_ssim=False))[0]

        def run_theirs(phys, yy, dinv_den=dinv_den):
            algo = dinv.optim.PGD(data_fidelity=dinv.optim.L2(),
                                  prior=dinv.optim.PnP(dinv_den), stepsize=gamma,
                                  sigma_denoiser=None, max_iter=args.iters, early_stop=False)
            with torch.no_grad():
                return algo(yy, phys)

        cases = {"ours": run_ours,
                 "deepinv (deepinv physics)": lambda: run_theirs(their_phys, y_theirs),
                 "deepinv (our physics via adapter)":
                     lambda: run_theirs(ad.to_deepinv_physics(ours_phys), y)}
        times: dict[str, list[float]] = {k: [] for k in cases}
        outs = {}
        for k, fn in cases.items():  # warm-up
            outs[k] = fn()
        for _ in range(args.repeats):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) / args.iters)
        med = {k: float(np.median(v)) for k, v in times.items()}
        diff = float((outs["ours"] - outs["deepinv (our physics via adapter)"]).abs().max())
        row = {"denoiser": name, "seconds_per_iter": med, "all_times": times,
               "ratio_ours_over_deepinv": med["ours"] / med["deepinv (deepinv physics)"],
               "ratio_ours_over_deepinv_same_physics":
                   med["ours"] / med["deepinv (our physics via adapter)"],
               "max_abs_diff_same_physics": diff}
        rows.append(row)
        print(f"{name:<24} ours {med['ours'] * 1e3:8.2f} ms/it | deepinv "
              f"{med['deepinv (deepinv physics)'] * 1e3:8.2f} ms/it | ratio "
              f"{row['ratio_ours_over_deepinv']:.3f} (same physics "
              f"{row['ratio_ours_over_deepinv_same_physics']:.3f}); max |diff| {diff:.1e}")
    result = {"config": vars(args), "rows": rows,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "deepinv": dinv.__version__, "threads": torch.get_num_threads()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "pnp_vs_deepinv_quick" if args.quick else "pnp_vs_deepinv"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = list(rows[0]["seconds_per_iter"])
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        ax.bar(np.arange(len(rows)) + j * width, [r["seconds_per_iter"][lab] * 1e3 for r in rows],
               width, label=lab)
    ax.set_xticks(np.arange(len(rows)) + width)
    ax.set_xticklabels([r["denoiser"] for r in rows])
    ax.set_ylabel("ms per PnP-PGD iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=100)
    plt.close(fig)
    return result


if __name__ == "__main__":
    main()
