"""The argument parser of the `convexnn` command (`convexnn.cli` runs it)."""

from __future__ import annotations

import argparse
from typing import Any

from convexnn.model.losses import LOSSES
from convexnn.solve.conic import CVXPY_SOLVERS
from convexnn.solve.registry import SOLVERS

__all__ = ["build_parser"]

EPILOG = """examples:
  convexnn demo                                  # 2 MNIST digits, exact CVXPY dual, ~1 min
  convexnn demo --n-train 4 --patterns 50 --out results/demo4
  convexnn fit --clean my_images/ --sigma 0.1 --out results/mine
  convexnn fit --pairs pairs.npz --patterns 40 --cvxpy-solver SCS
  convexnn gap results/mine/model.safetensors --pairs pairs.npz
  convexnn interpret results/mine/model.safetensors --data mnist --out results/interp
"""


def _add_model_args(p: argparse.ArgumentParser, patterns: int) -> None:
    g = p.add_argument_group("model (paper eq. 4)")
    g.add_argument("--kernel-size", type=int, default=3, help="odd first-layer kernel size k")
    g.add_argument("--patterns", type=int, default=patterns,
                   help="number of sampled sign patterns P (default %(default)s)")
    g.add_argument("--beta", type=float, default=1e-3,
                   help="weight decay beta per training pixel (eq. 2 uses beta x N, N the "
                        "number of training pixels; default 1e-3)")
    g.add_argument("--loss", choices=LOSSES, default="squared", help="data loss (App. E)")
    g.add_argument("--residual", action="store_true", help="residual network (Corollary 1.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the generators and the noise")
    s = p.add_argument_group("solver")
    s.add_argument("--solver", choices=["auto", *sorted(SOLVERS)], default="auto",
                   help="how to solve eq. 4 (default auto: the fastest exact path; ipm for "
                        "the squared loss, with pattern pricing at large P)")
    s.add_argument("--cvxpy-solver", choices=CVXPY_SOLVERS, default="CLARABEL",
                   help="conic solver behind cvxpy (MOSEK needs a license)")
    s.add_argument("--force", action="store_true",
                   help="build a CVXPY problem even when its size estimate says it will not "
                        "fit, and write into an --out folder that holds other files")


def _add_output_args(p: argparse.ArgumentParser, default_out: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", default=default_out, help="output folder (default %(default)s)")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.add_argument("--json", action="store_true", help="print the report as JSON, not a table")


def _add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="exact convex fit on the bundled MNIST digits, certificate, Adam primal "
                     "side by side, PSNR (about a minute)",
        description="Denoise real MNIST test digits (shipped with the package): solve eq. 4 "
                    "exactly over the sampled sign patterns (the fastest exact path, with its "
                    "certificate), train the primal network of the same width with Adam for "
                    "the same wall time, and compare objectives and held-out PSNR. Writes "
                    "demo.json, reconstructions.png and model.safetensors into --out.")
    demo.add_argument("--n-train", type=int, default=200, help="training digits (default 200)")
    demo.add_argument("--n-test", type=int, default=6, help="held-out digits (default 6)")
    demo.add_argument("--patterns", type=int, default=500,
                      help="sampled sign patterns P (default 500)")
    demo.add_argument("--sigma", type=float, default=0.15,
                      help="Gaussian noise std on the [0, 1] pixel scale (default 0.15)")
    demo.add_argument("--beta", type=float, default=1e-3,
                      help="weight decay beta per training pixel (eq. 2 uses beta x N; "
                           "default 1e-3)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the patterns and the noise")
    _add_output_args(demo, "convexnn_out/demo")
    demo.add_argument("--force", action="store_true",
                      help="write into an --out folder that holds other files")


def _add_interpret_parser(sub: Any) -> None:
    interp = sub.add_parser(
        "interpret", help="path sparsity, filters and patch clusters of a saved model",
        description="Interpret a saved model (dual or primal from `convexnn fit/demo`, or a "
                    "greedy stack from convexnn.deep.save_stack): nonzero paths and path norm "
                    "(paper eq. 7), the largest filters with their frequency responses (Fig. 4) "
                    "and k-means clusters of the per-pixel active paths on --data (eq. 8, "
                    "Fig. 5). Writes interpret.json, filters*.png and clusters.png.")
    interp.add_argument("model", help="model.safetensors")
    interp.add_argument("--data", required=True,
                        help="images to cluster (clean ones, as in the paper): .npy, .npz (its "
                             "'clean' array or only array), an image file or folder, or "
                             "'mnist' for the shipped MNIST test digits (normalised)")
    interp.add_argument("--n-images", type=int, default=8,
                        help="use at most this many images (default %(default)s)")
    interp.add_argument("--clusters", type=int, default=12, help="k of k-means (default 12)")
    interp.add_argument("--filters", type=int, default=16,
                        help="how many of the largest filters to draw (default 16)")
    interp.add_argument("--fft-size", type=int, default=32,
                        help="zero-padded DFT size of the frequency responses (default 32)")
    interp.add_argument("--tol", type=float, default=1e-3,
                        help="a path is nonzero above tol x the largest path norm (default "
                             "1e-3)")
    interp.add_argument("--seed", type=int, default=0, help="k-means seed")
    _add_output_args(interp, "convexnn_out/interpret")
    interp.add_argument("--force", action="store_true",
                        help="write into an --out folder that holds other files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convexnn",
        description="Train two-layer convolutional ReLU denoisers through their exact convex "
                    "dual (Sahiner et al., ICLR 2021), rebuild the primal network and report "
                    "the duality gap.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_parser(sub)

    fit = sub.add_parser(
        "fit", help="fit the convex dual on your own images",
        description="Fit the convex dual denoiser on your images: --pairs (an .npz with 'noisy' "
                    "and 'clean' arrays, or a folder with noisy/ and clean/ subfolders), or "
                    "--clean (an .npy/.npz file or a folder of PNG/JPG/BMP/TIF) with --noisy or "
                    "--sigma to add seeded Gaussian noise. Images are (n, H, W) or (n, C, H, W).")
    src = fit.add_argument_group("data")
    src.add_argument("--pairs", help="noisy/clean pairs (.npz or folder)")
    src.add_argument("--clean", help="clean images (.npy, .npz or image folder)")
    src.add_argument("--noisy", help="noisy images matching --clean")
    src.add_argument("--sigma", type=float,
                     help="add Gaussian noise of this std to --clean (on the scale of the "
                          "pixels: [0, 1] for PNG/JPG/BMP/TIF files, as stored for arrays)")
    src.add_argument("--grey", action="store_true",
                     help="convert colour images to grey (otherwise they are refused: one "
                          "output per pixel)")
    src.add_argument("--test-fraction", type=float, default=0.0,
                     help="hold out this fraction of the images for a test report")
    _add_model_args(fit, patterns=30)
    _add_output_args(fit, "convexnn_out/fit")

    gap = sub.add_parser("gap", help="gap report of a saved model on data",
                         description="Load a model written by `convexnn fit/demo` and report "
                                     "dual vs rebuilt-primal objective on the given pairs.")
    gap.add_argument("model", help="model.safetensors")
    gap.add_argument("--pairs", required=True, help="noisy/clean pairs (.npz or folder)")
    gap.add_argument("--json", action="store_true", help="print JSON")

    _add_interpret_parser(sub)
    return parser
