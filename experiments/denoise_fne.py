"""Certified firmly nonexpansive convex-trained denoisers: Train400 -> Set12 / BSD68.

The gradient-form shrinkage network `J = I - grad Phi` (`convexnn.shrinkage`: Phi convex and
1-smooth by a certificate, so J is firmly nonexpansive) is trained by its convex QP on seeded
Train400 patches (10^6 pixels by default), for each noise level, and evaluated on the same noisy
test images as `denoise_natural.py` (seeds 1000 + image index), side by side with, in this run:
the shipped plain convex models (`gray-s<sigma>`, `gray-s25-deep4`), TV, the same network
without the Lipschitz constraint (what the certificate costs); BM3D is taken from the
`denoise_natural*.json` results on the same noisy images when present, else run here.
`--save-models` ships `gray-s<sigma>-fne-ms` into `convexnn/pretrained/models` (the default
`--frame multiscale`: the 7 x 7 DCT frame plus the 5 x 5 and 3 x 3 DCT filters and finite
differences), or `gray-s<sigma>-fne` with `--frame dct` (the 7 x 7 DCT frame alone).

    PYTHONPATH=. python experiments/denoise_fne.py --quick
    PYTHONPATH=. python experiments/denoise_fne.py --save-models        # the committed run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import pretrained, save_model
from convexnn.data import load_training_images
from convexnn.model.shrinkage import FRAMES
from convexnn.shrinkage import ConvexShrinkageDenoiser
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, train_denoiser
from convexnn.solvers.equivariant import EquivariantDenoiser
from experiments.common import (
    RESULTS,
    portable_settings,
    timed_log,
    use_reference_data,
    write_json,
)
from experiments.denoise_natural import MODELS, N_CHECK, evaluate, noisy_of, patches, tv_weight


def fit(a, train: list[np.ndarray], sigma: float, lipschitz: bool, log):
    clean = torch.from_numpy(patches(train, a.patches, a.patch_size, a.seed))[:, None]
    noisy = torch.from_numpy(noisy_of(clean.numpy(), sigma, a.seed + 1))
    model = ConvexShrinkageDenoiser(sigma / 255.0, kernel_size=a.kernel, frame=a.frame,
                                    n_bins=a.bins, span=a.span, firmly_nonexpansive=lipschitz)
    model.fit(noisy, clean, progress=not a.quiet)
    d = model.solve_info_.details
    info = {"status": model.solve_info_.status, "solver": model.solve_info_.solver,
            "seconds": model.solve_info_.total_seconds,
            **{k: d[k] for k in ("training_pixels", "objective_per_pixel", "lower_bound",
                                 "certified_gap", "smoothness_before_scaling", "scaled_by",
                                 "cut_rounds", "gram_seconds", "smoothness_certificate")},
            "lipschitz_certificate": model.lipschitz_certificate,
            "firmly_nonexpansive": model.firmly_nonexpansive}
    log(f"sigma {sigma:g} {'FNE' if lipschitz else 'unconstrained'}: {info['seconds']:.0f} s, "
        f"{info['status']}, certified relative gap {info['certified_gap']:.2g}, S "
        f"{info['smoothness_certificate']:.6f}, Lip(2J - I) <= {info['lipschitz_certificate']:.4f}")
    return model, info


def train_dncnn(a, train: list[np.ndarray], sigma: float, log):
    """A DnCNN-style residual CNN (8 conv layers, 32 channels) trained by Adam on the same
    Train400 patches for `--dncnn-steps` steps: the learned baseline at a comparable CPU time."""
    clean = patches(train, a.patches, a.patch_size, a.seed).astype(np.float32)
    torch.manual_seed(a.seed)
    net = DnCNN(depth=8, channels=32)
    cfg = DenoiserTrainConfig(sigma=sigma / 255.0, patch_size=min(40, a.patch_size),
                              n_patches=4096, batch_size=64, epochs=-(-a.dncnn_steps // 64),
                              max_steps=a.dncnn_steps, seed=a.seed)
    res = train_denoiser(net, clean, cfg)
    net.eval()
    log(f"sigma {sigma:g} DnCNN (8 x 32): {res.n_steps} Adam steps, {res.seconds:.0f} s")
    return net, {"steps": res.n_steps, "seconds": res.seconds, "depth": 8, "channels": 32,
                 "final_epoch_loss": res.epoch_loss[-1] if res.epoch_loss else None}


def cached_bm3d(name: str, sigma: float) -> dict | None:
    """BM3D on the same noisy images (seeds 1000 + index) from an earlier denoise_natural run."""
    for path in sorted(RESULTS.glob("denoise_natural*.json")) + sorted(
            RESULTS.glob("denoise_fne*.json")):
        run = json.loads(path.read_text())
        res = run.get("sigma", {}).get(f"{sigma:g}", {}).get("results", {}).get(name, {})
        if "bm3d" in res and not run["settings"].get("max_images"):
            return {**res["bm3d"], "source": path.name}
    return None


def model_name(sigma: float, frame: str) -> str:
    """`gray-s<sigma>-fne` (the DCT frame) or `gray-s<sigma>-fne-ms` (the multiscale frame)."""
    return f"gray-s{sigma:g}-fne" + ("-ms" if frame == "multiscale" else "")


def save_pretrained(a, sigma: float, model, info: dict, results: dict) -> str:
    name = model_name(sigma, a.frame)
    save_model(model, MODELS / f"{name}.safetensors")
    first = next(iter(results))
    card = {
        "name": name, "sigma": sigma / 255.0, "firmly_nonexpansive": model.firmly_nonexpansive,
        "lipschitz_certificate": model.lipschitz_certificate, "kernel_size": a.kernel,
        "n_filters": int(model.network_.filters.shape[0]), "frame": a.frame, "residual": True,
        "n_blocks": 1, "architecture": "gradient-shrinkage",
        "training_data": f"Train400 (DnCNN's gray set): {a.patches} random {a.patch_size} x "
                         f"{a.patch_size} patches, seed {a.seed}",
        "training_pixels": info["training_pixels"],
        "training_command": f"PYTHONPATH=. python experiments/denoise_fne.py --save-models "
                            f"--sigmas {sigma:g} --patches {a.patches} --patch-size "
                            f"{a.patch_size} --kernel {a.kernel} --frame {a.frame} --bins "
                            f"{a.bins} --span {a.span:g} --seed {a.seed}",
        "n_patterns": 0, "beta_per_pixel": 0.0, "solver": info["solver"],
        "certified_gap": info["certified_gap"], "fit_seconds": info["seconds"],
        "psnr": {s: {f"{sigma:g}": r["fne"]["psnr"]} for s, r in results.items()},
        "baselines": {m: v for m in ("bm3d", "tv", "noisy", "convex_plain") if (v := {
            s: {f"{sigma:g}": r[m]["psnr"]} for s, r in results.items() if m in r})},
        "check": {"set": first, "noise_seed": "1000 + image index",
                  "per_image_psnr": results[first]["fne"]["per_image_psnr"][:N_CHECK]},
    }
    (MODELS / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return name


def shipped(sigma: float, frame: str, log):
    """The shipped `model_name(sigma, frame)` (certificate recomputed at load) in place of a
    fit."""
    name = model_name(sigma, frame)
    if name not in pretrained.names():
        raise SystemExit(f"--from-pretrained: no shipped model {name!r}; shipped: "
                         f"{pretrained.names()}")
    model, card = pretrained.load(name), pretrained.card(name)
    log(f"sigma {sigma:g}: shipped {name}, Lip(2J - I) <= {model.net.lipschitz_certificate:.4f}")
    return model, {"shipped": name, "solver": card.solver, "certified_gap": card.certified_gap,
                   "training_pixels": card.training_pixels, "seconds": card.fit_seconds,
                   "lipschitz_certificate": model.net.lipschitz_certificate,
                   "firmly_nonexpansive": model.net.firmly_nonexpansive}


def run_sigma(a, train, sigma: float, log) -> dict:
    model, info = (shipped(sigma, a.frame, log) if a.from_pretrained
                   else fit(a, train, sigma, True, log))
    nets = {"fne": model}
    fits = {"fne": info}
    if a.ablation:
        free, fits["unconstrained"] = fit(a, train, sigma, False, log)
        nets["unconstrained"] = free
    if a.d4:       # D4 averaging keeps the certificate: 2 J_G - I averages conjugates of 2 J - I
        nets["fne_d4"] = EquivariantDenoiser(model, mode="all")
    if a.dncnn_steps:
        nets["dncnn"], fits["dncnn"] = train_dncnn(a, train, sigma, log)
    for name in (f"gray-s{sigma:g}", f"gray-s{sigma:g}-deep4"):
        if name in pretrained.names():
            nets["convex_plain" if "deep" not in name else "convex_deep4"] = pretrained.load(name)
    weight = tv_weight(train, sigma)
    plain = argparse.Namespace(**{**vars(a), "no_bm3d": True})
    results = {}
    for set_name in a.sets:
        rows = {}
        for key, net in nets.items():       # evaluate() scores `net` as "convex", plus TV
            r = evaluate(plain, set_name, sigma, net, weight, lambda m: None)
            rows[key] = r["convex"]
            rows.setdefault("tv", r["tv"])
            rows.setdefault("noisy", r["noisy"])
        bm3d = cached_bm3d(set_name, sigma) if not a.max_images else None
        if bm3d is not None:
            rows["bm3d"] = bm3d
        elif not a.no_bm3d:
            args = argparse.Namespace(**{**vars(a), "no_bm3d": False})
            rows["bm3d"] = {**evaluate(args, set_name, sigma, lambda x: x, weight,
                                       lambda m: None)["bm3d"], "source": "this run"}
        log(f"sigma {sigma:g} {set_name}: " + ", ".join(f"{k} {v['psnr']:.2f}"
                                                       for k, v in rows.items()))
        results[set_name] = rows
    out = {"fit": fits, "tv_weight": weight, "results": results}
    if a.save_models:
        out["saved_as"] = save_pretrained(a, sigma, model, info, results)
    out["shrinkage"] = shrinkage_curves(model)
    return out


def shrinkage_curves(model, bands=None) -> dict:
    """The learned scalar maps `s_j(z) = z - psi_j(z)` (what passes) of a few filters: by
    default the 5 that shrink most (largest slope sum; on the multiscale frame these are 3 x 3
    DCT and finite-difference filters, 73-84)."""
    net = model.network_ if hasattr(model, "network_") else model.net
    if bands is None:
        bands = torch.argsort(net.slopes.sum(1), descending=True)[:5].tolist()
    z = torch.linspace(-2.5 * float(net.knots.abs().max()), 2.5 * float(net.knots.abs().max()),
                       201, dtype=torch.float64)
    r = (z[:, None] - net.knots).clamp(0, net.width) - (-net.knots).clamp(0, net.width)
    return {"z": z.tolist(), "bands": {str(j): (z - r @ net.slopes[j]).tolist() for j in bands
                                       if j < net.slopes.shape[0]}}


def plot(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sig = sorted(payload["sigma"], key=float)
    sets = payload["test_sets"]
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(5 * (len(sets) + 1), 3.8), squeeze=False)
    styles = {"bm3d": "s-", "fne": "o-", "fne_d4": "P", "unconstrained": "o--", "tv": "^-",
              "dncnn": "v",
              "convex_plain": "d-", "convex_deep4": "D", "noisy": "x:"}
    for ax, name in zip(axes[0], sets, strict=False):
        for m, style in styles.items():
            pts = [(float(s), payload["sigma"][s]["results"][name][m]["psnr"]) for s in sig
                   if m in payload["sigma"][s]["results"].get(name, {})]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=m)
        ax.set_xlabel("noise sigma (on [0, 255])")
        ax.set_ylabel("mean PSNR (dB)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    curves = payload["sigma"][sig[len(sig) // 2]]["shrinkage"]
    for j, s in curves["bands"].items():      # psi_j = z - s_j: what the filter removes
        ax.plot(curves["z"], np.subtract(curves["z"], s), label=f"filter {j}")
    ax.set_xlabel("filter response z (noisy)")
    ax.set_ylabel("psi_j(z) (removed)")
    ax.set_title(f"learned FNE shrinkage, sigma {sig[len(sig) // 2]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("certified firmly nonexpansive convex denoiser (J = I - grad Phi, exact QP)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])
    ap.add_argument("--sets", nargs="+", default=["set12", "bsd68"])
    ap.add_argument("--patches", type=int, default=250)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--kernel", type=int, default=7)
    ap.add_argument("--frame", default="multiscale", choices=list(FRAMES),
                    help="the filters (shrinkage_frame); multiscale ships gray-s<sigma>-fne-ms")
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--span", type=float, default=4.0, help="knots cover +-span sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablation", action="store_true",
                    help="also fit without the Lipschitz constraint (what the certificate costs)")
    ap.add_argument("--d4", action="store_true",
                    help="also score the D4-averaged FNE model (still certified)")
    ap.add_argument("--dncnn-steps", type=int, default=0,
                    help="also train a small DnCNN on the same patches for this many steps")
    ap.add_argument("--max-images", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--no-bm3d", action="store_true", help="never run BM3D (cached is used)")
    ap.add_argument("--save-models", action="store_true")
    ap.add_argument("--from-pretrained", action="store_true",
                    help="score the shipped gray-s<sigma>-fne models instead of fitting")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.from_pretrained and a.save_models:
        ap.error("--from-pretrained scores the shipped models; it cannot be combined with "
                 "--save-models")
    if a.quick:
        a.sigmas, a.sets, a.patches, a.patch_size, a.kernel, a.bins = [25.0], ["set12"], 4, 32, 3, 6
        a.max_images, a.no_bm3d, a.save_models, a.ablation = 2, True, False, True
        a.d4, a.dncnn_steps = True, 8
    use_reference_data()
    log = timed_log(a.quiet)
    train = load_training_images()
    path = Path(a.out) / f"denoise_fne{'_quick' if a.quick else ''}{a.tag}.json"
    payload = {"experiment": "denoise_fne", "settings": portable_settings(a), "test_sets": a.sets,
               "sigma": {}}
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("test_sets") == a.sets:
            payload["sigma"].update(earlier.get("sigma", {}))
    t0 = time.perf_counter()
    for sigma in a.sigmas:
        payload["sigma"][f"{sigma:g}"] = run_sigma(a, train, sigma, log)
        write_json(path, payload)
        plot(path.with_suffix(".png"), payload)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return payload


if __name__ == "__main__":
    main()
