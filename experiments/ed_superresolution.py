"""Single-image super-resolution x4 with energy-dissipating networks (paper Sec. 5.1, Table 1).

Energy ``E(u) = 1/2 ||A u - f||^2``, ``A`` = 4x4 average pooling, noise-free ``f = A u*``,
start ``u^0 = 0``. Rows (each per test set, grayscale luma, images cropped to multiples of 4):
- GD: Algorithm 1 with ``d = grad E`` (first trial step 1, Armijo), 75 iterations (as the paper);
- GD 1/L: one step of size ``1/L = 16`` (exact nearest-neighbour upsampling, ``Au = f``);
- Baseline: the same backbone without projection, trained on eq. 7 from ``u^0`` (one pass);
Both networks add ``u - A^T f / ||A||^2`` (the step to the nearest upsampling) to the backbone
output (``data_skip=True``), residual learning in place of the paper's DnCNN-B initialisation.
- Energy dissipating: ``TwoSidedProjection(zeta1, zeta2)`` (eq. 22) + Algorithm 1, 15 iterations,
  and the first iteration whose ``||Au - f||^2`` is <= GD's after 75 (target: <= 25).
Training: 52 x 52 patches of the scikit-image sample images (astronaut, coffee, chelsea, rocket,
coins, moon) and CBSD10 (10 BSDS300 images), lagged distribution of Sec. 4.2.

    PYTHONPATH=. python experiments/ed_superresolution.py            # default (800 minibatches)
    PYTHONPATH=. python experiments/ed_superresolution.py --steps 200 --n-patches 128
        --regenerate-every 50 --crop 128 --channels 16                 # (one line) the docs' run
    PYTHONPATH=. python experiments/ed_superresolution.py --quick    # CI (about a minute)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from convexnn.data.restoration import load_test_images  # noqa: E402
from convexnn.data.training_patches import natural_image_patches  # noqa: E402
from convexnn.solvers.energies import DataFidelity  # noqa: E402
from convexnn.solvers.energy_dissipation import (  # noqa: E402
    DescentConfig,
    DirectionNetwork,
    LaggedTrainingConfig,
    SmallConvNet,
    TrainingProblem,
    TwoSidedProjection,
    energy_dissipating_descent,
    train_lagged,
)
from convexnn.solvers.history import psnr, ssim  # noqa: E402
from convexnn.solvers.operators import Downsample  # noqa: E402
from experiments.ed_setup import default_out, progress, setup, write_json  # noqa: E402

FACTOR = 4
L = 1.0 / FACTOR**2            # ||A||^2 of average pooling


def training_patches(n: int, size: int, seed: int) -> torch.Tensor:
    """Half scikit-image sample-image patches, half CBSD10 patches (grayscale, [0, 1])."""
    a = natural_image_patches(n - n // 2, size, seed=seed)
    b = natural_image_patches(n // 2, size, seed=seed + 1, images=load_test_images("cbsd10"))
    return torch.from_numpy(np.concatenate([a, b])[:, None]).float()


def make_energy(op, f):
    return DataFidelity(op, f, lipschitz=L)


def sq_residual(op, u, f) -> float:
    return float((op.A(u) - f).pow(2).sum())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-patches", type=int, default=512)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--regenerate-every", type=int, default=100)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--channels", type=int, default=24)
    ap.add_argument("--zeta1", type=float, default=4.0)
    ap.add_argument("--zeta2", type=float, default=1e4)
    ap.add_argument("--gd-iters", type=int, default=75)
    ap.add_argument("--ed-iters", type=int, default=15)
    ap.add_argument("--sets", nargs="+", default=["set5", "set14"])
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None, help="centre crop of test images")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--out", default=default_out())
    a = ap.parse_args(argv)
    if a.quick:
        a.n_patches, a.steps, a.regenerate_every = 32, 30, 15
        a.max_images, a.crop = 2, 96
    setup(a.seed)
    tag = "quick" if a.quick else "full"
    op = Downsample(FACTOR, "average")
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- training
    patches = training_patches(a.n_patches, 52, a.seed)
    problem = TrainingProblem(patches, op.A(patches), lambda f: make_energy(op, f))
    ck = Path(a.checkpoint_dir) if a.checkpoint_dir else None
    torch.manual_seed(a.seed)
    ed = DirectionNetwork(SmallConvNet(3, 1, a.depth, a.channels),
                          TwoSidedProjection(a.zeta1, a.zeta2), grad_scale=1 / L,
                          data_skip=True)
    cfg = LaggedTrainingConfig(steps=a.steps, batch_size=16, lr=1e-3,
                               regenerate_every=a.regenerate_every, max_descent_steps=10,
                               gd_scale=1.0, seed=a.seed, progress=not a.quiet,
                               checkpoint_path=ck / f"sr_ed_{tag}.pt" if ck else None)
    res_ed = train_lagged(ed, problem, cfg)
    torch.manual_seed(a.seed)
    base = DirectionNetwork(SmallConvNet(3, 1, a.depth, a.channels), None, grad_scale=1 / L,
                            data_skip=True)
    cfg_b = replace(cfg, max_descent_steps=0, lagged=False,
                    checkpoint_path=ck / f"sr_base_{tag}.pt" if ck else None)
    res_base = train_lagged(base, problem, cfg_b)
    train_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- testing
    table, curves = {}, {}
    for name in a.sets:
        imgs = load_test_images(name)[:a.max_images]
        rows = {k: {"psnr": [], "ssim": [], "res2": []} for k in
                ("gd", "gd_1_over_L", "baseline", "ed", "ed_at_target")}
        iters_to_gd = []
        for img in progress(imgs, a.quiet, desc=name, leave=False):
            if a.crop:
                h0, w0 = (img.shape[0] - a.crop) // 2, (img.shape[1] - a.crop) // 2
                img = img[max(h0, 0):max(h0, 0) + a.crop, max(w0, 0):max(w0, 0) + a.crop]
            h, w = img.shape[0] // FACTOR * FACTOR, img.shape[1] // FACTOR * FACTOR
            gt = torch.from_numpy(img[:h, :w].copy())[None, None].float()
            f = op.A(gt)
            energy = make_energy(op, f)
            u0 = torch.zeros_like(gt)
            with torch.no_grad():
                u_gd, h_gd = energy_dissipating_descent(
                    energy, u0, None, DescentConfig(max_iter=a.gd_iters, grad_tol=0))
                u_gd1 = u0 - L**-1 * energy.gradient(u0)
                u_b = (u0 - base.direction(u0, energy.gradient(u0), energy)).clamp(0, 1)
                n_ed = max(a.ed_iters, a.gd_iters // 3)
                u_ed, h_ed = energy_dissipating_descent(
                    energy, u0, ed, DescentConfig(max_iter=n_ed, grad_tol=0, reference=gt,
                                                  data_range=1.0))
                # the estimate after ed_iters iterations: rerun (deterministic) to that count
                u_ed15, _ = energy_dissipating_descent(energy, u0, ed, DescentConfig(
                    max_iter=a.ed_iters, grad_tol=0))
            gd_res2 = sq_residual(op, u_gd, f)
            ed_res2 = [r**2 for r in h_ed.residual]
            hit = next((k + 1 for k, r in enumerate(ed_res2) if r <= gd_res2), None)
            iters_to_gd.append(hit)
            u_hit = u_ed
            if hit is not None and hit < len(ed_res2):
                u_hit, _ = energy_dissipating_descent(energy, u0, ed, DescentConfig(
                    max_iter=hit, grad_tol=0))
            for key, u in (("gd", u_gd), ("gd_1_over_L", u_gd1), ("baseline", u_b),
                           ("ed", u_ed15), ("ed_at_target", u_hit)):
                rows[key]["psnr"].append(psnr(u, gt, 1.0))
                rows[key]["ssim"].append(ssim(u, gt, 1.0))
                rows[key]["res2"].append(sq_residual(op, u, f))
            curves.setdefault(name, []).append({"gd_energy": h_gd.energy,
                                                "ed_energy": h_ed.energy,
                                                "ed_psnr": h_ed.psnr,
                                                "ed_backtracks": h_ed.series("backtracks")})
        table[name] = {k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in rows.items()}
        table[name]["ed_iterations_to_gd_residual"] = iters_to_gd
        table[name]["n_images"] = len(imgs)
    payload = {"experiment": "energy_dissipation_superresolution_x4", "args": vars(a),
               "training": {"data": "52x52 patches: scikit-image sample images (astronaut, "
                                    "coffee, chelsea, rocket, coins, moon) + CBSD10",
                            "n_patches": a.n_patches, "steps": a.steps,
                            "ed_final_loss": float(np.mean(res_ed.losses[-20:])),
                            "baseline_final_loss": float(np.mean(res_base.losses[-20:])),
                            "regenerations": res_ed.regenerations, "seconds": train_s},
               "residual_definition": "||A u - f||^2 summed over the LR pixels of one image, "
                                      "mean over images; images in [0, 1]",
               "table": table, "curves": curves}
    out = Path(a.out)
    write_json(out / f"ed_superresolution_{tag}.json", payload)
    plot(table, curves, res_ed.losses, out / f"ed_superresolution_{tag}.png")
    if not a.quiet:
        print_table(table)
    return payload


def print_table(table: dict) -> None:
    print(f"{'set':7s} | {'GD (75 it.)':>26s} | {'Baseline':>26s} | {'En. Diss. (15 it.)':>26s}")
    for name, t in table.items():
        cells = [f"{t[k]['psnr']:6.2f} {t[k]['ssim']:.4f} {t[k]['res2']:8.2e}"
                 for k in ("gd", "baseline", "ed")]
        print(f"{name:7s} | " + " | ".join(f"{c:>26s}" for c in cells))


def plot(table, curves, losses, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.5))
    ax = fig.add_subplot(1, 3, 1)
    ax.semilogy(losses)
    ax.set_title("training loss (eq. 7)")
    ax.set_xlabel("minibatch")
    ax = fig.add_subplot(1, 3, 2)
    for name, cs in curves.items():
        c = cs[0]
        ax.semilogy(c["gd_energy"], label=f"GD {name}[0]")
        ax.semilogy(c["ed_energy"], label=f"ED {name}[0]")
    ax.set_title("energy 1/2||Au-f||^2")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    names = list(table)
    x = np.arange(len(names))
    for i, k in enumerate(("gd", "baseline", "ed")):
        ax.bar(x + 0.25 * i, [table[n][k]["psnr"] for n in names], 0.25, label=k)
    ax.set_xticks(x + 0.25)
    ax.set_xticklabels(names)
    ax.set_ylim(bottom=15)
    ax.set_title("PSNR (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
