"""A deep convex-trained denoiser: the greedy shrinkage cascade (`convexnn.cascade`), Train400 ->
Set12 / BSD68, PSNR against depth, beside BM3D, TV and the certified one-stage model.

Stage 1 is the shipped certified `gray-s<sigma>-fne` (`denoise_fne.py` regenerates it); stage
t = 2..T is fitted by its exact least-squares problem on ``--patches`` fresh random Train400
patches (seed ``--seed + 100 t``; 250 x 64 x 64 = 1,024,000 pixels per stage by default), on
the output of the stages before it. Test images: the same noisy images as `denoise_natural.py`
and `denoise_fne.py` (seed 1000 + image index). BM3D is taken from the `denoise_fne*.json` /
`denoise_natural*.json` runs on those same images; TV and the noisy PSNR from the first stage's
card. ``--save-models`` ships ``gray-s<sigma>-cascade<T>``. The JSON is rewritten after each
sigma.

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/denoise_cascade.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/denoise_cascade.py --sigmas 25 --save-models     # the committed run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import pretrained, save_model
from convexnn.cascade import ConvexShrinkageCascade
from convexnn.data import load_test_images, load_training_images
from convexnn.model.shrinkage import FRAMES
from experiments.common import RESULTS, portable_settings, timed_log, use_reference_data, write_json
from experiments.denoise_fne import cached_bm3d
from experiments.denoise_natural import N_CHECK, noisy_of, patches, scores

MODELS = Path(pretrained.MODELS_DIR)


def stage_pairs(a, train, sigma: float, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    seed = a.seed + 100 * stage
    clean = torch.from_numpy(patches(train, a.patches, a.patch_size, seed))[:, None]
    return torch.from_numpy(noisy_of(clean.numpy(), sigma, seed + 1)), clean


def evaluate(a, model, set_name: str, sigma: float) -> dict:
    """PSNR / SSIM after every depth on the test set's noisy images (seed 1000 + index)."""
    images = load_test_images(set_name)
    if a.max_images:
        images = images[:a.max_images]
    per = [[] for _ in range(model.network_.depth)]
    ssims = [[] for _ in range(model.network_.depth)]
    t0 = time.perf_counter()
    for j, x in enumerate(images):
        y = torch.from_numpy(noisy_of(x, sigma, 1000 + j))[None, None]
        with torch.no_grad():
            outs = model.network_.depths(y)
        for d, z in enumerate(outs):
            p, s = scores(z[0, 0].numpy(), x)
            per[d].append(p)
            ssims[d].append(s)
    return {"psnr_by_depth": [float(np.mean(p)) for p in per],
            "ssim_by_depth": [float(np.mean(s)) for s in ssims],
            "per_image_psnr": per[-1], "n_images": len(images),
            "seconds_per_image": (time.perf_counter() - t0) / len(images)}


