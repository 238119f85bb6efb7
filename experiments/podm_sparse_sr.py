"""PODM for l_0.8 sparse-coding super-resolution (Liu et al., NeurIPS 2018, Sec. 5.1,
Fig. 2 and Table 1), against FISTA, proximal gradient and a naive network-in-the-loop
iteration (IRCNN-style, ``x = F(A(x))`` without the optimality module).

Model: ``min_a 1/2 ||D a - o||^2 + lam ||a||_0.8^0.8`` with ``D = S W^T``: S the average-pool
downsampling (x2, x3, x4) and ``W^T`` the inverse 3-level orthonormal Haar transform. Solved in
the image variable ``x = W^T a`` (the same iterates, W orthonormal): ``g = InBasis(Lp(lam,
0.8), HaarWavelet(3))``. Set5, grayscale (ITU-R 601 luma), centre crops whose side divides by
24; noise-free low-resolution inputs; every method starts at ``x0 = f^2 S^T o`` (nearest-
neighbour upsampling, data-consistent) and runs the same number of stages.

The network A is a small DnCNN (convexnn.solvers.dncnn) trained here on BSD68 patches (disjoint from
Set5) for a couple of minutes; its weights are cached in
``experiments/results/podm_dncnn.pt`` (state dict, loaded with weights_only=True) and reused by
podm_deblur.py. Writes ``experiments/results/podm_sparse_sr[_quick].json`` and ``.png``.

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_sparse_sr.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_sparse_sr.py           # the run in results/
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from convexnn.data import load_test_images
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, train_denoiser
from convexnn.solvers.history import psnr, ssim
from convexnn.solvers.operators import Downsample
from convexnn.solvers.podm import PODMConfig, fista, podm, proximal_gradient
from convexnn.solvers.prox import HaarWavelet, InBasis, Lp
from experiments.common import timed_log, use_reference_data

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("PODM", "PODM-descent", "FISTA", "PG", "IRCNN-style")


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def load_or_train_denoiser(path: Path, sigma: float, steps: int, retrain: bool = False,
                           log=print) -> tuple[DnCNN, dict]:
    """A DnCNN (depth 5, 32 channels, float32) trained on BSD68 patches at noise ``sigma``;
    cached as a state dict at ``path`` (retrained when missing, mismatched or ``retrain``)."""
    net = DnCNN(depth=5, channels=32)
    info = {"architecture": "DnCNN depth 5, 32 channels, residual, float32",
            "training_data": "BSD68 (grayscale; portrait images transposed), random 32x32 "
                             "patches", "sigma_train": sigma, "steps": steps}
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and not retrain:
        cached = json.loads(meta.read_text())
        if cached.get("sigma_train") == sigma and cached.get("steps") == steps:
            net.load_state_dict(torch.load(path, weights_only=True))
            net.eval()
            log(f"loaded the cached denoiser {path}")
            return net, {**cached, "cached": True}
    imgs = [im if im.shape[0] <= im.shape[1] else im.T for im in load_test_images("bsd68")]
    torch.manual_seed(0)
    cfg = DenoiserTrainConfig(sigma=sigma, patch_size=32, n_patches=32 * steps, epochs=1,
                              batch_size=32, lr=1e-3, seed=0, max_steps=steps)
    res = train_denoiser(net, torch.from_numpy(np.stack(imgs)).float()[:, None], cfg)
    info.update(seconds=res.seconds, final_loss=float(np.mean(res.step_loss[-20:])))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    meta.write_text(json.dumps(info, indent=1))
    log(f"trained the denoiser in {res.seconds:.0f} s (loss {info['final_loss']:.2e})")
    return net, {**info, "cached": False}


def solve_all(x_true: torch.Tensor, factor: int, net, args) -> dict:
    physics = Downsample(factor, args.filter)
    y = physics.A(x_true)
    prox = InBasis(Lp(args.lam, 0.8), HaarWavelet(3))
    base = dict(n_stages=args.stages, tol=0.0, data_range=1.0,           # x0 = A^T y
                lipschitz=1 / factor**2 if args.filter == "average" else None)
    x0 = physics.A_adjoint(y)
    out = {"x0": {"psnr": psnr(x0, x_true, 1.0), "ssim": ssim(x0, x_true, 1.0)}}
    runs = {
        "PODM": lambda: podm(y, physics, prox, net, PODMConfig(mu=args.mu, c=args.c, **base),
                             x_ref=x_true),
        "PODM-descent": lambda: podm(y, physics, prox, net,             # eq. 5 always holds
                                     PODMConfig(mu=args.mu, c=1e12, **base), x_ref=x_true),
        "FISTA": lambda: fista(y, physics, prox, PODMConfig(**base), x_ref=x_true),
        "PG": lambda: proximal_gradient(y, physics, prox, PODMConfig(**base), x_ref=x_true),
        "IRCNN-style": lambda: podm(y, physics, prox, net,
                                    PODMConfig(mu=args.mu, optimality="none", **base),
                                    x_ref=x_true),
    }
    for name, run in runs.items():
        t0 = time.perf_counter()
        x, h = run()
        out[name] = {"psnr": h.psnr[-1], "ssim": h.ssim[-1], "phi": h.energy[-1],
                     "seconds": time.perf_counter() - t0, "phi0": h.flags["phi0"],
                     "curves": {k: h.series(k) for k in
                                ("energy", "rel_error", "recon_error", "ssim", "psnr",
                                 "optimality_error", "optimality_bound", "fallback")},
                     **{k: h.flags[k] for k in ("n_accepted", "n_fallback",
                                                "n_descent_rejected", "n_stalled")
                        if k in h.flags}}
        err, bound = h.series("optimality_error"), h.series("optimality_bound")
        if name.startswith("PODM"):   # the c that eq. 5 needed: ||psi|| / ||x_G - x^{l-1}||
            ratios = [e * h.flags["c"] / b for e, b in zip(err, bound, strict=True) if b]
            out[name]["psi_ratio_median"] = float(np.median(ratios)) if ratios else None
    return out


def summarise(results: dict, scales, stages: int) -> dict:
    table = {}
    for f in scales:
        rows = [r for r in results if r["scale"] == f]
        table[f"x{f}"] = {m: {"psnr": float(np.mean([r[m]["psnr"] for r in rows])),
                              "ssim": float(np.mean([r[m]["ssim"] for r in rows])),
                              "phi": float(np.mean([r[m]["phi"] for r in rows]))}
                          for m in METHODS}
        table[f"x{f}"]["x0 = A^T y"] = {
            "psnr": float(np.mean([r["x0"]["psnr"] for r in rows])),
            "ssim": float(np.mean([r["x0"]["ssim"] for r in rows])), "phi": None}
    checkpoints = sorted({s for s in (5, 10, 25, 50, 100, stages) if s <= stages})
    lower = {}
    for s in checkpoints:      # PODM's Phi against each rival's, ties within 1e-6 relative
        for rival in ("FISTA", "PG"):
            gaps = [(r["PODM"]["curves"]["energy"][s - 1] - r[rival]["curves"]["energy"][s - 1])
                    / abs(r[rival]["curves"]["energy"][s - 1]) for r in results]
            lower[f"stage {s}: PODM vs {rival}"] = {
                "lower": sum(g < -1e-6 for g in gaps), "tie": sum(abs(g) <= 1e-6 for g in gaps),
                "higher": sum(g > 1e-6 for g in gaps), "mean_rel_gap": float(np.mean(gaps))}
    accept = {m: f"{sum(r[m]['n_accepted'] for r in results)}/"
                 f"{sum(r[m]['n_accepted'] + r[m]['n_fallback'] for r in results)}"
              for m in ("PODM", "PODM-descent")}
    ratios = [r["PODM"]["psi_ratio_median"] for r in results
              if r["PODM"]["psi_ratio_median"] is not None]
    return {"table": table, "phi_lower_than": lower, "network_steps_accepted": accept,
            "psi_ratio_median": float(np.median(ratios)) if ratios else None}


def plot(results: list, path: Path, example: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 15)
    panels = [("energy", "Phi (objective)", True), ("rel_error", "relative error", True),
              ("recon_error", "reconstruction error", False), ("ssim", "SSIM", False),
              ("optimality_error", "optimality error (PODM)", True)]
    for i, (key, title, log) in enumerate(panels):
        ax = fig.add_subplot(grid[0, 3 * i:3 * i + 3])
        for m in METHODS if key != "optimality_error" else ("PODM",):
            vals = np.array([np.nan if v is None else v for v in example[m]["curves"][key]],
                            dtype=float)
            ax.plot(np.arange(1, len(vals) + 1), vals, label=m)
        if key == "optimality_error":
            b = np.array([np.nan if v is None else v
                          for v in example["PODM"]["curves"]["optimality_bound"]], dtype=float)
            ax.plot(np.arange(1, len(b) + 1), b, "k--", lw=0.8, label="c ||x_G - x||")
            fb = np.array(example["PODM"]["curves"]["fallback"], dtype=bool)
            ax.plot(np.flatnonzero(fb) + 1, b[fb], "rx", ms=3, label="fallback")
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{title}\n{example['image']} x{example['scale']}", fontsize=8)
        ax.set_xlabel("stage")
        ax.legend(fontsize=6)
    scales = sorted({r["scale"] for r in results})
    width = 15 // len(scales)
    for j, f in enumerate(scales):           # (Phi - min Phi) / min Phi, every image
        ax = fig.add_subplot(grid[1, width * j:width * (j + 1)])
        for k, r in enumerate(r for r in results if r["scale"] == f):
            best = min(min(r[m]["curves"]["energy"]) for m in ("PODM", "FISTA", "PG"))
            for m, style in (("PODM", "C0-"), ("FISTA", "C2-"), ("PG", "C3-")):
                e = (np.array(r[m]["curves"]["energy"]) - best) / abs(best)
                ax.semilogy(np.arange(1, len(e) + 1), np.maximum(e, 1e-10), style, lw=0.8,
                            label=m if k == 0 else None)
        ax.set_title(f"x{f}, every image: (Phi - Phi_best) / Phi_best, Phi_best = lowest Phi "
                     f"of any method (floor 1e-10)",
                     fontsize=8)
        ax.set_xlabel("stage")
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=90)


def print_table(summary: dict) -> None:
    cols = [*METHODS, "x0 = A^T y"]
    print(f"{'scale':<6}" + "".join(f"{c:>24}" for c in cols))
    for scale, row in summary["table"].items():
        cells = [f"{row[c]['psnr']:6.2f} / {row[c]['ssim']:.3f}" +
                 (f" / {row[c]['phi']:.3g}" if row[c]["phi"] is not None else "")
                 for c in cols]
        print(f"{scale:<6}" + "".join(f"{c:>24}" for c in cells))
    print("(PSNR dB / SSIM / final Phi, mean over images)")
    print("Phi of PODM vs rivals (image-scales with lower / tie (1e-6 rel.) / higher Phi, "
          "mean relative gap):")
    for k, v in summary["phi_lower_than"].items():
        print(f"  {k:<22} {v['lower']:>3} / {v['tie']:>3} / {v['higher']:>3}   "
              f"{v['mean_rel_gap']:+.2e}")
    print(f"  network steps accepted (x_G kept / stages): {summary['network_steps_accepted']}")
    print(f"  median ||psi|| / ||x_G - x^(l-1)|| (eq. 5 needs <= c): "
          f"{summary['psi_ratio_median']:.3g}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 images, x2 and x4, 48 px, 15 stages")
    p.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--filter", choices=["average", "bicubic"], default="average",
                   help="downsampling S: average pooling (default) or bicubic")
    p.add_argument("--max-images", type=int, default=5)
    p.add_argument("--crop", type=int, default=120, help="centre crop side (multiple of 24)")
    p.add_argument("--stages", type=int, default=50)
    p.add_argument("--lam", type=float, default=2e-4, help="weight of ||W x||_0.8^0.8")
    p.add_argument("--mu", type=float, default=1e-2, help="H = mu I / 2 (paper: 1e-2)")
    p.add_argument("--c", type=float, default=None, help="eq. 5 constant (default mu / 4)")
    p.add_argument("--sigma-train", type=float, default=0.02)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines or tables (the JSON and PNG are still written)")
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.max_images, args.crop, args.stages = [2, 4], 2, 48, 15
    if args.crop % 24:
        p.error(f"--crop must be a multiple of 24 (Haar levels 3 and factors 2, 3, 4), got "
                f"{args.crop}")
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    out_dir = Path(args.out)
    net, net_info = load_or_train_denoiser(out_dir / "podm_dncnn.pt", args.sigma_train,
                                           args.train_steps, args.retrain, log=log)
    names = ["baby", "bird", "butterfly", "head", "woman"][:args.max_images]
    images = load_test_images("set5", grayscale=True)[:args.max_images]
    results = []
    for name, img in zip(names, images, strict=True):
        side = min(args.crop, min(img.shape) // 24 * 24)
        x_true = torch.from_numpy(centre_crop(img, side).copy())[None, None]
        for f in args.scales:
            r = solve_all(x_true, f, net, args)
            results.append({"image": name, "scale": f, "side": side, **r})
            log(f"{name} x{f}: " + ", ".join(
                f"{m} {r[m]['psnr']:.2f} dB Phi {r[m]['phi']:.4g}" for m in METHODS))
    summary = summarise(results, args.scales, args.stages)
    if not args.quiet:
        print_table(summary)
    tag = ("_bicubic" if args.filter == "bicubic" else "") + ("_quick" if args.quick else "")
    example = next((r for r in results if r["image"] == "butterfly" and r["scale"] == 2),
                   results[0])
    plot(results, out_dir / f"podm_sparse_sr{tag}.png", example)
    payload = {"experiment": "PODM l_0.8 sparse-coding super-resolution (Sec. 5.1)",
               "command": "python experiments/podm_sparse_sr.py" + (
                   " --filter bicubic" if args.filter == "bicubic" else "") + (
                   " --quick" if args.quick else ""),
               "args": vars(args), "denoiser": net_info, "summary": summary,
               "results": results}
    return write_json(out_dir / f"podm_sparse_sr{tag}.json", payload, t_start, quiet=args.quiet)


def write_json(path: Path, payload: dict, t_start: float, quiet: bool = False) -> dict:
    """Add run time and environment, write, say so (unless ``quiet``)."""
    payload = {**payload, "seconds": time.perf_counter() - t_start,
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": torch.get_num_threads()}}
    path.write_text(json.dumps(payload, indent=1))
    if not quiet:
        print(f"wrote {path} and .png ({payload['seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
