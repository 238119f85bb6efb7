"""PODM for l_0.8 sparse-coding super-resolution (Liu et al., NeurIPS 2018, Sec. 5.1,
Fig. 2 and Table 1), against FISTA, proximal gradient and a naive network-in-the-loop
iteration (IRCNN-style, ``x = F(A(x))`` without the optimality module).

Model: ``min_a 1/2 ||D a - o||^2 + lam ||a||_0.8^0.8`` with ``D = S W^T``: S the average-pool
downsampling (x2, x3, x4) and ``W^T`` the inverse 3-level orthonormal Haar transform. Solved in
the image variable ``x = W^T a`` (the same iterates, W orthonormal): ``g = InBasis(Lp(lam,
0.8), HaarWavelet(3))``. Set5, grayscale (ITU-R 601 luma), centre crops whose side divides by
24; noise-free low-resolution inputs; every method starts at ``x0 = A^T y = S^T o`` (for
average pooling: nearest-neighbour upsampling divided by f^2) and runs the same number of
stages.

The network A is a small DnCNN (convexnn.solvers.dncnn) trained here on BSD68 patches (disjoint from
Set5) for a couple of minutes; its weights are cached in
``experiments/results/podm_dncnn.pt`` (state dict, loaded with weights_only=True) and reused by
podm_deblur.py. Writes ``experiments/results/podm_sparse_sr[_bicubic][_quick][TAG].json`` and
``.png`` (``--tag TAG`` suffixes the names).

``--pretrained NAME ...`` adds, for each shipped convex-trained denoiser of
``convexnn.pretrained``, the rows ``"RPODM (pretrained:NAME)"`` (``optimality="always"``, no
check) and ``"PODM (checked) (pretrained:NAME)"`` (eqs. 5-6, ``c = --c`` or mu / 4) with it in
place of the DnCNN, and a row ``"RPODM"`` with the DnCNN for comparison. Each shipped model J is
used as ``Relaxed(J, alpha) = (1 - alpha) I + alpha J`` (firmly nonexpansive for 0 < alpha <= 1
when J is), alpha from ``--fne-alphas`` (default 1: the model as shipped) tuned jointly with mu
from ``--mu-grid`` by the PSNR of RPODM on ONE held-out problem: Set14 ``pepper`` (not in Set5,
the test set), the same centre crop, at x4 (or the largest of ``--scales`` without 4); the
checked PODM row uses the same alpha and mu. The DnCNN's RPODM mu is picked by the same mu grid
on the same problem; the five original rows keep ``--mu``. The JSON gets a ``pretrained``
section (each model's card: sigma, firmly_nonexpansive, lipschitz_certificate, ...; the tuned
alpha / mu and the PSNR grid), and every row records PSNR, SSIM, stages, seconds and
``c_monotone_after_5`` (``c_k = ||x_k - x_{k-1}|| / ||x_0||`` nonincreasing after 5 stages, as
podm_deblur.py), with nearest-neighbour and bicubic interpolation of the low-resolution input
as references; the PNG then shows one test problem's estimates (PSNR in the titles), its PSNR
and c_k curves and the mean PSNR per scale. Without ``--pretrained`` the output is as before.

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_sparse_sr.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/podm_sparse_sr.py           # the run in results/
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. python experiments/podm_sparse_sr.py \\
        --pretrained gray-s5-fne gray-s10-fne gray-s15 --fne-alphas 0.25 0.5 1.0 --tag _pretrained
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convexnn.data import load_test_images
from convexnn.solvers.denoisers import Relaxed
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, train_denoiser
from convexnn.solvers.history import History, psnr, ssim
from convexnn.solvers.operators import Downsample
from convexnn.solvers.podm import PODMConfig, fista, podm, proximal_gradient
from convexnn.solvers.prox import HaarWavelet, InBasis, Lp
from experiments.common import portable_settings, timed_log, use_reference_data
from experiments.plugin_denoisers import check_shipped_arguments

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("PODM", "PODM-descent", "FISTA", "PG", "IRCNN-style")
# --pretrained: the DnCNN's RPODM row, then these rows for each shipped model
DNCNN, DNCNN_RPODM = "dncnn", "RPODM"
PRETRAINED_SOLVERS = ("RPODM", "PODM (checked)")
INTERPOLATIONS = ("nearest", "bicubic")      # reference rows: interpolation of the input y
DEFAULT_ALPHAS, DEFAULT_MU_GRID = [1.0], [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
HELD_OUT = ("set14", 10, "pepper")    # (set, index in file-name order, name): tuning only
TUNE_SCALE = 4                        # tuning scale when in --scales, else the largest
NEW_ARGS = ("pretrained", "fne_alphas", "mu_grid", "tag")   # not in the JSON of a plain run
ROW_CURVES = ("energy", "psnr", "ssim", "rel_change", "fallback")   # curves of the added rows


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


def sr_problem(x_true: torch.Tensor, factor: int, args) -> tuple:
    """``(y, physics, prox, base)``: the low-resolution input, S, g and the shared PODMConfig
    fields of one image and scale."""
    physics = Downsample(factor, args.filter)
    y = physics.A(x_true)
    prox = InBasis(Lp(args.lam, 0.8), HaarWavelet(3))
    base = dict(n_stages=args.stages, tol=0.0, data_range=1.0,           # x0 = A^T y
                lipschitz=1 / factor**2 if args.filter == "average" else None)
    return y, physics, prox, base


def run_network_row(solver: str, problem: tuple, den, mu: float, args, x_true):
    """RPODM (``optimality="always"``) or the checked PODM (eqs. 5-6, ``c = args.c``, None ->
    mu / 4) with the network ``den`` and weight ``mu``."""
    y, physics, prox, base = problem
    if solver == "RPODM":
        cfg = PODMConfig(mu=mu, optimality="always", **base)
    elif solver == "PODM (checked)":
        cfg = PODMConfig(mu=mu, c=args.c, **base)
    else:
        raise ValueError(f"run_network_row: solver: expected one of {PRETRAINED_SOLVERS}, got "
                         f"{solver!r}")
    return podm(y, physics, prox, den, cfg, x_ref=x_true)


def c_monotone(h: History) -> bool:
    """podm_deblur.c_monotone (c_k nonincreasing after the first 5 stages); imported here, not
    at the top: podm_deblur imports this module."""
    from podm_deblur import c_monotone as deblur_c_monotone

    return deblur_c_monotone(h)


def interpolated(y: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """The low-resolution input upsampled by ``mode`` (nearest / bicubic), clipped to [0, 1]."""
    x = F.interpolate(y, scale_factor=factor, mode=mode,
                      **({} if mode == "nearest" else {"align_corners": False}))
    return x.clamp(0, 1)


def solve_all(x_true: torch.Tensor, factor: int, net, args, extra: tuple = (),
              keep: dict | None = None) -> dict:
    """Every method on one image and scale. ``extra``: the rows added by --pretrained, as
    ``(label, solver, denoiser, mu)``; with them every row also records its stages and
    c_monotone_after_5, and the interpolations of y are scored. ``keep``: filled with each
    row's estimate (for the figure)."""
    problem = sr_problem(x_true, factor, args)
    y, physics, prox, base = problem
    x0 = physics.A_adjoint(y)
    out = {"x0": {"psnr": psnr(x0, x_true, 1.0), "ssim": ssim(x0, x_true, 1.0)}}
    if extra:
        for mode in INTERPOLATIONS:
            xi = interpolated(y, factor, mode)
            out[mode] = {"psnr": psnr(xi, x_true, 1.0), "ssim": ssim(xi, x_true, 1.0)}
            if keep is not None:
                keep[mode] = xi
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
    for label, solver, den, mu in extra:
        runs[label] = (lambda solver=solver, den=den, mu=mu:
                       run_network_row(solver, problem, den, mu, args, x_true))
    added = {label for label, *_ in extra}
    for name, run in runs.items():
        t0 = time.perf_counter()
        x, h = run()
        out[name] = {"psnr": h.psnr[-1], "ssim": h.ssim[-1], "phi": h.energy[-1],
                     "seconds": time.perf_counter() - t0, "phi0": h.flags["phi0"],
                     "curves": {k: h.series(k) for k in
                                (ROW_CURVES if name in added else
                                 ("energy", "rel_error", "recon_error", "ssim", "psnr",
                                  "optimality_error", "optimality_bound", "fallback"))},
                     **{k: h.flags[k] for k in ("n_accepted", "n_fallback",
                                                "n_descent_rejected", "n_stalled")
                        if k in h.flags}}
        if extra:
            out[name].update(stages=h.n_iter, c_monotone_after_5=c_monotone(h))
            if name in METHODS:      # the original rows' curves gain c_k
                out[name]["curves"]["rel_change"] = h.rel_change
        if keep is not None:
            keep[name] = x
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