def save_pretrained(a, sigma: float, model, first_name: str, results: dict,
                    baselines: dict) -> str:
    depth = model.network_.depth
    name = f"gray-s{sigma:g}-cascade{depth}"
    save_model(model, MODELS / f"{name}.safetensors")
    first_card = pretrained.card(first_name)
    check_set = next(iter(results))
    card = {
        "name": name, "sigma": sigma / 255.0, "firmly_nonexpansive": False,
        "lipschitz_certificate": None, "kernel_size": a.kernel,
        "n_filters": int(model.network_.stages[0].filters.shape[0]), "frame": a.frame,
        "residual": True, "n_blocks": depth, "architecture": "shrinkage-cascade",
        "training_data": f"Train400 (DnCNN's gray set): stage 1 is {first_name} "
                         f"({first_card.training_data}); stage t = 2..{depth}: {a.patches} "
                         f"fresh random {a.patch_size} x {a.patch_size} patches, seed "
                         f"{a.seed} + 100 t",
        "training_pixels": int(model.history_[0]["training_pixels"]),
        "training_command": f"PYTHONPATH=. python experiments/denoise_cascade.py --save-models "
                            f"--sigmas {sigma:g} --stages {depth} --patches {a.patches} "
                            f"--patch-size {a.patch_size} --kernel {a.kernel} --frame {a.frame} "
                            f"--seed {a.seed}",
        "n_patterns": 0, "beta_per_pixel": 0.0,
        "solver": f"stage 1: {first_card.solver}; stages 2..{depth}: Cholesky (exact least "
                  f"squares, normal-equation residual <= "
                  f"{max(h['normal_residual'] for h in model.history_):.1e})",
        "certified_gap": first_card.certified_gap,
        "fit_seconds": float(first_card.fit_seconds + sum(h["seconds"]
                                                          for h in model.history_)),
        "psnr": {s: {f"{sigma:g}": r["psnr_by_depth"][-1]} for s, r in results.items()},
        "baselines": {m: {s: {f"{sigma:g}": v} for s, v in by_set.items()}
                      for m, by_set in baselines.items() if by_set},
        "check": {"set": check_set, "noise_seed": "1000 + image index",
                  "per_image_psnr": results[check_set]["per_image_psnr"][:N_CHECK]},
    }
    (MODELS / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return name


def baselines_for(sigma: float, sets: list[str], first_name: str, full: bool) -> dict:
    """BM3D (cached runs on the same noisy images), TV and noisy (the first stage's card)."""
    card = pretrained.card(first_name)
    out: dict[str, dict[str, float]] = {"bm3d": {}, "tv": {}, "noisy": {}}
    for s in sets:
        bm3d = cached_bm3d(s, sigma) if full else None
        if bm3d is not None:
            out["bm3d"][s] = bm3d["psnr"]
        for m in ("tv", "noisy"):
            v = card.baselines.get(m, {}).get(s, {}).get(f"{sigma:g}")
            if v is not None and full:
                out[m][s] = v
    return out


def plot(path: Path, payload: dict) -> None:
    from matplotlib.figure import Figure

    sig = list(payload["sigma"])
    sets = payload["test_sets"]
    fig = Figure(figsize=(max(7.0, 4.6 * len(sig)), 3.8 * len(sets)), layout="constrained")
    axes = fig.subplots(len(sets), len(sig), squeeze=False)
    for i, s in enumerate(sets):
        for j, sg in enumerate(sig):
            ax = axes[i][j]
            run = payload["sigma"][sg]
            r = run["results"][s]
            depth = np.arange(1, len(r["psnr_by_depth"]) + 1)
            ax.plot(depth, r["psnr_by_depth"], "o-", label="convex cascade (depth 1: FNE)")
            for m, style in (("bm3d", "r--"), ("tv", "g:")):
                v = run["baselines"].get(m, {}).get(s)
                if v is not None:
                    ax.axhline(v, color=style[0], ls=style[1:], label=f"{m.upper()} {v:.2f}")
            ax.set_xticks(depth)
            ax.set_xlabel("depth (stages)")
            ax.set_ylabel("mean PSNR (dB)")
            ax.set_title(f"{s}, sigma {sg}/255: {r['psnr_by_depth'][-1]:.2f} dB at depth "
                         f"{depth[-1]}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("greedy shrinkage cascade, every stage an exact convex program", fontsize=10)
    fig.savefig(path, dpi=90)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[15.0, 25.0, 50.0])
    ap.add_argument("--stages", type=int, default=4, help="depth T, stage 1 included")
    ap.add_argument("--sets", nargs="+", default=["set12", "bsd68"])
    ap.add_argument("--patches", type=int, default=250, help="training patches per stage")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--kernel", type=int, default=7)
    ap.add_argument("--frame", default="multiscale", choices=list(FRAMES),
                    help="the filters of stages 2..T (shrinkage_frame)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--save-models", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    missing = [f"gray-s{s:g}-fne" for s in a.sigmas
               if f"gray-s{s:g}-fne" not in pretrained.names()]
    if missing:
        ap.error(f"--sigmas: stage 1 is the shipped certified model, and {missing} is not "
                 f"shipped; shipped: {pretrained.names()}")
    if a.stages < 2:
        ap.error(f"--stages: expected at least 2 (stage 1 is the shipped model), got {a.stages}")
    if a.quick:
        a.sigmas, a.sets, a.stages, a.patches, a.patch_size, a.max_images = \
            [25.0], ["set12"], 3, 40, 48, 2
        a.kernel = 5
        a.save_models = False
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    use_reference_data()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    log = timed_log(a.quiet, t_start)
    train = load_training_images()
    out_dir = Path(a.out)
    stem = "denoise_cascade" + ("_quick" if a.quick else "") + a.tag
    payload = {"experiment": "denoise_cascade", "settings": portable_settings(a),
               "test_sets": a.sets, "sigma": {}}
    for sigma in a.sigmas:
        first_name = f"gray-s{sigma:g}-fne"
        first = pretrained.load(first_name).net
        y, x = stage_pairs(a, train, sigma, 1)
        model = ConvexShrinkageCascade(sigma / 255.0, n_stages=a.stages, kernel_size=a.kernel,
                                       frame=a.frame)
        model.fit(y, x, first=first,
                  stage_data=[stage_pairs(a, train, sigma, t) for t in range(2, a.stages + 1)],
                  progress=not a.quiet)
        results = {s: evaluate(a, model, s, sigma) for s in a.sets}
        base = baselines_for(sigma, a.sets, first_name, full=not a.max_images)
        for s, r in results.items():
            log(f"sigma {sigma:g} {s}: PSNR by depth "
                + ", ".join(f"{p:.2f}" for p in r["psnr_by_depth"])
                + "".join(f"; {m} {v[s]:.2f}" for m, v in base.items() if s in v))
        run = {"first_stage": first_name, "history": model.history_, "results": results,
               "baselines": base, "fit_seconds": model.seconds_}
        if a.save_models:
            run["saved_as"] = save_pretrained(a, sigma, model, first_name, results, base)
        payload["sigma"][f"{sigma:g}"] = run
        write_json(out_dir / f"{stem}.json", {**payload,
                                              "seconds": time.perf_counter() - t_start})
    plot(out_dir / f"{stem}.png", payload)
    log(f"wrote {out_dir / stem}.json and .png")
    return payload


if __name__ == "__main__":
    main()
