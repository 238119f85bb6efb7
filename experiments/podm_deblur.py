"""Relaxed PODM (RPODM) deblurring (Liu et al., NeurIPS 2018, Sec. 5.2, Table 2 set-up),
against TV (proximal gradient with the Chambolle TV prox) and PnP-PGD (convexnn.solvers.pnp) with
the same learned denoiser; the checked PODM (eqs. 5-6) on the same model for reference.

Model: ``min_u 1/2 ||k * u - o||^2 + chi_Omega(u)``, ``Omega = {||u||_0 <= s, u_i in {0} u
[a, b]}`` with ``a = min(o)``, ``b = max(o)`` (``SparseBox``; s = None: no sparsity limit, the
box carries the constraint). RPODM stage: ``u = G(F(A(u)))``: DnCNN A, the FFT closed form of
eq. 3 (``H = mu I / 2``: the paper's filtered H with the identity filter) and the momentum
projection step of eq. 7, without the check. Levin et al. motion kernels, circular blur,
Gaussian noise 0.01; grayscale Set12 centre crops. mu (RPODM), the TV weight and the PnP-PGD
step are each picked by a small grid (PSNR) on one held-out image (Set12 image number
``--images``, first kernel), then used on every test image. Estimates are clipped to [0, 1] for
PSNR/SSIM. The denoiser is the DnCNN of podm_sparse_sr.py (cached, or trained on BSD68).

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_deblur.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_deblur.py              # the run in results/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from podm_sparse_sr import centre_crop, load_or_train_denoiser, write_json

from convexnn.data import load_levin_kernels, load_test_images
from convexnn.solvers.denoisers import TVDenoiser
from convexnn.solvers.history import psnr, ssim
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd
from convexnn.solvers.podm import PODMConfig, podm
from convexnn.solvers.prox import SparseBox
from experiments.common import timed_log, use_reference_data

METHODS = ("RPODM", "PODM (checked)", "PnP-PGD", "TV")


class Float32(torch.nn.Module):
    """The float32 network on float64 images (PnP-PGD passes its iterate as it is)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        return self.net(x.float(), sigma).to(x.dtype)


def run_method(name: str, y, physics, x_true, net, p: dict, args):
    """One solve; ``p`` holds the tuned parameters (mu, tv_weight, pnp_step)."""
    if name == "TV":
        cfg = PnPConfig(max_iter=args.iters, tol=0.0, lipschitz=1.0, reference=x_true,
                        data_range=1.0, compute_ssim=False)
        return pnp_pgd(y, physics, TVDenoiser(p["tv_weight"]), cfg)   # step 1/L = 1
    if name == "PnP-PGD":
        cfg = PnPConfig(max_iter=args.iters, tol=0.0, lipschitz=1.0, step=p["pnp_step"],
                        reference=x_true, data_range=1.0, compute_ssim=False)
        return pnp_pgd(y, physics, net, cfg)
    prox = SparseBox(float(y.min()), float(y.max()), s=None)
    mode = "always" if name == "RPODM" else "check"
    cfg = PODMConfig(n_stages=args.stages, mu=p["mu"], optimality=mode, tol=0.0,
                     lipschitz=1.0, data_range=1.0, compute_ssim=False)
    return podm(y, physics, prox, net, cfg, x_ref=x_true)


def score(x, x_true) -> tuple[float, float]:
    xc = x.clamp(0, 1)
    return psnr(xc, x_true, 1.0), ssim(xc, x_true, 1.0)


def tune(problem, net, args, log) -> tuple[dict, dict]:
    """Grid search on one problem: mu for RPODM, TV weight, PnP-PGD step (PSNR)."""
    y, physics, x_true = problem
    grids = {"mu": ("RPODM", args.mu_grid), "tv_weight": ("TV", args.tv_grid),
             "pnp_step": ("PnP-PGD", args.step_grid)}
    chosen = {"mu": args.mu_grid[0], "tv_weight": args.tv_grid[0],
              "pnp_step": args.step_grid[0]}
    table = {}
    for key, (method, grid) in grids.items():
        scores = {}
        for v in grid:
            x, _ = run_method(method, y, physics, x_true, net, {**chosen, key: v}, args)
            scores[v] = score(x, x_true)[0]
        chosen[key] = max(scores, key=scores.get)
        table[key] = {str(k): v for k, v in scores.items()}
        log(f"tuned {key} for {method}: {chosen[key]} (PSNR {scores[chosen[key]]:.2f})")
    return chosen, table


