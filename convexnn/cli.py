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
from convexnn.cli_parser import build_parser
from convexnn.dual import ConvexDualDenoiser
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.problem import ConvexSolverError
from convexnn.output_folder import (
    DEMO_OUTPUTS,
    FIT_OUTPUTS,
    INTERPRET_OUTPUTS,
    prepare_output_folder,
)
from convexnn.solve.conic import ProblemSizeError


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _solve_dual(noisy: torch.Tensor, clean: torch.Tensor, args: argparse.Namespace,
                log: _Log) -> tuple[ConvexDualDenoiser, float]:
    """Fit eq. 4 with the solver of `args`; returns the model and eq. 2's beta (sum scale)."""
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
    return model, beta


def _test_report(model: ConvexDualDenoiser, primal: TwoLayerConvDenoiser, tn: torch.Tensor,
                 tc: torch.Tensor) -> dict[str, Any]:
    """Held-out objectives per pixel of the dual and the rebuilt primal, and how they differ."""
    npix = tn.shape[0] * tn.shape[-2] * tn.shape[-1]
    with torch.no_grad():
        dual_pred = model.predict(tn)
        primal_pred = primal(tn.to(torch.float64))
    return {
        "n_images": int(tn.shape[0]),
        "dual_objective_per_pixel": model.objective(tn, tc, "sum") / npix,
        "primal_objective_per_pixel": primal.objective(tn, tc, model.beta, "sum",
                                                       model.loss_) / npix,
        "max_violation": model.constraint_violation(tn).max,
        "max_prediction_difference": float((dual_pred - primal_pred).abs().max()),
    }


def _fit_and_report(noisy: torch.Tensor, clean: torch.Tensor, test: tuple | None,
                    args: argparse.Namespace, log: _Log, display=None) -> dict[str, Any]:
    out = prepare_output_folder(args.out, args.force, FIT_OUTPUTS)
    model, beta = _solve_dual(noisy, clean, args, log)
    sel = model.pattern_selection_
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
        result["test"] = _test_report(model, primal, tn, tc)
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
