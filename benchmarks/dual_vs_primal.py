"""Dual (hinge Adam, 8,000 patterns) vs primal (512 filters) at paper scale, side by side.

Reports seconds per epoch, the wall time the dual needs to reach the primal's final training
objective (within 1%; the dual is scored by its eq. 5 primal, a valid eq. 2 value), peak
memory (max RSS of each trainer, run in its own subprocess), throughput in pixel-patterns per
second, and that throughput as a fraction of the machine's measured memory bandwidth
(bytes a materialised float32 gate + 2 pre-activations would move: 12 B per pixel-pattern).

    PYTHONPATH=. python benchmarks/dual_vs_primal.py            # 600 x 784 x 8,000
    PYTHONPATH=. python benchmarks/dual_vs_primal.py --quick    # CI
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bandwidth_gbs(mb: int = 256, reps: int = 5) -> float:
    import torch

    a = torch.empty(mb * 2**20 // 4)
    b = torch.ones_like(a)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a.copy_(b)
        dt = time.perf_counter() - t
        best = max(best, 2 * a.numel() * 4 / dt / 1e9)   # read + write
    return best


def _child(which, args, q):
    import torch

    from experiments.mnist_setup import BETA_MEAN, load_data, run_dual, run_primal

    x, y, xe, ye = load_data(args["n_train"], args["n_test"], 0.5)
    beta = BETA_MEAN * x.shape[0] * x.shape[2] * x.shape[3]
    t = time.perf_counter()
    if which == "primal":
        _, res = run_primal(x, y, xe, ye, args["filters"], beta, args["epochs_primal"],
                            quiet=args["quiet"])
        hist = res.history
    else:
        m, _ = run_dual(x, y, xe, ye, args["patterns"], beta, args["epochs_dual"],
                        quiet=args["quiet"], stop_below=args.get("stop_below"),
                        max_seconds=args.get("max_seconds"),
                        batch_size=min(args["dual_batch_size"], x.shape[0]))
        hist = m.history_
        args["patterns_kept"] = int(m.generators_.shape[0])
    q.put({"history": hist, "seconds": time.perf_counter() - t,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "threads": torch.get_num_threads(), "patterns_kept": args.get("patterns_kept")})


def _run(which, args):
    import queue

    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_child, args=(which, args, q))
    p.start()
    while True:   # a child that dies (exception, OOM kill) must not leave us waiting forever
        try:
            out = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the {which} trainer exited with code {p.exitcode} "
                                   f"before reporting") from None
    p.join()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--filters", type=int, default=512)
    ap.add_argument("--patterns", type=int, default=8000)
    ap.add_argument("--epochs-primal", type=int, default=40)
    ap.add_argument("--epochs-dual", type=int, default=40)
    ap.add_argument("--dual-batch-size", type=int, default=1,
                    help="images per dual Adam step (AdamConfig's default; the primal uses 25)")
    ap.add_argument("--max-minutes-dual", type=float, default=60)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.filters, a.patterns, a.epochs_primal, a.epochs_dual = 25, 32, 200, 5, 5
    args = {"n_train": a.n_train, "n_test": 1, "filters": a.filters, "patterns": a.patterns,
            "epochs_primal": a.epochs_primal, "epochs_dual": a.epochs_dual, "quiet": a.quiet,
            "dual_batch_size": a.dual_batch_size}
    bw = _bandwidth_gbs()
    primal = _run("primal", args)
    target = primal["history"][-1]["train_objective"]
    args["stop_below"] = 1.01 * target
    args["max_seconds"] = a.max_minutes_dual * 60
    dual = _run("dual", args)
    hist = dual["history"]
    reach = next((r["elapsed_seconds"] for r in hist
                  if r.get("train_primal_objective", float("inf")) <= 1.01 * target), None)
    npix = a.n_train * 784
    d_epoch = sum(r["epoch_seconds"] for r in hist) / len(hist)
    p_epoch = sum(r["epoch_seconds"] for r in primal["history"]) / len(primal["history"])
    pp_per_s = npix * (dual["patterns_kept"] or a.patterns) / d_epoch
    table = {
        "machine_bandwidth_GBps": bw,
        "primal_seconds_per_epoch": p_epoch, "dual_seconds_per_epoch": d_epoch,
        "primal_total_seconds": primal["history"][-1]["elapsed_seconds"],
        "primal_final_train_objective": target,
        "dual_seconds_to_reach_primal_within_1pct": reach,
        "dual_final_train_primal_objective": hist[-1].get("train_primal_objective"),
        "primal_peak_rss_GB": primal["peak_rss_gb"], "dual_peak_rss_GB": dual["peak_rss_gb"],
        "dual_pixel_patterns_per_second": pp_per_s,
        "dual_fraction_of_bandwidth_12B": pp_per_s * 12 / (bw * 1e9),
        "config": args,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "dual_vs_primal" + ("_quick" if a.quick else "")
    (out / f"{name}.json").write_text(json.dumps(table, indent=2, default=float) + "\n")
    for k, v in table.items():
        if k != "config":
            print(f"{k:45s} {v}")
    return table


if __name__ == "__main__":
    main()
