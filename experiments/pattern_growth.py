"""Objective reached against P: grown patterns (column generation) vs random sampling, MNIST.

    PYTHONPATH=. python experiments/pattern_growth.py --quick
    PYTHONPATH=. python experiments/pattern_growth.py --quick --quiet --out OUT_DIR

Writes `pattern_growth[_quick].{json,png}` into `--out` (default experiments/results).
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 digit, 10 + 3 x 10 patterns, 20000 candidates (about 2 min)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=str(OUT), help="results folder (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="print nothing")
    args = ap.parse_args(argv)
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
    payload = {"grown": grown.history, "sampled": sampled, "tol": args.tol}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "pattern_growth" + ("_quick" if args.quick else "")
    (out / f"{tag}.json").write_text(json.dumps(payload, indent=2))
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
    fig.savefig(out / f"{tag}.png", dpi=120)
    plt.close(fig)
    if not args.quiet:
        print(json.dumps(grown.history, indent=1))
    return payload

if __name__ == "__main__":
    main()