def summarise_rows(results: list, scales, labels: list[str]) -> dict:
    """--pretrained: per scale, every row's mean PSNR, SSIM, stages, seconds and the fraction
    of images with c_monotone_after_5; the interpolations and x0 as references."""
    table = {}
    for f in scales:
        rows = [r for r in results if r["scale"] == f]

        def mean(m: str, key: str, rows=rows) -> float:
            return float(np.mean([r[m][key] for r in rows]))

        table[f"x{f}"] = {m: {"psnr": mean(m, "psnr"), "ssim": mean(m, "ssim"),
                              "stages": mean(m, "stages"), "seconds": mean(m, "seconds"),
                              "monotone_fraction": mean(m, "c_monotone_after_5")}
                          for m in labels}
        for ref in (*INTERPOLATIONS, "x0"):
            table[f"x{f}"][ref] = {"psnr": mean(ref, "psnr"), "ssim": mean(ref, "ssim")}
    return table


def tune_rpodm(problem: tuple, x_true, model, alphas: list, args, log,
               label: str) -> tuple[dict, dict]:
    """(alpha, mu) of RPODM with ``Relaxed(model, alpha)`` (``alpha = None``: ``model`` as it
    is) with the best final PSNR on ``problem``, over ``alphas`` x ``args.mu_grid``; ties keep
    the first pair (alpha outer, mu inner). Returns ``{"alpha", "mu"}`` and the grid
    ``{alpha: {mu: PSNR}}``."""
    scores = {}
    for a in alphas:
        den = model if a is None else Relaxed(model, a)
        for mu in args.mu_grid:
            _, h = run_network_row("RPODM", problem, den, mu, args, x_true)
            scores[a, mu] = h.psnr[-1]
    best = max(scores, key=lambda k: -np.inf if np.isnan(scores[k]) else scores[k])
    log(f"tuned alpha, mu for RPODM ({label}): {best[0]}, {best[1]} "
        f"(PSNR {scores[best]:.2f})")
    grid = {str(a): {str(mu): v for (b, mu), v in scores.items() if b == a} for a in alphas}
    return {"alpha": best[0], "mu": best[1]}, grid


