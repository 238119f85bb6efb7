"""The exact and Adam paths on an accelerator, as one prepared run with a time budget.

What it runs, in this order, each in a child process with the time that is left (a check that
would not fit is recorded as skipped, never silently dropped):

1. `two_digits`: 2 MNIST digits x 60 patterns, `fit()`'s default exact path on `--device` and on
   the CPU in this run; the objectives must agree (relative difference in the JSON).
2. `mri_quick`: `experiments/mri_dual.py --quick --dual-solver exact` on `--device` (the MRI
   exact path end to end at CI size).
3. `mri_exact_R4`: MRI at R = 4, 80 x 80, the exact dual over 5,000 random 7 x 7 patterns
   (pattern pricing, certified over every pattern), beside the L-BFGS-polished 1,024-filter
   primal committed in experiments/results; its files go to `--out` as `mri_R4.tar`.
4. `mnist_paper_exact`: 600 digits x 8,000 patterns, k = 3, sigma 0.5, beta = 1e-3 per pixel,
   the exact path on `--device` (benchmarks/exact_solvers.py --paper-scale runs it on the CPU).
5. `mnist_paper_adam`: Adam on the same 8,000 patterns on `--device`, stopped when its rebuilt
   primal comes within 1% of the exact optimum of step 4 or after `--adam-seconds`.
6. `mri_exact_R8`, `mri_exact_R2`: as step 3, if time is left.

Writes `device_checks.json` and `device_checks.png` (wall seconds per step, with each exact
solve's certified gap) into `--out` after every step, so a run cut short keeps what it
measured, and prints a line per step.

    PYTHONPATH=. python benchmarks/device_checks.py --device cuda --budget 540 --out OUT
    PYTHONPATH=. python benchmarks/device_checks.py --device cpu --only two_digits --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MRI_RESULTS = REPO / "experiments" / "results"
STEPS = ("two_digits", "mri_quick", "mri_exact_R4", "mnist_paper_exact", "mnist_paper_adam",
         "mri_exact_R8", "mri_exact_R2")
# L-BFGS steps of the committed polished primal at each acceleration (experiments/results)
POLISH_STEPS = {4: 40, 8: 20, 2: 20}


def _mri(accel: int, device: str, limit: float, out: Path) -> dict:
    """mri_dual.py --dual-solver exact --patterns 5000 at one acceleration, reusing the
    committed primal; the new files are packed into out/mri_R<accel>.tar."""
    tag = f"_exact5000_{device.split(':')[0]}"
    cmd = [sys.executable, str(REPO / "experiments" / "mri_dual.py"), "--accel", str(accel),
           "--no-augment", "--batch-size", "2", "--epochs-primal", "200", "--primal-lbfgs",
           str(POLISH_STEPS[accel]), "--reuse-primal", "--dual-solver", "exact",
           "--patterns", "5000", "--device", device, "--eval-every", "10", "--tag", tag]
    row = _child(cmd, limit)
    made = sorted(p for p in MRI_RESULTS.glob(f"mri_dual_80px_R{accel}{tag}*"))
    if made:
        with tarfile.open(out / f"mri_R{accel}.tar", "w") as tar:
            for p in made:
                tar.add(p, arcname=p.name)
        row["files"] = [p.name for p in made]
        js = [p for p in made if p.suffix == ".json"]
        if js:
            run = json.loads(js[0].read_text())["runs"][0]
            row["exact"] = run.get("exact")
            row["objectives"] = run["objectives"]
            row["test_magnitude_scores"] = run["test_magnitude_scores"]
            row["dual_seconds"] = run["dual_seconds"]
    return row


def _child(cmd: list[str], limit: float) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, env=env, timeout=limit, capture_output=True, text=True)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-3000:] if isinstance(exc.stdout, bytes) else \
            (exc.stdout or "")[-3000:]
        return {"status": f"timed out after {limit:.0f} s", "wall_seconds": limit,
                "log_tail": tail if isinstance(tail, str) else tail.decode(errors="replace")}
    return {"status": "finished" if proc.returncode == 0 else f"failed (rc {proc.returncode})",
            "wall_seconds": time.perf_counter() - t0,
            "log_tail": (proc.stdout + proc.stderr)[-3000:]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all steps")
    ap.add_argument("--adam-seconds", type=float, default=90.0)
    ap.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    # the spawned solve runners import convexnn from this checkout (it need not be installed)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    import exact_solvers as es  # noqa: E402  (this folder's script: its spawned solve runner)
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    payload = {"benchmark": "device_checks", "device": a.device, "budget_seconds": a.budget,
               "torch": torch.__version__, "python": platform.python_version(),
               "device_name": (torch.cuda.get_device_name(0) if a.device.startswith("cuda")
                               and torch.cuda.is_available() else platform.processor()),
               "steps": {}}

    def left() -> float:
        return a.budget - (time.perf_counter() - t_start)

    def record(name: str, row: dict) -> None:
        payload["steps"][name] = row
        payload["elapsed_seconds"] = time.perf_counter() - t_start
        (out / "device_checks.json").write_text(json.dumps(payload, indent=2))
        plot(payload, out / "device_checks.png")
        brief = {k: v for k, v in row.items() if k not in ("log_tail", "pricing_rounds",
                                                           "trajectory", "objectives",
                                                           "files")}
        print(f"[{payload['elapsed_seconds']:6.0f} s] {name}: {json.dumps(brief)[:900]}",
              flush=True)

    mins = {"two_digits": 20, "mri_quick": 30, "mri_exact_R4": 120, "mnist_paper_exact": 60,
            "mnist_paper_adam": 30, "mri_exact_R8": 120, "mri_exact_R2": 120}
    n, p = 600, 8000
    beta = 1e-3 * 784 * n
    for name in STEPS:
        if name not in a.only:
            continue
        caps = {"two_digits": 60.0, "mri_quick": 90.0}
        if left() < mins[name]:
            record(name, {"status": f"skipped: {left():.0f} s left, needs {mins[name]}"})
            continue
        if name == "two_digits":
            dev = es.run("auto", 2, 60, 1e-3, {"device": a.device}, caps[name])
            cpu = es.run("auto", 2, 60, 1e-3, {"device": "cpu"}, caps[name])
            row = {"device_run": dev, "cpu_run": cpu}
            if "objective" in dev and "objective" in cpu:
                row["relative_difference"] = abs(dev["objective"] / cpu["objective"] - 1)
            record(name, row)
        elif name == "mri_quick":
            record(name, _child([sys.executable, str(REPO / "experiments" / "mri_dual.py"),
                                 "--quick", "--quiet", "--dual-solver", "exact", "--device",
                                 a.device, "--out", "/tmp/device_checks_mri_quick"],
                                min(left(), caps[name])))
        elif name.startswith("mri_exact_R"):
            record(name, _mri(int(name[len("mri_exact_R"):]), a.device, left(), out))
        elif name == "mnist_paper_exact":
            row = es.run("auto", n, p, beta, {"device": a.device}, left())
            row["committed_cpu_run"] = _committed_cpu()
            record(name, row)
        elif name == "mnist_paper_adam":
            opt = payload["steps"].get("mnist_paper_exact", {}).get("objective") or \
                (_committed_cpu() or {}).get("objective")
            opts = {"device": a.device, "epochs": 1000, "progress": False,
                    "max_seconds": min(a.adam_seconds, max(1.0, left() - 30))}
            if opt:
                opts["stop_below"] = 1.01 * opt
            row = es.run("adam", n, p, beta, opts, left())
            if opt:
                row["exact_objective"] = opt
                row["seconds_to_1pct"] = es.first_within(row.get("trajectory", []), 1.01 * opt)
            record(name, row)
    return payload


def _wall(row: dict) -> float | None:
    """The step's own wall seconds (the device run for `two_digits`)."""
    return row.get("wall_seconds", (row.get("device_run") or {}).get("wall_seconds"))


