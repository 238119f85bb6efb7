"""Multi-coil MRI operator against BART's reference reconstruction (real 8-coil k-space).

Data: ``../shared/datasets/mri_brain_bart_pics`` (BART ISMRM 2016 workshop 'pics-brain'): one
180 x 230 plane of 8-coil k-space, 12.7% sampled with a fully sampled 20 x 20 centre, and BART's
2-map ESPIRiT reconstruction of the *fully* sampled data (the reference). The data carry no coil
maps, so they are estimated from the calibration centre (``estimate_coil_maps``: Hann-windowed
low-resolution coil images over their root-sum-of-squares; not ESPIRiT).

The check: with ``MRI(mask, maps)`` (``y_c = M F (S_c x)``, centred orthonormal FFT) a
Tikhonov-regularised least-squares (SENSE) reconstruction ``argmin ||A x - y||^2 + lam ||x||^2``
(conjugate gradients from 0, ``convexnn.solvers.pnp.data_prox``) is compared with the reference
magnitude. The maps' phase is arbitrary (ours and ESPIRiT's differ by a smooth phase), so the
comparison is on magnitudes, inside the reference's support (magnitude > 10% of its maximum),
after the one global scale that fits best (least squares): BART's ``pics`` rescales the data,
the raw k-space values are ~1e10-1e13 while the reference image peaks at 2.4. Controls that
must fail: the same reconstruction flipped upside down and shifted by one pixel. Also the
adjoint (coil-combined zero-filled image ``A^H y``) and the root-sum-of-squares of the
zero-filled coil images.

    PYTHONPATH=. python experiments/mri_bart_check.py      # writes mri_bart_check.{json,png}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from convexnn.data.restoration import load_bart_kspace  # noqa: E402
from convexnn.solvers.operators import MRI, calibration_size, estimate_coil_maps, ifft2c  # noqa: E402
from convexnn.solvers.pnp import data_prox  # noqa: E402
from experiments.common import use_reference_data
from experiments.mnist_setup import RESULTS, write_json  # noqa: E402

SUPPORT = 0.1          # reference support: magnitude above this fraction of its maximum


def magnitude_match(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Magnitude NRMSE and correlation on the reference support, after the best global scale."""
    sup = np.abs(reference) > SUPPORT * np.abs(reference).max()
    mi, mr = np.abs(image)[sup], np.abs(reference)[sup]
    scale = float(mi @ mr / (mi @ mi))
    return {"scale": scale,
            "nrmse": float(np.linalg.norm(scale * mi - mr) / np.linalg.norm(mr)),
            "correlation": float(np.corrcoef(mi, mr)[0, 1]),
            "support_fraction": float(sup.mean())}


def sense_recon(kspace: np.ndarray, mask: np.ndarray, maps: torch.Tensor, n_iter: int,
                lam: float) -> np.ndarray:
    """CG on ``(A^H A + lam I) x = A^H y`` from 0 for ``n_iter`` iterations; complex (H, W)."""
    op = MRI(torch.from_numpy(mask), maps)
    y = torch.from_numpy(np.stack([kspace.real, kspace.imag]))[None].to(torch.float64)
    x0 = torch.zeros((1, 2) + mask.shape, dtype=torch.float64)
    x = data_prox(op, x0, y, gamma=1.0 / lam, n_iter=n_iter, tol=0.0)
    return (x[0, 0] + 1j * x[0, 1]).numpy()