def shipped_rows(names: list[str], args, x_true, factor: int, net, log) -> tuple:
    """--pretrained: load the shipped models, tune the DnCNN's RPODM mu and each model's
    (alpha, mu) on the held-out problem. Returns the rows ``(label, solver, denoiser, mu)``,
    the ``pretrained`` and ``tuning`` sections of the JSON and ``methods``."""
    from podm_deblur import Method, load_shipped, pretrained_key, relaxed_card

    problem = sr_problem(x_true, factor, args)
    tuned, grid = tune_rpodm(problem, x_true, net, [None], args, log, DNCNN)
    methods = [Method(DNCNN_RPODM, "RPODM", DNCNN)]
    rows = [(DNCNN_RPODM, "RPODM", net, tuned["mu"])]
    shipped, info = load_shipped(names)
    for name in names:
        key = pretrained_key(name)
        params, joint = tune_rpodm(problem, x_true, shipped[key], args.fne_alphas, args, log,
                                   key)
        den = Relaxed(shipped[key], params["alpha"])
        for solver in PRETRAINED_SOLVERS:
            methods.append(Method(f"{solver} ({key})", solver, key))
            rows.append((methods[-1].label, solver, den, params["mu"]))
        info[key].update(tuned=params, alpha_grid=list(args.fne_alphas),
                         mu_grid=list(args.mu_grid), psnr_grid_alpha=joint,
                         relaxed=relaxed_card(den))
    tuning = {"on": f"Set14 {HELD_OUT[2]} (index {HELD_OUT[1]}), centre crop "
                    f"{x_true.shape[-1]}, x{factor} (held out: Set5 is the test set)",
              "scale": factor, "criterion": "final PSNR of RPODM",
              DNCNN: {"mu": tuned["mu"], "psnr_grid": grid[str(None)]}}
    return rows, info, tuning, {m.label: {"solver": m.solver, "denoiser": m.denoiser}
                                for m in methods}


