"""Deep-equilibrium deblurring trained by JFB vs the exact implicit gradient.

Liu, Tong, Zhao, Wu Fung ("Fast training of implicit networks with applications in inverse
problems", after Fung et al., "JFB: Jacobian-free backpropagation for implicit networks"):
Gaussian blur + Gaussian noise (std 0.01); the implicit layer in gradient form
``T(x) = x - r A^T (A x - d) - S_theta(x)`` with ``S = a x + b (x - D(x))`` and ``D`` the
residual two-layer ReLU denoiser rebuilt from the exact convex dual (eq. 4 -> eq. 5),
spectrally normalised (layer norms frozen at the convex solution's), a and b fixed.

The slides trained on CelebA, which is not available here: training uses random 64 x 64
crops of BSD68 images 1-60 (grayscale), testing the held-out BSD68 images 61-68 and Set12
images 01-03 (centre crops). Measurements are synthesised with the same circular blur the
model uses. Both DEQs start from the same weights, see the same minibatches (same seed) for
the same number of epochs; their epochs are interleaved (JFB epoch e, implicit epoch e, ...
by checkpoint + resume) so that load on the shared machine hits both alike. Baselines: the
blurred input, PnP-PGD (`convexnn.solvers.pnp`) with a TV prox (weight tuned on training crops) and
with the convex denoiser D itself, and the untrained DEQ.

``--pretrained gray-s15`` takes D from the shipped convex-trained two-layer denoisers
(`convexnn.pretrained`, trained exactly on Train400) instead of the small dual fitted here;
``--pnp-pretrained gray-s5-fne ...`` adds PnP-PGD rows with shipped denoisers (e.g. the
certified firmly nonexpansive ones), recording whether c_k = ||x_k - x_{k-1}|| is
nonincreasing after the first 5 iterations; ``--tag`` suffixes the output file names.

    PYTHONPATH=. python experiments/deq_deblur.py --quick
    PYTHONPATH=. python experiments/deq_deblur.py            # experiments/results/deq_deblur*
    PYTHONPATH=. python experiments/deq_deblur.py --pretrained gray-s15 \
        --pnp-pretrained gray-s5-fne gray-s10-fne --tag _pretrained
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import ConvexDualDenoiser
from convexnn.data import load_test_images
from convexnn.data.training_patches import natural_image_patches
from convexnn.solvers.denoisers import TVDenoiser
from convexnn.solvers.deq import DEQ, DEQConfig
from convexnn.solvers.deq_train import DEQTrainConfig, deq_network_from_convex, train_deq
from convexnn.solvers.history import psnr, ssim
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd
from experiments.common import timed_log, use_reference_data

DATA_NOTE = ("CelebA (used in the slides) is not available: training on random crops of "
             "BSD68 images 1-60 (grayscale), testing on held-out BSD68 images 61-68 and Set12 "
             "01-03 (centre crops); circular Gaussian blur, measurements synthesised with the "
             "model's own operator")


def gaussian_kernel(size: int, std: float) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * std ** 2))
    k = g[:, None] * g[None]
    return k / k.sum()


def centre_crop(im: np.ndarray, c: int) -> np.ndarray:
    h, w = im.shape
    c = min(c, h, w)
    return im[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]


def measure(physics: Blur, x: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return physics.A(x) + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).unsqueeze(1).float()


def fit_convex(args, train_images: list[np.ndarray]) -> tuple[ConvexDualDenoiser, dict]:
    clean = torch.from_numpy(natural_image_patches(args.convex_patches, args.convex_size, seed=0,
                                                   images=train_images)).unsqueeze(1)
    gen = torch.Generator().manual_seed(0)
    noisy = clean + args.sigma_train * torch.randn(clean.shape, generator=gen,
                                                   dtype=torch.float64)
    t0 = time.perf_counter()
    dual = ConvexDualDenoiser(n_patterns=args.patterns, beta=args.beta, residual=True, seed=0)
    dual.fit(noisy, clean, solver="cvxpy")
    return dual, {"seconds": time.perf_counter() - t0, "n_pixels": int(clean.numel()),
                  "patterns": int(dual.generators_.shape[0]), "objective": dual.objective_,
                  "filters_after_eq5": dual.to_primal().n_filters,
                  "sigma_train": args.sigma_train, "beta": args.beta}


def run_pnp(physics, d: torch.Tensor, x: torch.Tensor, denoiser, iters: int) -> dict:
    """PnP-PGD per test image; `c_monotone_after_5` (as in experiments/pnp_deblur.py): is
    c_k = ||x_k - x_{k-1}|| / ||x_0|| nonincreasing after the first 5 iterations."""
    vals, its, reasons, mono = [], [], [], []
    for i in range(d.shape[0]):
        with torch.no_grad():
            out, hist = pnp_pgd(d[i:i + 1], physics, denoiser, PnPConfig(
                max_iter=iters, tol=1e-6, lipschitz=1.0, compute_ssim=False))
        vals.append(out.clamp(0, 1))
        its.append(hist.n_iter)
        reasons.append(hist.stop_reason)
        mono.append(bool(np.all(np.diff(np.asarray(hist.rel_change, dtype=np.float64)[5:])
                                <= 1e-12)))
    return {"out": torch.cat(vals), "iterations": float(np.mean(its)),
            "diverged": [r == "non-finite iterate" for r in reasons],
            "c_monotone_after_5": mono, "monotone_fraction": float(np.mean(mono))}


def shipped_card(name: str, parser: argparse.ArgumentParser, two_layer: bool = False):
    """The card of a shipped model (`convexnn.pretrained`); `two_layer`: refuse any model that
    is not one residual two-layer network (the architecture of the DEQ's D)."""
    from convexnn import pretrained

    if name not in pretrained.names():
        parser.error(f"unknown shipped model {name!r}; the shipped models are "
                     f"{pretrained.names()}")
    def usable(c) -> bool:       # its `.net` is the D itself (not a stack, not Q of (I + Q)/2)
        return c.architecture == "two-layer" and c.n_blocks == 1 and not c.firmly_nonexpansive

    card = pretrained.card(name)
    if two_layer and not usable(card):
        kind = (f"architecture {card.architecture!r}" if card.architecture != "two-layer" else
                f"a stack of {card.n_blocks} blocks" if card.n_blocks > 1 else
                "served as the average (I + Q) / 2 of a shipped Q")
        ok = [n for n in pretrained.names() if usable(pretrained.card(n))]
        parser.error(f"--pretrained {name}: the DEQ's D must be one residual two-layer network "
                     f"(TwoLayerConvDenoiser), but {name} is {kind}; use one of {ok} (shipped "
                     f"models of other architectures can be PnP baselines: --pnp-pretrained)")
    return card


def run_deq(deq: DEQ, d: torch.Tensor, tol: float, max_iter: int) -> dict:
    test = copy.deepcopy(deq).eval()
    test.config = dataclasses.replace(test.config, tol=tol, max_iter=max_iter)
    outs, its, conv = [], [], []
    with torch.no_grad():
        for i in range(d.shape[0]):
            outs.append(test(d[i:i + 1]).clamp(0, 1))
            its.append(test.last_forward_stats_.iterations)
            conv.append(test.last_forward_stats_.converged)
    lip = test.contraction_factor(d[:1], n_iter=30, tol=1e-4).value
    return {"out": torch.cat(outs), "iterations": float(np.mean(its)),
            "converged_fraction": float(np.mean(conv)), "contraction_factor_test0": lip}


def scores(out: torch.Tensor, x: torch.Tensor, groups: dict[str, slice]) -> dict:
    res = {}
    for name, sl in groups.items():
        o, t = out[sl].double(), x[sl].double()
        if not bool(torch.isfinite(o).all()):     # a diverged baseline: no score
            res[name] = {"psnr": None, "ssim": None}
            continue
        res[name] = {"psnr": float(np.mean([psnr(o[i], t[i], 1.0) for i in range(o.shape[0])])),
                     "ssim": float(np.mean([ssim(o[i], t[i], 1.0) for i in range(o.shape[0])]))}
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), for CI")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-train", type=int, default=192, help="training crops")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--blur-std", type=float, default=1.6)
    p.add_argument("--blur-size", type=int, default=9)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--damping", type=float, default=0.05, help="a in S = a x + b (x - D(x))")
    p.add_argument("--weight", type=float, default=0.01, help="b in S = a x + b (x - D(x))")
    p.add_argument("--penalty", type=float, default=0.0, help="contraction penalty weight")
    p.add_argument("--target", type=float, default=0.97, help="contraction penalty target")
    p.add_argument("--tol", type=float, default=1e-3, help="training forward tolerance")
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument("--backward-tol", type=float, default=1e-3)
    p.add_argument("--backward-max-iter", type=int, default=50)
    p.add_argument("--anderson", type=int, default=5)
    p.add_argument("--test-crop", type=int, default=256)
    p.add_argument("--test-tol", type=float, default=1e-4)
    p.add_argument("--test-max-iter", type=int, default=200)
    p.add_argument("--convex-patches", type=int, default=4)
    p.add_argument("--convex-size", type=int, default=20)
    p.add_argument("--patterns", type=int, default=24)
    p.add_argument("--beta", type=float, default=1e-4)
    p.add_argument("--sigma-train", type=float, default=0.03)
    p.add_argument("--tv-weights", type=float, nargs="+", default=[0.001, 0.002, 0.005, 0.01, 0.02])
    p.add_argument("--pnp-iters", type=int, default=100)
    p.add_argument("--pretrained", default=None, metavar="NAME",
                   help="D = this shipped two-layer denoiser (convexnn.pretrained, e.g. gray-s15) "
                        "instead of the convex dual fitted here")
    p.add_argument("--pnp-pretrained", nargs="+", default=[], metavar="NAME",
                   help="extra PnP-PGD baselines with shipped denoisers, e.g. gray-s5-fne "
                        "gray-s10-fne")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    d_card = None if args.pretrained is None else shipped_card(args.pretrained, p, True)
    pnp_cards = {name: shipped_card(name, p) for name in args.pnp_pretrained}
    if args.quick:
        args.epochs, args.n_train, args.patch, args.test_crop = 2, 16, 32, 48
        args.convex_patches, args.convex_size, args.patterns = 2, 12, 8
        args.pnp_iters, args.tv_weights, args.test_max_iter = 20, [0.01], 50
    torch.set_num_threads(1)
    torch.manual_seed(0)   # spectral_norm draws its power-iteration vectors from this
    use_reference_data()
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    # ---------------------------------------------------------------- data and physics
    bsd = load_test_images("bsd68", grayscale=True)
    set12 = load_test_images("set12", grayscale=True)
    train_imgs = bsd[:60]
    n_test = (1, 1) if args.quick else (8, 3)
    test_imgs = [centre_crop(im, args.test_crop) for im in bsd[60:60 + n_test[0]]]
    test_imgs += [centre_crop(im, args.test_crop) for im in set12[:n_test[1]]]
    groups = {"bsd68_heldout": slice(0, n_test[0]), "set12": slice(n_test[0], sum(n_test))}
    physics = Blur(gaussian_kernel(args.blur_size, args.blur_std), padding="circular")
    x_train = as_batch(list(natural_image_patches(args.n_train, args.patch, seed=1,
                                                  images=train_imgs)))
    d_train = measure(physics, x_train, args.noise, 1)
    x_val = as_batch(list(natural_image_patches(8, args.patch, seed=2, images=train_imgs)))
    d_val = measure(physics, x_val, args.noise, 2)
    x_test = as_batch(test_imgs)
    d_test = torch.cat([measure(physics, x_test[i:i + 1], args.noise, 100 + i)
                        for i in range(x_test.shape[0])])
    methods: dict[str, dict] = {"blurred input": {"out": d_test.clamp(0, 1)}}

    # ---------------------------------------------------------------- convex D, baselines
    if d_card is None:
        dual, convex_info = fit_convex(args, train_imgs)
        primal = dual.to_primal()
        log(f"convex dual fitted in {convex_info['seconds']:.1f}s "
            f"({convex_info['filters_after_eq5']} filters)")
        d_info = {"convex_dual": convex_info}
    else:                        # the shipped network, trained exactly on Train400
        from convexnn import pretrained

        primal = pretrained.load(d_card.name).net
        d_info = {"pretrained": {
            "name": d_card.name, "sigma": d_card.sigma, "certified_gap": d_card.certified_gap,
            "training_pixels": d_card.training_pixels, "training_data": d_card.training_data,
            "kernel_size": d_card.kernel_size, "n_filters": d_card.n_filters}}
        log(f"D = shipped {d_card.name} ({d_card.n_filters} filters of {d_card.kernel_size} x "
            f"{d_card.kernel_size}, sigma {d_card.sigma * 255:g}/255)")
    tune = {}
    for w in args.tv_weights:
        r = run_pnp(physics, d_train[:4], x_train[:4], TVDenoiser(w), args.pnp_iters)
        tune[w] = float(np.mean([psnr(r["out"][i], x_train[i], 1.0) for i in range(4)]))
    tv_w = max(tune, key=tune.get)
    methods[f"PnP-PGD, TV (weight {tv_w:g})"] = run_pnp(physics, d_test, x_test,
                                                        TVDenoiser(tv_w), args.pnp_iters)
    methods["PnP-PGD, convex D"] = run_pnp(physics, d_test, x_test,
                                          copy.deepcopy(primal).float().eval(), args.pnp_iters)
    log(f"PnP-PGD baselines done (TV weight tuned on 4 training crops: {tune})")
    for name, card in pnp_cards.items():     # shipped denoisers, same crops and measurements
        from convexnn import pretrained

        row = run_pnp(physics, d_test, x_test, pretrained.load(name).eval(), args.pnp_iters)
        row.update(sigma=card.sigma, architecture=card.architecture,
                   firmly_nonexpansive=card.firmly_nonexpansive,
                   lipschitz_certificate=card.lipschitz_certificate)
        methods[f"PnP-PGD, {name}"] = row
        log(f"PnP-PGD with shipped {name} done (c_k monotone on "
            f"{sum(row['c_monotone_after_5'])}/{len(row['c_monotone_after_5'])})")

    # ---------------------------------------------------------------- the DEQs
    s0 = deq_network_from_convex(primal, "gradient", damping=args.damping, weight=args.weight,
                                 spectral_norm=True, dtype=torch.float32,
                                 trainable_scalars=False)

    def make(mode: str) -> DEQ:
        return DEQ(physics, copy.deepcopy(s0), DEQConfig(
            form="gradient", tol=args.tol, max_iter=args.max_iter, anderson_m=args.anderson,
            backward=mode, backward_tol=args.backward_tol,
            backward_max_iter=args.backward_max_iter))

    methods["DEQ, untrained (convex init)"] = run_deq(make("jfb"), d_test, args.test_tol,
                                                      args.test_max_iter)
    init = make("jfb").eval()
    with torch.no_grad():
        val0 = psnr(init(d_val).clamp(0, 1).double(), x_val.double(), 1.0)
    results: dict[str, object] = {}
    deqs: dict[str, DEQ] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, args.epochs + 1):     # interleaved epochs, resumed checkpoints
            for mode in ("jfb", "implicit"):
                deqs[mode] = make(mode)
                results[mode] = train_deq(deqs[mode], d_train, x_train, DEQTrainConfig(
                    epochs=epoch, batch_size=args.batch, lr=args.lr, seed=0,
                    lipschitz_penalty=args.penalty, contraction_target=args.target,
                    checkpoint_path=Path(tmp) / f"{mode}.pt", progress=not args.quiet),
                    val=(d_val, x_val))
            log(f"epoch {epoch}: " + ", ".join(
                f"{m} {results[m].epoch_seconds[-1]:.1f}s val {results[m].val_psnr[-1]:.2f} dB"
                for m in ("jfb", "implicit")))
    for mode, label in (("jfb", "DEQ, trained with JFB"), ("implicit", "DEQ, trained implicit")):
        methods[label] = run_deq(deqs[mode], d_test, args.test_tol, args.test_max_iter)
        methods[label]["training"] = results[mode].to_dict()
        sec = results[mode].epoch_seconds
        methods[label]["seconds_per_epoch_median"] = statistics.median(sec)
        methods[label]["seconds_per_epoch_mean"] = float(np.mean(sec))

    summary = {}
    for name, m in methods.items():
        summary[name] = scores(m["out"], x_test, groups)
        for k in ("iterations", "converged_fraction", "diverged", "c_monotone_after_5",
                  "monotone_fraction", "sigma", "architecture", "firmly_nonexpansive",
                  "lipschitz_certificate", "contraction_factor_test0",
                  "seconds_per_epoch_median", "seconds_per_epoch_mean"):
            if k in m:
                summary[name][k] = m[k]
    jfb, imp = methods["DEQ, trained with JFB"], methods["DEQ, trained implicit"]
    speedup = imp["seconds_per_epoch_median"] / jfb["seconds_per_epoch_median"]
    result = {
        "data": DATA_NOTE, "config": vars(args), **d_info,
        "tv_weight_tuning_psnr": {str(k): v for k, v in tune.items()},
        "test_images": {"bsd68_heldout": [f"test{61 + i:03d}.png" for i in range(n_test[0])],
                        "set12": [f"{i + 1:02d}.png" for i in range(n_test[1])]},
        "summary": summary, "speedup_implicit_over_jfb_per_epoch_median": speedup,
        "val_psnr_untrained": val0,
        "training": {k: methods[v]["training"] for k, v in
                     (("jfb", "DEQ, trained with JFB"), ("implicit", "DEQ, trained implicit"))},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "note": "2 shared CPU cores under other load; epochs interleaved"},
        "seconds": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("deq_deblur_quick" if args.quick else "deq_deblur") + args.tag
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(out / f"{stem}.png", methods, x_test, d_test, result["training"], val0)
    print(f"\n{'method':<34}{'PSNR bsd68':>11}{'PSNR set12':>11}{'SSIM bsd68':>11}"
          f"{'iters':>7}{'L(T)':>7}{'c mono':>7}{'s/epoch':>9}")
    def num(v, fmt: str) -> str:
        return "diverged".rjust(11) if v is None else format(v, fmt)

    for name, s in summary.items():
        print(f"{name:<34}{num(s['bsd68_heldout']['psnr'], '11.2f')}"
              f"{num(s['set12']['psnr'], '11.2f')}{num(s['bsd68_heldout']['ssim'], '11.3f')}"
              + (f"{s['iterations']:7.1f}" if "iterations" in s else f"{'':7}")
              + (f"{s['contraction_factor_test0']:7.3f}" if "contraction_factor_test0" in s
                 else f"{'':7}")
              + (f"{s['monotone_fraction']:7.2f}" if "monotone_fraction" in s else f"{'':7}")
              + (f"{s['seconds_per_epoch_median']:9.2f}" if "seconds_per_epoch_median" in s
                 else ""))
    print(f"\n{'training':<10}{'s/epoch':>9}{'fwd s':>8}{'bwd s':>8}{'fwd it':>8}{'bwd it':>8}"
          f"{'bwd unconv':>11}{'val PSNR':>10}")
    for mode, r in result["training"].items():
        print(f"{mode:<10}{statistics.median(r['epoch_seconds']):9.2f}"
              f"{np.mean(r['forward_seconds']):8.2f}{np.mean(r['backward_seconds']):8.2f}"
              f"{np.mean(r['forward_iterations']):8.1f}{np.mean(r['backward_iterations']):8.1f}"
              f"{np.mean(r['backward_unconverged_fraction']):11.2f}{r['val_psnr'][-1]:10.2f}")
    print(f"per-epoch time, implicit / JFB (median): {speedup:.2f}x; wrote {out / stem}.json/.png")
    return result


