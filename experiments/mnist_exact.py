"""The paper-scale MNIST experiments with the exact dual (Sec. 5.1: Fig. 2, Fig. 10, App. B.1).

The dual is eq. 4 solved exactly by `fit()` (interior point with pattern pricing over all
8,000 sampled patterns, certified gap) instead of hinge-penalised Adam; the primal is trained
to convergence: Adam (batch 25, the paper's) for `--epochs-primal` epochs, then full-batch
L-BFGS on eq. 2 (`convexnn.train.polish`) until it stops improving or `--polish-minutes`.
Both are the same model class (a two-layer conv ReLU network, k = 3), so the comparison is
between two solved problems: the convex optimum over the sampled patterns, and where the
non-convex training ends.

    PYTHONPATH=. python experiments/mnist_exact.py zero-gap        # Fig. 2, sigma 0.25/0.5/0.75
    PYTHONPATH=. python experiments/mnist_exact.py ablation        # Fig. 10, sigma 0.1/0.5
    PYTHONPATH=. python experiments/mnist_exact.py robustness      # App. B.1
    PYTHONPATH=. python experiments/mnist_exact.py zero-gap --quick   # CI-sized

Trained primals are saved next to the results (`mnist_exact_primal_*.safetensors` +
`.history.json`) and reused by later runs (`--retrain-primal` to train again); exact solves
checkpoint their pricing rounds in `--checkpoint-dir` and resume.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser  # noqa: E402
from convexnn.io import load_model, save_model  # noqa: E402
from convexnn.train.polish import PolishConfig, polish_primal  # noqa: E402
from experiments.mnist_setup import BETA_MEAN, RESULTS, load_data, run_primal, write_json  # noqa: E402


def psnr(a, b, peak: float) -> float:
    mse = float(((torch.as_tensor(a, dtype=torch.float64)
                  - torch.as_tensor(b, dtype=torch.float64)) ** 2).mean())
    return 10 * np.log10(peak ** 2 / mse)


def converged_primal(a, x, y, xe, ye, beta, filters, tag):
    """Adam (batch 25) then full-batch L-BFGS on eq. 2; cached as safetensors."""
    out = Path(a.out)
    path = out / f"mnist_exact_primal_{tag}.safetensors"
    hist_path = path.with_suffix(".history.json")
    if path.exists() and hist_path.exists() and not a.retrain_primal:
        return load_model(path), json.loads(hist_path.read_text())
    t = time.perf_counter()
    primal, res = run_primal(x, y, xe, ye, filters, beta, a.epochs_primal, quiet=a.quiet,
                             eval_every=a.eval_every)
    t_adam = time.perf_counter() - t
    polish = polish_primal(primal, x, y, PolishConfig(
        beta=beta, max_steps=a.polish_steps, max_seconds=a.polish_minutes * 60,
        progress=not a.quiet, device="cpu"), eval_set=(xe, ye))
    hist = {"adam": res.history, "adam_seconds": t_adam, "adam_status": res.status,
            "polish": polish.history, "polish_status": polish.status,
            "polish_steps": polish.epochs_run}
    out.mkdir(parents=True, exist_ok=True)
    save_model(primal, path)
    hist_path.write_text(json.dumps(hist, default=float))
    return primal, hist


def exact_dual(a, x, y, beta, patterns, tag, generators=None):
    """Eq. 4 solved exactly over `patterns` sampled patterns, or over `generators`."""
    ck = None if a.checkpoint_dir is None else str(Path(a.checkpoint_dir) / f"{tag}.ckpt")
    model = (ConvexDualDenoiser(kernel_size=3, n_patterns=patterns, beta=beta, seed=0)
             if generators is None else
             ConvexDualDenoiser(kernel_size=3, generators=generators, beta=beta))
    t = time.perf_counter()
    model.fit(x, y, progress=not a.quiet, checkpoint_path=ck)
    return model, time.perf_counter() - t


def objectives(primal: TwoLayerConvDenoiser, dual: ConvexDualDenoiser, x, y, xe, ye, beta):
    rebuilt = dual.to_primal()
    rows = {}
    for split, (a, b) in {"train": (x, y), "test": (xe, ye)}.items():
        npix = a.shape[0] * a.shape[2] * a.shape[3]
        p = primal.double().objective(a, b, beta)
        d = rebuilt.objective(a, b, beta)
        rows[split] = {"primal": p, "exact_dual_rebuilt": d, "primal_mean": p / npix,
                       "exact_dual_mean": d / npix, "relative_difference": (p - d) / d}
    rows["train"]["exact_dual_eq4"] = dual.objective_
    return rows


def dual_record(dual: ConvexDualDenoiser, seconds: float, x) -> dict:
    d = dual.solve_info_.details
    norms = torch.cat(dual.group_norms())
    return {"status": dual.solve_info_.status, "seconds": seconds,
            "patterns_kept": int(dual.generators_.shape[0]),
            "nonzero_groups": int((norms > 1e-6 * norms.max()).sum()),
            "working_patterns": d.get("working_patterns"),
            "certified_gap": d.get("certified_gap"), "lower_bound": d.get("lower_bound"),
            "objective": dual.objective_, "solver": d["solver_choice"],
            "pricing_rounds": len(d.get("pricing_rounds", [])),
            "coarse_levels": d.get("coarse_levels"),
            "relative_violation": dual.constraint_violation(x).relative}


def plot_zero_gap(path, hist, rows, sigma, filters, patterns) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, split in zip(axes, ("train", "test"), strict=True):
        key = f"{split}_objective_mean"
        pts = [(r["epoch"], r[key]) for r in hist["adam"] if key in r]
        n_adam = pts[-1][0] if pts else 0
        if pts:
            ax.plot(*zip(*pts, strict=True), color="C0", label="primal: Adam (batch 25)")
        pol = [(n_adam + i, r[key]) for i, r in enumerate(hist["polish"]) if key in r]
        if pol:
            ax.plot(*zip(*pol, strict=True), color="C1",
                    label="primal: + full-batch L-BFGS (steps)")
        ax.axhline(rows[split]["exact_dual_mean"], color="k", ls="--",
                   label=f"exact dual, {patterns} patterns (certified)")
        ax.set_xlabel("epoch (Adam), then L-BFGS step")
        ax.set_ylabel(f"{split} objective per pixel (eq. 2)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"MNIST sigma = {sigma:g}: primal {filters} filters vs exact dual")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_recon(path, xe, ye, primal, dual, sigma, n: int = 6) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        outs = [("noisy", xe[:n]), ("primal", primal.double()(xe[:n].double())),
                ("exact dual", dual.predict(xe[:n])), ("clean", ye[:n])]
    peak = float(ye[:n].max() - ye[:n].min())
    fig, axes = plt.subplots(len(outs), n, figsize=(1.35 * n, 1.5 * len(outs)))
    for r, (name, imgs) in enumerate(outs):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(imgs[c, 0], dtype=float), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if name != "clean":
                ax.set_title(f"{psnr(imgs[c], ye[c], peak):.1f} dB", fontsize=7)
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"held-out digits, sigma = {sigma:g} (PSNR, peak = clean range)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def zero_gap(a, sigmas, kind="gaussian", filters=None, name="zero_gap") -> dict:
    out = Path(a.out)
    summary = {}
    filters = filters or a.filters
    for sigma in sigmas:
        x, y, xe, ye = load_data(a.n_train, a.n_test, sigma, kind)
        beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
        tag = f"{name}_{kind}_sigma{sigma:g}" + ("_quick" if a.quick else "")
        primal, hist = converged_primal(a, x, y, xe, ye, beta, filters,
                                        f"{kind}_sigma{sigma:g}_m{filters}"
                                        + ("_quick" if a.quick else ""))
        dual, secs = exact_dual(a, x, y, beta, a.patterns, tag)
        rows = objectives(primal, dual, x, y, xe, ye, beta)
        # the same program with the primal's own first-layer filters added to the candidates:
        # the primal is then a feasible point of it (eq. 5 backwards), so its optimum is at
        # most the primal's objective; what it gains over the sampled optimum is the part of
        # the gap due to sampling patterns
        both = torch.cat([dual.generators_.to(torch.float64),
                          primal.conv1.weight.detach().to(torch.float64).cpu()])
        dual2, secs2 = exact_dual(a, x, y, beta, None, tag + "_with_primal", generators=both)
        rows2 = objectives(primal, dual2, x, y, xe, ye, beta)
        payload = {"experiment": f"mnist_exact_{name}", "sigma": sigma, "noise": kind,
                   "n_train": a.n_train, "n_test": a.n_test, "beta_sum": beta,
                   "beta_per_pixel": BETA_MEAN, "primal_filters": filters,
                   "patterns_sampled": a.patterns, "objectives": rows,
                   "exact_dual": dual_record(dual, secs, x),
                   "objectives_with_primal_patterns": rows2,
                   "exact_dual_with_primal_patterns": dual_record(dual2, secs2, x),
                   "primal_adam_epochs": len(hist["adam"]),
                   "primal_polish": {"status": hist["polish_status"],
                                     "steps": hist["polish_steps"]},
                   "primal_history": hist}
        write_json(out / f"mnist_exact_{tag}.json", payload)
        plot_zero_gap(out / f"mnist_exact_{tag}.png", hist, rows, sigma, filters, a.patterns)
        plot_recon(out / f"mnist_exact_{tag}_recon.png", xe, ye, primal, dual, sigma)
        summary[sigma] = rows
        if not a.quiet:
            print(f"{kind} sigma={sigma:g}: " + ", ".join(
                f"{s}: primal {r['primal_mean']:.6g} exact dual {r['exact_dual_mean']:.6g} per "
                f"pixel ({100 * r['relative_difference']:+.2f}%)" for s, r in rows.items())
                + f"; with the primal's {filters} patterns added: train exact dual "
                f"{rows2['train']['exact_dual_mean']:.6g} per pixel "
                f"({100 * rows2['train']['relative_difference']:+.2f}%)", flush=True)
    return summary


def ablation(a) -> dict:
    out = Path(a.out)
    counts = [125, 250, 500, 1000, 2000, 4000, 8000] if not a.quick else [25, 50, 100]
    path = out / ("mnist_exact_ablation" + ("_quick" if a.quick else "") + ".json")
    payload = {"experiment": "mnist_exact_ablation", "patterns": counts, "sigma": {}}
    if path.is_file():              # keep the other sigmas of an earlier run; written per sigma
        earlier = json.loads(path.read_text())
        if earlier.get("patterns") == counts:
            payload["sigma"].update(earlier.get("sigma", {}))
    for sigma in a.sigma or [0.1, 0.5]:
        x, y, xe, ye = load_data(a.n_train, a.n_test, sigma)
        beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
        npix = x.shape[0] * x.shape[2] * x.shape[3]
        primal, _ = converged_primal(a, x, y, xe, ye, beta, a.filters,
                                     f"gaussian_sigma{sigma:g}_m{a.filters}"
                                     + ("_quick" if a.quick else ""))
        p_obj = primal.double().objective(x, y, beta)
        rows = []
        for p in counts:
            tag = f"ablation_sigma{sigma:g}_P{p}" + ("_quick" if a.quick else "")
            dual, secs = exact_dual(a, x, y, beta, p, tag)
            rec = dual_record(dual, secs, x)
            rec.update(P=p, objective_mean=dual.objective_ / npix,
                       test_objective_mean=dual.to_primal().objective(xe, ye, beta)
                       / (xe.shape[0] * xe.shape[2] * xe.shape[3]))
            rows.append(rec)
            if not a.quiet:
                print(f"sigma={sigma:g} P={p}: exact {rec['objective_mean']:.6g} per pixel "
                      f"(primal {p_obj / npix:.6g}), {secs:.0f} s", flush=True)
        below = [r["P"] for r in rows if r["objective"] <= p_obj]
        payload["sigma"][f"{sigma:g}"] = {
            "primal_objective_mean": p_obj / npix, "rows": rows,
            "crossing_P": below[0] if below else None}
        write_json(path, payload)
        _plot_ablation(path.with_suffix(".png"), payload, a.filters)
    return payload


def _plot_ablation(path, payload, filters) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(payload["sigma"]), figsize=(5 * len(payload["sigma"]), 3.8),
                             squeeze=False)
    for ax, (sigma, s) in zip(axes[0], payload["sigma"].items(), strict=True):
        ps = [r["P"] for r in s["rows"]]
        ax.plot(ps, [r["objective_mean"] for r in s["rows"]], "o-",
                label="exact dual optimum (certified)")
        ax.axhline(s["primal_objective_mean"], color="C3", ls="--",
                   label=f"primal, {filters} filters, converged")
        ax.set_xscale("log")
        ax.set_xticks(ps, [str(q) for q in ps])
        ax.minorticks_off()
        ax.set_xlabel("sampled sign patterns P")
        ax.set_ylabel("train objective per pixel (eq. 4 = eq. 2)")
        ax.set_title(f"sigma = {sigma}" + (f", crosses at P = {s['crossing_P']}"
                                           if s["crossing_P"] else
                                           f", no crossing up to P = {max(ps)}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", choices=("zero-gap", "ablation", "robustness"))
    ap.add_argument("--sigma", type=float, nargs="+", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny CI version")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--filters", type=int, default=512)
    ap.add_argument("--patterns", type=int, default=8000)
    ap.add_argument("--epochs-primal", type=int, default=100)
    ap.add_argument("--polish-steps", type=int, default=50)
    ap.add_argument("--polish-minutes", type=float, default=20.0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--retrain-primal", action="store_true")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.filters, a.patterns = 25, 20, 16, 100
        a.epochs_primal, a.polish_steps, a.eval_every = 3, 2, 1
    if a.figure == "zero-gap":
        return zero_gap(a, a.sigma or ([0.5] if a.quick else [0.25, 0.5, 0.75]))
    if a.figure == "ablation":
        return ablation(a)
    out = {}
    for kind in ("gaussian", "exponential"):   # App. B.1: 25 primal filters
        out[kind] = zero_gap(a, a.sigma or [0.5], kind, filters=25 if not a.quick else 8,
                             name="robustness")
    return out


if __name__ == "__main__":
    main()
