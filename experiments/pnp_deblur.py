"""PnP-PGD deblurring with convex-dual denoisers, their certified FNE version, DnCNN and TV.

Issue 5, item 8 (Pesquet, Repetti, Terris, Wiaux 2021 set-up): Levin motion blurs, Gaussian
noise 0.01 and 0.03, grayscale Set3C and CBSD10. Denoisers:

- convex:       residual two-layer ReLU net from the exact convex dual (eq. 4 -> eq. 5)
- convex-FNE:   J = (I + Q)/2 with Q from the Lipschitz-constrained dual (certificate <= 1)
- dncnn:        small DnCNN-style net, Adam on patches
- dncnn-FNE:    the same with the relaxed firm-nonexpansiveness penalty (Jacobian of 2J - I)
- tv:           total-variation proximal operator (Chambolle, scikit-image): FNE by theory
- *-equiv:      the D4-equivariant average (one random rotation/flip per call)

All learned denoisers are trained on patches of scikit-image sample images
(`convexnn.data.training_patches`), disjoint from the test sets. Writes
`experiments/results/pnp_deblur[_quick].json` and `.png` (PSNR/SSIM table, c_k curves,
reconstructions).

    PYTHONPATH=. python experiments/pnp_deblur.py --quick
    PYTHONPATH=. python experiments/pnp_deblur.py            # the run committed to results/
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from convexnn import ConvexDualDenoiser
from convexnn.certified import fit_firmly_nonexpansive
from convexnn.data import load_levin_kernels, load_test_images
from convexnn.data.training_patches import natural_image_patches
from convexnn.solvers.denoisers import TVDenoiser
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, train_denoiser
from convexnn.solvers.equivariant import EquivariantDenoiser
from convexnn.solvers.history import psnr, ssim
from convexnn.solvers.lipschitz import jacobian_spectral_norm
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd
from experiments.common import timed_log, use_reference_data


class Float64Primal(torch.nn.Module):
    """The rebuilt primal network as a denoiser on float64 images."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        return self.net(x.double()).to(x.dtype)


def train_denoisers(args, log) -> tuple[dict[str, torch.nn.Module], dict]:
    info: dict = {"training_images": "scikit-image samples: astronaut, coffee, chelsea, rocket, "
                                     "coins, moon (grayscale), random patches",
                  "sigma_train": args.sigma_train}
    rng = torch.Generator().manual_seed(0)
    den: dict[str, torch.nn.Module] = {}

    patches = torch.from_numpy(natural_image_patches(args.convex_patches, args.convex_size,
                                                     seed=0)).unsqueeze(1)
    noisy = patches + args.sigma_train * torch.randn(patches.shape, generator=rng,
                                                     dtype=torch.float64)
    t0 = time.perf_counter()
    convex = ConvexDualDenoiser(n_patterns=args.patterns, beta=args.beta, residual=True, seed=0)
    convex.fit(noisy, patches, solver="cvxpy")
    info["convex"] = {"seconds": time.perf_counter() - t0, "n_pixels": int(patches.numel()),
                      "patterns": int(convex.generators_.shape[0]),
                      "objective": convex.objective_,
                      "lipschitz_certificate": convex.lipschitz_certificate_}
    den["convex"] = Float64Primal(convex.to_primal())
    log(f"convex dual fitted in {info['convex']['seconds']:.1f}s")

    t0 = time.perf_counter()
    fne = fit_firmly_nonexpansive(noisy, patches, n_patterns=args.patterns, beta=args.beta,
                                  seed=0)
    info["convex-FNE"] = {"seconds": time.perf_counter() - t0,
                          "lipschitz_certificate": fne.lipschitz_certificate}
    den["convex-FNE"] = fne
    log(f"certified FNE convex denoiser fitted in {info['convex-FNE']['seconds']:.1f}s "
        f"(certificate Lip(Q) <= {fne.lipschitz_certificate:.4f})")

    train_imgs = [torch.from_numpy(p) for p in natural_image_patches(64, 96, seed=1)]
    for name, penalty in (("dncnn", 0.0), ("dncnn-FNE", args.fne_penalty)):
        torch.manual_seed(0)
        net = DnCNN(depth=args.dncnn_depth, channels=args.dncnn_channels, dtype=torch.float64)
        cfg = DenoiserTrainConfig(sigma=args.sigma_train, patch_size=32,
                                  n_patches=args.dncnn_patches, epochs=args.dncnn_epochs,
                                  lr=1e-3, batch_size=32, seed=0, lipschitz_penalty=penalty,
                                  progress=not args.quiet)
        res = train_denoiser(net, train_imgs, cfg)
        net.eval()
        den[name] = net
        info[name] = {"seconds": res.seconds, "final_loss": res.epoch_loss[-1],
                      "lipschitz_penalty": penalty}
        log(f"{name} trained in {res.seconds:.1f}s")
    den["tv"] = TVDenoiser(args.tv_weight)
    info["tv"] = {"weight": args.tv_weight}
    den["convex-equiv"] = EquivariantDenoiser(den["convex"], mode="random", seed=0)
    den["dncnn-equiv"] = EquivariantDenoiser(den["dncnn"], mode="random", seed=0)
    return den, info


