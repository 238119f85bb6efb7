"""Saving/loading (no pickles), the gap report, and the command line on real digits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser, gap_report
from convexnn.cli import main
from convexnn.io import load_model, save_model


@pytest.fixture(scope="module")
def model_and_data(small_pair):
    noisy, clean = small_pair
    return ConvexDualDenoiser(n_patterns=5, beta=0.05, seed=3).fit(noisy, clean), noisy, clean


def test_save_load_roundtrip(tmp_path, model_and_data):
    model, noisy, clean = model_and_data
    path = save_model(model, tmp_path / "m.safetensors")
    back = load_model(path)
    assert isinstance(back, ConvexDualDenoiser)
    torch.testing.assert_close(back.predict(noisy), model.predict(noisy), rtol=0, atol=0)
    assert back.objective(noisy, clean) == pytest.approx(model.objective_, rel=1e-12)
    assert back.objective_ == model.objective_ and back.beta == model.beta
    primal = model.to_primal()
    back_p = load_model(save_model(primal, tmp_path / "p.safetensors"))
    assert isinstance(back_p, TwoLayerConvDenoiser)
    torch.testing.assert_close(back_p(noisy), primal(noisy))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_load_refuses_pickles_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.safetensors"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(ValueError, match="not a convexnn safetensors model"):
        load_model(bad)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_gap_report_table_and_json(tmp_path, model_and_data):
    model, noisy, clean = model_and_data
    report = gap_report(model, noisy, clean)
    table = report.to_table()
    assert "relative gap" in table and "nonzero groups" in table
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == data
    assert data["dual_objective"] == pytest.approx(model.objective_)
    assert data["relative_gap"] < 1e-5
    assert data["n_pixels"] == 16 * 16
    assert set(data["timings"]) >= {"solve", "setup", "fit_total"}


def test_cli_demo_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--n-train", "4", "--n-test", "2", "--patterns", "40", "--out",
                 str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "certified gap" in printed and "held-out PSNR" in printed
    result = json.loads((out / "demo.json").read_text())
    o = result["objectives"]
    # exact: the rebuilt primal has the dual's objective, the lower bound is within 1e-6
    assert result["status"] == "optimal" and result["certified_gap"] <= 1e-6
    assert o["exact_rebuilt_primal_eq2"]["sum"] == pytest.approx(o["exact_dual_eq4"]["sum"],
                                                                 rel=1e-7)
    assert o["certified_lower_bound"]["sum"] <= o["exact_dual_eq4"]["sum"]
    assert o["exact_dual_eq4"]["per_pixel"] == pytest.approx(
        o["exact_dual_eq4"]["sum"] / (4 * 28 * 28))
    # a network of the same width trained by Adam for the same time is not below the optimum
    assert o["adam_primal_eq2"]["sum"] >= o["certified_lower_bound"]["sum"]
    assert result["sigma_scale"] == "[0, 1] pixels"
    assert (out / "reconstructions.png").stat().st_size > 10_000
    assert isinstance(load_model(out / "model.safetensors"), ConvexDualDenoiser)
    # the exact dual beats the noisy input on held-out PSNR
    psnr = result["test_psnr_db"]
    assert psnr["exact convex (eq. 4)"] > psnr["noisy"] + 3


def test_cli_fit_and_gap_on_user_files(tmp_path, mnist_digits, capsys):
    rng = np.random.default_rng(0)
    clean = mnist_digits[:3, 4:24, 4:24]
    noisy = clean + 0.4 * rng.standard_normal(clean.shape)
    pairs = tmp_path / "pairs.npz"
    np.savez(pairs, noisy=noisy, clean=clean)
    out = tmp_path / "fit"
    code = main(["fit", "--pairs", str(pairs), "--patterns", "4", "--test-fraction", "0.34",
                 "--out", str(out), "--json", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"]["n_pixels"] == 2 * 20 * 20 and result["test"]["n_images"] == 1
    code = main(["gap", str(out / "model.safetensors"), "--pairs", str(pairs), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["n_pixels"] == 3 * 20 * 20
    # the interior-point solver through the CLI: same program, same optimum
    code = main(["fit", "--pairs", str(pairs), "--patterns", "4", "--test-fraction", "0.34",
                 "--solver", "ipm", "--out", str(tmp_path / "fit_ipm"), "--json", "--quiet"])
    assert code == 0
    ipm = json.loads(capsys.readouterr().out)
    assert ipm["train"]["dual_objective"] == pytest.approx(result["train"]["dual_objective"],
                                                           rel=1e-6)


def test_cli_errors_and_exit_codes(tmp_path, capsys):
    assert main(["fit", "--out", str(tmp_path)]) == 2
    assert "no data" in capsys.readouterr().err
    np.save(tmp_path / "c.npy", np.zeros((2, 8, 8)))
    assert main(["fit", "--clean", str(tmp_path / "c.npy"), "--out", str(tmp_path)]) == 2
    assert "exactly one of --noisy and --sigma" in capsys.readouterr().err
    assert main(["fit", "--pairs", str(tmp_path / "c.npy"), "--kernel-size", "4", "--out",
                 str(tmp_path / "d"), "--quiet"]) == 2
    assert main(["demo", "--n-train", "0", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "--n-train: expected a positive integer" in capsys.readouterr().err
    assert main(["fit", "--pairs", str(tmp_path / "missing.npz"), "--out", str(tmp_path)]) == 2
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["demo", "--solver", "newton"])
