"""The `--quick` (CI-sized) runs of the experiment and benchmark scripts, end to end.

Each test loads a script's `main` from its file (experiments/ and benchmarks/ are not packages),
runs it as `main(["--quick", "--quiet", "--out", tmp_path])` and checks what it wrote: the JSON
parses, its key numbers are finite and plausible, the properties that hold by construction hold
(Armijo / PODM energies never increase, exact-solver objectives are monotone in beta and in
depth, a certified Lipschitz bound is not beaten by a measured one), and the PNG is a PNG.

The times in the comments are one `--quick` run from the command line (interpreter start-up
included; the ed_* scripts on the two torch threads they ask for) on the 2-core development
machine while two training runs kept both cores busy. Scripts over 25 s there are marked `slow`
(run them with `pytest -m slow`). In this file, with imports shared and one thread, the default
(not slow) selection took 45 s on that machine.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# the shared-dataset lookup (env variable, then ../shared/datasets) of the restoration tests
from test_restoration_data import SHARED, needs_shared

from convexnn.data import RESTORATION_DIR_ENV

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS, BENCHMARKS = REPO / "experiments", REPO / "benchmarks"
SHARED_ENV = "CONVEXNN_SHARED_DATASETS"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def _undo_script_side_effects():
    """The scripts set the torch thread count, `os.environ.setdefault` the dataset folder and
    may leave figures open: restore all of it so later tests see the conftest state."""
    threads = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in (SHARED_ENV, RESTORATION_DIR_ENV)}
    yield
    torch.set_num_threads(threads)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def _load(path: Path, monkeypatch):
    """Import a script from its file under its own name (the benchmarks pickle functions of it
    for spawned children), with its folder and the repo root on sys.path for its imports."""
    monkeypatch.syspath_prepend(str(path.parent))   # mnist_setup, podm_sparse_sr, ...
    monkeypatch.syspath_prepend(str(REPO))          # `experiments.pnp_deblur`, convexnn, solvers
    if SHARED is not None:
        monkeypatch.setenv(SHARED_ENV, str(SHARED))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module


def _quick_args(out: Path) -> list[str]:
    return ["--quick", "--quiet", "--out", str(out)]


def _json(path: Path) -> dict:
    assert path.is_file(), f"{path.name} not written"
    return json.loads(path.read_text())


def _png(path: Path) -> None:
    assert path.is_file(), f"{path.name} not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, f"{path.name} is not a real PNG"


def _finite(*values) -> None:
    for v in values:
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), v


def _between(value, lo: float, hi: float) -> None:
    _finite(value)
    assert lo <= value <= hi, f"{value} not in [{lo}, {hi}]"


def _psnr(value) -> None:
    _between(value, 5.0, 60.0)


def _non_increasing(seq, rtol: float = 1e-9) -> None:
    a = np.asarray(seq, dtype=np.float64)
    assert a.size >= 2 and np.all(np.isfinite(a))
    assert np.all(np.diff(a) <= rtol * np.abs(a).max()), f"increases: {a}"


def _check_mnist_final(final: dict) -> None:
    """`final_objectives` of mnist_setup: eq. 2 of the primal and of the dual's eq. 5 primal."""
    for split in ("train", "test"):
        f = final[split]
        _finite(f["primal"], f["dual_rebuilt_primal"])
        assert f["primal"] > 0 and f["dual_rebuilt_primal"] > 0
        # normalised digits: the zero network costs about 0.5 per pixel
        _between(f["primal_mean"], 0.0, 1.0)
        _between(f["dual_rebuilt_primal_mean"], 0.0, 1.0)
        rel = (f["dual_rebuilt_primal"] - f["primal"]) / f["primal"]
        assert f["relative_difference"] == pytest.approx(rel, rel=1e-6)


# ----------------------------------------------------------------------------- MNIST (shipped)

