"""Command line: `convexnn demo`, `convexnn fit`, `convexnn gap`, `convexnn interpret`.

Exit codes: 0 success; 1 the solver failed (status reported); 2 bad input or usage;
3 the problem is too large for the chosen solver (use another, or --force).

Commands that write (`demo`, `fit`, `interpret`) write only inside their `--out` folder. They
refuse an `--out` that is an existing file, and an existing folder holding anything besides
their own output files (an earlier run of the same command is overwritten), unless `--force`
is given (exit 2, nothing written). An output name that is a symbolic link is replaced by a new
file in the folder, never written through, with or without `--force`. `gap` writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convexnn.analysis.gap import gap_report
from convexnn.dual import ConvexDualDenoiser
from convexnn.model.losses import LOSSES
from convexnn.model.problem import ConvexSolverError
from convexnn.output_folder import (
    DEMO_OUTPUTS,
    FIT_OUTPUTS,
    INTERPRET_OUTPUTS,
    prepare_output_folder,
)
from convexnn.solve.conic import CVXPY_SOLVERS, ProblemSizeError
from convexnn.solve.registry import SOLVERS

EPILOG = """examples:
  convexnn demo                                  # 2 MNIST digits, exact CVXPY dual, ~1 min
  convexnn demo --n-train 4 --patterns 50 --out results/demo4
  convexnn fit --clean my_images/ --sigma 0.1 --out results/mine
  convexnn fit --pairs pairs.npz --patterns 40 --cvxpy-solver SCS
  convexnn gap results/mine/model.safetensors --pairs pairs.npz
  convexnn interpret results/mine/model.safetensors --data mnist --out results/interp
