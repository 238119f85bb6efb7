"""MRI reconstruction with the convex dual (paper Sec. 5.2, Fig. 6 and 7).

fastMRI cannot be redistributed, so the data are the 10 real 256 x 256 brain slices bundled in
``../shared/datasets/mri_brain_skimage`` (magnitude only), resized to 80 x 80 (the paper's
size; ``--size 128`` for the larger one). Complex ground truth: magnitude times a smooth,
seeded phase ``exp(i phi)``, ``phi = pi/2 * (a u + b v + c (u^2 + v^2))`` on ``u, v in [-1, 1]``
with ``a, b, c ~ U(-1, 1)`` per slice (documented in the JSON). Variable-density Poisson-disc
masks (our seeded implementation, ``convexnn.solvers.operators.poisson_disc_mask``) at R = 2, 4, 8
with a 16 x 16 calibration region; input = zero-filled reconstruction ``A^H A x``. Real and
imaginary parts are separate single-channel examples; residual two-layer network with a 7 x 7
first layer (padding 3): primal with 1,024 filters vs dual with 5,000 sign patterns.

Split: slices 0-7 train, 8-9 test (held out; 10 slices is all we have, so there is no
cross-validation; the training set is augmented with the 4 flips, and we say so). PSNR/SSIM
are computed on the magnitude of the complex output against the clean magnitude.

Two ways to solve the dual: `--dual-solver adam` (default; the paper's hinge-penalised Adam on
`--patterns` random patterns) and `--dual-solver ipm`: eq. 4 solved *exactly*
(convexnn.solve.ipm.solver, duality-gap certificate) over the `--ipm-patterns` strongest neurons of
the trained primal (`TwoLayerConvDenoiser.dual_point`, ranked by |alpha_j| ||u_j||). `--dual-seed
primal` starts Adam from the primal's own point instead. The primal is saved next to the JSON
(`..._primal<m>_e<epochs>_seed<s>.safetensors` + `.history.json`); `--reuse-primal` loads it.
`--primal-lbfgs STEPS` then polishes it with full-batch L-BFGS on eq. 2 (convexnn.train.polish;
saved as `..._lbfgs<STEPS>.safetensors`): the comparison with the exact dual is then between two
solved problems, not with where minibatch Adam stopped.

    PYTHONPATH=. python experiments/mri_dual.py --accel 4           # Adam dual (R = 4)
    PYTHONPATH=. python experiments/mri_dual.py --accel 4 --no-augment --batch-size 2 \
        --epochs-primal 200 --primal-patience 1000 --eval-every 10 --primal-lbfgs 40 \
        --dual-solver ipm --ipm-patterns 150 --tag _polished        # exact dual (R = 4)
    PYTHONPATH=. python experiments/mri_dual.py                     # R = 2, 4, 8
    PYTHONPATH=. python experiments/mri_dual.py --quick             # CI-sized
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser  # noqa: E402
from convexnn.data.restoration import load_mri_slices  # noqa: E402
from convexnn.interpret import path_sparsity, save_filter_figure  # noqa: E402
from convexnn.io import load_model, save_model  # noqa: E402
from convexnn.model.patterns import sample_generators  # noqa: E402
from convexnn.solve.adam.solver import AdamConfig  # noqa: E402
from convexnn.solve.ipm.solver import IpmConfig  # noqa: E402
from convexnn.solvers.history import psnr, ssim  # noqa: E402
from convexnn.solvers.operators import MRI, poisson_disc_mask  # noqa: E402
from convexnn.train.polish import PolishConfig, polish_primal  # noqa: E402
from convexnn.train.primal import PrimalTrainConfig, train_primal  # noqa: E402
from experiments.common import use_reference_data
from experiments.mnist_setup import RESULTS, plot_curves, write_json  # noqa: E402

TRAIN_SLICES, TEST_SLICES = list(range(8)), [8, 9]
KERNEL = 7


def complex_ground_truth(size: int, seed: int = 0) -> tuple[np.ndarray, list[list[float]]]:
    """`(10, size, size)` complex slices: resized magnitude x smooth seeded phase."""
    from skimage.transform import resize

    mag = load_mri_slices()
    mag = np.stack([resize(s, (size, size), anti_aliasing=True) for s in mag])
    mag = mag / mag.max()
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    coeffs, out = [], []
    for m in mag:
        a, b, c = rng.uniform(-1, 1, 3)
        coeffs.append([float(a), float(b), float(c)])
        out.append(m * np.exp(1j * (math.pi / 2) * (a * u + b * v + c * (u ** 2 + v ** 2))))
    return np.stack(out), coeffs


def _two_channel(z: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([z.real, z.imag], 1)).double()   # (n, 2, H, W)


def make_split(z: np.ndarray, accel: float, seed: int, augment: bool):
    """Zero-filled inputs and targets, real/imag parts as separate (n, 1, H, W) examples."""
    size = z.shape[-1]
    mask = poisson_disc_mask((size, size), accel, calib=(16, 16), seed=seed)
    op = MRI(mask)

    def pairs(idx, aug):
        clean = _two_channel(z[idx])
        if aug:
            clean = torch.cat([clean, clean.flip(-1), clean.flip(-2), clean.flip(-1, -2)])
        zf = op.A_adjoint(op.A(clean))            # zero-filled: A^H A x
        return zf.reshape(-1, 1, size, size), clean.reshape(-1, 1, size, size)

    xtr, ytr = pairs(TRAIN_SLICES, augment)
    xte, yte = pairs(TEST_SLICES, False)
    return xtr.float(), ytr.float(), xte.float(), yte.float(), mask


def magnitude_scores(pred: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Mean PSNR/SSIM of |real + i imag| against the clean magnitude, per slice."""
    p = pred.double().reshape(-1, 2, *pred.shape[-2:])
    c = clean.double().reshape(-1, 2, *clean.shape[-2:])
    pm, cm = p.norm(dim=1).numpy(), c.norm(dim=1).numpy()
    return {"psnr": float(np.mean([psnr(a, b, data_range=1.0) for a, b in zip(pm, cm,
                                                                               strict=True)])),
            "ssim": float(np.mean([ssim(a, b, data_range=1.0) for a, b in zip(pm, cm,
                                                                              strict=True)]))}