def plot(path: Path, example: dict, curves: dict) -> None:
    from matplotlib.figure import Figure

    panels = ["truth", "blurred", *METHODS]
    fig = Figure(figsize=(2.6 * len(panels), 6.0), layout="constrained")
    grid = fig.add_gridspec(2, len(panels))
    for i, name in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(example[name]["image"], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name + ("" if "psnr" not in example[name] else
                             f"\n{example[name]['psnr']:.2f} dB / {example[name]['ssim']:.3f}"),
                     fontsize=8)
    ax = fig.add_subplot(grid[1, :len(panels) // 2])
    for name in METHODS:
        ax.plot(np.arange(1, len(curves[name]["psnr"]) + 1), curves[name]["psnr"], label=name)
    ax.set_xlabel("stage / iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, len(panels) // 2:])
    for name in METHODS:
        ax.semilogy(np.arange(1, len(curves[name]["rel_change"]) + 1),
                    np.maximum(curves[name]["rel_change"], 1e-16), label=name)
    fb = curves["PODM (checked)"]["fallback"]
    ax.set_title(f"PODM (checked): fallback at {sum(fb)}/{len(fb)} stages", fontsize=8)
    ax.set_xlabel("stage / iteration")
    ax.set_ylabel("||x_k - x_{k-1}|| / ||x_0||")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 image, 1 kernel, 64 px, few stages")
    p.add_argument("--images", type=int, default=3, help="first N images of Set12")
    p.add_argument("--kernels", nargs="+", type=int, default=[0, 2, 4, 6])
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--stages", type=int, default=30, help="PODM / RPODM stages")
    p.add_argument("--iters", type=int, default=200, help="PnP-PGD / TV iterations")
    p.add_argument("--mu-grid", nargs="+", type=float, default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--tv-grid", nargs="+", type=float, default=[0.0005, 0.001, 0.002, 0.004])
    p.add_argument("--step-grid", nargs="+", type=float, default=[1.0, 1.5, 1.9])
    p.add_argument("--sigma-train", type=float, default=0.02)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines or tables (the JSON and PNG are still written)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.kernels, args.crop, args.stages, args.iters = 1, [0], 64, 8, 20
        args.mu_grid, args.tv_grid, args.step_grid = [0.03, 0.1], [0.001, 0.004], [1.9]
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    out_dir = Path(args.out)
    net, net_info = load_or_train_denoiser(out_dir / "podm_dncnn.pt", args.sigma_train,
                                           args.train_steps, log=log)
    net = Float32(net)
    kernels = load_levin_kernels()
    images = [centre_crop(im, min(args.crop, *im.shape))
              for im in load_test_images("set12", grayscale=True)[:args.images + 1]]

    def make(ki: int, i: int):
        physics = Blur(kernels[ki], padding="circular")
        x_true = torch.from_numpy(images[i].copy())[None, None]
        gen = torch.Generator().manual_seed(1000 * ki + i)
        y = physics.A(x_true) + args.noise * torch.randn(x_true.shape, generator=gen,
                                                         dtype=torch.float64)
        return ki, i, y, physics, x_true

    problems = [make(ki, i) for ki in args.kernels for i in range(args.images)]
    params, grid_table = tune(make(args.kernels[0], args.images)[2:], net, args, log)
    rows, example, curves = [], {}, {}
    for ki, i, y, physics, x_true in problems:
        row = {"kernel": ki, "image": i, "blurred_psnr": score(y, x_true)[0]}
        for name in METHODS:
            t0 = time.perf_counter()
            x, h = run_method(name, y, physics, x_true, net, params, args)
            row[name] = dict(zip(("psnr", "ssim"), score(x, x_true), strict=True),
                             seconds=time.perf_counter() - t0, stages=h.n_iter,
                             **{k: h.flags[k] for k in ("n_accepted", "n_fallback")
                                if k in h.flags})
            if (ki, i) == (args.kernels[0], 0):
                example[name] = {"image": x.clamp(0, 1)[0, 0].numpy(), **row[name]}
                curves[name] = {"psnr": h.psnr, "rel_change": h.rel_change,
                                "fallback": h.series("fallback")}
        if (ki, i) == (args.kernels[0], 0):
            example["truth"] = {"image": x_true[0, 0].numpy()}
            example["blurred"] = {"image": y.clamp(0, 1)[0, 0].numpy()}
        rows.append(row)
        log(f"kernel {ki} image {i}: " + ", ".join(
            f"{m} {row[m]['psnr']:.2f} dB" for m in METHODS))
    summary = {m: {"psnr": float(np.mean([r[m]["psnr"] for r in rows])),
                   "ssim": float(np.mean([r[m]["ssim"] for r in rows])),
                   "seconds": float(np.mean([r[m]["seconds"] for r in rows]))}
               for m in METHODS}
    summary["blurred input"] = {"psnr": float(np.mean([r["blurred_psnr"] for r in rows]))}
    per_kernel = {f"kernel {ki}": {m: float(np.mean([r[m]["psnr"] for r in rows
                                                     if r["kernel"] == ki])) for m in METHODS}
                  for ki in args.kernels}
    fb = [r["PODM (checked)"]["n_fallback"] for r in rows]
    if not args.quiet:
        print(f"\n{'method':<16}{'PSNR':>8}{'SSIM':>8}{'s/image':>9}")
        for m in METHODS:
            print(f"{m:<16}{summary[m]['psnr']:8.2f}{summary[m]['ssim']:8.3f}"
                  f"{summary[m]['seconds']:9.2f}")
        print(f"{'blurred input':<16}{summary['blurred input']['psnr']:8.2f}")
        print("PSNR per kernel: " + "; ".join(
            f"{k}: " + ", ".join(f"{m} {v:.2f}" for m, v in row.items())
            for k, row in per_kernel.items()))
        print(f"PODM (checked): fallback at {sum(fb)}/{len(fb) * args.stages} stages; "
              f"tuned parameters {params}")
    tag = "_quick" if args.quick else ""
    plot(out_dir / f"podm_deblur{tag}.png", example, curves)
    payload = {"experiment": "RPODM deblurring, Levin kernels, noise 0.01 (Sec. 5.2)",
               "command": "python experiments/podm_deblur.py" + (" --quick" if args.quick
                                                                 else ""),
               "args": vars(args), "denoiser": net_info,
               "tuning": {"on": f"Set12 image {args.images}, kernel {args.kernels[0]} (held "
                                f"out: not in the table)", "chosen": params,
                          "psnr_grid": grid_table},
               "summary": summary, "per_kernel_psnr": per_kernel, "rows": rows}
    return write_json(out_dir / f"podm_deblur{tag}.json", payload, t_start, quiet=args.quiet)


if __name__ == "__main__":
    main()
