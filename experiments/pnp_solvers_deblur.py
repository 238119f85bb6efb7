"""Every plug-and-play splitting with every plug-in denoiser: deblurring on the 8 Levin kernels,
Set12 and BSD68 crops (issue 22's PnP table).

Problem: ``y = k * x + n``, circular blur by each Levin et al. motion kernel, Gaussian noise
``--noise`` (0.01), grayscale centre crops (``--crop`` 128) of the first ``--set12`` Set12 and the
first ``--bsd68`` BSD68 images. ``||A||^2 = 1`` (a nonnegative kernel of sum 1).

Solvers (`convexnn.solvers.pnp`, data prox in closed form by the FFT): PnP-PGD (relaxation 1),
PnP-ADMM, PnP-HQS, PnP-DRS (relaxation 1) and RED (gradient form, step ``1 / (L + lam)``), each
run ``--iters`` iterations from ``A^T y``.

Denoisers, each with one strength knob:

- the shipped convex-trained models of ``--pretrained`` (default ``gray-s5-fne``, certified
  firmly nonexpansive, and the plain ``gray-s15``) as ``Relaxed(J, alpha) = (1 - alpha) I +
  alpha J``, alpha in ``--alphas`` (a firmly nonexpansive J stays so for 0 < alpha <= 1);
- a DnCNN and a DnCNN trained with the FNE penalty (`plugin_denoisers.train_dncnn`, sigma
  ``--dncnn-sigma``; 0 leaves them out), relaxed the same way;
- TV: the exact prox of ``w TV`` (Chambolle, scikit-image), w in ``--tv-weights``;
- BM3D (the ``bm3d`` package) at sigma in ``--bm3d-sigmas`` (on [0, 255]), only inside the
  solvers of ``--bm3d-solvers`` (default ADMM and HQS, the classic PnP-BM3D pairings) for
  ``--bm3d-iters`` iterations: one BM3D call costs about 1 s on a 128 x 128 crop.

Each (solver, denoiser) pair gets its own solver parameter (PGD step in ``--pgd-steps``; ADMM /
HQS / DRS data-prox step gamma in ``--gammas``; RED weight lam in ``--red-lams``) and its own
strength, picked jointly by the mean PSNR on ``--tune-problems`` held-out problems (default 1:
Set12 image number ``--set12`` with the first kernel; more take the next Set12 and BSD68 images
in turn, with kernels spread over the list), then used on every test problem. ``--solvers``
runs a subset of the splittings.

Convergence evidence per run: ``c_monotone_after_5`` (``c_k = ||x_k - x_{k-1}|| / ||x_0||``
nonincreasing after 5 iterations) and ``convergence_guaranteed``: the denoiser is certified
firmly nonexpansive (the shipped ``-fne`` models, relaxed; TV, an exact prox) and the solver's
condition holds (PGD: step < 2 / L, relaxation < min(1, 1 / (step L)) + 1/2; ADMM, DRS, HQS:
any gamma, a fixed point existing; RED: step < 2 / (L + lam); Pesquet et al. 2021). A relaxed
shipped model is itself a proximal map (``J_alpha = grad(|x|^2 / 2 - alpha Phi)`` with ``Phi``
convex, ``ShrinkageNetwork.potential``), so PnP-ADMM / DRS with it are the ADMM / DRS of a convex
problem and RED is gradient descent on ``f + lam alpha Phi``.

The JSON is rewritten after every test problem (a killed run keeps what it finished).

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/pnp_solvers_deblur.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/pnp_solvers_deblur.py --dncnn-cache CACHE     # the run in results/
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from plugin_denoisers import (
    BM3DDenoiser,
    add_dncnn_arguments,
    check_shipped_arguments,
    run_settings,
    train_dncnn,
)
from podm_sparse_sr import centre_crop

from convexnn import pretrained
from convexnn.data import load_levin_kernels, load_test_images
from convexnn.solvers.denoisers import Relaxed, TVDenoiser
from convexnn.solvers.history import History, psnr, ssim
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_admm, pnp_drs, pnp_hqs, pnp_pgd, red
from experiments.common import timed_log, use_reference_data, write_json

SOLVERS = {"PGD": pnp_pgd, "ADMM": pnp_admm, "HQS": pnp_hqs, "DRS": pnp_drs, "RED": red}
PARAMETER = {"PGD": "step", "ADMM": "gamma", "HQS": "gamma", "DRS": "gamma", "RED": "lam"}
LIPSCHITZ = 1.0           # ||A||^2 of a circular blur by a nonnegative kernel of sum 1
MONOTONE_AFTER, MONOTONE_ATOL = 5, 1e-12


class Plugin(NamedTuple):   # a NamedTuple: the module may be loaded outside sys.modules
    """A plug-in denoiser family: ``make(strength)`` is the denoiser at one strength."""

    family: str
    strength: str                       # what the knob is: "alpha", "weight", "sigma"
    strengths: list[float]
    make: Callable[[float], torch.nn.Module]
    certified: bool                     # firmly nonexpansive by a certificate, at every strength
    solvers: tuple[str, ...]
    iters: int


def score(x, x_true) -> tuple[float, float]:
    xc = x.clamp(0, 1)
    return psnr(xc, x_true, 1.0), ssim(xc, x_true, 1.0)


def c_monotone(h: History) -> bool:
    return bool(np.all(np.diff(np.asarray(h.rel_change[MONOTONE_AFTER:])) <= MONOTONE_ATOL))


def solve(solver: str, value: float, den, problem, iters: int):
    """One solve; ``value`` is the solver's parameter (PARAMETER[solver])."""
    y, physics, x_true = problem
    cfg = PnPConfig(max_iter=iters, tol=0.0, lipschitz=LIPSCHITZ, reference=x_true,
                    data_range=1.0, compute_ssim=False)
    if solver == "RED":
        cfg.lam, cfg.step = value, 1.0 / (LIPSCHITZ + value)
    else:
        cfg.step = value
    return SOLVERS[solver](y, physics, den, cfg)