def plot_rows(path: Path, example: dict, images: dict, table: dict, labels: list[str]) -> None:
    """--pretrained: one test problem's estimates (PSNR / SSIM in the titles), its PSNR and
    c_k curves, and the mean PSNR per scale of every row."""
    from matplotlib.figure import Figure

    panels = ["truth", *INTERPOLATIONS, "FISTA", "IRCNN-style", *labels]
    ncols = 6
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.9 * nrows + 3.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.9 * nrows, 3.8])
    for i, name in enumerate(panels):
        ax = top.add_subplot(nrows, ncols, i + 1)
        ax.imshow(images[name][0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name if name == "truth" else
                     f"{name}\n{example[name]['psnr']:.2f} dB / SSIM {example[name]['ssim']:.3f}",
                     fontsize=7)
    top.suptitle(f"{example['image']} x{example['scale']} ({example['side']} px), PSNR (dB) / "
                 f"SSIM in the titles", fontsize=9)
    ax_p, ax_c, ax_s = bottom.subplots(1, 3)
    curves = ["FISTA", "IRCNN-style", *labels]
    palette = [*(f"C{i}" for i in range(10)), "k", "navy", "lime", "maroon", "gold"]
    colour = {n: palette[i % len(palette)] for i, n in enumerate([*INTERPOLATIONS, *curves])}
    for name in curves:
        style = "-" if name in (*METHODS, DNCNN_RPODM) else "--"
        vals = np.array(example[name]["curves"]["psnr"], dtype=float)
        ax_p.plot(np.arange(1, len(vals) + 1), vals, style, color=colour[name], lw=0.9,
                  label=name)
        ck = np.array(example[name]["curves"]["rel_change"], dtype=float)
        ax_c.semilogy(np.arange(1, len(ck) + 1), np.maximum(ck, 1e-16), style,
                      color=colour[name], lw=0.9, label=name)
    ax_p.set_xlabel("stage")
    ax_p.set_ylabel("PSNR (dB)")
    ax_p.set_ylim(bottom=max(ax_p.get_ylim()[0], example["nearest"]["psnr"] - 5))
    ax_p.set_title(f"PSNR per stage, {example['image']} x{example['scale']}", fontsize=8)
    ax_c.set_xlabel("stage")
    ax_c.set_ylabel("c_k = ||x_k - x_{k-1}|| / ||x_0|| (unitless)")
    ax_c.set_title("c_k per stage (same problem)", fontsize=8)
    scales = [int(k[1:]) for k in table]
    for name in [*INTERPOLATIONS, *curves]:
        style = ":" if name in INTERPOLATIONS else (
            "-o" if name in (*METHODS, DNCNN_RPODM) else "--s")
        ax_s.plot(scales, [table[f"x{f}"][name]["psnr"] for f in scales], style, ms=3,
                  color=colour[name], lw=0.9, label=name)
    ax_s.set_xticks(scales)
    ax_s.set_xlabel("scale factor")
    ax_s.set_ylabel("mean PSNR over the test images (dB)")
    ax_s.set_title("mean PSNR per scale", fontsize=8)
    for ax in (ax_p, ax_c):
        ax.legend(fontsize=5)
    ax_s.legend(fontsize=5)
    fig.savefig(path, dpi=90)


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


def print_rows(table: dict, labels: list[str]) -> None:
    """--pretrained: PSNR / SSIM per scale of every row, with stages, c_k and seconds."""
    cols = [*METHODS, *labels]
    w = max(len(c) for c in cols) + 2
    scales = list(table)
    print(f"\n{'method':<{w}}" + "".join(f"{s:>16}" for s in scales)
          + f"{'stages':>8}{'c_k mono':>10}{'s/image':>9}")
    for c in [*cols, *INTERPOLATIONS, "x0"]:
        cells = "".join(f"{table[s][c]['psnr']:8.2f} / {table[s][c]['ssim']:.3f}"
                        for s in scales)
        more = "" if c not in cols else (
            f"{np.mean([table[s][c]['stages'] for s in scales]):8.0f}"
            f"{np.mean([table[s][c]['monotone_fraction'] for s in scales]):10.2f}"
            f"{np.mean([table[s][c]['seconds'] for s in scales]):9.2f}")
        print(f"{c:<{w}}{cells}{more}")
    print("(PSNR dB / SSIM, mean over images; c_k mono: fraction with c_monotone_after_5)")


def command_line(args: argparse.Namespace) -> str:
    def nums(values) -> str:
        return " ".join(f"{v:g}" for v in values)

    full = not args.quick      # --quick sets the scales and images itself
    return ("python experiments/podm_sparse_sr.py"
            + (" --filter bicubic" if args.filter == "bicubic" else "")
            + (" --quick" if args.quick else "")
            + (" --pretrained " + " ".join(args.pretrained) if args.pretrained else "")
            + (f" --fne-alphas {nums(args.fne_alphas)}"
               if args.fne_alphas != DEFAULT_ALPHAS else "")
            + (f" --mu-grid {nums(args.mu_grid)}" if args.mu_grid != DEFAULT_MU_GRID else "")
            + (f" --scales {nums(args.scales)}" if full and args.scales != [2, 3, 4] else "")
            + (f" --max-images {args.max_images}"
               if full and args.max_images != 5 else "")
            + (f" --tag {args.tag}" if args.tag else ""))


def settings(args: argparse.Namespace) -> dict:
    """The arguments for the JSON: a plain run (no --pretrained) leaves out the options
    --pretrained added at their defaults, so its JSON is as before."""
    out = portable_settings(args)
    if not args.pretrained:
        defaults = {"pretrained": [], "fne_alphas": DEFAULT_ALPHAS,
                    "mu_grid": DEFAULT_MU_GRID, "tag": ""}
        out = {k: v for k, v in out.items() if k not in NEW_ARGS or v != defaults[k]}
    return out


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
    p.add_argument("--pretrained", nargs="+", default=[], metavar="NAME",
                   help="shipped convex-trained denoisers (convexnn.pretrained.names()) to add "
                        "as RPODM and checked-PODM rows, e.g. gray-s5-fne gray-s15")
    p.add_argument("--fne-alphas", nargs="+", type=float, default=list(DEFAULT_ALPHAS),
                   metavar="A",
                   help="strengths 0 < A <= 1 of each shipped model: the network is "
                        "Relaxed(J, A) = (1 - A) I + A J, A tuned jointly with mu on the "
                        "held-out problem (default: 1, the model as shipped)")
    p.add_argument("--mu-grid", nargs="+", type=float, default=list(DEFAULT_MU_GRID),
                   metavar="MU", help="mu values tried for the RPODM rows of --pretrained")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines or tables (the JSON and PNG are still written)")
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.max_images, args.crop, args.stages = [2, 4], 2, 48, 15
    if args.crop % 24:
        p.error(f"--crop must be a multiple of 24 (Haar levels 3 and factors 2, 3, 4), got "
                f"{args.crop}")
    check_shipped_arguments(p, args.pretrained, args.fne_alphas, args.tag)
    if any(not mu > 0 for mu in args.mu_grid):
        p.error(f"--mu-grid: every mu must be > 0, got {args.mu_grid}")
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    log = timed_log(args.quiet, t_start)

    out_dir = Path(args.out)
    net, net_info = load_or_train_denoiser(out_dir / "podm_dncnn.pt", args.sigma_train,
                                           args.train_steps, args.retrain, log=log)
    names = ["baby", "bird", "butterfly", "head", "woman"][:args.max_images]
    images = load_test_images("set5", grayscale=True)[:args.max_images]
    extra, sections = (), {}
    if args.pretrained:                   # tuned on the held-out Set14 image, one scale
        img = load_test_images(HELD_OUT[0], grayscale=True)[HELD_OUT[1]]
        side = min(args.crop, min(img.shape) // 24 * 24)
        factor = TUNE_SCALE if TUNE_SCALE in args.scales else max(args.scales)
        extra, info, tuning, methods = shipped_rows(
            args.pretrained, args, torch.from_numpy(centre_crop(img, side).copy())[None, None],
            factor, net, log)
        sections = {"tuning": tuning, "pretrained": info, "methods": methods,
                    "notes": {"stages": "stages run (every row runs --stages)",
                              "c_monotone_after_5": "c_k = ||x_k - x_{k-1}|| / ||x_0|| "
                                                    "nonincreasing (to 1e-12) for k > 5",
                              "monotone_fraction": "fraction of the images with "
                                                   "c_monotone_after_5",
                              "relaxed": "a shipped model J is used as Relaxed(J, alpha) = "
                                         "(1 - alpha) I + alpha J with pretrained.<name>.tuned"
                                         " (alpha, mu), tuned for RPODM and also used by the "
                                         "checked PODM row; psnr_grid_alpha: {alpha: {mu: "
                                         "PSNR}} on the held-out problem",
                              "mu": f"the {', '.join(METHODS)} rows use --mu; the RPODM "
                                    "rows their tuned mu",
                              "interpolations": "nearest / bicubic (torch interpolate, "
                                                "align_corners=False, clipped) upsampling of "
                                                "y: references, not solvers"}}
    labels = [label for label, *_ in extra]
    example_key = ("butterfly" if "butterfly" in names else names[0],
                   TUNE_SCALE if TUNE_SCALE in args.scales else max(args.scales))
    results, kept = [], {}
    for name, img in zip(names, images, strict=True):
        side = min(args.crop, min(img.shape) // 24 * 24)
        x_true = torch.from_numpy(centre_crop(img, side).copy())[None, None]
        for f in args.scales:
            keep = {"truth": x_true} if extra and (name, f) == example_key else None
            r = solve_all(x_true, f, net, args, extra, keep)
            kept = keep or kept
            results.append({"image": name, "scale": f, "side": side, **r})
            log(f"{name} x{f}: " + ", ".join(
                f"{m} {r[m]['psnr']:.2f} dB Phi {r[m]['phi']:.4g}" for m in METHODS)
                + "".join(f", {m} {r[m]['psnr']:.2f} dB" for m in labels))
    summary = summarise(results, args.scales, args.stages)
    if extra:
        summary["rows"] = summarise_rows(results, args.scales, [*METHODS, *labels])
    if not args.quiet:
        print_table(summary)
        if extra:
            print_rows(summary["rows"], labels)
    tag = (("_bicubic" if args.filter == "bicubic" else "") + ("_quick" if args.quick else "")
           + args.tag)
    if extra:
        example = next(r for r in results if (r["image"], r["scale"]) == example_key)
        plot_rows(out_dir / f"podm_sparse_sr{tag}.png", example, kept, summary["rows"], labels)
    else:
        example = next((r for r in results if r["image"] == "butterfly" and r["scale"] == 2),
                       results[0])
        plot(results, out_dir / f"podm_sparse_sr{tag}.png", example)
    payload = {"experiment": "PODM l_0.8 sparse-coding super-resolution (Sec. 5.1)",
               "command": command_line(args),
               "args": settings(args), "denoiser": net_info, **sections, "summary": summary,
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
