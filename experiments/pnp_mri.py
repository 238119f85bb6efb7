"""CS-MRI with plug-in denoisers (PnP-PGD) beside the MRI-trained exact convex dual.

The set-up of ``mri_dual.py`` (paper Sec. 5.2): the 10 bundled brain slices at 80 x 80 with a
smooth seeded phase, variable-density Poisson-disc masks at R = 2, 4, 8 (16 x 16 calibration),
noise-free single-coil k-space, test slices 8-9 (complex images as two real channels, PSNR and
SSIM on the magnitude). Rows, all on the same measurements:

- zero-filled ``A^H y``;
- RED with each model that has an explicit convex potential (the ``-fne`` shrinkage networks,
  ``J = I - grad Phi``): then RED is gradient descent on the convex energy
  ``E = 1/2 ||A x - y||^2 + lam Phi(x)``, recorded at every iterate (it must decrease);
- the MRI-trained exact dual of ``mri_dual.py --dual-solver ipm`` (eq. 4 solved exactly, eq. 5
  network applied to the zero-filled image, real and imaginary parts separately, as trained),
  loaded from ``experiments/results/mri_dual_80px_R<R>_polished_R<R>_dual.safetensors``;
- PnP-PGD (``convexnn.solvers.pnp.pnp_pgd``, step 1 / ||A||^2 = 1) with each plug-in denoiser
  of ``experiments/plugin_denoisers.py`` applied to the real and imaginary channels: the
  shipped convex models (``gray-s<sigma>-fne`` certified firmly nonexpansive: PnP-PGD provably
  converges; plain ``gray-s<sigma>``), TV, BM3D, a DnCNN and a DnCNN with the FNE penalty.
  ``c_k = ||x_k - x_{k-1}|| / ||x_0||`` is recorded: nonincreasing c_k is the convergence
  evidence of an averaged iteration.

    PYTHONPATH=. python experiments/pnp_mri.py --quick
    PYTHONPATH=. python experiments/pnp_mri.py            # experiments/results/pnp_mri.*
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from convexnn.io import load_model
from convexnn.model.denoiser import Denoiser
from convexnn.solvers.operators import MRI, poisson_disc_mask
from convexnn.solvers.pnp import PnPConfig, pnp_pgd, red
from experiments.common import RESULTS, timed_log
from experiments.ed_setup import setup, write_json
from experiments.mri_dual import TEST_SLICES, complex_ground_truth, magnitude_scores
from experiments.plugin_denoisers import add_denoiser_arguments, denoisers, run_settings


class ChannelWise(Denoiser):
    """A one-channel denoiser applied to every channel of `(B, C, H, W)` separately (for the
    real and imaginary parts); a firmly nonexpansive `den` gives a firmly nonexpansive map."""

    def __init__(self, den) -> None:
        super().__init__()
        self.den = den

    @property
    def lipschitz_certificate(self) -> float | None:     # Lip(2J - I) per channel = overall
        return getattr(self.den, "lipschitz_certificate", None)

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.den(x.reshape(b * c, 1, h, w)).reshape(b, c, h, w).to(x.dtype)


def exact_dual_path(size: int, accel: float) -> Path:
    r = f"R{accel:g}"
    return RESULTS / f"mri_dual_{size}px_{r}_polished_{r}_dual.safetensors"


def monotone_after(c: list[float], start: int = 5) -> bool:
    return bool(np.all(np.diff(np.asarray(c[start:], dtype=float)) <= 1e-12))


def run_accel(a, accel: float, z: np.ndarray, den: dict, log) -> dict:
    size = z.shape[-1]
    mask = poisson_disc_mask((size, size), accel, calib=(16, 16), seed=a.seed)
    op = MRI(mask)
    clean = torch.from_numpy(np.stack([z[TEST_SLICES].real, z[TEST_SLICES].imag], 1)).double()
    y = op.A(clean)
    zero_filled = op.A_adjoint(y)
    rows = {"zero_filled": {**magnitude_scores(zero_filled, clean), "iterations": 0}}
    path = exact_dual_path(size, accel)
    if path.is_file():
        dual = load_model(path)
        with torch.no_grad():
            pred = dual(zero_filled.reshape(-1, 1, size, size).float()).double()
        rows["exact_dual_end_to_end"] = {**magnitude_scores(pred, clean), "iterations": 0,
                                         "model": path.name}
    curves = {}
    for name, d in den.items():
        if hasattr(d, "reset"):
            d.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            x, hist = pnp_pgd(y, op, ChannelWise(d), PnPConfig(max_iter=a.iters, tol=a.tol,
                                                               lipschitz=1.0))
        c = hist.rel_change
        rows[name] = {**magnitude_scores(x, clean), "iterations": hist.n_iter,
                      "final_rel_change": c[-1], "c_monotone_after_5": monotone_after(c),
                      "seconds": time.perf_counter() - t0}
        curves[name] = c
    for name, d in den.items():       # RED with J = I - grad Phi: gradient descent on E (below)
        net = getattr(d, "net", None)
        if not hasattr(net, "potential") or not a.red_lam:
            continue

        def energy(x, net=net):        # E = 1/2 ||A x - y||^2 + lam Phi(real) + lam Phi(imag)
            b, c, h, w = x.shape
            phi = net.potential(x.reshape(b * c, 1, h, w)).sum()
            return 0.5 * float((op.A(x) - y).pow(2).sum()) + a.red_lam * float(phi)

        with torch.no_grad():
            x, hist = red(y, op, ChannelWise(d), PnPConfig(max_iter=a.iters, tol=a.tol,
                                                           lipschitz=1.0, lam=a.red_lam,
                                                           energy=energy))
        e = [energy(zero_filled)] + hist.energy
        rows[f"red:{name}"] = {**magnitude_scores(x, clean), "iterations": hist.n_iter,
                               "lam": a.red_lam, "energy_first_last": [e[0], e[-1]],
                               "energy_monotone": monotone_after(e, 0),
                               "c_monotone_after_5": monotone_after(hist.rel_change)}
    log(f"R = {accel:g}: " + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in rows.items()))
    return {"acceleration": accel, "measured_acceleration": float(mask.numel() / mask.sum()),
            "rows": rows, "rel_change": curves}


def plot(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = payload["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(runs[0]["rows"])
    x = np.arange(len(names))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        axes[0].barh(x + i * width, [run["rows"][n]["psnr"] for n in names], width,
                     label=f"R = {run['acceleration']:g}")
    axes[0].set_yticks(x + 0.4 - width / 2)
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].set_xlabel("mean PSNR of the magnitude (dB), test slices 8-9")
    lo = min(r["rows"][n]["psnr"] for r in runs for n in names)
    axes[0].set_xlim(left=max(lo - 2, 0))
    axes[0].legend(fontsize=7)
    mid = runs[len(runs) // 2]
    for name, c in mid["rel_change"].items():
        axes[1].semilogy(range(1, len(c) + 1), c, lw=1, label=name)
    axes[1].set_xlabel("PnP-PGD iteration k")
    axes[1].set_ylabel("c_k = ||x_k - x_{k-1}|| / ||x_0||")
    axes[1].set_title(f"R = {mid['acceleration']:g}", fontsize=9)
    axes[1].legend(fontsize=6)
    fig.suptitle("CS-MRI: PnP-PGD with plug-in denoisers vs the MRI-trained exact dual")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_denoiser_arguments(ap)
    ap.add_argument("--accel", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--size", type=int, default=80)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-7)
    ap.add_argument("--red-lam", type=float, default=0.05,
                    help="RED weight for the models with an explicit convex potential (0: none)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.sigmas, a.accel, a.size, a.iters, a.no_bm3d, a.no_tv = [5.0], [4.0], 48, 8, True, True
        a.dncnn_depth, a.dncnn_channels, a.dncnn_patches, a.dncnn_epochs = 3, 8, 64, 1
    setup(a.seed)
    log = timed_log(a.quiet)
    den, info = denoisers(a, log)
    z, coeffs = complex_ground_truth(a.size, a.seed)
    payload = {"experiment": "pnp_mri", "settings": run_settings(a), "denoisers": info,
               "test_slices": TEST_SLICES, "phase_coefficients": coeffs, "runs": []}
    out = Path(a.out)
    stem = f"pnp_mri{'_quick' if a.quick else ''}{a.tag}"
    for r in a.accel:                   # written after every R: a stopped run keeps its rows
        payload["runs"].append(run_accel(a, r, z, den, log))
        write_json(out / f"{stem}.json", payload)
        plot(out / f"{stem}.png", payload)
    if not a.quiet:
        for run in payload["runs"]:
            print(f"\nR = {run['acceleration']:g}")
            print(f"{'method':26s}{'PSNR':>8s}{'SSIM':>8s}{'iters':>7s}{'c_k monotone':>14s}")
            for n, r in run["rows"].items():
                print(f"{n:26s}{r['psnr']:8.2f}{r['ssim']:8.4f}{r['iterations']:7d}"
                      f"{str(r.get('c_monotone_after_5', '-')):>14s}")
    return payload


if __name__ == "__main__":
    main()
