"""Convex-trained denoisers on natural images: Train400 -> Set12 / BSD68, next to BM3D and TV.

The denoising protocol of the literature: gray images on [0, 255], additive Gaussian noise of
sigma in {15, 25, 50}, PSNR / SSIM averaged over the test images. The convex denoiser is the
residual two-layer network (Cor. 1.1) rebuilt by eq. 5 from eq. 4 solved exactly by the default
`fit()` path (interior point + pattern pricing, certified gap) on seeded random patches of the
Train400 images; BM3D (the `bm3d` package) and TV (Chambolle, scikit-image, its weight picked on
Train400 images) run on the same noisy images. With `--save-models` the networks are written
into the package (`convexnn/pretrained/models/gray-s<sigma>.safetensors` + card) with the
measured table, so `convexnn.pretrained.load("gray-s25")` serves them.

    PYTHONPATH=. python experiments/denoise_natural.py --quick
    PYTHONPATH=. python experiments/denoise_natural.py --save-models      # the committed run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_tv_chambolle

from convexnn import ConvexDualDenoiser, save_model
from convexnn.data import load_test_images, load_training_images
from convexnn.deep import GreedyConvexStack, GreedyStackConfig, UnrolledDenoiser, save_stack
from experiments.common import (
    RESULTS,
    portable_settings,
    timed_log,
    use_reference_data,
    write_json,
)

MODELS = Path(__file__).resolve().parents[1] / "convexnn" / "pretrained" / "models"
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32)
N_CHECK = 3          # per-image PSNRs stored in the card, re-measured by the tests


def noisy_of(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """`img + sigma/255 * N(0, 1)`, torch's seeded CPU generator (the same on every machine)."""
    gen = torch.Generator().manual_seed(seed)
    return img + sigma / 255.0 * torch.randn(img.shape, generator=gen,
                                             dtype=torch.float64).numpy()