def guaranteed(certified: bool, solver: str, value: float) -> bool:
    """The convergence theorem's conditions (module docstring) at the tuned parameter."""
    if not certified:
        return False
    if solver == "PGD":
        return 0 < value < 2.0 / LIPSCHITZ and 1.0 < min(1.0, 1.0 / (value * LIPSCHITZ)) + 0.5
    if solver == "RED":
        return 1.0 / (LIPSCHITZ + value) < 2.0 / (LIPSCHITZ + value)
    return True


def tune(plugin: Plugin, solver: str, grid: list[float], held_out: list, log,
         label: str) -> dict:
    """(strength, parameter) with the best mean PSNR on the held-out problems, and the grid."""
    scores = {}
    for s in plugin.strengths:
        den = plugin.make(s)
        for v in grid:
            scores[s, v] = float(np.mean([score(solve(solver, v, den, p, plugin.iters)[0],
                                                p[2])[0] for p in held_out]))
    s, v = max(scores, key=lambda k: scores[k] if math.isfinite(scores[k]) else -math.inf)
    log(f"tuned {solver} x {label}: {plugin.strength} {s:g}, {PARAMETER[solver]} {v:g} "
        f"(mean held-out PSNR {scores[s, v]:.2f})")
    return {"strength": s, "parameter": v,
            "grid": {f"{plugin.strength}={a:g}": {f"{PARAMETER[solver]}={b:g}": p
                                                   for (a2, b), p in scores.items() if a2 == a}
                     for a in plugin.strengths}}


def plugins(args, log) -> tuple[dict[str, Plugin], dict[str, dict]]:
    """The plug-in denoisers by name, and what each is (card, training)."""
    out, info = {}, {}
    every = tuple(SOLVERS)
    for name in args.pretrained:
        model = pretrained.load(name)
        card = model.card
        out[name] = Plugin("convex FNE" if card.firmly_nonexpansive else "convex plain", "alpha",
                           args.alphas, lambda a, m=model: Relaxed(m, a),
                           bool(card.firmly_nonexpansive), every, args.iters)
        info[name] = {"family": out[name].family, "sigma_255": card.sigma * 255,
                      "firmly_nonexpansive": card.firmly_nonexpansive,
                      "lipschitz_certificate": card.lipschitz_certificate,
                      "certified_gap": card.certified_gap, "training_data": card.training_data,
                      "training_pixels": card.training_pixels}
    if args.dncnn_sigma > 0:
        for name, penalty in (("dncnn", 0.0), ("dncnn-fne-penalty", args.fne_penalty)):
            net, fit = train_dncnn(args.dncnn_sigma / 255.0, penalty, args, log)
            out[name] = Plugin("DnCNN" if penalty == 0 else "DnCNN + FNE penalty", "alpha",
                               args.alphas, lambda a, m=net: Relaxed(m, a), False, every,
                               args.iters)
            info[name] = {"family": out[name].family, "sigma_255": args.dncnn_sigma, **fit}
    if args.tv_weights:
        out["tv"] = Plugin("TV", "weight", args.tv_weights, TVDenoiser, True, every, args.iters)
        info["tv"] = {"family": "TV", "firmly_nonexpansive": True,
                      "note": "exact prox of weight * TV (scikit-image Chambolle)"}
    if args.bm3d_sigmas:
        out["bm3d"] = Plugin("BM3D", "sigma", args.bm3d_sigmas,
                             lambda s: BM3DDenoiser(s / 255.0), False,
                             tuple(args.bm3d_solvers), args.bm3d_iters)
        info["bm3d"] = {"family": "BM3D", "note": "the bm3d package; sigma on [0, 255]",
                        "solvers": list(args.bm3d_solvers), "iterations": args.bm3d_iters}
    return out, info