def run_one(accel: float, a, z: np.ndarray) -> tuple[dict, dict]:
    xtr, ytr, xte, yte, mask = make_split(z, accel, a.seed, not a.no_augment)
    npix = xtr.shape[0] * xtr.shape[2] * xtr.shape[3]
    beta = a.beta_mean * npix
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    saved = Path(a.out) / f"mri_dual_{a.size}px_R{accel:g}_primal{a.filters}_e{a.epochs_primal}" \
                          f"_seed{a.seed}.safetensors"
    hist_file = saved.with_suffix(".history.json")
    if a.reuse_primal and saved.is_file():
        primal, primal_epochs = load_model(saved), None
        primal_history = json.loads(hist_file.read_text()) if hist_file.is_file() else []
    else:
        primal = TwoLayerConvDenoiser(n_filters=a.filters, kernel_size=KERNEL, residual=True)
        # Kaiming-uniform weights of 1,024 x 7 x 7 filters carry an eq. 2 weight decay of about
        # 1.7e-3 per pixel at beta = 1e-5 x pixels, above the dual's whole optimum: scale down
        with torch.no_grad():
            for w in primal.parameters():
                w.mul_(a.primal_init_scale)
        pres = train_primal(primal, xtr, ytr, PrimalTrainConfig(
            beta=beta, lr=a.primal_lr, epochs=a.epochs_primal, batch_size=a.batch_size,
            patience=a.primal_patience, seed=a.seed, progress=not a.quiet,
            eval_every=a.eval_every, device="cpu"),
            eval_set=(xte, yte))
        primal_history, primal_epochs = pres.history, pres.epochs_run
        if not a.quick:
            save_model(primal, saved)
            hist_file.write_text(json.dumps(primal_history))
    polish = None
    if a.primal_lbfgs:
        # Adam on 2-image batches stops short of a minimum of eq. 2: continue full-batch with
        # L-BFGS (convexnn.train.polish) before comparing with the convex optimum
        adam_objectives = {name: primal.objective(x, y, beta) / (x.shape[0] * x.shape[2]
                                                                  * x.shape[3])
                           for name, (x, y) in {"train": (xtr, ytr), "test": (xte, yte)}.items()}
        polished = saved.with_name(f"{saved.stem}_lbfgs{a.primal_lbfgs}.safetensors")
        pol_hist = polished.with_suffix(".history.json")
        if a.reuse_primal and polished.is_file() and pol_hist.is_file():
            primal = load_model(polished)
            polish = json.loads(pol_hist.read_text())
        else:
            ckpt = None if a.quick else polished.with_suffix(".ckpt.pt")
            pres = polish_primal(primal, xtr, ytr, PolishConfig(
                beta=beta, max_steps=a.primal_lbfgs, max_seconds=a.primal_lbfgs_seconds,
                progress=not a.quiet, device="cpu",
                checkpoint_path=str(ckpt) if ckpt else None), eval_set=(xte, yte))
            polish = {"status": pres.status, "steps": pres.epochs_run,
                      "evaluations": pres.steps, "history": pres.history}
            if not a.quick:
                save_model(primal, polished)
                pol_hist.write_text(json.dumps(polish))
                ckpt.unlink(missing_ok=True)
        polish["adam_objectives_mean"] = adam_objectives
    t_primal = time.perf_counter() - t
    warm = None
    if a.dual_solver == "ipm":
        # exact eq. 4 over the trained primal's K strongest neurons (|alpha_j| ||u_j||): the
        # convex program's optimum over those patterns, with its duality-gap certificate
        g, v, w = primal.dual_point()
        strength = (v - w).flatten(1).norm(dim=1)
        top = torch.argsort(strength, descending=True)[:a.ipm_patterns]
        dual = ConvexDualDenoiser(kernel_size=KERNEL, beta=beta, residual=True,
                                  generators=g[top], dedupe=False)
        t = time.perf_counter()
        dual.fit(xtr, ytr, solver="ipm", eval_set=(xte, yte), config=IpmConfig(
            tol=a.ipm_tol, feas_tol=min(1e-8, a.ipm_tol), verbose=not a.quiet,
            working_rows=a.ipm_working_rows))
        t_dual = time.perf_counter() - t
        pruned = TwoLayerConvDenoiser.from_weights(
            primal.conv1.weight.detach()[top], primal.conv2.weight.detach().reshape(-1)[top],
            residual=True)
    elif a.dual_seed == "primal":
        # the trained primal's neurons as the first patterns, and its point as the start
        # (primal.dual_point: feasible, dual objective <= eq. 2); the rest random Gaussian
        g, v, w = primal.dual_point()
        extra = max(0, a.patterns - g.shape[0])
        gx = sample_generators(extra, 1, KERNEL, a.seed) if extra else g[:0]
        small = 1e-3 * sample_generators(2 * extra, 1, KERNEL, a.seed + 1) if extra else g[:0]
        generators = torch.cat([g, gx])
        warm = (torch.cat([v, small[:extra]]), torch.cat([w, small[extra:]]))
        dual = ConvexDualDenoiser(kernel_size=KERNEL, beta=beta, residual=True,
                                  generators=generators, dedupe=False)
    else:
        dual = ConvexDualDenoiser(kernel_size=KERNEL, n_patterns=a.patterns, beta=beta,
                                  residual=True, seed=a.seed)
    if a.dual_solver == "exact":
        # eq. 4 over all --patterns sampled patterns, exactly: fit()'s default path
        # (interior point with pattern pricing), certified over every pattern
        t = time.perf_counter()
        ck = None if a.checkpoint_dir is None else str(
            Path(a.checkpoint_dir) / f"mri_exact_R{accel:g}_P{a.patterns}.ckpt")
        dual.fit(xtr, ytr, eval_set=(xte, yte), progress=not a.quiet, checkpoint_path=ck,
                 allow_inaccurate=True, device=a.device)
        t_dual = time.perf_counter() - t
    if a.dual_solver == "adam":
        t = time.perf_counter()
        dual.fit(xtr, ytr, solver="adam", eval_set=(xte, yte), config=AdamConfig(
            epochs=a.epochs_dual,
            batch_size=min(a.dual_batch_size or a.batch_size, xtr.shape[0]),
            batch_pixels=a.dual_batch_pixels, lr_scale=a.dual_lr_scale, warm_start=warm,
            seed=a.seed, progress=not a.quiet, eval_every=a.eval_every, device=a.device))
        t_dual = time.perf_counter() - t
    rebuilt = dual.to_primal().float()
    objectives = {}
    # eq. 2 = data term + beta/2 (||U||^2 + ||alpha||^2); split so the gap can be attributed
    reg_p = 0.5 * beta * primal.weight_decay_value()
    reg_d = 0.5 * beta * rebuilt.weight_decay_value()
    for name, (x, y) in {"train": (xtr, ytr), "test": (xte, yte)}.items():
        n = x.shape[0] * x.shape[2] * x.shape[3]
        p, d = primal.objective(x, y, beta), rebuilt.objective(x, y, beta)
        objectives[name] = {"primal_mean": p / n, "dual_rebuilt_primal_mean": d / n,
                            "relative_difference": (d - p) / p,
                            "primal_data_mean": (p - reg_p) / n,
                            "dual_data_mean": (d - reg_d) / n,
                            "data_relative_difference": (d - reg_d - p + reg_p) / (p - reg_p)}
    objectives["regularizer"] = {"beta": beta, "primal": reg_p, "dual_rebuilt_primal": reg_d}
    with torch.no_grad():
        pred_p, pred_d = primal(xte), dual.predict(xte).float()
    scores = {"zero_filled": magnitude_scores(xte, yte), "primal": magnitude_scores(pred_p, yte),
              "dual": magnitude_scores(pred_d, yte)}
    row = {"acceleration": accel, "measured_acceleration": float(mask.numel() / mask.sum()),
           "beta": beta, "n_train_examples": int(xtr.shape[0]),
           "n_test_examples": int(xte.shape[0]), "objectives": objectives,
           "test_magnitude_scores": scores, "primal_seconds": t_primal, "dual_seconds": t_dual,
           "primal_epochs": primal_epochs, "primal_reused": primal_epochs is None,
           "dual_epochs": dual.solve_info_.details.get("epochs_run"),
           "dual_violation_relative": dual.constraint_violation(xtr).relative,
           "primal_lbfgs_polish": polish,
           "primal_history": primal_history, "dual_history": dual.history_}
    images = {"zero_filled": xte, "primal": pred_p, "dual": pred_d, "clean": yte, "mask": mask}
    if a.dual_solver == "exact":
        det = dual.solve_info_.details
        norms = torch.cat(dual.group_norms())
        row["exact"] = {"status": dual.solve_info_.status, "n_patterns": a.patterns,
                        "patterns_kept": int(dual.generators_.shape[0]),
                        "certified_gap": det.get("certified_gap"),
                        "lower_bound_mean": det["lower_bound"] / npix,
                        "objective_mean": dual.objective_ / npix,
                        "working_patterns": det.get("working_patterns"),
                        "nonzero_groups": int((norms > 1e-6 * norms.max()).sum()),
                        "pricing_rounds": len(det.get("pricing_rounds", [])),
                        "coarse_levels": det.get("coarse_levels"),
                        "ipm_iterations": dual.solve_info_.iterations,
                        "peak_newton_bytes": det.get("peak_newton_bytes"),
                        "device": det.get("device"),
                        "peak_device_bytes": (torch.cuda.max_memory_allocated()
                                              if a.device.startswith("cuda") else None)}
    if a.dual_solver == "ipm":
        det = dual.solve_info_.details
        row["ipm"] = {"status": dual.solve_info_.status, "iterations": dual.solve_info_.iterations,
                      "n_patterns": a.ipm_patterns, "relative_gap": det["relative_gap"],
                      "lower_bound_mean": det["lower_bound"] / npix,
                      "objective_mean": dual.objective_ / npix,
                      "working_rows": det["working_rows"],
                      "screening_rounds": det["screening_rounds"]}
        for name, (x, y) in {"train": (xtr, ytr), "test": (xte, yte)}.items():
            n = x.shape[0] * x.shape[2] * x.shape[3]
            objectives[name]["pruned_primal_mean"] = pruned.objective(x, y, beta) / n
    row["dual_path_sparsity"] = {k: v for k, v in path_sparsity(dual).to_dict().items()
                                 if k != "top_norms"}
    return row, images, dual