def patches(images: list[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        r, c = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out.append(im[r:r + size, c:c + size])
    return np.stack(out)


def scores(est: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    est = np.clip(est, 0.0, 1.0)
    return (float(peak_signal_noise_ratio(clean, est, data_range=1.0)),
            float(structural_similarity(clean, est, data_range=1.0)))


def fit_convex(a, train: list[np.ndarray], sigma: float, log):
    """Eq. 4 solved exactly on seeded Train400 patches: one residual block, or with
    `--blocks B` a greedy stack (Sec. 4.3) whose every block is exact and residual."""
    clean = torch.from_numpy(patches(train, a.patches, a.patch_size, a.seed))[:, None]
    noisy = torch.from_numpy(noisy_of(clean.numpy(), sigma, a.seed + 1))
    beta = a.beta * clean.numel()
    t = time.perf_counter()
    if a.blocks > 1:
        model = GreedyConvexStack(GreedyStackConfig(
            n_blocks=a.blocks, kernel_size=a.kernel, n_patterns=a.patterns, beta=beta,
            first_residual=True, solver=None, seed=a.seed))
        model.fit(noisy, clean, progress=not a.quiet)
        blocks = model.blocks_
    else:
        model = ConvexDualDenoiser(kernel_size=a.kernel, n_patterns=a.patterns, beta=beta,
                                   residual=True, seed=a.seed)
        model.fit(noisy, clean, progress=not a.quiet)
        blocks = [model]
    secs = time.perf_counter() - t
    per_block = [{k: v for k, v in b.solve_info_.details.items()
                  if "gap" in k and isinstance(v, (int, float))} for b in blocks]
    gaps = {"certified_gap": max(g.get("certified_gap", float("inf")) for g in per_block),
            "per_block": per_block}
    info = {"status": ",".join(sorted({b.solve_info_.status for b in blocks})),
            "solver": blocks[0].solve_info_.solver, "seconds": secs, "n_blocks": len(blocks),
            "training_pixels": int(clean.numel()), "beta": beta,
            "objective": float(blocks[-1].objective_), "gaps": gaps}
    log(f"sigma {sigma:g}: exact fit of {len(blocks)} block(s) {secs:.0f} s, {info['status']}, "
        f"worst certified gap {gaps['certified_gap']:.2g}")
    return model, info


def tv_weight(train: list[np.ndarray], sigma: float) -> float:
    """The TV weight with the best mean PSNR on 8 Train400 images (never the test images)."""
    imgs = train[::50][:8]
    noisy = [noisy_of(im, sigma, 7000 + i) for i, im in enumerate(imgs)]
    best = max(TV_WEIGHTS, key=lambda w: np.mean(
        [scores(denoise_tv_chambolle(y, weight=w), x)[0] for x, y in zip(imgs, noisy,
                                                                           strict=True)]))
    return float(best)


def evaluate(a, name: str, sigma: float, net, weight: float, log, depths=()) -> dict:
    images = load_test_images(name)
    if a.max_images:
        images = images[:a.max_images]
    rows: dict[str, list] = {"noisy": [], "convex": [], "tv": [], "bm3d": []}
    secs = {"convex": 0.0, "tv": 0.0, "bm3d": 0.0}
    for j, x in enumerate(images):
        y = noisy_of(x, sigma, 1000 + j)
        rows["noisy"].append(scores(y, x))
        t = time.perf_counter()
        with torch.no_grad():
            est = net(torch.from_numpy(y)[None, None])[0, 0].numpy()
        secs["convex"] += time.perf_counter() - t
        rows["convex"].append(scores(est, x))
        for b, partial in enumerate(depths):    # the stack's first b + 1 blocks
            with torch.no_grad():
                part = partial(torch.from_numpy(y)[None, None])[0, 0].numpy()
            rows.setdefault(f"convex_depth{b + 1}", []).append(scores(part, x))
        t = time.perf_counter()
        rows["tv"].append(scores(denoise_tv_chambolle(y, weight=weight), x))
        secs["tv"] += time.perf_counter() - t
        if not a.no_bm3d:
            import bm3d

            t = time.perf_counter()
            rows["bm3d"].append(scores(bm3d.bm3d(y, sigma / 255.0), x))
            secs["bm3d"] += time.perf_counter() - t
    out = {m: {"psnr": float(np.mean([r[0] for r in v])), "ssim": float(np.mean([r[1] for r in v])),
               "per_image_psnr": [r[0] for r in v], "seconds": secs.get(m)}
           for m, v in rows.items() if v}
    log(f"sigma {sigma:g} {name}: " + ", ".join(f"{m} {r['psnr']:.2f} dB" for m, r in
                                                 out.items()))
    return out


def model_name(sigma: float, blocks: int) -> str:
    return f"gray-s{sigma:g}" + (f"-deep{blocks}" if blocks > 1 else "")


def save_pretrained(a, sigma: float, model, net, info: dict, results: dict) -> None:
    name = model_name(sigma, a.blocks)
    MODELS.mkdir(parents=True, exist_ok=True)
    if a.blocks > 1:               # the dual blocks; pretrained.load rebuilds eq. 5 per block
        save_stack(model, MODELS / f"{name}.safetensors")
        n_filters = sum(b.n_filters for b in net.blocks)
    else:
        save_model(net, MODELS / f"{name}.safetensors")
        n_filters = net.n_filters
    card = {
        "name": name, "sigma": sigma / 255.0, "firmly_nonexpansive": False,
        "lipschitz_certificate": None, "kernel_size": a.kernel, "n_filters": n_filters,
        "residual": True, "n_blocks": a.blocks,
        "training_data": f"Train400 (DnCNN's gray set): {a.patches} random {a.patch_size} x "
                         f"{a.patch_size} patches, seed {a.seed}",
        "training_pixels": info["training_pixels"],
        "training_command": f"PYTHONPATH=. python experiments/denoise_natural.py --save-models "
                            f"--sigmas {sigma:g} --patches {a.patches} --patch-size "
                            f"{a.patch_size} --patterns {a.patterns} --kernel {a.kernel} "
                            f"--beta {a.beta:g} --blocks {a.blocks} --seed {a.seed}",
        "n_patterns": a.patterns, "beta_per_pixel": a.beta, "solver": info["solver"],
        "certified_gap": info["gaps"].get("certified_gap"),
        "fit_seconds": info["seconds"],
        "psnr": {s: {f"{sigma:g}": r["convex"]["psnr"]} for s, r in results.items()},
        "baselines": {m: {s: {f"{sigma:g}": r[m]["psnr"]} for s, r in results.items()
                          if m in r} for m in ("bm3d", "tv", "noisy")},
        "check": {"set": next(iter(results)), "noise_seed": "1000 + image index",
                  "per_image_psnr": next(iter(results.values()))["convex"][
                      "per_image_psnr"][:N_CHECK]},
    }
    (MODELS / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")


def plot(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = payload["test_sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.8), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        sig = sorted(payload["sigma"], key=float)
        for m, style in (("bm3d", "s-"), ("convex", "o-"), ("tv", "^-"), ("noisy", "x:")):
            ys = [payload["sigma"][s]["results"][name].get(m, {}).get("psnr") for s in sig]
            if all(v is not None for v in ys):
                ax.plot([float(s) for s in sig], ys, style, label=m)
        ax.set_xlabel("noise sigma (on [0, 255])")
        ax.set_ylabel("mean PSNR (dB)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("gray denoising: convex-trained (exact eq. 4, eq. 5) vs BM3D and TV")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    if payload["settings"]["blocks"] > 1:
        plot_depth(path.with_name(path.stem + "_depth.png"), payload)


def plot_depth(path: Path, payload: dict) -> None:
    """Mean PSNR against the greedy stack's depth, TV and BM3D as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = payload["settings"]["blocks"]
    runs = [(s, name, r) for s, v in sorted(payload["sigma"].items(), key=lambda t: float(t[0]))
            for name, r in v["results"].items()]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.8), squeeze=False)
    for ax, (s, name, r) in zip(axes[0], runs, strict=True):
        ys = [r[f"convex_depth{b}"]["psnr"] for b in range(1, blocks)] + [r["convex"]["psnr"]]
        ax.plot(range(1, blocks + 1), ys, "o-", label="convex greedy stack")
        ax.set_xticks(range(1, blocks + 1))
        for m, style in (("tv", "--"), ("bm3d", ":")):
            if m in r:
                ax.axhline(r[m]["psnr"], ls=style, color="k" if m == "tv" else "r", label=m)
        ax.set_xlabel("depth (exact two-layer blocks)")
        ax.set_ylabel("mean PSNR (dB)")
        ax.set_title(f"{name}, sigma {s}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])
    ap.add_argument("--sets", nargs="+", default=["set12", "bsd68"])
    ap.add_argument("--patches", type=int, default=60)
    ap.add_argument("--patch-size", type=int, default=40)
    ap.add_argument("--patterns", type=int, default=200)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--beta", type=float, default=1e-5, help="weight decay per training pixel")
    ap.add_argument("--blocks", type=int, default=1,
                    help="greedy stack depth (Sec. 4.3); every block exact and residual")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--save-models", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.sigmas, a.sets, a.patches, a.patch_size, a.patterns = [25.0], ["set12"], 6, 24, 30
        a.max_images, a.no_bm3d, a.save_models = 2, True, False
    use_reference_data()
    log = timed_log(a.quiet)
    train = load_training_images()
    tag = ("_quick" if a.quick else "") + (f"_deep{a.blocks}" if a.blocks > 1 else "")
    path = Path(a.out) / f"denoise_natural{tag}.json"
    payload = {"experiment": "denoise_natural", "settings": portable_settings(a),
               "test_sets": a.sets, "sigma": {}}
    if path.is_file():          # keep the other noise levels of an earlier run with these sets
        earlier = json.loads(path.read_text())
        if earlier.get("test_sets") == a.sets:
            payload["sigma"].update(earlier.get("sigma", {}))
    for sigma in a.sigmas:
        model, info = fit_convex(a, train, sigma, log)
        net = model.to_primal()
        depths = [] if a.blocks == 1 else [UnrolledDenoiser.from_blocks(list(net.blocks[:b]))
                                           for b in range(1, a.blocks)]
        weight = tv_weight(train, sigma)
        results = {name: evaluate(a, name, sigma, net, weight, log, depths)
                   for name in a.sets}
        payload["sigma"][f"{sigma:g}"] = {"fit": info, "tv_weight": weight, "results": results}
        if a.save_models:
            save_pretrained(a, sigma, model, net, info, results)
        write_json(path, payload)                       # written per noise level
        plot(path.with_suffix(".png"), payload)
    return payload


if __name__ == "__main__":
    main()
