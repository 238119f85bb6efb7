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

``--pretrained NAME ...`` adds, for each shipped convex-trained denoiser of
``convexnn.pretrained``, PnP-PGD and RPODM with it in place of the DnCNN (rows
``"PnP-PGD (pretrained:NAME)"`` and ``"RPODM (pretrained:NAME)"``), with its own PnP step and mu
picked by the same grids on the same held-out problem. Its card (noise level, firm
nonexpansiveness, Lipschitz certificate) goes into the JSON with the PnP-FB convergence
conditions (J firmly nonexpansive, step < 2/L, relaxation < min(1, 1/(step L)) + 1/2). Every
row records whether ``c_k = ||x_k - x_{k-1}|| / ||x_0||`` is nonincreasing after the first 5
iterations (``c_monotone_after_5``, as in pnp_deblur.py). ``--tag`` suffixes the output names.

``--fne-alphas A ...`` (default 1: the model as shipped) gives each shipped model a strength
knob that keeps its certificate: the denoiser is ``Relaxed(J, alpha) = (1 - alpha) I + alpha J``
(firmly nonexpansive for 0 < alpha <= 1 when J is), alpha picked from this grid jointly with the
step (PnP-PGD) and, separately, jointly with mu (RPODM), on the same held-out problem as TV's
weight. The chosen alphas, the joint grid PSNRs and each relaxed denoiser's certificate go into
the JSON's ``pretrained`` section. (A shipped model's strength is fixed by its training noise
level; TV's weight is tuned.)

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_deblur.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_deblur.py              # the run in results/
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. python experiments/podm_deblur.py \\
        --pretrained gray-s5-fne gray-s10-fne gray-s15 --tag _pretrained
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. python experiments/podm_deblur.py \
        --pretrained gray-s5-fne gray-s10-fne --fne-alphas 0.25 0.5 0.75 1.0 \
        --kernels 0 1 2 3 4 5 6 7 --images 2 --tag _levin8_tuned
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from podm_sparse_sr import centre_crop, load_or_train_denoiser, write_json

from convexnn import pretrained
from convexnn.data import load_levin_kernels, load_test_images
from convexnn.solvers.denoisers import Relaxed, TVDenoiser
from convexnn.solvers.history import History, psnr, ssim
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd
from convexnn.solvers.podm import PODMConfig, podm
from convexnn.solvers.prox import SparseBox
from experiments.common import portable_settings, timed_log, use_reference_data
from experiments.plugin_denoisers import check_shipped_arguments

METHODS = ("RPODM", "PODM (checked)", "PnP-PGD", "TV")   # the rows with the DnCNN (and TV)
PRETRAINED_SOLVERS = ("PnP-PGD", "RPODM")                # the rows of each shipped denoiser
DNCNN = "dncnn"
LIPSCHITZ = 1.0        # ||A||^2 of a circular blur by a nonnegative kernel of sum 1
RELAXATION = 1.0       # PnPConfig's default relaxation lambda of PnP-PGD
MONOTONE_AFTER = 5     # c_k is checked for k > 5, as pnp_deblur.py's c_monotone_after_5
MONOTONE_ATOL = 1e-12
# which grid tunes which parameter of which solver
GRIDS = {"mu": ("RPODM", "mu_grid"), "tv_weight": ("TV", "tv_grid"),
         "pnp_step": ("PnP-PGD", "step_grid")}
SHIPPED_KEYS = ("mu", "pnp_step")   # tuned per shipped model, each jointly with that solver's alpha
DEFAULT_IMAGES, DEFAULT_KERNELS, DEFAULT_ALPHAS = 3, [0, 2, 4, 6], [1.0]


class Method(NamedTuple):      # a NamedTuple: the module may be loaded outside sys.modules
    """One row of the table: ``solver`` (one of METHODS) with the denoiser ``denoiser``."""

    label: str
    solver: str
    denoiser: str


def pretrained_key(name: str) -> str:
    return f"pretrained:{name}"