def grids(args) -> dict[str, list[float]]:
    return {"PGD": args.pgd_steps, "ADMM": args.gammas, "HQS": args.gammas,
            "DRS": args.gammas, "RED": args.red_lams}


def summarise(rows: list[dict], pairs: list[tuple[str, str]], kernels: list[int]) -> dict:
    def mean(key, sel=lambda r: True):
        return float(np.mean([r[f"{s} x {d}"][key] for r in rows if sel(r)]))

    out = {}
    for s, d in pairs:
        lab = f"{s} x {d}"
        out[lab] = {"solver": s, "denoiser": d,
                    "psnr": float(np.mean([r[lab]["psnr"] for r in rows])),
                    "ssim": float(np.mean([r[lab]["ssim"] for r in rows])),
                    "iterations": float(np.mean([r[lab]["iterations"] for r in rows])),
                    "seconds": float(np.mean([r[lab]["seconds"] for r in rows])),
                    "monotone_fraction": float(np.mean([r[lab]["c_monotone_after_5"]
                                                        for r in rows])),
                    "convergence_guaranteed": rows[0][lab]["convergence_guaranteed"],
                    "per_kernel": {str(k): float(np.mean([r[lab]["psnr"] for r in rows
                                                          if r["kernel"] == k]))
                                   for k in kernels if any(r["kernel"] == k for r in rows)},
                    "per_set": {n: float(np.mean([r[lab]["psnr"] for r in rows
                                                  if r["set"] == n]))
                                for n in sorted({r["set"] for r in rows})}}
    return out


def against_tv(summary: dict, names: list[str]) -> dict:
    """For each denoiser, its best solver against TV's best solver, kernel by kernel."""
    best = {}
    for d in names:
        rows = [v for v in summary.values() if v["denoiser"] == d]
        if rows:
            best[d] = max(rows, key=lambda v: v["psnr"])
    if "tv" not in best:
        return {}
    tv = best["tv"]
    return {d: {"solver": b["solver"], "psnr": b["psnr"], "tv_solver": tv["solver"],
                "tv_psnr": tv["psnr"],
                "kernels_at_least_tv": [k for k in b["per_kernel"]
                                        if b["per_kernel"][k] >= tv["per_kernel"][k]],
                "kernels": list(b["per_kernel"])}
            for d, b in best.items() if d != "tv"}


def print_table(summary: dict, names: list[str]) -> None:
    print("\nmean PSNR (dB) over the test problems; * = convergence guaranteed, "
          "(m) = c_k monotone on every run")
    print(f"{'denoiser':<20}" + "".join(f"{s:>14}" for s in SOLVERS))
    for d in names:
        cells = []
        for s in SOLVERS:
            v = summary.get(f"{s} x {d}")
            cells.append(f"{'-':>14}" if v is None else
                         f"{v['psnr']:9.2f}{'*' if v['convergence_guaranteed'] else ' '}"
                         f"{'(m)' if v['monotone_fraction'] == 1.0 else '   '}")
        print(f"{d:<20}" + "".join(cells))