def _levels(row: dict, a) -> dict[str, dict[str, float]]:
    """Horizontal levels of the curve figure: the L-BFGS-polished primal, the exact dual."""
    out = {}
    if row.get("primal_lbfgs_polish"):
        out[f"primal after L-BFGS ({row['primal_lbfgs_polish']['steps']} steps)"] = {
            s: row["objectives"][s]["primal_mean"] for s in ("train", "test")}
    if "exact" in row:
        out[f"exact dual (eq. 4, certified), P = {a.patterns}"] = {
            s: row["objectives"][s]["dual_rebuilt_primal_mean"] for s in ("train", "test")}
    if "ipm" in row:
        out[f"exact dual (ipm, eq. 4), P = {a.ipm_patterns}"] = {
            s: row["objectives"][s]["dual_rebuilt_primal_mean"] for s in ("train", "test")}
    return out or None


def plot_recons(path: Path, per_r: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("mask", "zero_filled", "primal", "dual", "clean")
    fig, axes = plt.subplots(len(per_r), len(cols), figsize=(2.2 * len(cols), 2.3 * len(per_r)),
                             squeeze=False)
    for r, (accel, (row, ims)) in enumerate(per_r.items()):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            if key == "mask":
                ax.imshow(ims["mask"].numpy(), cmap="gray")
                ax.set_title(f"R = {accel:g} mask", fontsize=8)
            else:
                im = ims[key].double().reshape(-1, 2, *ims[key].shape[-2:])[0].norm(dim=0)
                ax.imshow(im.numpy(), cmap="gray", vmin=0, vmax=1)
                s = row["test_magnitude_scores"].get(key)
                ax.set_title(key + (f"\n{s['psnr']:.2f} dB / {s['ssim']:.3f}" if s else ""),
                             fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accel", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--size", type=int, default=80)
    ap.add_argument("--filters", type=int, default=1024)
    ap.add_argument("--patterns", type=int, default=5000)
    ap.add_argument("--epochs-primal", type=int, default=60)
    ap.add_argument("--epochs-dual", type=int, default=40)
    ap.add_argument("--primal-lr", type=float, default=1e-3)
    ap.add_argument("--primal-init-scale", type=float, default=0.1,
                    help="multiply the primal's Kaiming-uniform initial weights by this")
    ap.add_argument("--primal-patience", type=int, default=20,
                    help="early stop of the primal after this many epochs without improvement")
    ap.add_argument("--primal-lbfgs", type=int, default=0, metavar="STEPS",
                    help="then polish the primal with full-batch L-BFGS (STEPS x 20 iterations)")
    ap.add_argument("--primal-lbfgs-seconds", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dual-batch-size", type=int, default=None,
                    help="images per dual Adam step (default: --batch-size)")
    ap.add_argument("--dual-batch-pixels", type=int, default=None,
                    help="dual steps on this many pixels drawn from all images (overrides "
                         "--dual-batch-size)")
    ap.add_argument("--beta-mean", type=float, default=1e-5)
    ap.add_argument("--reuse-primal", action="store_true",
                    help="load the primal this script saved for these settings instead of "
                         "training it again (its curves are then not in the JSON)")
    ap.add_argument("--checkpoint-dir", default=None,
                    help="pricing checkpoints of --dual-solver exact (resumed)")
    ap.add_argument("--dual-solver", choices=["adam", "ipm", "exact"], default="adam",
                    help="'exact': eq. 4 over all --patterns sampled patterns, exactly (fit()'s "
                         "default: interior point with pattern pricing, certified over every "
                         "pattern); 'ipm': exact eq. 4 over the trained primal's --ipm-patterns "
                         "strongest neurons (duality-gap certificate in the JSON)")
    ap.add_argument("--ipm-patterns", type=int, default=60)
    ap.add_argument("--ipm-working-rows", type=int, default=None,
                    help="cone rows per pattern in the ipm's working set (default: 16 d; "
                         "0: every row)")
    ap.add_argument("--ipm-tol", type=float, default=1e-6,
                    help="relative duality gap at which the exact dual stops (certified)")
    ap.add_argument("--dual-seed", choices=["random", "primal"], default="random",
                    help="'primal': the trained primal's neurons are the first patterns and "
                         "its point (TwoLayerConvDenoiser.dual_point) the start of the dual")
    ap.add_argument("--dual-lr-scale", type=float, default=1.0,
                    help="AdamConfig.lr_scale of the dual")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="where the dual is solved (--dual-solver exact / adam): 'cpu' or "
                         "'cuda'; the primal is trained on the CPU")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    a = ap.parse_args(argv)
    use_reference_data()              # ../shared/datasets unless the variable is set
    if a.quick:
        a.accel, a.size, a.filters, a.patterns = [4.0], 32, 32, 200
        a.epochs_primal = a.epochs_dual = 4
        a.no_augment = True
    torch.set_num_threads(max(1, torch.get_num_threads()))
    z, coeffs = complex_ground_truth(a.size, a.seed)
    per_r, rows, duals = {}, [], []
    for accel in a.accel:
        row, ims, dual = run_one(accel, a, z)
        per_r[accel] = (row, ims)
        rows.append(row)
        duals.append(dual)
        o, s = row["objectives"], row["test_magnitude_scores"]
        print(f"R = {accel:g}: regulariser primal {o['regularizer']['primal']:.4g}, dual "
              f"{o['regularizer']['dual_rebuilt_primal']:.4g}; data term train "
              f"{100 * o['train']['data_relative_difference']:+.2f}%, test "
              f"{100 * o['test']['data_relative_difference']:+.2f}%", flush=True)
        print(f"R = {accel:g}: train obj primal {o['train']['primal_mean']:.5g} "
              f"dual {o['train']['dual_rebuilt_primal_mean']:.5g} "
              f"({100 * o['train']['relative_difference']:+.2f}%), test "
              f"{o['test']['primal_mean']:.5g} vs {o['test']['dual_rebuilt_primal_mean']:.5g} "
              f"({100 * o['test']['relative_difference']:+.2f}%); PSNR zero-filled "
              f"{s['zero_filled']['psnr']:.2f}, primal {s['primal']['psnr']:.2f}, dual "
              f"{s['dual']['psnr']:.2f} dB", flush=True)
    tag = "quick" if a.quick else f"{a.size}px_R" + "-".join(f"{r:g}" for r in a.accel)
    tag += a.tag
    out = Path(a.out)
    payload = {"experiment": "mri_dual", "paper": "convex_dual_denoiser Sec. 5.2, Fig. 6-7",
               "data": "10 real brain slices (scikit-image 'brain', magnitude) resized; "
                       "fastMRI is not redistributable",
               "phase": "phi = pi/2 (a u + b v + c (u^2 + v^2)), coefficients per slice below",
               "phase_coefficients": coeffs, "split": {"train": TRAIN_SLICES,
                                                        "test": TEST_SLICES},
               "augmentation": None if a.no_augment else "4 flips of the training slices",
               "settings": {k: v for k, v in vars(a).items()
                            if k not in ("out", "tag")}, "runs": rows}
    write_json(out / f"mri_dual_{tag}.json", payload)
    for row in rows:
        plot_curves(out / f"mri_dual_{tag}_curves_R{row['acceleration']:g}.png",
                    row["primal_history"], row["dual_history"] if "ipm" not in row else [],
                    f"MRI R = {row['acceleration']:g}: primal ({a.filters} filters) vs dual "
                    f"({a.ipm_patterns if 'ipm' in row else a.patterns} patterns"
                    f"{', exact' if 'ipm' in row else ''})",
                    hlines=_levels(row, a))
    plot_recons(out / f"mri_dual_{tag}_recon.png", per_r)
    for row, dual in zip(rows, duals, strict=True):
        r = f"R{row['acceleration']:g}"
        save_model(dual, out / f"mri_dual_{tag}_{r}_dual.safetensors")
        save_filter_figure(out / f"mri_dual_{tag}_filters_{r}.png", dual, n_filters=16,
                           title=f"MRI R = {row['acceleration']:g}: largest dual filters and "
                                 f"their frequency responses (Fig. 11)")
    return payload


if __name__ == "__main__":
    main()