def method_list(names: list[str]) -> list[Method]:
    """The DnCNN rows (labels unchanged), then PnP-PGD and RPODM with each shipped model."""
    rows = [Method(m, m, DNCNN) for m in METHODS]
    rows += [Method(f"{s} ({pretrained_key(n)})", s, pretrained_key(n))
             for n in names for s in PRETRAINED_SOLVERS]
    return rows


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
        cfg = PnPConfig(max_iter=args.iters, tol=0.0, lipschitz=LIPSCHITZ, reference=x_true,
                        data_range=1.0, compute_ssim=False)
        return pnp_pgd(y, physics, TVDenoiser(p["tv_weight"]), cfg)   # step 1/L = 1
    if name == "PnP-PGD":
        cfg = PnPConfig(max_iter=args.iters, tol=0.0, lipschitz=LIPSCHITZ, step=p["pnp_step"],
                        reference=x_true, data_range=1.0, compute_ssim=False)
        return pnp_pgd(y, physics, net, cfg)
    prox = SparseBox(float(y.min()), float(y.max()), s=None)
    mode = "always" if name == "RPODM" else "check"
    cfg = PODMConfig(n_stages=args.stages, mu=p["mu"], optimality=mode, tol=0.0,
                     lipschitz=LIPSCHITZ, data_range=1.0, compute_ssim=False)
    return podm(y, physics, prox, net, cfg, x_ref=x_true)


def score(x, x_true) -> tuple[float, float]:
    xc = x.clamp(0, 1)
    return psnr(xc, x_true, 1.0), ssim(xc, x_true, 1.0)


def c_monotone(h: History) -> bool:
    """c_k = ||x_k - x_{k-1}|| / ||x_0|| nonincreasing after the first MONOTONE_AFTER."""
    return bool(np.all(np.diff(np.asarray(h.rel_change[MONOTONE_AFTER:])) <= MONOTONE_ATOL))


def tune(problem, net, args, log, keys: tuple[str, ...] = tuple(GRIDS),
         label: str = DNCNN) -> tuple[dict, dict]:
    """Grid search on one problem (PSNR) of each parameter in ``keys`` (of GRIDS: mu for
    RPODM, TV weight, PnP-PGD step), with the network ``net``."""
    y, physics, x_true = problem
    chosen = {key: getattr(args, GRIDS[key][1])[0] for key in GRIDS}
    table = {}
    for key in keys:
        method, grid_arg = GRIDS[key]
        grid = getattr(args, grid_arg)
        scores = {}
        for v in grid:
            x, _ = run_method(method, y, physics, x_true, net, {**chosen, key: v}, args)
            scores[v] = score(x, x_true)[0]
        chosen[key] = max(scores, key=scores.get)
        table[key] = {str(k): v for k, v in scores.items()}
        log(f"tuned {key} for {method} ({label}): {chosen[key]} "
            f"(PSNR {scores[chosen[key]]:.2f})")
    return {k: chosen[k] for k in keys}, table


def tune_relaxed(problem, model, args, log, label: str) -> tuple[dict, dict, dict]:
    """``tune`` for a shipped model, with its strength: for each parameter in SHIPPED_KEYS (mu
    for RPODM, the PnP-PGD step), the pair (alpha, value) of ``args.fne_alphas`` x the grid with
    the best PSNR on ``problem``, the denoiser being ``Relaxed(model, alpha)``. Ties keep the
    first pair (alpha outer, value inner), so ``--fne-alphas 1`` picks what ``tune`` picks.
    Returns the parameters (with ``alpha`` per solver), the PSNRs at the chosen alpha (as
    ``tune``) and the joint grid ``{key: {alpha: {value: PSNR}}}``."""
    y, physics, x_true = problem
    chosen = {key: getattr(args, GRIDS[key][1])[0] for key in GRIDS}
    alphas, table, joint = {}, {}, {}
    for key in SHIPPED_KEYS:
        method, grid_arg = GRIDS[key]
        scores = {}
        for a in args.fne_alphas:
            den = Relaxed(model, a)
            for v in getattr(args, grid_arg):
                x, _ = run_method(method, y, physics, x_true, den, {**chosen, key: v}, args)
                scores[a, v] = score(x, x_true)[0]
        alphas[method], chosen[key] = max(scores, key=scores.get)
        table[key] = {str(v): s for (a, v), s in scores.items() if a == alphas[method]}
        joint[key] = {str(a): {str(v): s for (b, v), s in scores.items() if b == a}
                      for a in args.fne_alphas}
        log(f"tuned alpha, {key} for {method} ({label}): {alphas[method]}, {chosen[key]} "
            f"(PSNR {scores[alphas[method], chosen[key]]:.2f})")
    return {**{k: chosen[k] for k in SHIPPED_KEYS}, "alpha": alphas}, table, joint


