"""Energy dissipation with plug-in denoisers: SR x4 and sparse-angle CT, one table per task.

The direction is a forward-backward step through a denoiser ``D``,
``d(u) = u - D(u - tau grad E(u))`` (``ConvexDenoiserDirection`` with ``a = 1, b = 0``: the
PnP-PGD step, nothing trained), projected onto the descent set (eq. 22 for SR, eq. 21 for CT)
and taken with Algorithm 1's Armijo search on ``E`` (paper Sec. 3). So ``E`` decreases at every
step whatever ``D`` is, and the denoiser is the prior that chooses among the minimisers.

- SR x4 (Sec. 5.1 set-up of ``ed_superresolution.py``): ``E = 1/2 ||A u - f||^2``, ``A`` 4 x 4
  average pooling, noise-free ``f``, ``u^0 = 0``, ``tau = 1 / ||A||^2 = 16``, Set5 and Set14
  (gray, centre crops). PSNR after ``--sr-iters`` iterations and the data residual.
- CT (Sec. 5.2 set-up of ``ed_ct.py``): 15-angle parallel beam on 64 x 64, noise 5% / 10% of
  ``std(A u)``, ``E = 1/2 ||A u - f||^2``, ``tau = 1 / ||A||^2``, stopped by the discrepancy
  principle ``||A u - f|| <= delta = ||noise||`` (at most ``--ct-iters``); test images: the
  Shepp-Logan phantom and MRI slices 8-9. PSNR at the stop, the best PSNR, the stop iteration.

Denoisers, each at the noise levels of ``--sigmas`` (on [0, 255]) where it has them: the
shipped convex models (``gray-s<sigma>-fne``, certified firmly nonexpansive, and the plain
``gray-s<sigma>``), a DnCNN and a DnCNN with the FNE penalty (trained here, the recipe of
``pnp_deblur.py``), the TV prox (weight tuned per sigma on Train400 by ``denoise_natural``) and
BM3D; plus plain gradient descent (step ``1 / L``) as the reference without a prior.

    PYTHONPATH=. python experiments/ed_pretrained.py --quick
    PYTHONPATH=. python experiments/ed_pretrained.py          # experiments/results/ed_pretrained*
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from convexnn.data.restoration import load_mri_slices, load_test_images
from convexnn.solvers.energies import DataFidelity
from convexnn.solvers.energy_dissipation import (
    ConvexDenoiserDirection,
    DescentConfig,
    DirectionNetwork,
    GradientDirection,
    HalfSpaceProjection,
    TwoSidedProjection,
    energy_dissipating_descent,
)
from convexnn.solvers.history import psnr, ssim
from convexnn.solvers.operators import CT, Downsample
from experiments.common import timed_log
from experiments.ed_setup import default_out, setup, write_json
from experiments.plugin_denoisers import add_denoiser_arguments, denoisers, run_settings

FACTOR = 4


def direction(d, tau: float, projection) -> DirectionNetwork:
    return DirectionNetwork(ConvexDenoiserDirection(d, tau=tau), projection, raw_inputs=True)


def descents(energy, gt: torch.Tensor, den: dict, lip: float, proj, iters: int):
    """Algorithm 1 from 0 with the gradient direction (step 1/L) and with every denoiser's
    projected direction: yields (name, u, history, energies from E(u^0), seconds)."""
    runs = {"gd": GradientDirection(1.0 / lip)}
    runs.update({k: direction(d, 1.0 / lip, proj) for k, d in den.items()})
    for name, dirn in runs.items():
        t0 = time.perf_counter()
        u, hist = energy_dissipating_descent(energy, torch.zeros_like(gt), dirn, DescentConfig(
            max_iter=iters, grad_tol=0, reference=gt, data_range=1.0))
        yield name, u, hist, [hist.flags["initial_energy"]] + hist.energy, \
            time.perf_counter() - t0


def crop(img: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return img
    h0, w0 = max((img.shape[0] - size) // 2, 0), max((img.shape[1] - size) // 2, 0)
    return img[h0:h0 + size, w0:w0 + size]


def run_sr(a, den: dict, log) -> dict:
    op = Downsample(FACTOR, "average")
    lip = 1.0 / FACTOR**2
    proj = TwoSidedProjection(a.zeta1, a.zeta2)
    rows: dict[str, dict[str, list]] = {}
    curves: dict[str, list] = {}
    for set_name in a.sr_sets:
        for i, img in enumerate(load_test_images(set_name)[:a.max_images]):
            img = crop(img, a.crop)
            h, w = img.shape[0] // FACTOR * FACTOR, img.shape[1] // FACTOR * FACTOR
            gt = torch.from_numpy(img[:h, :w].copy())[None, None].double()
            f = op.A(gt)
            energy = DataFidelity(op, f, lipschitz=lip)
            for name, u, hist, e, seconds in descents(energy, gt, den, lip, proj, a.sr_iters):
                r = rows.setdefault(name, {k: [] for k in ("psnr", "ssim", "res2", "iters",
                                                           "monotone", "seconds", "set")})
                r["psnr"].append(psnr(u.clamp(0, 1), gt, 1.0))
                r["ssim"].append(ssim(u.clamp(0, 1), gt, 1.0))
                r["res2"].append(float((op.A(u) - f).pow(2).sum()))
                r["iters"].append(len(hist.energy))
                r["monotone"].append(monotone(e))
                r["seconds"].append(seconds)
                r["set"].append(set_name)
                if i == 0:
                    curves.setdefault(set_name, {})[name] = hist.psnr
        log(f"SR x4 {set_name} done")
    table = {}
    for name, r in rows.items():
        by_set = {s: float(np.mean([p for p, t in zip(r["psnr"], r["set"], strict=True)
                                    if t == s])) for s in a.sr_sets}
        table[name] = {**summary(r), **by_set}
    return {"table": table, "curves": curves, "per_image": rows}


def run_ct(a, den: dict, log) -> dict:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    op = CT(a.angles, a.size)
    mri = load_mri_slices()
    imgs = [resize(shepp_logan_phantom(), (a.size, a.size), anti_aliasing=True)]
    imgs += [resize(m, (a.size, a.size), anti_aliasing=True) for m in mri[8:10]]
    tests = [torch.from_numpy(np.asarray(m, dtype=np.float64))[None, None] for m in imgs]
    op_norm = op.norm(tests[0])
    gen = torch.Generator().manual_seed(a.seed)
    tables, curves, per = {}, {}, {}
    for level in a.ct_noise:
        rows: dict[str, dict[str, list]] = {}
        for i, gt in enumerate(tests):
            y = op.A(gt)
            noise = level * float(y.std()) * torch.randn(y.shape, generator=gen,
                                                         dtype=y.dtype)
            f, delta = y + noise, float(noise.norm())
            energy = DataFidelity(op, f, lipschitz=op_norm)
            proj = HalfSpaceProjection(a.ct_zeta / op_norm, scale_with_grad=True)
            for name, _, hist, e, seconds in descents(energy, gt, den, op_norm, proj,
                                                      a.ct_iters):
                res, ps = hist.residual, hist.psnr
                stop = next((k for k, v in enumerate(res) if v <= delta), None)
                r = rows.setdefault(name, {k: [] for k in ("psnr", "best_psnr", "iters",
                                                           "reached", "monotone", "seconds")})
                r["psnr"].append(ps[stop if stop is not None else -1])
                r["best_psnr"].append(max(ps))
                r["iters"].append(stop + 1 if stop is not None else len(ps))
                r["reached"].append(stop is not None)
                r["monotone"].append(monotone(e))
                r["seconds"].append(seconds)
                if i == 0:
                    curves.setdefault(f"{level:g}", {})[name] = ps
        tables[f"{level:g}"] = {name: {**summary(r),
                                       "best_psnr": float(np.mean(r["best_psnr"])),
                                       "discrepancy_reached": float(np.mean(r["reached"]))}
                                for name, r in rows.items()}
        per[f"{level:g}"] = rows
        log(f"CT noise {level:g} done")
    return {"table": tables, "curves": curves, "per_image": per, "op_norm": op_norm}


def monotone(values: list[float]) -> bool:
    """Nonincreasing up to rounding (1e-12 relative)."""
    return all(b <= x + 1e-12 * abs(x) for x, b in zip(values[:-1], values[1:], strict=True))


def summary(r: dict) -> dict:
    out = {"psnr": float(np.mean(r["psnr"])), "iters": float(np.mean(r["iters"])),
           "energy_monotone": float(np.mean(r["monotone"])),
           "seconds": float(np.sum(r["seconds"]))}
    if r.get("ssim"):
        out["ssim"] = float(np.mean(r["ssim"]))
    if r.get("res2"):
        out["res2"] = float(np.mean(r["res2"]))
    return out


def plot(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("SR x4: " + s, payload["sr"]["curves"][s]) for s in payload["sr"]["curves"]]
    panels += [(f"CT noise {k}", c) for k, c in payload["ct"]["curves"].items()]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.6 * (len(panels) + 1), 4),
                             squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=False):
        for name, ps in curves.items():
            ax.plot(range(1, len(ps) + 1), ps, "k--" if name == "gd" else "-", lw=1,
                    label=name)
        ax.set_xlabel("iteration (Algorithm 1)")
        ax.set_ylabel("PSNR (dB), first image")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    ax = axes[0][-1]
    names = list(payload["sr"]["table"])
    x = np.arange(len(names))
    ax.barh(x - 0.2, [payload["sr"]["table"][n]["psnr"] for n in names], 0.4, label="SR x4")
    ct_key = next(iter(payload["ct"]["table"]))
    ax.barh(x + 0.2, [payload["ct"]["table"][ct_key][n]["psnr"] for n in names], 0.4,
            label=f"CT noise {ct_key}, at discrepancy")
    ax.set_yticks(x)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("mean PSNR (dB)")
    lo = min(min(payload["sr"]["table"][n]["psnr"], payload["ct"]["table"][ct_key][n]["psnr"])
             for n in names)
    ax.set_xlim(left=max(lo - 2, 0))
    ax.legend(fontsize=7)
    fig.suptitle("energy dissipation (Algorithm 1, projected PnP direction) with plug-in "
                 "denoisers")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_tables(payload: dict) -> None:
    sr = payload["sr"]["table"]
    print(f"\nSR x4 ({', '.join(payload['settings']['sr_sets'])})")
    print(f"{'denoiser':24s}{'PSNR':>8s}{'SSIM':>8s}{'iters':>7s}{'||Au-f||^2':>12s}"
          f"{'E monotone':>11s}")
    for n, r in sr.items():
        print(f"{n:24s}{r['psnr']:8.2f}{r['ssim']:8.4f}{r['iters']:7.1f}{r['res2']:12.2e}"
              f"{r['energy_monotone']:11.2f}")
    for level, t in payload["ct"]["table"].items():
        print(f"\nCT, noise {level} (PSNR at the discrepancy stop)")
        print(f"{'denoiser':24s}{'PSNR':>8s}{'best':>8s}{'iters':>7s}{'reached':>9s}")
        for n, r in t.items():
            print(f"{n:24s}{r['psnr']:8.2f}{r['best_psnr']:8.2f}{r['iters']:7.1f}"
                  f"{r['discrepancy_reached']:9.2f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_denoiser_arguments(ap)
    ap.add_argument("--sr-sets", nargs="+", default=["set5", "set14"])
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--crop", type=int, default=128, help="centre crop of the SR test images")
    ap.add_argument("--sr-iters", type=int, default=30)
    ap.add_argument("--zeta1", type=float, default=4.0)
    ap.add_argument("--zeta2", type=float, default=1e4)
    ap.add_argument("--size", type=int, default=64, help="CT image side")
    ap.add_argument("--angles", type=int, default=15)
    ap.add_argument("--ct-noise", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--ct-iters", type=int, default=100)
    ap.add_argument("--ct-zeta", type=float, default=0.1, help="eq. 21: zeta = this / L")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=default_out())
    a = ap.parse_args(argv)
    if a.quick:
        a.sigmas, a.sr_sets, a.max_images, a.crop, a.sr_iters = [5.0], ["set5"], 1, 32, 4
        a.size, a.ct_noise, a.ct_iters, a.no_bm3d, a.no_tv = 32, [0.1], 6, True, True
        a.dncnn_depth, a.dncnn_channels, a.dncnn_patches, a.dncnn_epochs = 3, 8, 64, 1
    setup(a.seed)
    log = timed_log(a.quiet)
    t0 = time.perf_counter()
    den, info = denoisers(a, log)
    payload = {"experiment": "ed_pretrained", "settings": run_settings(a),
               "direction": "d = u - D(u - tau grad E), projected (eq. 22 SR / eq. 21 CT), "
                            "Armijo on E (Algorithm 1); gd = the gradient direction, step 1/L",
               "denoisers": info}
    payload["sr"] = run_sr(a, den, log)
    payload["ct"] = run_ct(a, den, log)
    payload["seconds"] = time.perf_counter() - t0
    out = Path(a.out)
    stem = f"ed_pretrained{'_quick' if a.quick else ''}{a.tag}"
    write_json(out / f"{stem}.json", payload)
    plot(out / f"{stem}.png", payload)
    if not a.quiet:
        print_tables(payload)
    return payload


if __name__ == "__main__":
    main()