"""


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convexnn",
        description="Train two-layer convolutional ReLU denoisers through their exact convex "
                    "dual (Sahiner et al., ICLR 2021), rebuild the primal network and report "
                    "the duality gap.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    return parser


def _fit_and_report(noisy: torch.Tensor, clean: torch.Tensor, test: tuple | None,
                    args: argparse.Namespace, log: _Log, display=None) -> dict[str, Any]:
    out = prepare_output_folder(args.out, args.force, FIT_OUTPUTS)
    if not args.beta > 0:
        raise ValueError(f"--beta: expected a positive number, got {args.beta}")
    n, _, h, w = noisy.shape
    beta = args.beta * n * h * w
    model = ConvexDualDenoiser(kernel_size=args.kernel_size, n_patterns=args.patterns,
                               beta=beta, loss=args.loss, residual=args.residual,
                               seed=args.seed)
    solver = None if args.solver == "auto" else args.solver
    log(f"solving eq. 4: {n} images of {h}x{w} (N = {n * h * w} pixels), P = {args.patterns} "
        f"sampled patterns, beta = {args.beta:g} per pixel ({beta:.4g} in eq. 2)")
    options: dict[str, Any] = {}
    chosen = solver or model.choose_solver(noisy)[0]
    if chosen == "cvxpy":
        options = {"cvxpy_solver": args.cvxpy_solver, "force": args.force}
    elif chosen == "ipm":
        options = {"progress": not args.quiet}
    model.fit(noisy, clean, solver=solver, **options)
    sel = model.pattern_selection_
    choice = model.solve_info_.details["solver_choice"]
    log(f"solver {choice['solver']}"
        + (f"/{args.cvxpy_solver}" if choice["solver"] == "cvxpy" else "")
        + f" ({choice['reason']}): status {model.solve_info_.status}, "
          f"{model.solve_info_.total_seconds:.1f}s ({sel.n_sampled} generators -> "
          f"{model.generators_.shape[0]} distinct patterns)")
    report = gap_report(model, noisy, clean)
    primal = model.to_primal()
    result: dict[str, Any] = {"config": {k: v for k, v in vars(args).items()
                                         if k not in ("quiet", "json")},
                              "beta_sum": beta, "beta_per_pixel": args.beta,
                              "sigma_scale": "pixel values as loaded ([0, 1] for image files)",
                              "train": report.to_dict(),
                              "patterns": {"sampled": sel.n_sampled,
                                           "duplicates": sel.n_duplicates,
                                           "all_zero": sel.n_all_zero}}
    show = [(noisy, clean, "train")]
    if test is not None:
        tn, tc = test
        npix = tn.shape[0] * tn.shape[-2] * tn.shape[-1]
        with torch.no_grad():
            dual_pred = model.predict(tn)
            primal_pred = primal(tn.to(torch.float64))
        result["test"] = {
            "n_images": int(tn.shape[0]),
            "dual_objective_per_pixel": model.objective(tn, tc, "sum") / npix,
            "primal_objective_per_pixel": primal.objective(tn, tc, model.beta, "sum",
                                                           model.loss_) / npix,
            "max_violation": model.constraint_violation(tn).max,
            "max_prediction_difference": float((dual_pred - primal_pred).abs().max()),
        }
        show.append((tn, tc, "test"))
    # reconstruction grid: clean / noisy / dual / primal
    xs = torch.cat([s[0] for s in show]).to(torch.float64)
    ys = torch.cat([s[1] for s in show]).to(torch.float64)
    labels = [f"{s[2]} {i}" for s in show for i in range(s[0].shape[0])]
    with torch.no_grad():
        cols = [("clean", ys[:, 0]), ("noisy", xs[:, 0]), ("dual (eq. 4)", model.predict(xs)[:, 0]),
                ("primal (eq. 5)", primal(xs)[:, 0])]
    cols = [(name, (display(a) if display else a).numpy()) for name, a in cols]
    from convexnn.analysis.plotting import psnr, save_reconstruction_grid
    from convexnn.io import save_model

    result["psnr"] = {name: [psnr(a[i], cols[0][1][i]) for i in range(len(labels))]
                      for name, a in cols[1:]}
    result["psnr_rows"] = labels
    png = save_reconstruction_grid(out / "reconstructions.png", cols, labels,
                                   title=f"relative duality gap {report.relative_gap:.1e}")
    model_path = save_model(model, out / "model.safetensors")
    result["files"] = {"report": str(out / "gap_report.json"), "figure": str(png),
                       "model": str(model_path)}
    (out / "gap_report.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.to_table())
        if "test" in result:
            t = result["test"]
            print(f"\nheld-out ({t['n_images']} images): objective per pixel: dual "
                  f"{t['dual_objective_per_pixel']:.6g}, primal "
                  f"{t['primal_objective_per_pixel']:.6g}; max |dual - primal prediction| "
                  f"{t['max_prediction_difference']:.2e} (off the training set the gated dual "
                  f"and the ReLU primal are different functions)")
        print(f"\nwrote {result['files']['report']}, {png}, {model_path}")
    log("done")
    return result


def _demo(args: argparse.Namespace, log: _Log) -> dict[str, Any]:
    from convexnn.demo import DemoConfig, demo_table, run_demo

    for name in ("n_train", "n_test", "patterns"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got "
                             f"{getattr(args, name)}")
    if not args.sigma > 0 or not args.beta > 0:
        raise ValueError(f"--sigma and --beta: expected positive numbers, got {args.sigma} and "
                         f"{args.beta}")
    out = prepare_output_folder(args.out, args.force, DEMO_OUTPUTS)
    result = run_demo(DemoConfig(n_train=args.n_train, n_test=args.n_test,
                                 patterns=args.patterns, sigma=args.sigma,
                                 beta_per_pixel=args.beta, seed=args.seed), out, log,
                      quiet=args.quiet)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(demo_table(result))
        print("wrote " + ", ".join(result["files"].values()))
    log("done")
    return result


def _load_training_data(args: argparse.Namespace):
    from convexnn.data import NoiseConfig, add_noise, load_image_pairs, load_images

    grey = args.grey
    if args.pairs:
        if args.clean or args.noisy or args.sigma is not None:
            raise ValueError("give either --pairs, or --clean with --noisy or --sigma")
        noisy, clean = load_image_pairs(args.pairs, grayscale=grey)
    elif args.clean:
        clean = load_images(args.clean, grayscale=grey)
        if (args.noisy is None) == (args.sigma is None):
            raise ValueError("with --clean, give exactly one of --noisy and --sigma")
        noisy = load_images(args.noisy, grayscale=grey) if args.noisy else add_noise(
            clean, NoiseConfig("gaussian", args.sigma, args.seed))
    else:
        raise ValueError("no data: give --pairs PATH, or --clean PATH with --noisy/--sigma")
    noisy = torch.as_tensor(np.asarray(noisy, dtype=np.float64))
    clean = torch.as_tensor(np.asarray(clean, dtype=np.float64))
    if clean.ndim == 4 and clean.shape[1] != 1:
        raise ValueError(
            f"clean images have {clean.shape[1]} channels: the network predicts one value per "
            f"pixel, so `convexnn fit` needs one-channel targets; pass --grey to convert colour "
            f"images (skimage rgb2gray), or fit one channel at a time (noisy inputs may have "
            f"several channels)")
    return noisy, clean


def _fit(args: argparse.Namespace, log: _Log) -> dict[str, Any]:
    noisy, clean = _load_training_data(args)
    if not 0.0 <= args.test_fraction < 1.0:
        raise ValueError(f"--test-fraction: expected a value in [0, 1), got {args.test_fraction}")
    n_test = int(round(args.test_fraction * noisy.shape[0]))
    if n_test >= noisy.shape[0]:
        raise ValueError("--test-fraction leaves no training images")
    test = None
    if n_test > 0:
        test = (noisy[-n_test:], clean[-n_test:])
        noisy, clean = noisy[:-n_test], clean[:-n_test]
    log(f"loaded {noisy.shape[0]} training images of shape {tuple(noisy.shape[1:])}")
    return _fit_and_report(noisy, clean, test, args, log)


def _gap(args: argparse.Namespace) -> dict[str, Any]:
    from convexnn.data import load_image_pairs
    from convexnn.io import load_model

    model = load_model(args.model)
    if not isinstance(model, ConvexDualDenoiser):
        raise ValueError(f"{args.model} holds a primal network; the gap report needs a dual model")
    noisy, clean = load_image_pairs(args.pairs)
    report = gap_report(model, noisy, clean)
    print(report.to_json() if args.json else report.to_table())
    return report.to_dict()


def _interpret_images(args: argparse.Namespace) -> torch.Tensor:
    from convexnn.data import load_images, load_mnist, normalize_mnist

    if args.n_images < 1:
        raise ValueError(f"--n-images: expected a positive integer, got {args.n_images}")
    if args.data == "mnist":
        return torch.from_numpy(normalize_mnist(
            load_mnist("test")[:args.n_images].astype(np.float64))).unsqueeze(1)
    path = Path(args.data)
    key = None
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                key = "clean" if "clean" in archive.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            key = None      # load_images below reports what is wrong with the file
    return torch.as_tensor(load_images(path, key=key)[:args.n_images])


def _interpret(args: argparse.Namespace, log: _Log) -> dict[str, Any]:
    from convexnn.interpret import interpret_model, load_interpretable

    if args.clusters < 1 or args.filters < 1:
        raise ValueError(f"--clusters and --filters: expected positive integers, got "
                         f"{args.clusters} and {args.filters}")
    if not 0.0 <= args.tol < 1.0:
        raise ValueError(f"--tol: expected a number in [0, 1), got {args.tol}")
    model = load_interpretable(args.model)
    images = _interpret_images(args)
    prepare_output_folder(args.out, args.force, INTERPRET_OUTPUTS)
    log(f"interpreting {type(model).__name__} from {args.model} on {images.shape[0]} images "
        f"of {tuple(images.shape[1:])}")
    result = interpret_model(model, images, args.out, n_clusters=args.clusters,
                             n_filters=args.filters, fft_size=args.fft_size, tol=args.tol,
                             seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for b, block in enumerate(result["blocks"], start=1):
            s, c = block["sparsity"], block.get("clusters", {})
            print(f"block {b}: {s['kind']}, nonzero paths {s['n_nonzero']} / {s['n_paths']}, "
                  f"path norm (eq. 7) {s['path_norm']:.6g}, 90% of it in {s['n_for_90_percent']}"
                  f" paths; {c.get('n_clusters', 0)} clusters of "
                  f"{c.get('n_distinct_codes', 0)} distinct activation codes")
        print("wrote " + ", ".join(result["files"].values()))
    log("done")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    log = _Log(getattr(args, "quiet", False))
    try:
        if args.command == "demo":
            _demo(args, log)
        elif args.command == "fit":
            _fit(args, log)
        elif args.command == "interpret":
            _interpret(args, log)
        else:
            _gap(args)
    except ProblemSizeError as exc:
        print(f"convexnn: problem too large: {exc}", file=sys.stderr)
        return 3
    except ConvexSolverError as exc:
        print(f"convexnn: solver failed ({exc.status}): {exc}", file=sys.stderr)
        if exc.status in ("max_iter", "time_limit"):
            print("convexnn: the command line sets no iteration limits; leave --solver at auto "
                  "(the exact interior point for the squared loss), or tune the solver from "
                  "Python: ConvexDualDenoiser(...).fit(noisy, clean, solver=..., max_iter=...)",
                  file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:   # OSError: unreadable input, bad --out
        print(f"convexnn: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