def lipschitz_estimates(den: dict, x: torch.Tensor) -> dict:
    """||grad J|| and ||grad (2J - I)|| by power iteration at a test image."""
    out = {}
    for name, d in den.items():
        if name == "tv":
            continue
        try:
            j = jacobian_spectral_norm(d, x, n_iter=30, tol=1e-4, mode="J")
            q = jacobian_spectral_norm(d, x, n_iter=30, tol=1e-4, mode="Q")
            out[name] = {"J": j.value, "Q": q.value}
        except RuntimeError as exc:  # pragma: no cover - reported, not hidden
            out[name] = {"error": str(exc)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run for CI (seconds)")
    p.add_argument("--datasets", nargs="+", default=["set3c", "cbsd10"])
    p.add_argument("--kernels", nargs="+", type=int, default=[0, 4])
    p.add_argument("--noise", nargs="+", type=float, default=[0.01, 0.03])
    p.add_argument("--crop", type=int, default=192, help="centre crop of each test image")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--sigma-train", type=float, default=0.03)
    p.add_argument("--patterns", type=int, default=32)
    p.add_argument("--beta", type=float, default=1e-4)
    p.add_argument("--convex-patches", type=int, default=6)
    p.add_argument("--convex-size", type=int, default=24)
    p.add_argument("--dncnn-depth", type=int, default=5)
    p.add_argument("--dncnn-channels", type=int, default=24)
    p.add_argument("--dncnn-patches", type=int, default=1024)
    p.add_argument("--dncnn-epochs", type=int, default=3)
    p.add_argument("--fne-penalty", type=float, default=1e-2)
    p.add_argument("--tv-weight", type=float, default=0.02)
    p.add_argument("--pretrained", nargs="*", default=[],
                   help="shipped convex denoisers (convexnn.pretrained names) to add, e.g. "
                        "gray-s15 gray-s25-deep4")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    use_reference_data()              # ../shared/datasets unless the variable is set
    if args.quick:
        args.datasets, args.kernels, args.noise = ["set3c"], [0], [0.01]
        args.crop, args.max_images, args.iters = 48, 1, 15
        args.patterns, args.convex_patches, args.convex_size = 8, 2, 16
        args.dncnn_depth, args.dncnn_channels, args.dncnn_patches = 3, 8, 64
        args.dncnn_epochs = 1
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    den, train_info = train_denoisers(args, log)
    for name in args.pretrained:       # shipped models: trained on Train400, exact, certified
        from convexnn import pretrained

        den[f"pretrained:{name}"] = pretrained.load(name)
        card = pretrained.card(name)
        train_info[f"pretrained:{name}"] = {"sigma": card.sigma, "n_blocks": card.n_blocks,
                                            "certified_gap": card.certified_gap,
                                            "training_pixels": card.training_pixels}
    kernels = load_levin_kernels()
    images = []
    for ds in args.datasets:
        imgs = load_test_images(ds, grayscale=True)[: args.max_images]
        for i, im in enumerate(imgs):
            h, w = im.shape
            c = min(args.crop, h, w)
            top, left = (h - c) // 2, (w - c) // 2
            images.append((ds, i, im[top:top + c, left:left + c]))

    rows, curves, examples = [], {}, {}
    total = len(images) * len(args.kernels) * len(args.noise) * len(den)
    bar = tqdm(total=total, disable=args.quiet, desc="PnP-PGD runs")
    for ki in args.kernels:
        physics = Blur(kernels[ki], padding="circular")
        for sigma in args.noise:
            for ds, idx, im in images:
                x_true = torch.from_numpy(im).reshape(1, 1, *im.shape)
                gen = torch.Generator().manual_seed(1000 * ki + idx)
                y = physics.A(x_true) + sigma * torch.randn(x_true.shape, generator=gen,
                                                            dtype=torch.float64)
                for name, d in den.items():
                    if hasattr(d, "reset"):
                        d.reset()
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        x, hist = pnp_pgd(y, physics, d, PnPConfig(
                            max_iter=args.iters, tol=1e-7, lipschitz=1.0, compute_ssim=False))
                    sec = time.perf_counter() - t0
                    xc = x.clamp(0, 1)
                    c = hist.rel_change
                    rows.append({"dataset": ds, "image": idx, "kernel": ki, "noise": sigma,
                                 "denoiser": name, "psnr": psnr(xc, x_true, 1.0),
                                 "ssim": ssim(xc, x_true, 1.0), "iterations": hist.n_iter,
                                 "final_rel_change": c[-1], "seconds": sec,
                                 "c_monotone_after_5": bool(np.all(np.diff(c[5:]) <= 1e-12))})
                    if idx == 0 and ds == args.datasets[0]:
                        curves[f"{name} k{ki} s{sigma}"] = c
                        if ki == args.kernels[0] and sigma == args.noise[-1]:
                            examples[name] = xc[0, 0].numpy()
                            examples["_truth"], examples["_blurred"] = im, y[0, 0].numpy()
                    bar.update(1)
    bar.close()

    summary = {}
    for name in den:
        for sigma in args.noise:
            sel = [r for r in rows if r["denoiser"] == name and r["noise"] == sigma]
            summary[f"{name} @ {sigma}"] = {
                "psnr_mean": float(np.mean([r["psnr"] for r in sel])),
                "ssim_mean": float(np.mean([r["ssim"] for r in sel])),
                "final_rel_change_median": float(np.median([r["final_rel_change"] for r in sel])),
                "monotone_fraction": float(np.mean([r["c_monotone_after_5"] for r in sel])),
                "seconds_mean": float(np.mean([r["seconds"] for r in sel]))}
    per_kernel = {name: {f"{ki} @ {sigma}": float(np.mean(
        [r["psnr"] for r in rows if r["denoiser"] == name and r["kernel"] == ki
         and r["noise"] == sigma])) for ki in args.kernels for sigma in args.noise}
        for name in den}
    lip = lipschitz_estimates(den, torch.from_numpy(images[0][2][None, None].copy()))
    result = {"config": vars(args), "training": train_info, "summary": summary,
              "psnr_per_kernel": per_kernel, "lipschitz_estimates_at_test_image": lip, "runs": rows,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "seconds": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("pnp_deblur_quick" if args.quick else "pnp_deblur") + args.tag
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(out / f"{stem}.png", curves, examples, summary)
    if not args.quiet:
        print(f"\n{'denoiser @ noise':<28}{'PSNR':>8}{'SSIM':>8}{'c_final':>11}{'monotone':>10}")
        for k, v in summary.items():
            print(f"{k:<28}{v['psnr_mean']:8.2f}{v['ssim_mean']:8.3f}"
                  f"{v['final_rel_change_median']:11.2e}{v['monotone_fraction']:10.2f}")
        print(f"wrote {out / (stem + '.json')} and .png")
    return result


def _plot(path: Path, curves: dict, examples: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in examples if not k.startswith("_")]
    fig = plt.figure(figsize=(3 * max(4, len(names) + 2) * 0.8, 7))
    ax = fig.add_subplot(2, 1, 1)
    for label, c in curves.items():
        ax.semilogy(np.arange(1, len(c) + 1), c, label=label, lw=1)
    ax.set_xlabel("iteration k")
    ax.set_ylabel("c_k = ||x_k - x_{k-1}|| / ||x_0||")
    ax.legend(fontsize=6, ncol=3)
    ax.set_title("PnP-PGD convergence (first test image)")
    panels = ["_truth", "_blurred"] + names
    for i, name in enumerate(panels):
        a = fig.add_subplot(2, len(panels), len(panels) + i + 1)
        a.imshow(examples[name], cmap="gray", vmin=0, vmax=1)
        a.set_xticks([])
        a.set_yticks([])
        title = {"_truth": "ground truth", "_blurred": "blurred + noise"}.get(name, name)
        a.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
