"""Interpretation (paper Sec. 4.1-4.2): paths, filters, patch clusters, and `convexnn interpret`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.cli import main
from convexnn.interpret import (
    activation_codes,
    beta_sparsity_sweep,
    cluster_codes,
    cluster_patches,
    cluster_similarity,
    frequency_response,
    interpret_model,
    linear_filters,
    path_norm,
    path_norms,
    path_sparsity,
    save_cluster_maps,
    save_filter_figure,
    top_filters,
)
from convexnn.io import save_model
from convexnn.model.problem import SolveInfo


def hand_dual(generators, v, w) -> ConvexDualDenoiser:
    """A 'fitted' dual with the given tensors (no solve)."""
    g = torch.as_tensor(generators, dtype=torch.float64)
    m = ConvexDualDenoiser(kernel_size=g.shape[-1], generators=g, beta=1.0)
    m.n_channels_, m.generators_ = g.shape[1], g
    m.v_ = torch.as_tensor(v, dtype=torch.float64).reshape(g.shape)
    m.w_ = torch.as_tensor(w, dtype=torch.float64).reshape(g.shape)
    m.solve_info_, m.history_ = SolveInfo(solver="hand", status="hand"), []
    return m


# Two-channel 1 x 1 "patches": four quadrants with (x1, x2) = (1,1), (-1,1), (-1,-1), (1,-1).
QUADRANT_VALUES = [(1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0)]
GENERATORS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]  # the last one gets zero weights


def quadrant_image() -> tuple[torch.Tensor, np.ndarray]:
    img = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    truth = np.zeros((1, 6, 6), dtype=int)
    for q, (a, b) in enumerate(QUADRANT_VALUES):
        rows, cols = slice(3 * (q // 2), 3 * (q // 2) + 3), slice(3 * (q % 2), 3 * (q % 2) + 3)
        img[0, 0, rows, cols], img[0, 1, rows, cols] = a, b
        truth[0, rows, cols] = q
    return img, truth


def quadrant_dual() -> ConvexDualDenoiser:
    g = torch.tensor(GENERATORS).reshape(4, 2, 1, 1)
    return hand_dual(g, [[1, 0], [0, 2], [0, 0], [0, 0]], [[0, 0], [0, 0], [0.5, 0.5], [0, 0]])


def test_hand_built_dual_codes_and_clusters_are_exact():
    img, truth = quadrant_image()
    model = quadrant_dual()
    codes = activation_codes(model, img)
    assert codes.shape == (1, 3, 6, 6)  # pattern 3 has v = w = 0: not in the code
    # D_i = 1[g_i . x >= 0] for g = (1,0), (0,1), (1,1)
    expected = {0: [1, 1, 1], 1: [0, 1, 1], 2: [0, 0, 0], 3: [1, 0, 1]}
    for q, code in expected.items():
        r, c = 3 * (q // 2), 3 * (q % 2)
        assert codes[0, :, r, c].tolist() == [bool(b) for b in code]
    clusters = cluster_patches(model, img, n_clusters=12, seed=0)
    assert clusters.n_clusters == 4 and clusters.requested == 12  # capped at distinct codes
    assert clusters.n_distinct_codes == 4 and clusters.n_features == 3
    assert clusters.labels.shape == (1, 6, 6) and clusters.sizes == [9, 9, 9, 9]
    assert cluster_similarity(clusters, truth)["adjusted_rand"] == pytest.approx(1.0)
    # restricted to two quadrants (a mask), a labelling that merges the others still matches
    merged = np.where(truth >= 2, 2, truth)
    assert cluster_similarity(merged, truth)["adjusted_rand"] < 1.0
    assert cluster_similarity(merged, truth, mask=truth < 2)["adjusted_rand"] == 1.0


def test_hand_built_primal_codes_use_relu_activity():
    img, truth = quadrant_image()
    first = torch.tensor(GENERATORS, dtype=torch.float64).reshape(4, 2, 1, 1)
    primal = TwoLayerConvDenoiser.from_weights(first, torch.tensor([1.0, -1.0, 2.0, 0.0],
                                                                   dtype=torch.float64))
    codes = activation_codes(primal, img)
    assert codes.shape == (1, 3, 6, 6)  # alpha_4 = 0: its path is zero
    # strict > 0: x1 + x2 = 0 on quadrant (-1, 1) is inactive, unlike the dual's >= 0
    assert codes[0, :, 0, 3].tolist() == [False, True, False]
    labels = cluster_patches(primal, img, n_clusters=4).labels
    assert cluster_similarity(labels, truth) == pytest.approx(
        {"adjusted_rand": 1.0, "normalized_mutual_info": 1.0})


def test_path_norm_is_eq7_and_invariant_under_eq5():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)
    primal = TwoLayerConvDenoiser.from_weights(u, alpha)
    formula = sum(float(u[j].norm() * alpha[j].abs()) for j in range(3))
    assert path_norm(primal) == pytest.approx(formula, rel=1e-12)
    torch.testing.assert_close(linear_filters(primal)[1], -0.5 * u[1])
    v = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    dual = hand_dual(torch.randn(4, 1, 3, 3, generator=gen), v, w)
    groups = float(v.flatten(1).norm(dim=1).sum() + w.flatten(1).norm(dim=1).sum())
    assert path_norm(dual) == pytest.approx(groups, rel=1e-12)
    assert path_norm(dual.to_primal()) == pytest.approx(groups, rel=1e-12)


def test_path_sparsity_counts_with_relative_threshold():
    g = torch.randn(4, 1, 1, 1, dtype=torch.float64)
    dual = hand_dual(g, [1.0, 0.0, 1e-5, 0.5], [0.0, 2.0, 0.0, 0.0])
    s = path_sparsity(dual, tol=1e-3)
    assert (s.n_paths, s.n_nonzero, s.n_nonzero_v, s.n_nonzero_w) == (8, 3, 2, 1)
    assert s.n_nonzero_patterns == 3 and s.threshold == pytest.approx(2e-3)
    assert s.path_norm == pytest.approx(3.5 + 1e-5) and s.largest == 2.0
    assert s.n_for_90_percent == 3 and s.kind == "dual"
    assert top_filters(dual, n=2).tolist() == [5, 0]  # w_1 (index P + 1), then v_0
    zero = hand_dual(g, torch.zeros(4), torch.full((4,), 1e-12))
    assert path_sparsity(zero).n_nonzero == 0  # the absolute floor
    assert path_sparsity(dual.to_primal()).n_nonzero == 3


def test_frequency_response_of_known_filters():
    delta = torch.zeros(2, 1, 3, 3)
    delta[:, :, 1, 1] = 1.0
    resp = frequency_response(delta, size=32)
    assert resp.shape == (2, 1, 32, 32)
    torch.testing.assert_close(resp, torch.ones_like(resp, dtype=torch.float64))
    box = frequency_response(torch.ones(3, 3), size=16)
    assert box[8, 8] == pytest.approx(9.0)  # zero frequency in the centre after fftshift
    assert float(box.max()) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="k <= size"):
        frequency_response(torch.ones(5, 5), size=4)


@pytest.fixture(scope="module")
def fitted(small_pair):
    noisy, clean = small_pair
    return ConvexDualDenoiser(n_patterns=6, beta=0.5, seed=3).fit(noisy, clean), noisy, clean


def test_clusters_are_seeded_and_shaped(fitted, mnist_digits):
    model = fitted[0]
    images = torch.from_numpy(mnist_digits[:3]).unsqueeze(1)
    a = cluster_patches(model, images, n_clusters=5, seed=1)
    b = cluster_patches(model, images, n_clusters=5, seed=1)
    assert a.labels.shape == (3, 28, 28) and a.labels.max() < 5
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.sizes == sorted(a.sizes, reverse=True) and sum(a.sizes) == 3 * 28 * 28
    assert np.bincount(a.labels.ravel()).tolist() == a.sizes  # label 0 = largest cluster


def test_beta_sweep_sparsifies_with_cvxpy(small_pair):
    noisy, clean = small_pair
    pts = beta_sparsity_sweep(noisy, clean, [0.01, 1.0, 1e4], solver="cvxpy",
                              model_kwargs={"n_patterns": 5, "seed": 3})
    counts = [p.n_nonzero for p in pts]
    assert counts[0] >= counts[1] >= counts[2] == 0 and counts[0] > 0
    assert {p.n_paths for p in pts} == {10} and all(p.status == "optimal" for p in pts)
    assert pts[0].path_norm > pts[1].path_norm
    with pytest.raises(ValueError, match="betas"):
        beta_sparsity_sweep(noisy, clean, [-1.0])


def test_figures_are_written(tmp_path, fitted, mnist_digits):
    model = fitted[0]
    png = save_filter_figure(tmp_path / "f.png", model, n_filters=5)
    assert png.stat().st_size > 5_000
    labels = cluster_patches(model, torch.from_numpy(mnist_digits[:2])).labels
    png = save_cluster_maps(tmp_path / "c.png", mnist_digits[:2], [("dual", labels)])
    assert png.stat().st_size > 5_000
    empty = hand_dual(model.generators_, torch.zeros_like(model.v_), torch.zeros_like(model.w_))
    with pytest.raises(ValueError, match="no nonzero path"):
        save_filter_figure(tmp_path / "none.png", empty)


def test_bad_inputs_raise_clear_errors(fitted):
    model = fitted[0]
    with pytest.raises(ValueError, match=r"\(n, G, H, W\)"):
        cluster_codes(np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_codes(np.ones((1, 2, 3, 3), dtype=bool), n_clusters=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        path_norms(ConvexDualDenoiser())
    with pytest.raises(TypeError, match="ConvexDualDenoiser or a TwoLayerConvDenoiser"):
        path_norms(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="channel"):
        activation_codes(model, torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="channel"):
        activation_codes(model.to_primal(), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="same pixels"):
        cluster_similarity(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="mask"):
        cluster_similarity(np.zeros(4), np.zeros(4), mask=np.ones(3, dtype=bool))
    with pytest.raises(TypeError, match="stages"):
        interpret_model(object(), torch.zeros(1, 1, 4, 4), "unused")


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def saved(tmp_path_factory, fitted, mnist_digits):
    model, noisy, clean = fitted
    d = tmp_path_factory.mktemp("interp")
    np.save(d / "digits.npy", mnist_digits[:3, 4:24, 4:24])
    np.savez(d / "pairs.npz", noisy=mnist_digits[:2] + 1.0, clean=mnist_digits[:2])
    (d / "junk.safetensors").write_text("not a model")
    return {"dual": save_model(model, d / "dual.safetensors"),
            "primal": save_model(model.to_primal(), d / "primal.safetensors"), "dir": d}


def test_cli_interpret_end_to_end(tmp_path, saved, capsys):
    out = tmp_path / "out"
    code = main(["interpret", str(saved["dual"]), "--data", str(saved["dir"] / "digits.npy"),
                 "--out", str(out), "--quiet", "--json", "--clusters", "4"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "interpret.json").read_text())
    assert printed == stored and stored["n_images"] == 3 and stored["image_shape"] == [1, 20, 20]
    block = stored["blocks"][0]
    assert block["sparsity"]["kind"] == "dual" and block["sparsity"]["n_paths"] == 12
    assert block["clusters"]["n_clusters"] <= 4
    for name in ("filters.png", "clusters.png"):
        assert (out / name).stat().st_size > 5_000
    code = main(["interpret", str(saved["primal"]), "--data", str(saved["dir"] / "pairs.npz"),
                 "--out", str(tmp_path / "p"), "--quiet"])
    assert code == 0
    assert "block 1: primal" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "interpret.json").read_text())["image_shape"] == \
        [1, 28, 28]  # the .npz's 'clean' array


def test_cli_interpret_mnist_and_bad_inputs(tmp_path, saved, capsys):
    assert main(["interpret", str(saved["dual"]), "--data", "mnist", "--n-images", "2",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 0
    capsys.readouterr()
    bad = [
        ([str(tmp_path / "missing.safetensors"), "--data", "mnist"], "no model file"),
        ([str(saved["dir"] / "junk.safetensors"), "--data", "mnist"], "not a convexnn"),
        ([str(saved["dual"]), "--data", str(tmp_path / "nothing.npy")], "no such file"),
        ([str(saved["dual"]), "--data", "mnist", "--clusters", "0"], "--clusters"),
        ([str(saved["dual"]), "--data", "mnist", "--fft-size", "2"], "k <= size"),
    ]
    for args, message in bad:
        assert main(["interpret", *args, "--out", str(tmp_path / "x"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
