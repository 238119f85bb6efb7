"""Compile + solve time and peak memory of the CVXPY path of eq. 4 (GitHub issue 2, item 8).

Grid: N in {784, 1568, 3136} pixels (1, 2, 4 MNIST test digits) x P in {25, 50, 100} sign
patterns x {Clarabel, ECOS, SCS}. The data are the first MNIST test digits, normalised by
(x / 255 - 0.1307) / 0.3081, plus seeded Gaussian noise of sigma 0.5; beta = 1e-3, k = 3.
The generators are sampled once per P with `sample_generators(P, 1, 3, seed=0)` and shared by
every solver at that P.

Each case runs in a fresh Python process, so its peak resident memory (VmHWM of the child,
read from /proc/self/status; the kernel's wait4 ru_maxrss as a cross-check) belongs to that
case alone, and a case that runs past `--timeout` seconds is killed and recorded as 'timeout'.

Per case: build / compile / solve / total seconds, iterations, status, the objective cvxpy
reports, the dual objective recomputed by the model (`objective_`), its relative difference to
Clarabel's at the same (N, P) (the reference), the relative constraint violation and the
peak RSS. Results go to `<out>/cvxpy_scaling.json` and `<out>/cvxpy_scaling.png`
(`cvxpy_scaling_quick.*` with `--quick`).

By default the fit accepts 'optimal_inaccurate' (`allow_inaccurate=True`) so that the
objective of an inaccurate SCS / ECOS solve can still be compared with Clarabel's; the row keeps
the solver's real status, and `accepted_by_default_fit` says whether `fit` with its default
options (which raises `ConvexSolverError` on anything but 'optimal') would have accepted it.
`--strict` uses the default options instead. Every other failure (`ConvexSolverError`,
`ProblemSizeError`, a crash, a timeout) is recorded with its status and message.

Usage:
    PYTHONPATH=. python benchmarks/cvxpy_scaling.py            # full grid (tens of minutes)
    PYTHONPATH=. python benchmarks/cvxpy_scaling.py --quick    # N=784, P=25, 3 solvers (<60 s)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

PIXELS_PER_IMAGE = 28 * 28
DEFAULT_SIZES = (784, 1568, 3136)
DEFAULT_PATTERNS = (25, 50, 100)
DEFAULT_SOLVERS = ("CLARABEL", "ECOS", "SCS")
REFERENCE_SOLVER = "CLARABEL"
KERNEL_SIZE = 3
BETA = 1e-3
SIGMA = 0.5
NOISE_SEED = 0
GENERATOR_SEED = 0
MIB = 2.0 ** 20


# ---------------------------------------------------------------------------- child process
def _proc_status_bytes(field: str) -> int | None:
    """`VmHWM` / `VmRSS` of this process in bytes, from /proc/self/status (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":  # fallback: ru_maxrss is KiB on Linux, bytes on macOS
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
    return None


def _make_data(n_images: int):
    import numpy as np

    from convexnn.data import load_mnist, normalize_mnist

    images = load_mnist("test")[:n_images]
    clean = normalize_mnist(images.astype(np.float64))          # (x/255 - 0.1307) / 0.3081
    noisy = clean + SIGMA * np.random.default_rng(NOISE_SEED).standard_normal(clean.shape)
    return noisy, clean


def _warm_up(solver: str) -> None:
    """Load cvxpy, its solver interfaces and `solver`'s extension module with a 2-variable
    second-order-cone solve, so the memory the real fit adds over it is the problem's."""
    import cvxpy as cp

    if solver not in cp.installed_solvers():
        return
    x = cp.Variable(2)
    try:
        cp.Problem(cp.Minimize(cp.norm(x, 2) + cp.sum(x)), [x >= -1]).solve(solver=solver)
    except Exception:  # noqa: BLE001 - the real fit reports solver problems
        pass


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One (N, P, solver) case, measured inside the current (fresh) process."""
    import warnings

    import torch

    from convexnn import (
        ConvexDualDenoiser,
        ConvexSolverError,
        ProblemSizeError,
        sample_generators,
        sign_masks,
    )
    from convexnn.solve.conic import estimate_cvxpy_size

    n_images, n_patterns, solver = spec["n_images"], spec["n_patterns"], spec["solver"]
    versions = _versions()   # per case: the parent's record says nothing if the venv changes
    noisy, clean = _make_data(n_images)
    generators = sample_generators(n_patterns, 1, KERNEL_SIZE, seed=GENERATOR_SEED)
    n_pixels = n_images * PIXELS_PER_IMAGE
    d = KERNEL_SIZE * KERNEL_SIZE
    row: dict[str, Any] = {
        "n_pixels": n_pixels, "n_images": n_images, "n_patterns": n_patterns,
        "solver": solver, "versions": versions, "n_patterns_used": None, "status": None,
        "error": None,
        "accepted_by_default_fit": False, "warnings": [],
        "n_constraints": 2 * n_patterns * n_pixels,
        "nnz_formula": int(n_pixels * n_patterns * d * 2.5),
        "nnz_estimate_cvxpy_solver": estimate_cvxpy_size(n_pixels, n_patterns, d).nonzeros,
    }
    model = ConvexDualDenoiser(kernel_size=KERNEL_SIZE, beta=BETA, generators=generators)
    _warm_up(solver)   # import cvxpy and the solver, so the pre-fit RSS includes them
    rss_before = _proc_status_bytes("VmRSS")
    hwm_before = _proc_status_bytes("VmHWM")
    if spec.get("prefit_path"):   # lets the parent compute the increment of a killed case
        Path(spec["prefit_path"]).write_text(json.dumps({"rss_before_fit_bytes": rss_before}))
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(noisy, clean, solver="cvxpy", cvxpy_solver=solver,
                      allow_inaccurate=spec["allow_inaccurate"], force=spec["force"],
                      solver_options=spec.get("solver_options") or {})
        row["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    except ProblemSizeError as exc:
        row.update(status="refused_size", error=str(exc))
    except ConvexSolverError as exc:
        row.update(status=exc.status or "solver_error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - any crash of the solve is a recorded result
        row.update(status="exception", error=f"{type(exc).__name__}: {exc}")
    row["fit_wall_seconds"] = time.perf_counter() - t0
    row["fit_cpu_seconds"] = time.process_time() - cpu0   # all threads; robust to CPU sharing
    hwm_after = _proc_status_bytes("VmHWM")   # before anything else can allocate
    row.update(rss_before_fit_bytes=rss_before, peak_rss_before_fit_bytes=hwm_before,
               peak_rss_bytes=hwm_after,
               peak_increment_bytes=(hwm_after - rss_before)
               if hwm_after is not None and rss_before is not None else None)
    if row["status"] is not None:                  # failed: no solution to evaluate
        return row

    info = model.solve_info_
    x = torch.as_tensor(noisy, dtype=torch.float64).reshape(n_images, 1, 28, 28)
    with torch.no_grad():
        masks = sign_masks(x, model.generators_)              # (n, P, H, W)
    p_used = int(model.generators_.shape[0])
    mask_nnz = int(masks.sum())
    viol = model.constraint_violation(noisy)
    row.update(
        status=info.status, accepted_by_default_fit=info.status == "optimal",
        n_patterns_used=p_used, n_constraints=2 * p_used * n_pixels,
        mask_density=mask_nnz / (p_used * n_pixels),
        # structural nonzeros of A = [D_i Yp] (N x P d) and B = blockdiag((2 D_i - I) Yp)
        nnz_exact=d * (mask_nnz + p_used * n_pixels),
        setup_seconds=info.setup_seconds,
        build_seconds=float(info.details.get("build_seconds", math.nan)),
        compile_seconds=float(info.details.get("compile_seconds", math.nan)),
        solve_seconds=info.solve_seconds, total_seconds=info.total_seconds,
        pattern_seconds=float(info.details.get("pattern_seconds", math.nan)),
        iterations=info.iterations, reported_objective=info.reported_objective,
        dual_objective=float(model.objective_),
        constraint_violation_relative=viol.relative, constraint_violation_max=viol.max,
        constraint_violation_total=viol.total,
    )
    return row


def _child_main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    row = run_case(spec)
    Path(result_path).write_text(json.dumps(row, default=float))
    return 0


# ---------------------------------------------------------------------------- parent process
def _run_in_subprocess(spec: dict[str, Any], timeout: float, workdir: Path) -> dict[str, Any]:
    """Run `run_case(spec)` in a fresh interpreter; kill its process group after `timeout`."""
    tag = f"{spec['n_pixels']}_{spec['n_patterns']}_{spec['solver']}"
    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    prefit_path = workdir / f"{tag}.prefit.json"
    spec = dict(spec, prefit_path=str(prefit_path))
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path),
           str(result_path)]
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        timed_out, status_code, rusage = False, None, None
        while True:
            pid, status_code, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status_code, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status_code)
    wall = time.perf_counter() - t0
    maxrss = int(rusage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
    log_tail = log_path.read_text(errors="replace")[-2000:]
    if not timed_out and proc.returncode == 0 and result_path.exists():
        row = json.loads(result_path.read_text())
    else:
        row = {"n_pixels": spec["n_pixels"], "n_images": spec["n_images"],
               "n_patterns": spec["n_patterns"], "solver": spec["solver"],
               "accepted_by_default_fit": False}
        if timed_out:
            row.update(status="timeout", error=f"killed after {timeout:g} s wall time "
                                               f"(--timeout); no result")
        else:
            code = proc.returncode
            how = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit {code}"
            row.update(status="crashed", error=f"child process ended with {how}; log tail: "
                                               f"{log_tail[-600:]}")
    row["child_wall_seconds"] = wall        # includes interpreter start and imports
    row["child_cpu_seconds"] = rusage.ru_utime + rusage.ru_stime   # also for killed cases
    row["peak_rss_wait4_bytes"] = maxrss    # kernel's view of the same process (cross-check)
    if row.get("peak_rss_bytes") is None:   # timeout / crash: the kernel's number is all we have
        row["peak_rss_bytes"] = maxrss
        if prefit_path.exists():              # a lower bound: the solve was cut short
            before = json.loads(prefit_path.read_text())["rss_before_fit_bytes"]
            row["rss_before_fit_bytes"] = before
            row["peak_increment_bytes"] = maxrss - before if before is not None else None
    row["timeout_seconds"] = timeout
    row["loadavg_at_start"] = spec.get("loadavg")
    row["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if row["status"] not in ("optimal", "optimal_inaccurate") and log_tail.strip():
        row["log_tail"] = log_tail[-1000:]
    return row


def _fill_reference(rows: list[dict[str, Any]]) -> None:
    """Relative objective differences to the reference solver at the same (N, P)."""
    ref = {(r["n_pixels"], r["n_patterns"]): r for r in rows
           if r["solver"] == REFERENCE_SOLVER and r.get("dual_objective") is not None}
    for r in rows:
        base = ref.get((r["n_pixels"], r["n_patterns"]))
        r["reference_solver"] = REFERENCE_SOLVER
        r["reference_status"] = base["status"] if base else None
        for key, out in (("dual_objective", "rel_obj_diff"),
                         ("reported_objective", "rel_reported_obj_diff")):
            if base is None or r.get(key) is None or base.get(key) is None:
                r[out] = None
            else:
                r[out] = (r[key] - base[key]) / max(abs(base[key]), 1e-300)


def _bytes_per_nonzero(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS per constraint-matrix nonzero, per solver: ratio at the largest solved case,
    the max ratio over solved cases, and a least-squares slope (marginal bytes / nnz)."""
    import numpy as np

    out: dict[str, Any] = {
        "note": "nnz = structural nonzeros of A and B (9 (sum of masks + P N)); "
                "nnz_formula = N P 9 2.5 as in the issue and in estimate_cvxpy_size (the count "
                "BYTES_PER_NONZERO multiplies). peak = VmHWM of the case's process, "
                "increment = peak - RSS just before fit (imports + data excluded). "
                "slope = least-squares d(increment)/d(nnz) over the solved cases of that "
                "solver (the pre-fit RSS depends on what importing convexnn loads, so the "
                "increment, not the peak, is the problem's memory). "
                "Compare with convexnn.solve.conic.BYTES_PER_NONZERO.",
    }
    try:
        from convexnn.solve.conic import BYTES_PER_NONZERO
        out["current_estimate_bytes_per_nonzero"] = BYTES_PER_NONZERO
    except Exception:  # noqa: BLE001
        pass
    per_solver: dict[str, Any] = {}
    for solver in sorted({r["solver"] for r in rows}):
        ok = [r for r in rows if r["solver"] == solver and r.get("nnz_exact")
              and r.get("peak_rss_bytes")]
        if not ok:
            continue
        nnz = np.array([r["nnz_exact"] for r in ok], float)
        nnz_f = np.array([r["nnz_formula"] for r in ok], float)
        peak = np.array([r["peak_rss_bytes"] for r in ok], float)
        inc = np.array([r["peak_increment_bytes"] for r in ok], float)
        big = int(np.argmax(nnz))
        entry = {
            "n_cases": len(ok),
            "largest_case": {"n_pixels": ok[big]["n_pixels"], "n_patterns": ok[big]["n_patterns"],
                             "nnz_exact": int(nnz[big]), "peak_mib": peak[big] / MIB,
                             "peak_bytes_per_nnz": peak[big] / nnz[big],
                             "increment_bytes_per_nnz": inc[big] / nnz[big],
                             "peak_bytes_per_nnz_formula": peak[big] / nnz_f[big],
                             "increment_bytes_per_nnz_formula": inc[big] / nnz_f[big]},
            "max_peak_bytes_per_nnz": float((peak / nnz).max()),
            "max_increment_bytes_per_nnz": float((inc / nnz).max()),
            "max_increment_bytes_per_nnz_formula": float((inc / nnz_f).max()),
        }
        if len(ok) >= 2 and np.ptp(nnz) > 0:
            slope, intercept = np.polyfit(nnz, inc, 1)
            entry["slope_bytes_per_nnz"] = float(slope)
            entry["intercept_mib"] = float(intercept / MIB)
            slope_f, _ = np.polyfit(nnz_f, inc, 1)
            entry["slope_bytes_per_nnz_formula"] = float(slope_f)
        per_solver[solver] = entry
    out["per_solver"] = per_solver
    return out


def _git_state() -> dict[str, Any] | None:
    """Commit of the checkout and whether convexnn/ or this script differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty_paths": git("status", "--porcelain", "--", "convexnn",
                                   "benchmarks/cvxpy_scaling.py").splitlines()}
    except Exception:  # noqa: BLE001 - not a git checkout, no git, no commit yet
        return None


def _versions() -> dict[str, str]:
    import importlib

    versions = {}
    for name in ("convexnn", "torch", "cvxpy", "clarabel", "scs", "ecos", "numpy", "scipy"):
        try:
            mod = importlib.import_module(name)
            versions[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception as exc:  # noqa: BLE001
            versions[name] = f"not importable ({type(exc).__name__})"
    return versions


def _machine_info() -> dict[str, Any]:
    versions = _versions()
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
        "memory_total_bytes": mem_total,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                  "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
                       if k in os.environ},
        "versions": versions,
        "git": _git_state(),
    }


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("N", "P", "solver", "setup s", "solve s", "total s", "cpu s", "iters", "peak MiB",
            "+fit MiB",
            "rel. obj. diff", "rel. viol", "status")
    lines = []
    for r in rows:
        lines.append((
            str(r["n_pixels"]), str(r["n_patterns"]), r["solver"],
            _fmt(r.get("setup_seconds"), ".2f"), _fmt(r.get("solve_seconds"), ".2f"),
            _fmt(r.get("total_seconds"), ".2f") if r["status"] != "timeout"
            else f">{r['timeout_seconds']:g}",
            _fmt(r.get("fit_cpu_seconds", r.get("child_cpu_seconds")), ".1f"),
            _fmt(r.get("iterations"), "d"),
            _fmt(r["peak_rss_bytes"] / MIB if r.get("peak_rss_bytes") else None, ".0f"),
            (">" if r["status"] in ("timeout", "crashed") and r.get("peak_increment_bytes")
             else "") + _fmt(r["peak_increment_bytes"] / MIB
                             if r.get("peak_increment_bytes") is not None else None, ".0f"),
            _fmt(r.get("rel_obj_diff"), "+.2e"),
            _fmt(r.get("constraint_violation_relative"), ".1e"),
            r["status"]))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def make_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    try:
        from convexnn.solve.conic import BYTES_PER_NONZERO
    except Exception:  # noqa: BLE001
        BYTES_PER_NONZERO = None
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    sizes = sorted({r["n_pixels"] for r in rows})
    colors = dict(zip(solvers, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    markers = dict(zip(sizes, "os^Dvp", strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax_t, ax_m, ax_o = axes
    solved = ("optimal", "optimal_inaccurate")
    for solver in solvers:
        for n in sizes:
            rs = sorted((r for r in rows if r["solver"] == solver and r["n_pixels"] == n),
                        key=lambda r: r["n_patterns"])
            good = [r for r in rs if r["status"] in solved]
            x = [r["n_pixels"] * r["n_patterns"] for r in good]
            kw = dict(color=colors[solver], marker=markers[n], lw=1, ms=7)
            label = f"{solver}, N={n}"
            if good:
                ax_t.plot(x, [r["total_seconds"] for r in good], label=label, **kw)
                ax_m.plot(x, [r["peak_increment_bytes"] / MIB for r in good], label=label,
                          **kw)
            inacc = [r for r in good if r["status"] != "optimal"]
            if inacc:
                ax_t.plot([r["n_pixels"] * r["n_patterns"] for r in inacc],
                          [r["total_seconds"] for r in inacc], ls="none", marker=markers[n],
                          ms=12, mfc="none", mec="k")
            bad = [r for r in rs if r["status"] not in solved]
            for r in bad:   # timeouts at the limit, failures at their wall time, marked 'x'
                y = r["timeout_seconds"] if r["status"] == "timeout" else \
                    r.get("fit_wall_seconds") or r.get("child_wall_seconds")
                ax_t.plot(r["n_pixels"] * r["n_patterns"], y, marker="x", ms=10, mew=2,
                          color=colors[solver], ls="none")
                ax_t.annotate(r["status"], (r["n_pixels"] * r["n_patterns"], y), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
                if r.get("peak_increment_bytes"):   # at the kill: a lower bound
                    ax_m.plot(r["n_pixels"] * r["n_patterns"], r["peak_increment_bytes"] / MIB,
                              marker="x", ms=10, mew=2, color=colors[solver], ls="none")
            if solver != REFERENCE_SOLVER:
                od = [r for r in good if r.get("rel_obj_diff") is not None]
                if od:
                    ax_o.plot([r["n_pixels"] * r["n_patterns"] for r in od],
                              [max(abs(r["rel_obj_diff"]), 1e-16) for r in od], label=label,
                              **kw)
    if BYTES_PER_NONZERO is not None:
        xs = np.array(sorted({r["n_pixels"] * r["n_patterns"] for r in rows}), float)
        ax_m.plot(xs, xs * 9 * 2.5 * BYTES_PER_NONZERO / MIB, "k--", marker="_", lw=1,
                  label=f"library estimate (increment): {BYTES_PER_NONZERO:g} B x N P 9 2.5")
    ax_t.set(xscale="log", yscale="log", xlabel="N x P", ylabel="build + compile + solve [s]",
             title="CVXPY total time (x: timeout / failure; ring: inaccurate)")
    ax_m.set(xscale="log", yscale="log", xlabel="N x P",
             ylabel="peak RSS - RSS before fit [MiB]",
             title="memory of build + solve (x: at the kill, lower bound)")
    ax_o.set(xscale="log", yscale="log", xlabel="N x P",
             ylabel=f"|obj - obj_{REFERENCE_SOLVER}| / |obj_{REFERENCE_SOLVER}|",
             title=f"dual objective vs {REFERENCE_SOLVER}")
    for ax in axes:
        # e.g. every case timed out: log axes need positive data
        if not any(len(line.get_xdata()) for line in ax.get_lines()):
            ax.set(xscale="linear", yscale="linear")
            ax.text(0.5, 0.5, "no solved case", ha="center", va="center",
                    transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{name}: expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=784, P=25, all solvers; writes cvxpy_scaling_quick.*")
    ap.add_argument("--sizes", type=lambda s: _parse_int_list(s, "--sizes"), default=None,
                    help="pixel counts N, multiples of 784 (default 784,1568,3136)")
    ap.add_argument("--patterns", type=lambda s: _parse_int_list(s, "--patterns"), default=None,
                    help="numbers of generators P (default 25,50,100)")
    ap.add_argument("--solvers", type=lambda s: [v.upper() for v in s.replace(",", " ").split()],
                    default=None, help="CVXPY solvers (default CLARABEL,ECOS,SCS)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                    help="output folder (default benchmarks/results/)")
    ap.add_argument("--stem", default=None,
                    help="output file stem (default cvxpy_scaling, cvxpy_scaling_quick)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="wall-time limit of one case in seconds (default 600)")
    ap.add_argument("--strict", action="store_true",
                    help="fit with allow_inaccurate=False (the default fit): an "
                         "'optimal_inaccurate' solve is then a failure without an objective")
    ap.add_argument("--force", action="store_true",
                    help="pass force=True: build even when the size estimate refuses")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [784]
        args.patterns = args.patterns or [25]
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.patterns = args.patterns or list(DEFAULT_PATTERNS)
    args.solvers = args.solvers or list(DEFAULT_SOLVERS)
    bad = [n for n in args.sizes if n % PIXELS_PER_IMAGE]
    if bad:
        ap.error(f"--sizes: N must be a multiple of {PIXELS_PER_IMAGE} (whole 28x28 digits), "
                 f"got {bad}")
    from convexnn.solve.conic import CVXPY_SOLVERS
    unknown = [s for s in args.solvers if s not in CVXPY_SOLVERS]
    if unknown:
        ap.error(f"--solvers: unknown {unknown}; choose from {list(CVXPY_SOLVERS)}")
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    args.stem = args.stem or ("cvxpy_scaling_quick" if args.quick else "cvxpy_scaling")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        return _child_main(argv[1], argv[2])
    args = parse_args(argv)
    # reference first at each (N, P) so rows read naturally; order does not affect results
    solvers = sorted(args.solvers, key=lambda s: (s != REFERENCE_SOLVER, args.solvers.index(s)))
    cases = [(n, p, s) for n in sorted(args.sizes) for p in sorted(args.patterns) for s in solvers]
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{args.stem}.json", args.out / f"{args.stem}.png"
    command = "PYTHONPATH=. " + " ".join([Path(sys.executable).name,
                                          os.path.relpath(__file__, Path.cwd())] + argv)
    payload: dict[str, Any] = {
        "benchmark": "cvxpy_scaling", "issue": "GitHub issue 2, item 8", "command": command,
        "machine": _machine_info(),
        "config": {"sizes": sorted(args.sizes), "patterns": sorted(args.patterns),
                   "solvers": solvers, "reference_solver": REFERENCE_SOLVER,
                   "kernel_size": KERNEL_SIZE, "beta": BETA, "loss": "squared",
                   "noise": {"kind": "gaussian", "sigma": SIGMA, "seed": NOISE_SEED,
                             "rng": "numpy.random.default_rng(seed).standard_normal"},
                   "data": "MNIST test digits [:N/784], (x/255 - 0.1307)/0.3081",
                   "generators": f"sample_generators(P, 1, {KERNEL_SIZE}, seed={GENERATOR_SEED})",
                   "dedupe": True, "allow_inaccurate": not args.strict, "force": args.force,
                   "solver_options": "cvxpy / solver defaults",
                   "timeout_seconds": args.timeout, "isolation": "one fresh process per case"},
        "rows": [],
    }
    print(f"cvxpy_scaling: {len(cases)} cases, timeout {args.timeout:g} s each, "
          f"{payload['machine']['cpu_count']} CPUs, load {payload['machine']['loadavg_at_start']}",
          flush=True)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cvxpy_scaling_") as tmp:
        for i, (n, p, solver) in enumerate(cases, 1):
            spec = {"n_pixels": n, "n_images": n // PIXELS_PER_IMAGE, "n_patterns": p,
                    "solver": solver, "allow_inaccurate": not args.strict, "force": args.force,
                    "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
            print(f"[{i}/{len(cases)}] N={n} P={p} {solver} ...", end=" ", flush=True)
            row = _run_in_subprocess(spec, args.timeout, Path(tmp))
            rows.append(row)
            msg = (f"{row['status']}  total {row['total_seconds']:.2f} s "
                   f"(setup {row['setup_seconds']:.2f}, solve {row['solve_seconds']:.2f}), "
                   f"{row.get('iterations')} it, {row.get('fit_cpu_seconds', math.nan):.1f} "
                   f"CPU-s, peak {row['peak_rss_bytes'] / MIB:.0f} MiB"
                   if row.get("total_seconds") is not None else
                   f"{row['status']} after {row['child_wall_seconds']:.1f} s: "
                   f"{(row.get('error') or '')[:200]}")
            print(msg, flush=True)
            _fill_reference(rows)
            payload["rows"] = rows
            payload["elapsed_seconds"] = time.perf_counter() - t_all
            json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    _fill_reference(rows)
    payload["bytes_per_nonzero"] = _bytes_per_nonzero(rows)
    seen = {json.dumps(r["versions"], sort_keys=True) for r in rows if r.get("versions")}
    seen.add(json.dumps(payload["machine"]["versions"], sort_keys=True))
    if len(seen) > 1:
        payload["warning"] = ("package versions changed during the run (see rows[*].versions): "
                              + " | ".join(sorted(seen)))
        print(f"WARNING: {payload['warning']}", flush=True)
    payload["elapsed_seconds"] = time.perf_counter() - t_all
    json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    m = payload["machine"]
    make_plot(rows, png_path,
              f"CVXPY path of eq. 4 (MNIST, sigma={SIGMA}, beta={BETA:g}, k={KERNEL_SIZE}); "
              f"{m['cpu_count']} CPUs ({m['cpu_model']}), cvxpy {m['versions']['cvxpy']}, "
              f"{m['date_utc']}")
    table = format_table(rows)
    print("\n" + table)
    print("\nrel. obj. diff = (objective_ - objective_CLARABEL) / |objective_CLARABEL| at the "
          "same (N, P); rel. viol = max hinge violation / max |conv(x, u_i)|;\n"
          "cpu s = CPU seconds of the fit, all threads (of the whole killed process for a "
          "timeout): on a shared machine the wall times above include waiting for a CPU")
    bpn = payload["bytes_per_nonzero"]
    print(f"\npeak RSS per constraint-matrix nonzero (estimate in cvxpy_solver: "
          f"{bpn.get('current_estimate_bytes_per_nonzero')} B):")
    for solver, e in bpn["per_solver"].items():
        big = e["largest_case"]
        print(f"  {solver:9s} largest solved case N={big['n_pixels']} P={big['n_patterns']}: "
              f"peak {big['peak_bytes_per_nnz']:.0f} B/nnz, increment over pre-fit RSS "
              f"{big['increment_bytes_per_nnz']:.0f} B/nnz (exact {big['nnz_exact']:,} nnz); "
              f"{big['peak_bytes_per_nnz_formula']:.0f} / "
              f"{big['increment_bytes_per_nnz_formula']:.0f} B per N P 9 2.5")
        if "slope_bytes_per_nnz" in e:
            print(f"  {'':9s} over {e['n_cases']} solved cases: slope "
                  f"{e['slope_bytes_per_nnz']:.0f} B/nnz ({e['slope_bytes_per_nnz_formula']:.0f}"
                  f" B per N P 9 2.5) + {e['intercept_mib']:.0f} MiB; max increment "
                  f"{e['max_increment_bytes_per_nnz']:.0f} B/nnz "
                  f"({e['max_increment_bytes_per_nnz_formula']:.0f} B per N P 9 2.5)")
    print(f"\nwrote {json_path} and {png_path} ({payload['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