def plot(payload: dict, path: Path) -> None:
    """Wall seconds per step (log scale), each bar labelled with its status / certified gap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(payload["steps"])
    walls = [_wall(payload["steps"][n]) or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 3, 3.6))
    ax.bar(range(len(names)), [max(w, 1e-2) for w in walls], color="tab:blue")
    for i, n in enumerate(names):
        row = payload["steps"][n]
        exact = row.get("exact") or {}
        label = (f"{exact.get('status')}\ngap {exact['certified_gap']:.1e}"
                 if exact.get("certified_gap") is not None else
                 str(row.get("status", (row.get("device_run") or {}).get("status")))[:24])
        ax.text(i, max(walls[i], 1e-2) * 1.1, label, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("wall seconds")
    ax.set_title(f"device checks on {payload['device_name']} ({payload['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _committed_cpu() -> dict | None:
    """The CPU run of the same paper-scale problem committed by exact_solvers.py --paper-scale
    (an earlier run on the 2-core machine: its time is not a same-run ratio)."""
    path = HERE / "results" / "exact_solvers_paper_scale.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["paper"]["exact (fit() default)"]
    return {k: row.get(k) for k in ("status", "objective", "wall_seconds", "certified_gap",
                                    "working_patterns", "peak_rss_gb")}


if __name__ == "__main__":
    main()