def run(root=None, iterations=(5, 10, 20, 40), lam: float = 1e-5) -> dict:
    data = load_bart_kspace(root)
    raw = data.kspace.astype(np.complex128)
    kscale = float(np.abs(raw).max())
    k = raw / kscale                       # unit peak: CG in float64 without huge numbers
    mask, ref = data.mask, data.reference.astype(np.complex128)[0]   # map 0 (map 1: 0.3%)
    calib = calibration_size(mask)
    maps = estimate_coil_maps(torch.from_numpy(k), calib)
    out: dict = {"experiment": "mri_bart_check",
                 "data": "BART ISMRM 2016 'pics-brain': 8-coil k-space 180 x 230, reference = "
                         "2-map ESPIRiT pics recon of the fully sampled data (map 0 used)",
                 "sampled_fraction": float(mask.mean()), "calibration_side": calib,
                 "kspace_peak": kscale, "tikhonov_lambda": lam, "support_threshold": SUPPORT,
                 "map1_energy_ratio": float(np.linalg.norm(data.reference[1])
                                            / np.linalg.norm(data.reference[0]))}
    recons = {n: sense_recon(k, mask, maps, n, lam) for n in iterations}
    out["sense"] = {str(n): magnitude_match(x, ref) for n, x in recons.items()}
    best_n = min(recons, key=lambda n: out["sense"][str(n)]["nrmse"])
    best = recons[best_n]
    out["best_iterations"] = best_n
    op = MRI(torch.from_numpy(mask), maps)
    y = torch.from_numpy(np.stack([k.real, k.imag]))[None].to(torch.float64)
    adj = op.A_adjoint(y)[0]
    adj = (adj[0] + 1j * adj[1]).numpy()
    rss = np.sqrt((np.abs(ifft2c(torch.from_numpy(k)).numpy()) ** 2).sum(0))
    out["adjoint"] = magnitude_match(adj, ref)
    out["rss_zero_filled"] = magnitude_match(rss, ref)
    out["controls"] = {"sense_flipped_rows": magnitude_match(best[::-1].copy(), ref),
                       "sense_shifted_1px": magnitude_match(np.roll(best, 1, axis=0), ref)}
    # the fitted scale in raw units: reference ~= scale_raw * |x(raw k-space)|
    out["scale_raw_units"] = out["sense"][str(best_n)]["scale"] / kscale
    # data consistency of the best reconstruction with the measured samples
    pred = op.A(torch.from_numpy(np.stack([best.real, best.imag]))[None])[0]
    pred = (pred[0] + 1j * pred[1]).numpy()
    sel = np.broadcast_to(mask.astype(bool), pred.shape)
    out["sense_data_residual"] = float(np.linalg.norm(pred[sel] - k[sel])
                                       / np.linalg.norm(k[sel]))
    out["_images"] = {"reference": np.abs(ref), "sense": np.abs(best), "adjoint": np.abs(adj),
                      "rss": rss, "mask": mask}
    return out


def plot(path: Path, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ims = res["_images"]
    panels = [("mask", ims["mask"], ""),
              ("BART reference |x|", ims["reference"], ""),
              (f"SENSE-CG {res['best_iterations']} its", ims["sense"],
               res["sense"][str(res["best_iterations"])]),
              ("adjoint A^H y", ims["adjoint"], res["adjoint"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2))
    for ax, (title, im, m) in zip(axes, panels, strict=True):
        ax.imshow(im, cmap="gray")
        ax.set_title(title + (f"\nNRMSE {m['nrmse']:.3f}, corr {m['correlation']:.3f}"
                              if m else ""), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder holding mri_brain_bart_pics (default: "
                    "$CONVEXNN_SHARED_DATASETS or ../shared/datasets)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    use_reference_data()              # ../shared/datasets unless the variable is set
    res = run(a.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "mri_bart_check.png", res)
    payload = {k: v for k, v in res.items() if k != "_images"}
    write_json(out / "mri_bart_check.json", payload)
    for n, m in res["sense"].items():
        print(f"SENSE-CG {n:>2} its: magnitude NRMSE {m['nrmse']:.4f}, corr "
              f"{m['correlation']:.4f} (scale {m['scale']:.4g})")
    for name in ("adjoint", "rss_zero_filled"):
        print(f"{name}: NRMSE {res[name]['nrmse']:.4f}, corr {res[name]['correlation']:.4f}")
    for name, m in res["controls"].items():
        print(f"control {name}: NRMSE {m['nrmse']:.4f}, corr {m['correlation']:.4f}")
    print(f"data residual of the best SENSE recon: {res['sense_data_residual']:.4f}")
    return payload


if __name__ == "__main__":
    main()