def relaxed_card(den: Relaxed) -> dict:
    """What the relaxed denoiser is proven to be (its certificate follows from J's)."""
    return {"alpha": den.alpha, "lipschitz_certificate": den.lipschitz_certificate,
            "firmly_nonexpansive": den.firmly_nonexpansive}


def pgd_conditions(firmly_nonexpansive: bool, step: float,
                   lipschitz: float = LIPSCHITZ, relaxation: float = RELAXATION) -> dict:
    """The PnP-FB convergence conditions (Pesquet et al. 2021) at the tuned step."""
    step_bound = 2.0 / lipschitz
    relaxation_bound = min(1.0, 1.0 / (step * lipschitz)) + 0.5
    return {"step": step, "lipschitz": lipschitz, "step_bound": step_bound,
            "relaxation": relaxation, "relaxation_bound": relaxation_bound,
            "convergence_guaranteed": bool(firmly_nonexpansive and 0 < step < step_bound
                                           and 0 < relaxation < relaxation_bound)}


def load_shipped(names: list[str]) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    """The shipped denoisers by ``pretrained:<name>``, with what their cards say."""
    nets, info = {}, {}
    for name in names:
        den = pretrained.load(name)
        c = den.card
        nets[pretrained_key(name)] = den
        info[pretrained_key(name)] = {
            "sigma": c.sigma, "sigma_255": c.sigma * 255, "architecture": c.architecture,
            "n_blocks": c.n_blocks, "firmly_nonexpansive": c.firmly_nonexpansive,
            "lipschitz_certificate": c.lipschitz_certificate,
            "certified_gap": c.certified_gap, "training_data": c.training_data,
            "training_pixels": c.training_pixels}
    return nets, info


def blur_lipschitz(kernels: list[np.ndarray], side: int) -> float:
    """max over the kernels of ||A||^2 = max |FFT(k)|^2 of the circular blur on side x side."""
    return float(max(np.abs(np.fft.fft2(k, (side, side))).max() ** 2 for k in kernels))


def solve_row(problem, methods: list[Method], nets: dict, params: dict, args) -> tuple:
    """Every method on one problem: the table row, and each method's (estimate, History);
    ``nets`` holds each row's denoiser by label."""
    ki, i, y, physics, x_true = problem
    row: dict = {"kernel": ki, "image": i, "blurred_psnr": score(y, x_true)[0]}
    solved = {}
    for m in methods:
        t0 = time.perf_counter()
        x, h = run_method(m.solver, y, physics, x_true, nets[m.label], params[m.denoiser], args)
        row[m.label] = dict(zip(("psnr", "ssim"), score(x, x_true), strict=True),
                            seconds=time.perf_counter() - t0, stages=h.n_iter,
                            c_monotone_after_5=c_monotone(h),
                            **{k: h.flags[k] for k in ("n_accepted", "n_fallback")
                               if k in h.flags})
        solved[m.label] = (x, h)
    return row, solved


def summarise(rows: list[dict], labels: list[str]) -> dict:
    summary = {m: {"psnr": float(np.mean([r[m]["psnr"] for r in rows])),
                   "ssim": float(np.mean([r[m]["ssim"] for r in rows])),
                   "seconds": float(np.mean([r[m]["seconds"] for r in rows])),
                   "iterations": float(np.mean([r[m]["stages"] for r in rows])),
                   "monotone_fraction": float(np.mean([r[m]["c_monotone_after_5"]
                                                       for r in rows]))}
               for m in labels}
    summary["blurred input"] = {"psnr": float(np.mean([r["blurred_psnr"] for r in rows]))}
    return summary


def print_table(summary: dict, per_kernel: dict, labels: list[str]) -> None:
    w = max(16, *(len(m) + 2 for m in labels))
    print(f"\n{'method':<{w}}{'PSNR':>8}{'SSIM':>8}{'iters':>7}{'c_k mono':>10}{'s/image':>9}")
    for m in labels:
        s = summary[m]
        print(f"{m:<{w}}{s['psnr']:8.2f}{s['ssim']:8.3f}{s['iterations']:7.0f}"
              f"{s['monotone_fraction']:10.2f}{s['seconds']:9.2f}")
    print(f"{'blurred input':<{w}}{summary['blurred input']['psnr']:8.2f}")
    print("PSNR per kernel: " + "; ".join(
        f"{k}: " + ", ".join(f"{m} {v:.2f}" for m, v in row.items())
        for k, row in per_kernel.items()))