def plot(path: Path, summary: dict, names: list[str], vs_tv: dict, blurred: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6), layout="constrained")
    ax, ax_k = fig.subplots(1, 2, width_ratios=[1.3, 1])
    width = 0.8 / max(1, len(names))
    present = [s for s in SOLVERS if any(v["solver"] == s for v in summary.values())]
    for j, d in enumerate(names):
        xs, ys = [], []
        for i, s in enumerate(present):
            v = summary.get(f"{s} x {d}")
            if v is not None:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(v["psnr"])
        ax.bar(xs, ys, width, label=d)
    ax.axhline(blurred, color="k", lw=0.8, ls=":", label="blurred input")
    ax.set_xticks(range(len(present)), [f"PnP-{s}" if s != "RED" else s for s in present])
    lo = min(v["psnr"] for v in summary.values())
    ax.set_ylim(max(0.0, min(lo, blurred) - 1.0), max(v["psnr"] for v in summary.values()) + 0.5)
    ax.set_ylabel("mean PSNR (dB)")
    n_k = len(next(iter(summary.values()))["per_kernel"])
    ax.set_title(f"deblurring, {n_k} Levin kernel(s): solver x denoiser (tuned)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    if vs_tv:
        first = next(iter(vs_tv.values()))
        ks = first["kernels"]
        tv_best = summary[f"{first['tv_solver']} x tv"]
        ax_k.plot(ks, [tv_best["per_kernel"][k] for k in ks], "k-o",
                  label=f"TV ({first['tv_solver']})")
        for d, b in vs_tv.items():
            row = summary[f"{b['solver']} x {d}"]
            ax_k.plot(ks, [row["per_kernel"][k] for k in ks], "--.",
                      label=f"{d} ({b['solver']}): >= TV on {len(b['kernels_at_least_tv'])}"
                            f"/{len(ks)}")
        ax_k.set_xlabel("Levin kernel")
        ax_k.set_ylabel("PSNR (dB), mean over the images")
        ax_k.set_title("each denoiser with its best solver, per kernel", fontsize=9)
        ax_k.legend(fontsize=7)
    fig.savefig(path, dpi=90)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 Set12 image, 1 kernel, 48 px, 8 iterations, small grids, no DnCNN")
    p.add_argument("--set12", type=int, default=1, help="first N Set12 images")
    p.add_argument("--bsd68", type=int, default=1, help="first N BSD68 images")
    p.add_argument("--kernels", nargs="+", type=int, default=list(range(8)))
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    p.add_argument("--tune-problems", type=int, default=1,
                   help="held-out problems the tuning averages over (the Set12 / BSD68 images "
                        "after the test ones, in turn)")
    p.add_argument("--pretrained", nargs="*", default=["gray-s5-fne", "gray-s15"],
                   metavar="NAME")
    p.add_argument("--alphas", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    p.add_argument("--pgd-steps", nargs="+", type=float, default=[1.0, 1.9])
    p.add_argument("--gammas", nargs="+", type=float, default=[0.3, 1.0, 3.0, 10.0])
    p.add_argument("--red-lams", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0])
    p.add_argument("--tv-weights", nargs="*", type=float, default=[0.0005, 0.002, 0.008, 0.03])
    p.add_argument("--bm3d-sigmas", nargs="*", type=float, default=[2.5, 5.0, 10.0])
    p.add_argument("--bm3d-solvers", nargs="+", default=["ADMM", "HQS"],
                   choices=list(SOLVERS))
    p.add_argument("--bm3d-gammas", nargs="+", type=float, default=[1.0, 4.0],
                   help="BM3D's gamma grid (a smaller one: each BM3D call is slow)")
    p.add_argument("--bm3d-iters", type=int, default=30)
    add_dncnn_arguments(p)
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    check_shipped_arguments(p, args.pretrained, args.alphas, args.tag, "--alphas")
    if args.bm3d_sigmas and importlib.util.find_spec("bm3d") is None:
        p.error("--bm3d-sigmas: BM3D needs the bm3d package (pip install bm3d, or the "
                "[baselines] extra); pass --bm3d-sigmas with no value to leave BM3D out")
    if args.tune_problems < 1:
        p.error(f"--tune-problems: expected at least 1, got {args.tune_problems}")
    if any(s >= 2.0 / LIPSCHITZ or s <= 0 for s in args.pgd_steps):
        p.error(f"--pgd-steps: every step must lie in (0, 2/L) = (0, 2), got {args.pgd_steps}")
    if args.quick:
        args.set12, args.bsd68, args.kernels, args.crop = 1, 1, [0], 48
        args.iters, args.bm3d_iters, args.dncnn_sigma = 8, 3, 0.0
        args.alphas, args.gammas, args.red_lams = [0.5, 1.0], [1.0], [0.3]
        args.pgd_steps, args.tv_weights = [1.9], [0.002]
        args.bm3d_sigmas = [5.0] if args.bm3d_sigmas else []
        args.bm3d_gammas = [1.0]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    log = timed_log(args.quiet, t_start)
    out_dir = Path(args.out)
    stem = "pnp_solvers_deblur" + ("_quick" if args.quick else "") + args.tag

    kernels = load_levin_kernels()
    n_tune = {"set12": (args.tune_problems + 1) // 2, "bsd68": args.tune_problems // 2}
    images = {"set12": load_test_images("set12", grayscale=True)[:args.set12 + n_tune["set12"]],
              "bsd68": load_test_images("bsd68", grayscale=True)[:args.bsd68 + n_tune["bsd68"]]}
    images = {n: [centre_crop(im, min(args.crop, *im.shape)) for im in ims]
              for n, ims in images.items()}

    def make(ki: int, name: str, i: int):
        physics = Blur(kernels[ki], padding="circular")
        x_true = torch.from_numpy(images[name][i].copy())[None, None]
        gen = torch.Generator().manual_seed(1000 * ki + i + (500 if name == "bsd68" else 0))
        y = physics.A(x_true) + args.noise * torch.randn(x_true.shape, generator=gen,
                                                         dtype=torch.float64)
        return y, physics, x_true

    tests = [(ki, n, i) for ki in args.kernels for n, count in (("set12", args.set12),
                                                               ("bsd68", args.bsd68))
             for i in range(count)]
    # held out: the images after the test ones, Set12 and BSD68 in turn, kernels spread out
    held_out_ids = [(args.kernels[(3 * j) % len(args.kernels)], "set12" if j % 2 == 0 else
                     "bsd68", (args.set12 if j % 2 == 0 else args.bsd68) + j // 2)
                    for j in range(args.tune_problems)]
    held_out = [make(*h) for h in held_out_ids]

    dens, info = plugins(args, log)
    names = list(dens)
    grid = grids(args)
    tuned: dict[str, dict] = {}
    pairs = [(s, d) for d in names for s in SOLVERS
             if s in dens[d].solvers and s in args.solvers]
    for s, d in pairs:
        g = args.bm3d_gammas if d == "bm3d" and PARAMETER[s] == "gamma" else grid[s]
        tuned[f"{s} x {d}"] = tune(dens[d], s, g, held_out, log, d)
    built = {lab: dens[lab.split(" x ")[1]].make(t["strength"]) for lab, t in tuned.items()}

    rows: list[dict] = []
    payload: dict = {}

    def save(done: bool) -> dict:
        nonlocal payload
        summary = summarise(rows, pairs, args.kernels)
        vs_tv = against_tv(summary, names)
        payload = {
            "experiment": "PnP deblurring: every splitting x every plug-in denoiser, Levin "
                          "kernels, Set12 + BSD68 crops",
            "complete": done, "args": run_settings(args),
            "tuning": {"on": "held-out problems (kernel, set, image): "
                             + ", ".join(f"({k}, {n}, {i})" for k, n, i in held_out_ids),
                       "chosen": {lab: {k: t[k] for k in ("strength", "parameter")}
                                  for lab, t in tuned.items()},
                       "psnr_grid": {lab: t["grid"] for lab, t in tuned.items()}},
            "denoisers": info, "summary": summary, "best_vs_tv": vs_tv,
            "blurred_psnr": float(np.mean([r["blurred_psnr"] for r in rows])),
            "notes": {"convergence_guaranteed": "certified firmly nonexpansive denoiser and "
                                                "the solver's step condition (docstring)",
                      "c_monotone_after_5": f"c_k nonincreasing (to {MONOTONE_ATOL}) for k > "
                                            f"{MONOTONE_AFTER}"},
            "rows": rows, "seconds": time.perf_counter() - t_start}
        write_json(out_dir / f"{stem}.json", payload)
        return payload

    for ki, name, i in tests:
        problem = make(ki, name, i)
        row = {"kernel": ki, "set": name, "image": i,
               "blurred_psnr": score(problem[0], problem[2])[0]}
        for s, d in pairs:
            lab = f"{s} x {d}"
            t0 = time.perf_counter()
            x, h = solve(s, tuned[lab]["parameter"], built[lab], problem, dens[d].iters)
            p, q = score(x, problem[2])
            row[lab] = {"psnr": p, "ssim": q, "iterations": h.n_iter,
                        "seconds": time.perf_counter() - t0,
                        "c_monotone_after_5": c_monotone(h),
                        "convergence_guaranteed": guaranteed(dens[d].certified, s,
                                                             tuned[lab]["parameter"])}
        rows.append(row)
        save(False)
        log(f"kernel {ki} {name} {i}: " + ", ".join(
            f"{lab} {row[lab]['psnr']:.2f}" for lab in tuned))
    out = save(True)
    if not args.quiet:
        print_table(out["summary"], names)
        for d, b in out["best_vs_tv"].items():
            print(f"{d} ({b['solver']}) {b['psnr']:.2f} dB vs TV ({b['tv_solver']}) "
                  f"{b['tv_psnr']:.2f}: >= TV on {len(b['kernels_at_least_tv'])}/"
                  f"{len(b['kernels'])} kernels")
    plot(out_dir / f"{stem}.png", out["summary"], names, out["best_vs_tv"], out["blurred_psnr"])
    log(f"wrote {out_dir / stem}.json and .png")
    return out


if __name__ == "__main__":
    main()
