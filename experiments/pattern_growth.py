"""Objective reached against P: grown patterns (column generation) vs random sampling, MNIST.

    PYTHONPATH=. python experiments/pattern_growth.py --quick

Writes experiments/results/pattern_growth.json and .png.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from convexnn import ConvexDualDenoiser
from convexnn.growth import grow_patterns

OUT = Path(__file__).resolve().parent / "results"
MNIST = Path(__file__).resolve().parents[1] / "datasets" / "mnist" / "t10k-images-idx3-ubyte.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    n_img, p0, add, rounds = (1, 10, 10, 3) if args.quick else (2, 20, 20, 10)
    imgs = np.frombuffer(gzip.open(MNIST).read(), np.uint8, offset=16).reshape(-1, 28, 28)
    clean = (imgs[:n_img] / 255.0 - 0.1307) / 0.3081
    noisy = clean + 0.5 * np.random.default_rng(0).standard_normal(clean.shape)
    opts = {"tol": args.tol, "max_iter": 200000}
    base = ConvexDualDenoiser(n_patterns=p0, beta=1e-3).fit(noisy, clean, solver="admm", **opts)
    grown = grow_patterns(base, noisy, clean, rounds=rounds, add_per_round=add,
                          n_candidates=20000 if args.quick else 100000, **opts)
    sampled = []
    for h in grown.history:
        m = ConvexDualDenoiser(n_patterns=h["n_patterns"], beta=1e-3, seed=1).fit(
            noisy, clean, solver="admm", **opts)
        sampled.append({"n_patterns": int(m.generators_.shape[0]), "objective": m.objective_})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pattern_growth.json").write_text(json.dumps(
        {"grown": grown.history, "sampled": sampled, "tol": args.tol}, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["n_patterns"] for h in grown.history], [h["objective"] for h in grown.history],
            "o-", label="grown (column generation)")
    ax.plot([s["n_patterns"] for s in sampled], [s["objective"] for s in sampled], "s--",
            label="random sampled")
    ax.set_xlabel("P")
    ax.set_ylabel("eq. 4 objective")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "pattern_growth.png", dpi=120)
    print(json.dumps(grown.history, indent=1))


if __name__ == "__main__":
    main()