def plot(path: Path, example: dict, curves: dict, labels: list[str]) -> None:
    from matplotlib.figure import Figure

    panels = ["truth", "blurred", *labels]
    ncols = min(6, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows + 3.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.9 * nrows, 3.6])
    for i, name in enumerate(panels):
        ax = top.add_subplot(nrows, ncols, i + 1)
        ax.imshow(example[name]["image"], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name + ("" if "psnr" not in example[name] else
                             f"\n{example[name]['psnr']:.2f} dB / {example[name]['ssim']:.3f}"),
                     fontsize=7)
    style = {m: ("-" if m in METHODS else "--") for m in labels}
    ax, ax_c = bottom.subplots(1, 2)
    for name in labels:
        ax.plot(np.arange(1, len(curves[name]["psnr"]) + 1), curves[name]["psnr"],
                style[name], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("stage / iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("first test problem (first kernel, image 0)", fontsize=8)
    ax.legend(fontsize=6)
    for name in labels:
        ax_c.loglog(np.arange(1, len(curves[name]["rel_change"]) + 1),
                    np.maximum(curves[name]["rel_change"], 1e-16), style[name], label=name)
    fb = curves["PODM (checked)"]["fallback"]
    ax_c.set_title(f"PODM (checked): fallback at {sum(fb)}/{len(fb)} stages", fontsize=8)
    ax_c.set_xlabel("stage / iteration")
    ax_c.set_ylabel("c_k = ||x_k - x_{k-1}|| / ||x_0||")
    ax_c.legend(fontsize=6)
    fig.savefig(path, dpi=90)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 image, 1 kernel, 64 px, few stages")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="first N images of Set12")
    p.add_argument("--kernels", nargs="+", type=int, default=list(DEFAULT_KERNELS))
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--stages", type=int, default=30, help="PODM / RPODM stages")
    p.add_argument("--iters", type=int, default=200, help="PnP-PGD / TV iterations")
    p.add_argument("--mu-grid", nargs="+", type=float, default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--tv-grid", nargs="+", type=float, default=[0.0005, 0.001, 0.002, 0.004])
    p.add_argument("--step-grid", nargs="+", type=float, default=[1.0, 1.5, 1.9])
    p.add_argument("--sigma-train", type=float, default=0.02)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--pretrained", nargs="+", default=[], metavar="NAME",
                   help="shipped convex-trained denoisers (convexnn.pretrained.names()) to add "
                        "as PnP-PGD and RPODM rows, e.g. gray-s5-fne gray-s15")
    p.add_argument("--fne-alphas", nargs="+", type=float, default=list(DEFAULT_ALPHAS),
                   metavar="A",
                   help="strengths 0 < A <= 1 of each shipped model: the denoiser is "
                        "Relaxed(J, A) = (1 - A) I + A J (firmly nonexpansive when J is), A "
                        "tuned jointly with the PnP step / mu on the held-out problem "
                        "(default: 1, the model as shipped)")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines or tables (the JSON and PNG are still written)")
    args = p.parse_args(argv)
    check_shipped_arguments(p, args.pretrained, args.fne_alphas, args.tag)
    if args.quick:
        args.images, args.kernels, args.crop, args.stages, args.iters = 1, [0], 64, 8, 20
        args.mu_grid, args.tv_grid, args.step_grid = [0.03, 0.1], [0.001, 0.004], [1.9]
    return args


def command_line(args: argparse.Namespace) -> str:
    full = not args.quick      # --quick sets the images and kernels itself

    def nums(values) -> str:
        return " ".join(f"{v:g}" for v in values)

    return ("python experiments/podm_deblur.py" + (" --quick" if args.quick else "")
            + (" --pretrained " + " ".join(args.pretrained) if args.pretrained else "")
            + (f" --fne-alphas {nums(args.fne_alphas)}"
               if args.fne_alphas != DEFAULT_ALPHAS else "")
            + (f" --kernels {nums(args.kernels)}"
               if full and args.kernels != DEFAULT_KERNELS else "")
            + (f" --images {args.images}" if full and args.images != DEFAULT_IMAGES else "")
            + (f" --tag {args.tag}" if args.tag else ""))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    out_dir = Path(args.out)
    net, net_info = load_or_train_denoiser(out_dir / "podm_dncnn.pt", args.sigma_train,
                                           args.train_steps, log=log)
    shipped, shipped_info = load_shipped(args.pretrained)
    methods = method_list(args.pretrained)
    labels = [m.label for m in methods]
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
    held_out = make(args.kernels[0], args.images)[2:]
    params = {}
    dncnn = Float32(net)
    params[DNCNN], grid_table = tune(held_out, dncnn, args, log)
    nets = {m.label: dncnn for m in methods if m.denoiser == DNCNN}
    for key, model in shipped.items():
        params[key], table, joint = tune_relaxed(held_out, model, args, log, label=key)
        relaxed = {s: Relaxed(model, a) for s, a in params[key]["alpha"].items()}
        nets.update({m.label: relaxed[m.solver] for m in methods if m.denoiser == key})
        shipped_info[key].update(
            tuned=params[key], psnr_grid=table, alpha_grid=args.fne_alphas,
            psnr_grid_alpha=joint, relaxed={s: relaxed_card(d) for s, d in relaxed.items()},
            pnp_pgd=pgd_conditions(relaxed["PnP-PGD"].firmly_nonexpansive,
                                   params[key]["pnp_step"]))
    rows, example, curves = [], {}, {}
    for problem in problems:
        ki, i, y, _, x_true = problem
        row, solved = solve_row(problem, methods, nets, params, args)
        if (ki, i) == (args.kernels[0], 0):
            for m, (x, h) in solved.items():
                example[m] = {"image": x.clamp(0, 1)[0, 0].numpy(), **row[m]}
                curves[m] = {"psnr": h.psnr, "rel_change": h.rel_change,
                             "fallback": h.series("fallback")}
            example["truth"] = {"image": x_true[0, 0].numpy()}
            example["blurred"] = {"image": y.clamp(0, 1)[0, 0].numpy()}
        rows.append(row)
        log(f"kernel {ki} image {i}: " + ", ".join(
            f"{m} {row[m]['psnr']:.2f} dB" for m in labels))
    summary = summarise(rows, labels)
    per_kernel = {f"kernel {ki}": {m: float(np.mean([r[m]["psnr"] for r in rows
                                                     if r["kernel"] == ki])) for m in labels}
                  for ki in args.kernels}
    fb = [r["PODM (checked)"]["n_fallback"] for r in rows]
    if not args.quiet:
        print_table(summary, per_kernel, labels)
        print(f"PODM (checked): fallback at {sum(fb)}/{len(fb) * args.stages} stages; "
              f"tuned parameters {params}")
    stem = "podm_deblur" + ("_quick" if args.quick else "") + args.tag
    plot(out_dir / f"{stem}.png", example, curves, labels)
    payload = {"experiment": "RPODM deblurring, Levin kernels, noise 0.01 (Sec. 5.2)",
               "command": command_line(args),
               "args": portable_settings(args), "denoiser": net_info,
               "tuning": {"on": f"Set12 image {args.images}, kernel {args.kernels[0]} (held "
                                f"out: not in the table)", "chosen": params[DNCNN],
                          "psnr_grid": grid_table},
               "pretrained": shipped_info,
               "methods": {m.label: {"solver": m.solver, "denoiser": m.denoiser}
                           for m in methods},
               "lipschitz": {"used": LIPSCHITZ, "measured_max_over_kernels":
                             blur_lipschitz([kernels[k] for k in args.kernels],
                                            images[0].shape[0])},
               "notes": {"stages": "iterations (PnP-PGD, TV) or stages (RPODM, PODM)",
                         "relaxed": "a shipped model J is used as Relaxed(J, alpha) = "
                                    "(1 - alpha) I + alpha J, alpha per solver (pretrained."
                                    "<name>.tuned.alpha, from --fne-alphas, tuned jointly with "
                                    "the PnP step / mu); psnr_grid: the PSNRs at that alpha, "
                                    "psnr_grid_alpha: {param: {alpha: {value: PSNR}}}; the "
                                    "lipschitz_certificate of pretrained.<name> is J's, that of "
                                    "pretrained.<name>.relaxed.<solver> the relaxed one's",
                         "c_monotone_after_5": "c_k = ||x_k - x_{k-1}|| / ||x_0|| "
                                               f"nonincreasing (to {MONOTONE_ATOL}) for k > "
                                               f"{MONOTONE_AFTER}",
                         "monotone_fraction": "fraction of the runs with c_monotone_after_5"},
               "summary": summary, "per_kernel_psnr": per_kernel, "rows": rows}
    return write_json(out_dir / f"{stem}.json", payload, t_start, quiet=args.quiet)


if __name__ == "__main__":
    main()