def _plot(path: Path, methods: dict, x: torch.Tensor, d: torch.Tensor, training: dict,
          val0: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 7))
    grid = fig.add_gridspec(2, 12)
    ax = fig.add_subplot(grid[0, 0:4])
    for mode, r in training.items():
        ax.plot(range(len(r["val_psnr"]) + 1), [val0] + r["val_psnr"], "o-", label=mode)
    ax.set(xlabel="epoch", ylabel="val PSNR (dB)", title="validation crops")
    ax.legend()
    ax = fig.add_subplot(grid[0, 4:8])
    for mode, r in training.items():
        ax.plot(np.cumsum([0.0] + r["epoch_seconds"]), [val0] + r["val_psnr"], "o-",
                label=mode)
    ax.set(xlabel="training wall time (s)", ylabel="val PSNR (dB)", title="PSNR vs time")
    ax.legend()
    ax = fig.add_subplot(grid[0, 8:12])
    for mode, r in training.items():
        ax.plot(range(1, len(r["epoch_seconds"]) + 1), r["forward_seconds"], "o-",
                label=f"{mode} forward")
        ax.plot(range(1, len(r["epoch_seconds"]) + 1), r["backward_seconds"], "s--",
                label=f"{mode} backward")
    ax.set(xlabel="epoch", ylabel="seconds per epoch", title="time per epoch")
    ax.legend(fontsize=7)
    panels = [("ground truth", x), ("blurred input", d)] + [
        (k, methods[k]["out"]) for k in ("DEQ, trained with JFB", "DEQ, trained implicit")]
    for i, (name, img) in enumerate(panels):
        a = fig.add_subplot(grid[1, 3 * i:3 * i + 3])
        a.imshow(img[0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        a.set_xticks([])
        a.set_yticks([])
        if name != "ground truth":
            name += f" {psnr(img[0:1].double(), x[0:1].double(), 1.0):.2f} dB"
        a.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
