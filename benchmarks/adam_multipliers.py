"""Why hinge-penalised Adam misses the exact optimum: the cone constraints' Lagrange multipliers.

The hinge penalty `rho * sum (.)_-` of Appendix B is exact only when `rho` exceeds every Lagrange
multiplier of eq. 4's cone constraints. This script solves one sampled program (real MNIST
digits, fixed generators) with the constraints written out in CVXPY, reads their multipliers,
and runs `solver="adam"` with its defaults (100 epochs, early stop) and, for 1,000 epochs without
early stop, at `rho = rho_scale * max|y|` for several scales (and 10,000 epochs at scales 1 and
3, towards the penalised minimiser itself), reporting the eq. 5
primal and the dual objective relative to the optimum and the relative violation, side by side.
It also runs the tried fix `lagrange_adam` (the same Adam plus dual ascent on the cone
multipliers, 100 and 1,000 epochs, steps 0.5 / 1 / 2).

    PYTHONPATH=. python benchmarks/adam_multipliers.py            # 2 digits, 24 patterns
    PYTHONPATH=. python benchmarks/adam_multipliers.py --quick    # CI size
    PYTHONPATH=. python benchmarks/adam_multipliers.py --other-instances   # the fix elsewhere

Writes `benchmarks/results/adam_multipliers[_quick].{json,png}`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cvxpy as cp
import numpy as np

from convexnn import ConvexDualDenoiser
from convexnn.data import NoiseConfig, add_noise, mnist_denoising_split
from convexnn.model.patches import patch_matrix
from convexnn.solve.adam.solver import AdamConfig

RESULTS = Path(__file__).resolve().parent / "results"


def multipliers(x, y, generators, beta: float) -> dict:
    """Eq. 4 with explicit per-pattern cone constraints and their multipliers (sum scale)."""
    g = generators.reshape(generators.shape[0], -1).numpy()
    xp = patch_matrix(x, generators.shape[-1]).numpy()
    yv = y.reshape(-1).numpy()
    d = (xp @ g.T >= 0).astype(float)
    s = 2.0 * d - 1.0
    p, c = g.shape
    v, w = cp.Variable((p, c)), cp.Variable((p, c))
    pred = cp.sum(cp.multiply(d, xp @ (v - w).T), axis=1)
    cons = [cp.multiply(s, xp @ v.T) >= 0, cp.multiply(s, xp @ w.T) >= 0]
    obj = 0.5 * cp.sum_squares(pred - yv) + beta * (cp.sum(cp.norm(v, 2, axis=1))
                                                    + cp.sum(cp.norm(w, 2, axis=1)))
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver="CLARABEL")
    lam = np.concatenate([cons[0].dual_value.ravel(), cons[1].dual_value.ravel()])
    return {"optimum": float(prob.value), "status": prob.status, "max_abs_y": float(abs(yv).max()),
            "multiplier_max": float(lam.max()),
            "multiplier_quantiles": {q: float(np.quantile(lam, float(q)))
                                     for q in ("0.9", "0.99", "0.999")},
            "multiplier_count_above_max_abs_y": int((lam > abs(yv).max()).sum()),
            "constraints": int(lam.size)}


def lagrange_adam(x, y, generators, beta: float, epochs: int, step: float, optimum: float,
                  seed: int = 0) -> dict:
    """Tried fix: the default Adam (auto lr, cosine, batch 1, rho = max|y|) plus Lagrange
    multipliers of the cone constraints updated by dual ascent after every epoch,
    `lam <- max(0, lam + step * n_images * g)` (`g` the constraint values, > 0 violated; the
    hinge keeps the penalty exact once `lam` is within rho of the true multiplier). Dense
    multipliers: this instance only."""
    import torch

    torch.manual_seed(seed)
    p = generators.shape[0]
    xp = patch_matrix(x, generators.shape[-1]).double()
    yv = y.reshape(-1).double()
    g = generators.reshape(p, -1).double()
    dmask = (xp @ g.T >= 0).double()
    sgn = 2 * dmask - 1
    n_img, hw = x.shape[0], x.shape[2] * x.shape[3]
    npix = xp.shape[0]
    rho = float(yv.abs().max())
    lr = float(yv.abs().max()) / (p * float(xp.abs().sum(1).mean()))   # AdamConfig's auto lr
    v = (1e-3 * torch.randn(p, xp.shape[1], dtype=torch.float64)).requires_grad_()
    w = (1e-3 * torch.randn(p, xp.shape[1], dtype=torch.float64)).requires_grad_()
    lv, lw = torch.zeros(npix, p, dtype=torch.float64), torch.zeros(npix, p, dtype=torch.float64)
    opt = torch.optim.Adam([v, w], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)

    def reg():
        return beta * (v.norm(dim=1).sum() + w.norm(dim=1).sum())

    for _ in range(epochs):
        for b in torch.randperm(n_img, generator=gen).tolist():
            sl = slice(b * hw, (b + 1) * hw)
            opt.zero_grad()
            gv, gw = -sgn[sl] * (xp[sl] @ v.T), -sgn[sl] * (xp[sl] @ w.T)
            pred = (dmask[sl] * (xp[sl] @ (v - w).T)).sum(1)
            pen = rho * (gv.clamp_min(0).sum() + gw.clamp_min(0).sum()) \
                + (lv[sl] * gv).sum() + (lw[sl] * gw).sum()
            ((0.5 * (pred - yv[sl]).pow(2).sum() + pen) * n_img / npix + reg() / npix).backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            lv = (lv - step * n_img * sgn * (xp @ v.T)).clamp_min(0)
            lw = (lw - step * n_img * sgn * (xp @ w.T)).clamp_min(0)
    with torch.no_grad():
        dual = float(0.5 * ((dmask * (xp @ (v - w).T)).sum(1) - yv).pow(2).sum() + reg())
        primal = float(0.5 * (torch.relu(xp @ v.T).sum(1) - torch.relu(xp @ w.T).sum(1)
                              - yv).pow(2).sum() + reg())
        hv, hw_ = (-sgn * (xp @ v.T)).clamp_min(0), (-sgn * (xp @ w.T)).clamp_min(0)
        scale = float(torch.cat([(xp @ v.T).abs().flatten(), (xp @ w.T).abs().flatten()]).sum())
    return {"step": step, "epochs": epochs, "primal_rel": (primal - optimum) / optimum,
            "dual_rel": (dual - optimum) / optimum,
            "violation_relative": float(hv.sum() + hw_.sum()) / max(scale, 1e-300),
            "multiplier_max": float(torch.maximum(lv.max(), lw.max()))}


INSTANCES = ((2, 40, 0.5, 0), (2, 24, 0.25, 0), (3, 24, 0.5, 1), (4, 60, 0.5, 2))


def other_instances(out: Path, quiet: bool) -> dict:
    """The tried fix on other digits / P / sigma, 100 epochs, optimum from solver="ipm"."""
    import torch

    rows = []
    for n, p, sigma, seed in INSTANCES:
        split = mnist_denoising_split(n_train=n, n_test=1, seed=seed, dtype=torch.float64)
        y = split.train_clean.contiguous()
        x = add_noise(y, NoiseConfig("gaussian", sigma, seed))
        beta = 1e-3 * n * 784
        ref = ConvexDualDenoiser(n_patterns=p, beta=beta, seed=seed).fit(x, y, solver="ipm")
        for step in (0.25, 0.5, 1.0):
            r = lagrange_adam(x, y, ref.generators_, beta, 100, step, ref.objective_)
            rows.append({"n_images": n, "patterns": p, "sigma": sigma, "seed": seed,
                         "optimum": ref.objective_, **r})
            if not quiet:
                print(f"{n} digits, P {p}, sigma {sigma}, seed {seed}, step {step}: eq. 5 "
                      f"primal {100 * r['primal_rel']:+.2f}%")
    payload = {"benchmark": "adam_multipliers_instances", "epochs": 100, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "adam_multipliers_instances.json").write_text(json.dumps(payload, indent=2))
    return payload


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 digit crop, 8 patterns, short runs")
    ap.add_argument("--patterns", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--rho-scales", type=float, nargs="+", default=[1.0, 3.0, 30.0])
    ap.add_argument("--long-epochs", type=int, default=10000,
                    help="also run rho_scale 1 and 3 this long (towards the penalised "
                         "minimiser); 0 skips")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--other-instances", action="store_true",
                    help="only the tried fix (multipliers) on 4 other instances (~2 min); "
                         "writes adam_multipliers_instances.json")
    a = ap.parse_args(argv)
    if a.other_instances:
        return other_instances(Path(a.out), a.quiet)
    n, crop, epochs = (1, 14, 50) if a.quick else (2, 28, a.epochs)
    patterns = 8 if a.quick else a.patterns
    split = mnist_denoising_split(n_train=n, n_test=1, seed=0, dtype=__import__("torch").float64)
    lo = (28 - crop) // 2
    y = split.train_clean[:, :, lo:lo + crop, lo:lo + crop].contiguous()
    x = add_noise(y, NoiseConfig("gaussian", 0.5, 0))
    beta = 1e-3 * x.shape[0] * crop * crop
    ref = ConvexDualDenoiser(n_patterns=patterns, beta=beta, seed=0).fit(x, y, solver="cvxpy")
    t = time.perf_counter()
    mult = multipliers(x, y, ref.generators_, beta)
    mult["seconds"] = time.perf_counter() - t
    def run(cfg: AdamConfig) -> dict:
        t = time.perf_counter()
        m = ConvexDualDenoiser(beta=beta, generators=ref.generators_).fit(x, y, solver="adam",
                                                                          config=cfg)
        primal = m.to_primal().objective(x, y, beta)
        r = {"rho_scale": cfg.rho_scale, "rho": m.solve_info_.details["rho"],
             "epochs": m.solve_info_.details["epochs_run"],
             "primal_rel": (primal - ref.objective_) / ref.objective_,
             "dual_rel": (m.objective_ - ref.objective_) / ref.objective_,
             "violation_relative": m.constraint_violation(x).relative,
             "seconds": time.perf_counter() - t}
        if not a.quiet:
            print(f"rho = {cfg.rho_scale:g} max|y| = {r['rho']:.3g}, {r['epochs']} epochs: eq. 5 "
                  f"primal {100 * r['primal_rel']:+.2f}%, dual {100 * r['dual_rel']:+.2f}%, "
                  f"violation {r['violation_relative']:.2e}")
        return r

    defaults = run(AdamConfig(progress=not a.quiet, epochs=epochs if a.quick else 100))
    runs = [run(AdamConfig(rho_scale=scale, epochs=epochs, patience=10 ** 6,
                           progress=not a.quiet)) for scale in a.rho_scales]
    lagrange = [lagrange_adam(x, y, ref.generators_, beta, ep, st, ref.objective_)
                for ep in ((epochs,) if a.quick else (100, 1000))
                for st in ((1.0,) if a.quick else (0.5, 1.0, 2.0))]
    if not a.quiet:
        for r in lagrange:
            print(f"hinge + multipliers (dual ascent step {r['step']:g}), {r['epochs']} epochs: "
                  f"eq. 5 primal {100 * r['primal_rel']:+.2f}%, violation "
                  f"{r['violation_relative']:.2e}, largest multiplier {r['multiplier_max']:.3g}")
    long_runs = [] if a.quick or a.long_epochs <= 0 else [
        run(AdamConfig(rho_scale=scale, epochs=a.long_epochs, patience=10 ** 6,
                       progress=not a.quiet)) for scale in (1.0, 3.0)]
    payload = {"benchmark": "adam_multipliers", "quick": a.quick, "n_images": n, "crop": crop,
               "patterns": int(ref.generators_.shape[0]), "beta": beta,
               "cvxpy_objective": ref.objective_, "multipliers": mult, "adam_defaults": defaults,
               "adam": runs, "adam_long": long_runs,
               "adam_with_multipliers": lagrange}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "adam_multipliers" + ("_quick" if a.quick else "")
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["rho"] for r in runs], [100 * r["primal_rel"] for r in runs], "o-",
            label="eq. 5 primal vs optimum (%)")
    ax.axvline(mult["multiplier_max"], color="k", ls="--", label="largest multiplier")
    ax.axhspan(-2, 2, color="g", alpha=0.15, label="2% band")
    ax.set_xscale("log")
    ax.set_xlabel("rho")
    ax.set_ylabel("relative difference (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{tag}.png", dpi=120)
    plt.close(fig)
    if not a.quiet:
        print(f"optimum {ref.objective_:.6g}; multipliers: max {mult['multiplier_max']:.3g} "
              f"= {mult['multiplier_max'] / mult['max_abs_y']:.1f} max|y|, quantiles "
              f"{mult['multiplier_quantiles']}")
    return payload


if __name__ == "__main__":
    main()