def test_mnist_zero_gap_quick(tmp_path, monkeypatch):  # 7.9 s
    _load(EXPERIMENTS / "mnist_zero_gap.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "mnist_zero_gap_sigma0.5_quick.json")
    _png(tmp_path / "mnist_zero_gap_sigma0.5_quick.png")
    _png(tmp_path / "mnist_zero_gap_sigma0.5_quick_recon.png")
    assert d["quick"] is True and d["sigma"] == 0.5 and d["n_train"] == 25
    _check_mnist_final(d["final"])
    ph, dh = d["primal_history"], d["dual_history"]
    # the reported final objectives are the trainers' last evaluations, and training helped
    assert d["final"]["train"]["primal"] == pytest.approx(ph[-1]["train_objective"], rel=1e-4)
    assert d["final"]["train"]["dual_rebuilt_primal"] == pytest.approx(
        dh[-1]["train_primal_objective"], rel=1e-4)
    assert ph[-1]["train_objective"] < ph[0]["train_objective"]
    assert dh[-1]["train_primal_objective"] < dh[0]["train_primal_objective"]


def test_mnist_robustness_quick(tmp_path, monkeypatch):  # 7.7 s
    _load(EXPERIMENTS / "mnist_robustness.py", monkeypatch).main(_quick_args(tmp_path))
    for kind in ("gaussian", "exponential"):
        d = _json(tmp_path / f"mnist_robustness_{kind}_quick.json")
        _png(tmp_path / f"mnist_robustness_{kind}_quick.png")
        assert d["noise"] == kind and d["quick"] is True
        _check_mnist_final(d["final"])
        assert len(d["primal_history"]) == len(d["dual_history"]) == 8


def test_mnist_pattern_ablation_quick(tmp_path, monkeypatch):  # 7.2 s
    _load(EXPERIMENTS / "mnist_pattern_ablation.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "mnist_pattern_ablation_quick.json")
    _png(tmp_path / "mnist_pattern_ablation_quick.png")
    rows = d["rows"]
    assert sorted((r["sigma"], r["patterns"]) for r in rows) == [
        (0.1, 25), (0.1, 100), (0.5, 25), (0.5, 100)]
    for r in rows:
        for split in ("train", "test"):
            assert r[f"{split}_primal"] > 0 and r[f"{split}_dual_rebuilt_primal"] > 0
            _between(r[f"{split}_primal_mean"], 0.0, 1.0)
            _between(r[f"{split}_dual_rebuilt_primal_mean"], 0.0, 1.0)
            _between(r[f"{split}_relative_difference"], -1.0, 10.0)


def test_mnist_interpret_quick(tmp_path, monkeypatch):  # 10.4 s
    _load(EXPERIMENTS / "mnist_interpret.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "mnist_interpret_quick.json")
    for name in ("filters", "clusters", "sparsity"):
        _png(tmp_path / f"mnist_interpret_quick_{name}.png")
    assert (tmp_path / "mnist_interpret_quick_model.safetensors").is_file()
    assert d["dual"]["train_objective"] > 0 and d["dual"]["test_objective"] > 0
    sp = d["path_sparsity"]
    assert 0 < sp["n_nonzero"] <= sp["n_paths"] and sp["n_for_90_percent"] <= sp["n_nonzero"]
    for c in d["clusters"].values():
        assert 1 <= c["n_clusters"] <= c["requested"] and sum(c["sizes"]) > 0
    # exact (cvxpy) sweep over beta: min f + beta R has R(x*) non-increasing and the optimal
    # value non-decreasing in beta; the largest beta is sparser than the smallest
    pts = sorted(d["sparsity_sweeps"]["cvxpy"]["points"], key=lambda p: p["beta"])
    assert len(pts) == 3 and all(p["status"] == "optimal" for p in pts)
    _non_increasing([p["path_norm"] for p in pts], rtol=1e-3)
    _non_increasing([-p["objective"] for p in pts], rtol=1e-3)
    assert pts[-1]["n_nonzero"] < pts[0]["n_nonzero"]


def test_mnist_greedy_deep_quick(tmp_path, monkeypatch):  # 13.6 s
    _load(EXPERIMENTS / "mnist_greedy_deep.py", monkeypatch).main(_quick_args(tmp_path))
    tag = "mnist_greedy_deep_quick"
    d = _json(tmp_path / f"{tag}.json")
    for name in ("depth", "recon", "clusters", "filters_block1", "filters_block3"):
        _png(tmp_path / f"{tag}_{name}.png")
    assert (tmp_path / f"{tag}_stack.safetensors").is_file()
    rows = d["results"]
    assert sorted((r["method"], r["depth"]) for r in rows) == sorted(
        (m, k) for m in ("greedy convex", "end-to-end") for k in (1, 2, 3))
    for r in rows:
        assert r["train_objective"] > 0 and r["test_objective"] > 0
        _psnr(r["train_psnr"])
        _psnr(r["test_psnr"])
    # solved exactly, a residual block can always be zero: the stack objective never rises
    exact = d["greedy_exact_small"]["blocks"]
    assert [b["block"] for b in exact] == [1, 2, 3]
    assert all(b["status"] == "optimal" and not b["worse_than_zero_block"] for b in exact)
    _non_increasing([b["stack_objective"] for b in exact], rtol=1e-5)


@needs_shared
def test_mri_dual_quick(tmp_path, monkeypatch):  # 10.1 s (the MRI slices are shared data)
    _load(EXPERIMENTS / "mri_dual.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "mri_dual_quick.json")
    for name in ("recon", "curves_R4", "filters_R4"):
        _png(tmp_path / f"mri_dual_quick_{name}.png")
    (run,) = d["runs"]
    assert run["acceleration"] == 4.0
    _between(run["measured_acceleration"], 3.0, 5.0)
    for split in ("train", "test"):
        o = run["objectives"][split]
        assert o["primal_mean"] > 0 and o["dual_rebuilt_primal_mean"] > 0
        _between(o["relative_difference"], -1.0, 10.0)
    for scores in run["test_magnitude_scores"].values():
        _psnr(scores["psnr"])
        _between(scores["ssim"], 0.0, 1.0)


@needs_shared
def test_mri_dual_quick_exact_dual_over_primal_patterns(tmp_path, monkeypatch):
    """--dual-solver ipm: eq. 4 solved exactly over the primal's strongest neurons. The exact
    optimum over a subset of the primal's own patterns is at most the primal pruned to those
    neurons (its dual_point is feasible there), and the certificate closes."""
    _load(EXPERIMENTS / "mri_dual.py", monkeypatch).main(
        _quick_args(tmp_path) + ["--dual-solver", "ipm", "--ipm-patterns", "8",
                                 "--primal-lbfgs", "2"])
    (run,) = _json(tmp_path / "mri_dual_quick.json")["runs"]
    # the primal compared is the L-BFGS-polished one: below its Adam point, history exact
    pol, o = run["primal_lbfgs_polish"], run["objectives"]
    assert pol["steps"] == 2 and len(pol["history"]) == 3
    assert pol["history"][-1]["train_objective_mean"] < pol["adam_objectives_mean"]["train"]
    assert o["train"]["primal_mean"] == pytest.approx(pol["history"][-1]["train_objective_mean"],
                                                      rel=1e-5)
    assert run["ipm"]["status"] == "optimal" and run["ipm"]["relative_gap"] <= 1e-6  # --ipm-tol
    assert run["ipm"]["lower_bound_mean"] <= run["ipm"]["objective_mean"]
    o = run["objectives"]["train"]
    assert o["dual_rebuilt_primal_mean"] <= o["pruned_primal_mean"] * (1 + 1e-4)
    assert o["dual_rebuilt_primal_mean"] == pytest.approx(run["ipm"]["objective_mean"],
                                                          rel=1e-4)
    _png(tmp_path / "mri_dual_quick_curves_R4.png")


# ----------------------------------------------------------------------------- energy dissipation

def _load_ed(name: str, monkeypatch):
    """An ed_* script with its `setup` kept to one torch thread (it asks for two)."""
    module = _load(EXPERIMENTS / f"{name}.py", monkeypatch)
    monkeypatch.setattr(module, "setup", functools.partial(module.setup, threads=1))
    return module


def test_ed_toy2d_quick(tmp_path, monkeypatch):  # 7.7 s
    _load_ed("ed_toy2d", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "ed_toy2d_quick.json")
    _png(tmp_path / "ed_toy2d_quick.png")
    m = d["metrics"]
    assert set(m) == {"gradient descent", "ED, GD iterates only", "ED, lagged updates"}
    for v in m.values():
        assert v["monotone"] is True          # Armijo descent: the energy never increases
        _between(v["final_energy"], 0.0, 1.0)
        _finite(v["mean_distance_to_training_points"])
    # the point of the figure: learned directions end near the training points, GD does not
    assert (m["ED, GD iterates only"]["mean_distance_to_training_points"]
            < m["gradient descent"]["mean_distance_to_training_points"])


def test_ed_sudoku_quick(tmp_path, monkeypatch):  # 18.8 s
    _load_ed("ed_sudoku", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "ed_sudoku_quick.json")
    _png(tmp_path / "ed_sudoku_quick.png")
    for v in d["table"].values():
        _between(v["accuracy"], 0.0, 1.0)
        _between(v["solve_rate"], 0.0, 1.0)
        _between(v["energy"], 0.0, 100.0)
    n_test = d["args"]["n_test"]
    for k in ("gd", "ed"):
        curve = d["curves"][f"{k}_energy"]       # sum over the test puzzles
        assert len(curve) == d["args"]["iters"]
        _non_increasing(curve, rtol=1e-6)
        assert curve[-1] == pytest.approx(n_test * d["table"][k]["energy"], rel=1e-4)


@needs_shared
def test_ed_ct_quick(tmp_path, monkeypatch):  # 17.5 s
    _load_ed("ed_ct", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "ed_ct_quick.json")
    _png(tmp_path / "ed_ct_quick.png")
    assert len(d["summary"]) == 4 and len(d["test_images"]) == 3
    for methods in d["summary"].values():
        for s in methods.values():
            for key in ("mean_best_psnr", "mean_final_psnr", "psnr_at_10"):
                _psnr(s[key])
    # alpha = 0: the energy is the data term, so Armijo descent never increases it
    for key in ("noise0.1_alpha0.0", "noise0.05_alpha0.0"):
        for runs in d["curves"][key].values():
            assert len(runs) == 3
            for r in runs:
                _non_increasing(r["data_term"], rtol=1e-6)


@pytest.mark.slow   # 28.6 s from the command line (2 threads); 10.8 s in this test (1 thread)
@needs_shared
def test_ed_superresolution_quick(tmp_path, monkeypatch):
    _load_ed("ed_superresolution", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "ed_superresolution_quick.json")
    _png(tmp_path / "ed_superresolution_quick.png")
    assert set(d["table"]) == {"set5", "set14"}
    for row in d["table"].values():
        assert row["n_images"] == 2 and len(row["ed_iterations_to_gd_residual"]) == 2
        for m in ("gd", "gd_1_over_L", "baseline", "ed", "ed_at_target"):
            _psnr(row[m]["psnr"])
            _between(row[m]["ssim"], 0.0, 1.0)
            _between(row[m]["res2"], 0.0, 1.0)


# ----------------------------------------------------------------------------- restoration

@needs_shared
def test_deq_deblur_quick(tmp_path, monkeypatch):  # 11.4 s
    _load(EXPERIMENTS / "deq_deblur.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "deq_deblur_quick.json")
    _png(tmp_path / "deq_deblur_quick.png")
    assert d["convex_dual"]["objective"] > 0
    summary = d["summary"]
    assert {"blurred input", "DEQ, trained with JFB", "DEQ, trained implicit"} <= set(summary)
    for method, s in summary.items():
        for test_set in ("bsd68_heldout", "set12"):
            _psnr(s[test_set]["psnr"])
            _between(s[test_set]["ssim"], 0.0, 1.0)
        if method.startswith("DEQ"):
            _between(s["converged_fraction"], 0.0, 1.0)
    _finite(d["speedup_implicit_over_jfb_per_epoch_median"])
    assert d["speedup_implicit_over_jfb_per_epoch_median"] > 0
    for mode in ("jfb", "implicit"):
        loss = d["training"][mode]["epoch_loss"]
        assert len(loss) == d["config"]["epochs"] and all(math.isfinite(v) for v in loss)


@needs_shared
def test_deq_deblur_quick_with_shipped_denoisers(tmp_path, monkeypatch):  # 16 s
    module = _load(EXPERIMENTS / "deq_deblur.py", monkeypatch)
    with pytest.raises(SystemExit):    # D must be one two-layer network: refused before any work
        module.main(_quick_args(tmp_path) + ["--pretrained", "gray-s10-fne"])
    module.main(_quick_args(tmp_path) + ["--pretrained", "gray-s15", "--pnp-pretrained",
                                         "gray-s10-fne", "--tag", "_shipped"])
    d = _json(tmp_path / "deq_deblur_quick_shipped.json")
    _png(tmp_path / "deq_deblur_quick_shipped.png")
    assert not (tmp_path / "deq_deblur_quick.json").exists()      # the tag kept apart
    # D is the shipped network (its card recorded), not a dual fitted by the script
    assert "convex_dual" not in d and d["config"]["pretrained"] == "gray-s15"
    card = d["pretrained"]
    assert card["name"] == "gray-s15" and card["sigma"] == pytest.approx(15 / 255)
    assert card["n_filters"] == 400 and card["training_pixels"] > 0
    _between(card["certified_gap"], 0.0, 1e-6)
    summary = d["summary"]
    blurred = summary["blurred input"]
    fne = summary["PnP-PGD, gray-s10-fne"]
    for method in ("DEQ, untrained (convex init)", "DEQ, trained with JFB",
                   "DEQ, trained implicit", "PnP-PGD, gray-s10-fne"):
        for test_set in ("bsd68_heldout", "set12"):
            _psnr(summary[method][test_set]["psnr"])
            assert summary[method][test_set]["psnr"] > blurred[test_set]["psnr"] + 0.3, method
    # the certified FNE row: nonexpansive PnP-PGD step, so c_k = ||x_k - x_{k-1}|| cannot grow
    assert fne["firmly_nonexpansive"] is True
    _between(fne["lipschitz_certificate"], 0.0, 1.0 + 1e-9)
    assert len(fne["c_monotone_after_5"]) == 2 and all(fne["c_monotone_after_5"])
    assert fne["monotone_fraction"] == 1.0 and 0 < fne["iterations"] <= d["config"]["pnp_iters"]


@needs_shared
def test_pnp_deblur_quick(tmp_path, monkeypatch):  # 13.1 s
    _load(EXPERIMENTS / "pnp_deblur.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "pnp_deblur_quick.json")
    _png(tmp_path / "pnp_deblur_quick.png")
    assert len(d["runs"]) == len(d["summary"]) == 7   # 7 denoisers x 1 image/kernel/noise
    for s in d["summary"].values():
        _psnr(s["psnr_mean"])
        _between(s["ssim_mean"], 0.0, 1.0)
        _between(s["monotone_fraction"], 0.0, 1.0)
    # convex-FNE: J = (I + Q)/2 with Lip(Q) <= certificate <= 1; a measured local Lipschitz
    # constant (power iteration, a lower bound) cannot exceed the certified one
    cert = d["training"]["convex-FNE"]["lipschitz_certificate"]
    _between(cert, 0.0, 1.0 + 1e-9)
    est = d["lipschitz_estimates_at_test_image"]["convex-FNE"]
    assert est["Q"] <= cert * (1 + 1e-4) and est["J"] <= (1 + cert) / 2 * (1 + 1e-4)


@needs_shared
def test_pnp_deblur_quick_with_a_shipped_denoiser(tmp_path, monkeypatch):  # 14 s
    _load(EXPERIMENTS / "pnp_deblur.py", monkeypatch).main(
        _quick_args(tmp_path) + ["--pretrained", "gray-s15", "--tag", "_shipped"])
    d = _json(tmp_path / "pnp_deblur_quick_shipped.json")
    assert len(d["summary"]) == 8 and d["training"]["pretrained:gray-s15"]["n_blocks"] == 1
    runs = {r["denoiser"]: r for r in d["runs"]}
    _psnr(runs["pretrained:gray-s15"]["psnr"])
    assert set(d["psnr_per_kernel"]["pretrained:gray-s15"]) == {"0 @ 0.01"}
    assert d["psnr_per_kernel"]["tv"]["0 @ 0.01"] == pytest.approx(runs["tv"]["psnr"])


def _podm(name: str, tmp_path: Path, monkeypatch, extra: tuple[str, ...] = ()) -> None:
    """podm_* with the committed denoiser cache copied in (else they retrain it, ~90 s);
    `extra`: further command-line arguments."""
    for suffix in (".pt", ".json"):
        cached = EXPERIMENTS / "results" / f"podm_dncnn{suffix}"
        if cached.is_file():
            shutil.copy(cached, tmp_path / cached.name)
    _load(EXPERIMENTS / f"{name}.py", monkeypatch).main(_quick_args(tmp_path) + list(extra))


@needs_shared
def test_podm_sparse_sr_quick(tmp_path, monkeypatch):  # 8.1 s
    _podm("podm_sparse_sr", tmp_path, monkeypatch)
    d = _json(tmp_path / "podm_sparse_sr_quick.json")
    _png(tmp_path / "podm_sparse_sr_quick.png")
    assert d["denoiser"]["cached"] is True
    assert set(d["summary"]["table"]) == {"x2", "x4"} and len(d["results"]) == 4
    for r in d["results"]:
        for m in ("PODM", "PODM-descent", "FISTA", "PG", "IRCNN-style"):
            _psnr(r[m]["psnr"])
            assert r[m]["psnr"] > r["x0"]["psnr"]
            assert 0 < r[m]["phi"] <= r[m]["phi0"]
        for m in ("PODM", "PODM-descent", "PG"):   # Prop. 1 + the fallback: Phi never rises
            _non_increasing(r[m]["curves"]["energy"])


@needs_shared
def test_podm_deblur_quick(tmp_path, monkeypatch):  # 7.1 s (+3 s: a shipped denoiser)
    _podm("podm_deblur", tmp_path, monkeypatch,
          extra=("--pretrained", "gray-s25-fne", "--fne-alphas", "0.5", "1.0",
                 "--tag", "_shipped"))
    d = _json(tmp_path / "podm_deblur_quick_shipped.json")
    _png(tmp_path / "podm_deblur_quick_shipped.png")
    assert d["denoiser"]["cached"] is True
    blurred = d["summary"]["blurred input"]["psnr"]
    _psnr(blurred)
    shipped = ("PnP-PGD (pretrained:gray-s25-fne)", "RPODM (pretrained:gray-s25-fne)")
    for m in ("RPODM", "PODM (checked)", "PnP-PGD", "TV", *shipped):
        _psnr(d["summary"][m]["psnr"])
        _between(d["summary"][m]["ssim"], 0.0, 1.0)
        _between(d["summary"][m]["monotone_fraction"], 0.0, 1.0)
        assert d["summary"][m]["psnr"] > blurred, m
        assert d["per_kernel_psnr"]["kernel 0"][m] == pytest.approx(d["summary"][m]["psnr"])
    (row,) = d["rows"]
    checked = row["PODM (checked)"]
    assert checked["n_accepted"] + checked["n_fallback"] <= checked["stages"]
    chosen = d["tuning"]["chosen"]
    assert chosen["mu"] in d["args"]["mu_grid"] and chosen["tv_weight"] in d["args"]["tv_grid"]
    # the shipped model: its own mu and step from the same grids, its certificate, the
    # PnP-FB conditions; firmly nonexpansive J and step < 2/L make the PnP-PGD map averaged,
    # so c_k = ||x_k - x_{k-1}|| never increases
    info = d["pretrained"]["pretrained:gray-s25-fne"]
    assert info["firmly_nonexpansive"] is True and info["lipschitz_certificate"] <= 1.0
    assert info["sigma"] == pytest.approx(25 / 255)
    assert info["tuned"]["mu"] in d["args"]["mu_grid"]
    assert info["tuned"]["pnp_step"] in d["args"]["step_grid"]
    assert info["pnp_pgd"]["step"] < info["pnp_pgd"]["step_bound"] == pytest.approx(2.0)
    assert info["pnp_pgd"]["convergence_guaranteed"] is True
    # its strength: Relaxed(J, alpha), alpha per solver from --fne-alphas, certificate kept
    for solver in ("PnP-PGD", "RPODM"):
        assert info["tuned"]["alpha"][solver] in (0.5, 1.0)
        relaxed = info["relaxed"][solver]
        assert relaxed["alpha"] == info["tuned"]["alpha"][solver]
        assert relaxed["firmly_nonexpansive"] is True and relaxed["lipschitz_certificate"] <= 1.0
    assert set(info["psnr_grid_alpha"]["mu"]) == {"0.5", "1.0"}
    pgd, rpodm = (row[m] for m in shipped)
    assert pgd["stages"] == d["args"]["iters"] and rpodm["stages"] == d["args"]["stages"]
    assert pgd["c_monotone_after_5"] is True
    assert d["summary"][shipped[0]]["monotone_fraction"] == 1.0
    assert d["methods"][shipped[1]] == {"solver": "RPODM", "denoiser": "pretrained:gray-s25-fne"}
    assert d["args"]["out"] == tmp_path.name and "--tag _shipped" in d["command"]
    # L = ||A||^2 used for the step bound is an upper bound of the blur's (kernel sum 1)
    assert d["lipschitz"]["measured_max_over_kernels"] <= d["lipschitz"]["used"] + 1e-9


# ----------------------------------------------------------------------------- benchmarks, growth

@pytest.mark.slow   # two spawned trainers; -m slow (the default run's time budget)
def test_dual_vs_primal_quick(tmp_path, monkeypatch):  # 13.9 s (two spawned trainers)
    _load(BENCHMARKS / "dual_vs_primal.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "dual_vs_primal_quick.json")   # this benchmark writes no figure
    for key in ("machine_bandwidth_GBps", "primal_seconds_per_epoch", "dual_seconds_per_epoch",
                "primal_final_train_objective", "dual_final_train_primal_objective",
                "dual_pixel_patterns_per_second", "dual_fraction_of_bandwidth_12B"):
        _finite(d[key])
        assert d[key] > 0, key
    _between(d["primal_peak_rss_GB"], 0.01, 64.0)
    _between(d["dual_peak_rss_GB"], 0.01, 64.0)
    reach = d["dual_seconds_to_reach_primal_within_1pct"]
    assert reach is None or 0 <= reach <= 3600
    assert d["config"]["patterns"] == 200 and d["config"]["n_train"] == 25


def test_adam_multipliers_quick(tmp_path, monkeypatch):  # 6.7 s (4.3 s in this test)
    payload = _load(BENCHMARKS / "adam_multipliers.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "adam_multipliers_quick.json")
    _png(tmp_path / "adam_multipliers_quick.png")
    assert d == json.loads(json.dumps(payload))        # main returns what it wrote
    assert d["quick"] is True and d["patterns"] <= 8
    assert d["cvxpy_objective"] > 0
    mult = d["multipliers"]
    assert mult["status"] == "optimal"
    _finite(mult["multiplier_max"], mult["optimum"])
    assert mult["multiplier_max"] > 0
    assert mult["optimum"] == pytest.approx(d["cvxpy_objective"], rel=1e-4)
    # one Adam run per rho scale (the default --rho-scales), rho = scale * max|y|
    assert [r["rho_scale"] for r in d["adam"]] == [1.0, 3.0, 30.0]
    for r in d["adam"]:
        _finite(r["rho"], r["primal_rel"], r["dual_rel"], r["violation_relative"])
        assert r["rho"] > 0 and r["violation_relative"] >= 0
    # the tried fix (dual ascent on the multipliers): one quick run, multipliers became > 0
    (lag,) = d["adam_with_multipliers"]
    _finite(lag["primal_rel"], lag["dual_rel"], lag["violation_relative"])
    assert lag["multiplier_max"] > 0 and lag["epochs"] == 50


@pytest.mark.slow   # 128.6 s
def test_pattern_growth_quick(tmp_path, monkeypatch):
    _load(EXPERIMENTS / "pattern_growth.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "pattern_growth_quick.json")
    _png(tmp_path / "pattern_growth_quick.png")
    grown, sampled = d["grown"], d["sampled"]
    assert [g["n_patterns"] for g in grown] == [s["n_patterns"] for s in sampled] == [
        10, 20, 30, 40]
    assert all(g["objective"] > 0 for g in grown) and all(s["objective"] > 0 for s in sampled)
    _non_increasing([g["objective"] for g in grown], rtol=1e-6)   # a superset of patterns
    assert grown[-1]["objective"] <= sampled[-1]["objective"]


@pytest.mark.slow   # 194.9 s (Clarabel 58 s, admm 126 s, each in a spawned child)
def test_exact_solvers_quick(tmp_path, monkeypatch):
    _load(BENCHMARKS / "exact_solvers.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "exact_solvers_quick.json")
    _png(tmp_path / "exact_solvers_quick.png")
    (cell,) = d["cells"]
    ref = cell["reference_objective"]
    _finite(ref)
    assert ref > 0 and cell["cvxpy/CLARABEL"]["objective"] == ref
    for solver in ("cvxpy/CLARABEL", "admm", "ipm", "ipm-all-rows"):
        r = cell[solver]
        assert r["status"] == "optimal", r["status"]
        _between(r["relative_error"], 0.0, 1e-4)
        _between(r["relative_violation"], 0.0, 1e-6)
        assert r["n_patterns_kept"] == cell["n_patterns"] == 60
    _between(cell["ipm"]["relative_error"], 0.0, 1e-6)     # ipm stops at a 1e-8 certified gap
    _between(cell["ipm-all-rows"]["relative_error"], 0.0, 1e-6)
    # the shipped ipm solves on a working set of 16 d = 144 of the 1,568 rows per pattern
    assert cell["ipm"]["working_rows"] == 144 and cell["ipm-all-rows"]["working_rows"] == 1568
    runs = cell["ipm"]["wall_seconds_runs"]                 # sub-second: median of 5 cold runs
    assert len(runs) == 5 and cell["ipm"]["wall_seconds"] == pytest.approx(sorted(runs)[2])
    assert cell["ipm"]["speedup_vs_clarabel"] > 1.0


def test_device_checks_cpu(tmp_path, monkeypatch):   # about 6 s: two spawned 2 x 60 solves
    """The GPU-session script on the CPU: the device run and the CPU run of the same problem
    agree, the JSON and PNG are written, and a step that cannot fit its budget is recorded as
    skipped rather than dropped."""
    d = _load(BENCHMARKS / "device_checks.py", monkeypatch).main(
        ["--device", "cpu", "--only", "two_digits", "mnist_paper_exact", "--budget", "50",
         "--out", str(tmp_path)])
    assert _json(tmp_path / "device_checks.json") == json.loads(json.dumps(d))
    _png(tmp_path / "device_checks.png")
    row = d["steps"]["two_digits"]
    for run in (row["device_run"], row["cpu_run"]):
        assert run["status"] == "optimal", run["status"]
        _between(run["certified_gap"], 0.0, 1e-6)
    _between(row["relative_difference"], 0.0, 1e-9)
    skipped = d["steps"]["mnist_paper_exact"]["status"]
    assert skipped.startswith("skipped"), skipped    # needs 60 s, fewer are left of the 50


@needs_shared
def test_denoise_natural_quick(tmp_path, monkeypatch):  # 7 s (Train400 and Set12 are shared)
    _load(EXPERIMENTS / "denoise_natural.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "denoise_natural_quick.json")
    _png(tmp_path / "denoise_natural_quick.png")
    run = d["sigma"]["25"]
    assert run["fit"]["status"] == "optimal" and run["fit"]["gaps"]["certified_gap"] <= 1e-6
    r = run["results"]["set12"]
    assert len(r["convex"]["per_image_psnr"]) == 2
    # every denoiser beats the noisy input (20.4 dB at sigma 25) by a margin
    for method in ("convex", "tv"):
        assert r[method]["psnr"] > r["noisy"]["psnr"] + 3.0, method
    assert r["noisy"]["psnr"] == pytest.approx(20.4, abs=0.3)


@needs_shared
def test_denoise_natural_quick_greedy_stack(tmp_path, monkeypatch):  # 12 s
    mod = _load(EXPERIMENTS / "denoise_natural.py", monkeypatch)
    mod.main(_quick_args(tmp_path) + ["--blocks", "2"])
    d = _json(tmp_path / "denoise_natural_quick_deep2.json")
    _png(tmp_path / "denoise_natural_quick_deep2_depth.png")
    fit = d["sigma"]["25"]["fit"]
    assert fit["n_blocks"] == 2 and fit["status"] == "optimal"
    assert len(fit["gaps"]["per_block"]) == 2 and fit["gaps"]["certified_gap"] <= 1e-6
    r = d["sigma"]["25"]["results"]["set12"]
    # depth 1 is a denoiser of its own; the whole stack is scored beside it
    assert r["convex_depth1"]["psnr"] > r["noisy"]["psnr"] + 3.0
    assert r["convex"]["psnr"] > r["noisy"]["psnr"] + 3.0
    assert mod.model_name(25.0, 2) == "gray-s25-deep2" and mod.model_name(25.0, 1) == "gray-s25"


@needs_shared
def test_denoise_fne_quick(tmp_path, monkeypatch):  # 15 s
    _load(EXPERIMENTS / "denoise_fne.py", monkeypatch).main(_quick_args(tmp_path))
    d = _json(tmp_path / "denoise_fne_quick.json")
    _png(tmp_path / "denoise_fne_quick.png")
    run = d["sigma"]["25"]
    fne, free = run["fit"]["fne"], run["fit"]["unconstrained"]
    assert fne["firmly_nonexpansive"] and fne["lipschitz_certificate"] == 1.0
    assert fne["smoothness_certificate"] <= 1.0 and fne["certified_gap"] <= 1e-3
    assert free["certified_gap"] <= 1e-6 and free["objective_per_pixel"] <= fne[
        "objective_per_pixel"]
    r = run["results"]["set12"]
    for method in ("fne", "fne_d4", "unconstrained", "tv", "convex_plain"):
        assert r[method]["psnr"] > r["noisy"]["psnr"] + 3.0, method
    assert len(r["fne"]["per_image_psnr"]) == 2
    assert run["fit"]["dncnn"]["steps"] == 8 and "dncnn" in r


@needs_shared
def test_denoise_capacity_quick(tmp_path, monkeypatch):  # 6 s
    d = _load(EXPERIMENTS / "denoise_capacity.py", monkeypatch).main(_quick_args(tmp_path))
    assert _json(tmp_path / "denoise_capacity_quick.json")["linear"] == d["linear"]
    _png(tmp_path / "denoise_capacity_quick.png")
    lin = {r["kernel"]: r["psnr"] for r in d["linear"]}
    (cvx,) = d["convex"]
    assert cvx["status"] == "optimal" and cvx["certified_gap"] <= 1e-6
    # every filter denoises, and the exact 3 x 3 convex block is not far below the best linear
    # 3 x 3 filter fitted on the same training pairs
    for v in [*lin.values(), cvx["psnr"]]:
        assert v > d["noisy_psnr"] + 2.0
    assert cvx["psnr"] > lin[3] - 1.0


@needs_shared
def test_ed_pretrained_quick(tmp_path, monkeypatch):  # 25 s
    d = _load_ed("ed_pretrained", monkeypatch).main(_quick_args(tmp_path))
    _png(tmp_path / "ed_pretrained_quick.png")
    assert _json(tmp_path / "ed_pretrained_quick.json")["experiment"] == "ed_pretrained"
    fne = d["denoisers"]["gray-s5-fne"]
    assert fne["firmly_nonexpansive"] and fne["lipschitz_certificate"] <= 1.0
    sr = d["sr"]["table"]
    assert set(sr) == {"gd", "gray-s5-fne", "dncnn", "dncnn-fne-penalty"}
    for row in sr.values():                # Algorithm 1: E never increases, whatever D is
        assert row["energy_monotone"] == 1.0
        _psnr(row["psnr"])
        _between(row["res2"], 0.0, 1.0)
    for table in d["ct"]["table"].values():
        for row in table.values():
            assert row["energy_monotone"] == 1.0
            _between(row["discrepancy_reached"], 0.0, 1.0)
            assert row["best_psnr"] >= row["psnr"] - 1e-9


@needs_shared
def test_pnp_mri_quick(tmp_path, monkeypatch):  # 20 s
    d = _load(EXPERIMENTS / "pnp_mri.py", monkeypatch).main(_quick_args(tmp_path))
    _png(tmp_path / "pnp_mri_quick.png")
    assert _json(tmp_path / "pnp_mri_quick.json")["experiment"] == "pnp_mri"
    (run,) = d["runs"]
    rows = run["rows"]
    assert {"zero_filled", "gray-s5-fne", "dncnn"} <= set(rows)
    for row in rows.values():
        _psnr(row["psnr"])
        _between(row["ssim"], -1.0, 1.0)
    # the certified FNE model: better than zero filling, and c_k nonincreasing (an averaged
    # iteration: Krasnoselskii-Mann), which holds by the certificate, not by luck
    assert rows["gray-s5-fne"]["psnr"] > rows["zero_filled"]["psnr"] + 0.5
    assert rows["gray-s5-fne"]["c_monotone_after_5"] is True
    assert d["denoisers"]["gray-s5-fne"]["firmly_nonexpansive"] is True
    # RED with J = I - grad Phi is gradient descent on 1/2 ||A x - y||^2 + lam Phi: E decreases
    red_row = rows["red:gray-s5-fne"]
    assert red_row["energy_monotone"] is True
    assert red_row["energy_first_last"][1] < red_row["energy_first_last"][0]


@needs_shared
def test_podm_sparse_sr_quick_with_a_shipped_denoiser(tmp_path, monkeypatch):  # 10 s
    _podm("podm_sparse_sr", tmp_path, monkeypatch,
          extra=("--pretrained", "gray-s5-fne", "--fne-alphas", "0.5", "1.0",
                 "--tag", "_shipped"))
    d = _json(tmp_path / "podm_sparse_sr_quick_shipped.json")
    _png(tmp_path / "podm_sparse_sr_quick_shipped.png")
    text = (tmp_path / "podm_sparse_sr_quick_shipped.json").read_text()
    assert str(tmp_path) not in text and str(REPO) not in text      # no machine paths
    assert d["denoiser"]["cached"] is True
    key = "pretrained:gray-s5-fne"
    rpodm, checked = f"RPODM ({key})", f"PODM (checked) ({key})"
    assert d["methods"][rpodm] == {"solver": "RPODM", "denoiser": key}
    assert d["methods"][checked] == {"solver": "PODM (checked)", "denoiser": key}
    assert len(d["results"]) == 4 and set(d["summary"]["rows"]) == {"x2", "x4"}
    for r in d["results"]:
        for m in ("RPODM", rpodm, checked, "FISTA"):
            _psnr(r[m]["psnr"])
            _between(r[m]["ssim"], 0.0, 1.0)
            assert r[m]["psnr"] > max(15.0, r["x0"]["psnr"]), m
            assert r[m]["stages"] == d["args"]["stages"] and r[m]["seconds"] > 0
            assert isinstance(r[m]["c_monotone_after_5"], bool)
        # the shipped model puts detail into the null space of S that the data cannot:
        # RPODM clearly beats nearest-neighbour upsampling (= every critical point of Phi)
        assert r[rpodm]["psnr"] > r["nearest"]["psnr"] + 0.5, (r["image"], r["scale"])
        # the checked PODM keeps Phi monotone whatever the network does (Prop. 1 + eq. 6)
        _non_increasing(r[checked]["curves"]["energy"])
        assert r[checked]["n_accepted"] + r[checked]["n_fallback"] == d["args"]["stages"]
    for row in d["summary"]["rows"].values():
        _between(row[rpodm]["monotone_fraction"], 0.0, 1.0)
        assert row[rpodm]["psnr"] > row["nearest"]["psnr"]
    # its card, the tuned strength and mu from the grids, the relaxed certificate
    info = d["pretrained"][key]
    assert info["firmly_nonexpansive"] is True and info["lipschitz_certificate"] <= 1.0
    assert info["sigma"] == pytest.approx(5 / 255)
    assert info["tuned"]["alpha"] in (0.5, 1.0) and info["tuned"]["mu"] in d["args"]["mu_grid"]
    grid = info["psnr_grid_alpha"]
    assert set(grid) == {"0.5", "1.0"} and all(len(g) == len(d["args"]["mu_grid"])
                                               for g in grid.values())
    best = grid[str(info["tuned"]["alpha"])][str(info["tuned"]["mu"])]
    assert best == max(v for g in grid.values() for v in g.values())
    assert info["relaxed"]["alpha"] == info["tuned"]["alpha"]
    assert info["relaxed"]["firmly_nonexpansive"] is True
    assert info["relaxed"]["lipschitz_certificate"] <= 1.0
    assert d["tuning"]["scale"] == 4 and d["tuning"]["dncnn"]["mu"] in d["args"]["mu_grid"]
    assert d["args"]["out"] == tmp_path.name and "--tag _shipped" in d["command"]


@needs_shared
def test_pnp_solvers_deblur_quick(tmp_path, monkeypatch):  # 15 s
    mod = _load(EXPERIMENTS / "pnp_solvers_deblur.py", monkeypatch)
    has_bm3d = importlib.util.find_spec("bm3d") is not None       # the [baselines] extra
    d = mod.main(_quick_args(tmp_path) + ["--pretrained", "gray-s5-fne"]
                 + ([] if has_bm3d else ["--bm3d-sigmas"]))
    _png(tmp_path / "pnp_solvers_deblur_quick.png")
    assert _json(tmp_path / "pnp_solvers_deblur_quick.json")["complete"] is True
    s = d["summary"]
    solvers = ("PGD", "ADMM", "HQS", "DRS", "RED")
    assert set(s) == {f"{v} x {n}" for v in solvers for n in ("gray-s5-fne", "tv")} | (
        {"ADMM x bm3d", "HQS x bm3d"} if has_bm3d else set())
    assert len(d["rows"]) == 2 and {r["set"] for r in d["rows"]} == {"set12", "bsd68"}
    for lab, row in s.items():
        _psnr(row["psnr"])
        # (BM3D runs 3 iterations in --quick)
        assert row["psnr"] > d["blurred_psnr"] + (0.5 if row["denoiser"] == "bm3d" else 1.0), lab
        # certified FNE denoisers (the relaxed -fne model, TV's exact prox) carry the theorem;
        # BM3D does not
        assert row["convergence_guaranteed"] is (row["denoiser"] != "bm3d"), lab
        chosen = d["tuning"]["chosen"][lab]
        grid = {"gray-s5-fne": d["args"]["alphas"], "tv": d["args"]["tv_weights"],
                "bm3d": d["args"]["bm3d_sigmas"]}[row["denoiser"]]
        assert chosen["strength"] in grid
    for lab in ("ADMM x gray-s5-fne", "DRS x gray-s5-fne", "PGD x gray-s5-fne"):
        assert s[lab]["monotone_fraction"] == 1.0, lab      # averaged iterations: c_k monotone
    vs = d["best_vs_tv"]["gray-s5-fne"]
    assert vs["tv_psnr"] == max(v["psnr"] for v in s.values() if v["denoiser"] == "tv")
    assert set(vs["kernels_at_least_tv"]) <= set(vs["kernels"]) == {"0"}


@needs_shared
def test_pnp_solvers_deblur_quick_tunes_on_several_held_out_problems(tmp_path, monkeypatch):
    mod = _load(EXPERIMENTS / "pnp_solvers_deblur.py", monkeypatch)
    d = mod.main(_quick_args(tmp_path) + ["--pretrained", "gray-s5-fne", "--bm3d-sigmas",
                                          "--solvers", "HQS", "--tune-problems", "2",
                                          "--tag", "_tune2"])
    assert set(d["summary"]) == {"HQS x gray-s5-fne", "HQS x tv"}
    assert d["tuning"]["on"].endswith("(0, set12, 1), (0, bsd68, 1)")
    for lab, grid in d["tuning"]["psnr_grid"].items():
        scores = {(a, g): v for a, row in grid.items() for g, v in row.items()}
        best = max(scores, key=scores.get)
        chosen = d["tuning"]["chosen"][lab]
        assert best == (f"{'alpha' if 'fne' in lab else 'weight'}={chosen['strength']:g}",
                        f"gamma={chosen['parameter']:g}")
    with pytest.raises(SystemExit):
        mod.main(_quick_args(tmp_path) + ["--tune-problems", "0"])


@needs_shared
def test_denoise_cascade_quick(tmp_path, monkeypatch):  # 15 s (Train400 and Set12 are shared)
    d = _load(EXPERIMENTS / "denoise_cascade.py", monkeypatch).main(_quick_args(tmp_path))
    _png(tmp_path / "denoise_cascade_quick.png")
    run = _json(tmp_path / "denoise_cascade_quick.json")["sigma"]["25"]
    assert run == json.loads(json.dumps(d["sigma"]["25"]))
    assert run["first_stage"] == "gray-s25-fne"
    for rec in run["history"]:          # each stage: the exact LS optimum, below doing nothing
        assert rec["normal_residual"] < 1e-8
        assert rec["objective_after"] < rec["objective_before"]
        assert rec["training_pixels"] == 40 * 48 * 48
    by_depth = run["results"]["set12"]["psnr_by_depth"]
    assert len(by_depth) == 3
    for p in by_depth:
        _psnr(p)
    # depth 1 is the shipped certified model: its card's check PSNRs on the same images
    from convexnn import pretrained

    check = pretrained.card("gray-s25-fne").check["per_image_psnr"][:2]
    assert by_depth[0] == pytest.approx(float(np.mean(check)), abs=1e-6)
    assert by_depth[1] > by_depth[0] + 0.5      # the skip stage adds detail back (measured +1.3)
    # one content-adaptive filter stage after the shrinkage stages: exact per-class LS
    d = _load(EXPERIMENTS / "denoise_cascade.py", monkeypatch).main(
        _quick_args(tmp_path) + ["--adaptive-stages", "1", "--tag", "_adaptive"])
    run = d["sigma"]["25"]
    rec = run["history"][-1]
    assert rec["kind"] == "adaptive" and rec["n_classes"] == 4 * 2 * 1
    assert rec["normal_residual"] < 1e-8 and rec["objective_after"] < rec["objective_before"]
    assert run["results"]["set12"]["psnr_by_depth"][:3] == pytest.approx(by_depth, abs=1e-9)
    assert len(run["results"]["set12"]["psnr_by_depth"]) == 4
