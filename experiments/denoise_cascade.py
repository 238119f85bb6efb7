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

``--adaptive-stages 1 --from-cascade`` builds on the shipped ``gray-s<sigma>-cascade<T>``
(its stages are kept, not refitted) and adds a content-adaptive filter stage
(`convexnn.model.adaptive`: one least-squares 7 x 7 filter of the estimate and of the noisy
residual per structure-tensor class) trained on ``--adaptive-patches`` fresh patches; it ships
as ``gray-s<sigma>-cascade<T>-adaptive``.

    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/denoise_cascade.py --quick
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \\
        python experiments/denoise_cascade.py --sigmas 25 --save-models     # the committed run
    CONVEXNN_SHARED_DATASETS=../shared/datasets PYTHONPATH=. \
        python experiments/denoise_cascade.py --sigmas 25 --from-cascade --adaptive-stages 1 \
        --save-models --tag _s25_adaptive
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


def stage_pairs(a, train, sigma: float, stage: int,
                n_patches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    seed = a.seed + 100 * stage
    clean = torch.from_numpy(patches(train, n_patches or a.patches, a.patch_size, seed))[:, None]
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


def span(first: int, last: int) -> str:
    return str(last) if first == last else f"{first}..{last}"


def solver_text(depth: int, first_solver: str, base_name: str | None, history: list) -> str:
    """The card's solver line: stage 1's solver, then the exact least-squares stages (those of
    the cascade built on, `base_name`, from its card)."""
    worst = max(h["normal_residual"] for h in history)
    if base_name is None:
        per_class = ", one system per structure class in the adaptive stages" \
            if any(h.get("kind") == "adaptive" for h in history) else ""
        return (f"stage 1: {first_solver}; stages 2..{depth}: Cholesky (exact least squares"
                f"{per_class}, normal-equation residual <= {worst:.1e})")
    first_new = depth - len(history) + 1
    return (f"stages 1..{first_new - 1}: {base_name} ({pretrained.card(base_name).solver}); "
            f"stage {span(first_new, depth)}: Cholesky, one exact least-squares system per "
            f"structure class (normal-equation residual <= {worst:.1e})")


def save_pretrained(a, sigma: float, model, first_name: str, results: dict,
                    baselines: dict, base_name: str | None = None) -> str:
    depth = model.network_.depth
    name = f"gray-s{sigma:g}-cascade{a.stages}" + ("-adaptive" if a.adaptive_stages else "")
    save_model(model, MODELS / f"{name}.safetensors")
    first_card = pretrained.card(first_name)
    adaptive_args = (f" --adaptive-stages {a.adaptive_stages} --adaptive-patches "
                     f"{a.adaptive_patches} --adaptive-classes "
                     + " ".join(map(str, a.adaptive_classes))
                     + (" --from-cascade" if a.from_cascade else "")) if a.adaptive_stages else ""
    check_set = next(iter(results))
    card = {
        "name": name, "sigma": sigma / 255.0, "firmly_nonexpansive": False,
        "lipschitz_certificate": None, "kernel_size": a.kernel,
        "n_filters": int(model.network_.stages[0].filters.shape[0]), "frame": a.frame,
        "residual": True, "n_blocks": depth, "architecture": "shrinkage-cascade",
        "training_data": f"Train400 (DnCNN's gray set): stage 1 is {first_name} "
                         f"({first_card.training_data}); stage t = 2..{a.stages}: {a.patches} "
                         f"fresh random {a.patch_size} x {a.patch_size} patches, seed "
                         f"{a.seed} + 100 t" + (
                             f"; adaptive stage t = {span(a.stages + 1, depth)}: "
                             f"{a.adaptive_patches} fresh patches, seed {a.seed} + 100 t"
                             if a.adaptive_stages else ""),
        "training_pixels": int(model.history_[-1]["training_pixels"]),
        "training_command": f"PYTHONPATH=. python experiments/denoise_cascade.py --save-models "
                            f"--sigmas {sigma:g} --stages {a.stages} --patches {a.patches} "
                            f"--patch-size {a.patch_size} --kernel {a.kernel} --frame {a.frame} "
                            f"--seed {a.seed}" + adaptive_args,
        "n_patterns": 0, "beta_per_pixel": 0.0,
        "solver": solver_text(depth, first_card.solver, base_name, model.history_),
        "certified_gap": first_card.certified_gap,
        "fit_seconds": float(first_card.fit_seconds + sum(h["seconds"]
                                                          for h in model.history_)
                             + (pretrained.card(base_name).fit_seconds - first_card.fit_seconds
                                if base_name else 0.0)),
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
            kinds = {h["stage"]: h.get("kind", "shrinkage") for h in run["history"]}
            ax.set_xticks(depth, [f"{t}\nadaptive" if kinds.get(t) == "adaptive" else str(t)
                                  for t in depth])
            ax.set_xlabel("depth (stages)")
            ax.set_ylabel("mean PSNR (dB)")
            ax.set_title(f"{s}, sigma {sg}/255: {r['psnr_by_depth'][-1]:.2f} dB at depth "
                         f"{depth[-1]}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("greedy shrinkage cascade, every stage an exact convex program\n"
                 "(a content-adaptive filter stage where marked)", fontsize=10)
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
    ap.add_argument("--adaptive-stages", type=int, default=0,
                    help="content-adaptive filter stages after the T shrinkage stages")
    ap.add_argument("--adaptive-patches", type=int, default=4000,
                    help="training patches per adaptive stage")
    ap.add_argument("--adaptive-classes", type=int, nargs=3, default=[12, 8, 3],
                    metavar=("ANGLES", "STRENGTHS", "COHERENCES"),
                    help="structure classes of an adaptive stage")
    ap.add_argument("--from-cascade", action="store_true",
                    help="keep the shipped gray-s<sigma>-cascade<T> and train only the "
                         "adaptive stages")
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
    if a.from_cascade:
        missing = [f"gray-s{s:g}-cascade{a.stages}" for s in a.sigmas
                   if f"gray-s{s:g}-cascade{a.stages}" not in pretrained.names()]
        if missing:
            ap.error(f"--from-cascade: {missing} is not shipped; shipped: {pretrained.names()}")
    if a.adaptive_stages < 0 or a.adaptive_patches < 1:
        ap.error("--adaptive-stages / --adaptive-patches: expected >= 0 / >= 1")
    if a.stages < 2:
        ap.error(f"--stages: expected at least 2 (stage 1 is the shipped model), got {a.stages}")
    if a.quick:
        a.sigmas, a.sets, a.stages, a.patches, a.patch_size, a.max_images = \
            [25.0], ["set12"], 3, 40, 48, 2
        a.kernel = 5
        a.save_models = False
        a.adaptive_patches, a.adaptive_classes = 40, [4, 2, 1]
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
        base_name = f"gray-s{sigma:g}-cascade{a.stages}" if a.from_cascade else None
        first = pretrained.load(base_name or first_name).net
        y, x = stage_pairs(a, train, sigma, 1)
        model = ConvexShrinkageCascade(sigma / 255.0, n_stages=a.stages, kernel_size=a.kernel,
                                       frame=a.frame, adaptive_stages=a.adaptive_stages,
                                       adaptive_angles=a.adaptive_classes[0],
                                       adaptive_strengths=a.adaptive_classes[1],
                                       adaptive_coherences=a.adaptive_classes[2])
        stages = [] if a.from_cascade else range(2, a.stages + 1)
        adaptive = range(a.stages + 1, a.stages + 1 + a.adaptive_stages)
        model.fit(y, x, first=first,
                  stage_data=[stage_pairs(a, train, sigma, t) for t in stages]
                  + [stage_pairs(a, train, sigma, t, a.adaptive_patches) for t in adaptive],
                  progress=not a.quiet)
        results = {s: evaluate(a, model, s, sigma) for s in a.sets}
        base = baselines_for(sigma, a.sets, first_name, full=not a.max_images)
        for s, r in results.items():
            log(f"sigma {sigma:g} {s}: PSNR by depth "
                + ", ".join(f"{p:.2f}" for p in r["psnr_by_depth"])
                + "".join(f"; {m} {v[s]:.2f}" for m, v in base.items() if s in v))
        run = {"first_stage": first_name, "built_on": base_name, "history": model.history_,
               "results": results,
               "baselines": base, "fit_seconds": model.seconds_}
        if a.save_models:
            run["saved_as"] = save_pretrained(a, sigma, model, first_name, results, base,
                                              base_name)
        payload["sigma"][f"{sigma:g}"] = run
        write_json(out_dir / f"{stem}.json", {**payload,
                                              "seconds": time.perf_counter() - t_start})
    plot(out_dir / f"{stem}.png", payload)
    log(f"wrote {out_dir / stem}.json and .png")
    return payload


if __name__ == "__main__":
    main()
