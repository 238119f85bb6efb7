"""The certified firmly nonexpansive shrinkage denoiser (`convexnn.shrinkage`): the frame, the
Taylor-Bernstein certificate against dense grids, the QP against independent solvers, the
certificate against power iteration, and clear errors."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from helpers import piecewise_smooth_pairs
from scipy.optimize import nnls

from convexnn import ConvexShrinkageDenoiser, ShrinkageConfig, load_model, save_model
from convexnn.model.shrinkage import (
    ShrinkageNetwork,
    dct_frame,
    frame_response,
    frequency_grid,
    potential_smoothness_bound,
    potential_smoothness_grid,
    ramp_knots,
    shrinkage_features,
    shrinkage_frame,
)
from convexnn.shrinkage import shrinkage_gram
from convexnn.solvers.lipschitz import jacobian_spectral_norm

SIGMA = 0.1


def _pairs(n=6, size=16, seed=0):
    return piecewise_smooth_pairs(n, size, seed, SIGMA)


@pytest.fixture(scope="module")
def fitted():
    noisy, clean = _pairs()
    fne = ConvexShrinkageDenoiser(SIGMA, kernel_size=3, n_bins=6).fit(noisy, clean)
    free = ConvexShrinkageDenoiser(SIGMA, kernel_size=3, n_bins=6,
                                   firmly_nonexpansive=False).fit(noisy, clean)
    return noisy, clean, fne, free


def test_the_dct_frame_is_orthonormal_and_tight():
    for k in (3, 5, 7):
        f = dct_frame(k).reshape(k * k, -1)
        np.testing.assert_allclose((f @ f.T).numpy(), np.eye(k * k), atol=1e-13)
        # sum_j |C_j(omega)|^2 = k^2 at every frequency: slopes 1/k^2 give S = 1
        s = potential_smoothness_bound(dct_frame(k), torch.full((k * k,), 1.0 / k ** 2))
        assert 1.0 <= s <= 1.0 + 1e-3


def test_the_multiscale_frame_holds_the_dct_frame_smaller_dct_filters_and_differences():
    f = shrinkage_frame("multiscale", 7)
    assert f.shape == (49 + 24 + 8 + 4, 1, 7, 7)
    torch.testing.assert_close(f[:49], dct_frame(7), rtol=0, atol=0)
    # every added filter is a zero-mean, unit-norm filter supported on a centred 5 x 5 / 3 x 3
    # window (the differences on a 2 x 2 / 3 x 3 one)
    extra = f[49:, 0]
    np.testing.assert_allclose(extra.sum((1, 2)).numpy(), 0.0, atol=1e-13)
    np.testing.assert_allclose(extra.pow(2).sum((1, 2)).numpy(), 1.0, atol=1e-13)
    assert extra[:24, [0, 6]].abs().max() == 0 and extra[:24, :, [0, 6]].abs().max() == 0
    assert extra[24:, :2].abs().max() == 0 and extra[24:, :, :2].abs().max() == 0
    np.testing.assert_allclose(torch.linalg.matrix_rank(extra[24:28].reshape(4, -1)), 4)
    # a vertical edge is seen by the horizontal difference at the edge only (the last column
    # meets the zero padding)
    step = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    step[..., 5:] = 1.0
    resp = torch.nn.functional.conv2d(step, f[-4:-3], padding=3)[0, 0, :, :-1]
    assert torch.nonzero(resp.abs().sum(0)).flatten().tolist() == [4]
    np.testing.assert_allclose(resp[:, 4].abs().numpy(), 2 ** -0.5, atol=1e-13)
    assert shrinkage_frame("dct", 5).shape == (25, 1, 5, 5)
    with pytest.raises(ValueError, match="frame"):
        shrinkage_frame("wavelet", 7)
    with pytest.raises(ValueError, match="frame"):
        ShrinkageConfig(frame="wavelet")


def test_a_multiscale_fne_fit_is_certified_and_beats_the_dct_frame_on_edges():
    noisy, clean = _pairs(n=8, size=24, seed=7)
    fits = {frame: ConvexShrinkageDenoiser(SIGMA, kernel_size=5, n_bins=6, frame=frame)
            .fit(noisy, clean) for frame in ("dct", "multiscale")}
    ms = fits["multiscale"]
    assert ms.network_.filters.shape[0] == 25 + 8 + 4
    assert ms.firmly_nonexpansive and ms.lipschitz_certificate <= 1.0
    est = jacobian_spectral_norm(ms, noisy[:2], n_iter=200, mode="Q")
    assert est.value <= ms.lipschitz_certificate + 1e-6
    # the dct frame's filters are a subset: the training objective can only go down
    obj = {f: m.solve_info_.details["objective_per_pixel"] for f, m in fits.items()}
    assert obj["multiscale"] <= obj["dct"] * (1 + 1e-6)


def test_the_smoothness_certificate_bounds_a_dense_grid_and_is_tight():
    gen = torch.Generator().manual_seed(3)
    filters = torch.randn((5, 1, 5, 5), generator=gen, dtype=torch.float64)
    slopes = torch.rand(5, generator=gen, dtype=torch.float64)
    dense, _ = potential_smoothness_grid(filters, slopes, 8192)
    bound = potential_smoothness_bound(filters, slopes, 512)
    assert float(dense.max()) <= bound <= float(dense.max()) * 1.01
    # the grid values are the sum of the filters' squared responses
    om = frequency_grid(16)
    got, _ = potential_smoothness_grid(filters, slopes, 16)
    np.testing.assert_allclose(got.numpy(), (frame_response(filters, om) @ slopes).numpy(),
                               rtol=1e-10, atol=1e-12)


def test_the_network_is_its_feature_expansion():
    gen = torch.Generator().manual_seed(1)
    knots, width = ramp_knots(SIGMA, 5, 3.0)
    slopes = torch.rand((9, 5), generator=gen, dtype=torch.float64)
    net = ShrinkageNetwork(dct_frame(3), knots, width, slopes)
    y = torch.rand((2, 1, 11, 13), generator=gen, dtype=torch.float64)
    feats = shrinkage_features(y, dct_frame(3), knots, width)             # (B, J*M, H, W)
    expansion = torch.einsum("d,bdhw->bhw", slopes.reshape(-1), feats)[:, None]
    np.testing.assert_allclose(net.residual(y).numpy(), expansion.numpy(), atol=1e-12)
    np.testing.assert_allclose(net(y).numpy(), (y - expansion).numpy(), atol=1e-12)


def test_the_unconstrained_qp_is_nonnegative_least_squares(fitted):
    noisy, clean, _, free = fitted
    net = free.network_
    feats = shrinkage_features(noisy, net.filters, net.knots, net.width)
    a = feats.transpose(0, 1).reshape(feats.shape[1], -1).T.numpy()
    target = (noisy - clean).reshape(-1).numpy()
    _, resid = nnls(a, target, maxiter=50 * a.shape[1])
    info = free.solve_info_.details
    assert free.solve_info_.status == "optimal" and info["certified_gap"] <= 1e-6
    # the ridge (1e-9 relative) keeps the two within a hair
    assert info["objective"] == pytest.approx(0.5 * resid ** 2, rel=1e-5)
    assert info["lower_bound"] <= info["objective"]


def test_the_fne_qp_is_bracketed_by_a_finer_relaxation(fitted):
    noisy, clean, fne, _ = fitted
    info = fne.solve_info_.details
    assert fne.firmly_nonexpansive and fne.lipschitz_certificate == 1.0
    assert fne.network_.smoothness <= 1.0 and info["certified_gap"] <= 1e-3
    # the QP with the constraint on a 128 x 65 grid: a relaxation of the exact constraint, so
    # its optimum lies between the certified lower bound and the shipped (feasible) objective
    net = fne.network_
    data = shrinkage_gram(noisy, clean, net.filters, net.knots, net.width)
    j, m = net.slopes.shape
    g = (data.gram + 1e-9 * float(data.gram.diagonal().mean()) * torch.eye(j * m,
                                                                          dtype=torch.float64))
    c, lam = cp.Variable(j * m), cp.Variable(j)
    resp = frame_response(net.filters, frequency_grid(128)).numpy()
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(c, cp.psd_wrap(g.numpy()))
                                  - data.rhs.numpy() @ c),
                      [c >= 0, cp.reshape(c, (j, m), order="C") <= cp.reshape(
                          lam, (j, 1), order="C") @ np.ones((1, m)), resp @ lam <= 1])
    prob.solve(solver=cp.CLARABEL)
    finer = prob.value + 0.5 * data.target_sq
    assert info["lower_bound"] - 1e-7 * finer <= finer <= info["objective"] + 1e-7 * finer
    # the constraint binds: the unconstrained fit is better on the training data
    assert fitted[3].solve_info_.details["objective"] < info["objective"]


def test_power_iteration_never_exceeds_the_certificate(fitted):
    noisy, _, fne, free = fitted
    for model in (fne, free):
        est = jacobian_spectral_norm(model, noisy[:2], n_iter=200, mode="Q")
        assert est.value <= model.lipschitz_certificate + 1e-6
    assert free.lipschitz_certificate > 1.0 and not free.firmly_nonexpansive
    # the firm nonexpansiveness inequality on random pairs
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((8, 1, 16, 16), generator=gen, dtype=torch.float64)
    y = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        d = fne(x) - fne(y)
    lhs = (d ** 2).flatten(1).sum(1)
    rhs = (d * (x - y)).flatten(1).sum(1)
    assert torch.all(lhs <= rhs + 1e-12)


def test_the_potential_is_convex_and_its_gradient_is_the_residual(fitted):
    noisy, _, fne, free = fitted
    gen = torch.Generator().manual_seed(9)
    x = (noisy[:3] + 0.2 * torch.randn(noisy[:3].shape, generator=gen,
                                       dtype=torch.float64)).requires_grad_(True)
    for model in (fne.network_, free.network_):
        phi = model.potential(x)
        assert phi.shape == (3,) and torch.all(phi >= 0)    # phi_j >= 0, phi_j(0) = 0
        (grad,) = torch.autograd.grad(phi.sum(), x)
        with torch.no_grad():
            assert torch.allclose(grad, x - model(x), atol=1e-12, rtol=0)
    # convex along random chords; |x|^2 / 2 - Phi convex too when S <= 1 (J is a prox)
    a = torch.rand((6, 1, 16, 16), generator=gen, dtype=torch.float64)
    b = torch.rand((6, 1, 16, 16), generator=gen, dtype=torch.float64)
    net = fne.network_

    def envelope(u):
        return 0.5 * u.pow(2).flatten(1).sum(1) - net.potential(u)

    for t in (0.25, 0.5, 0.75):
        m = t * a + (1 - t) * b
        assert torch.all(net.potential(m) <= t * net.potential(a) + (1 - t) * net.potential(b)
                         + 1e-12)
        assert torch.all(envelope(m) <= t * envelope(a) + (1 - t) * envelope(b) + 1e-12)
    assert float(net.potential(torch.zeros(1, 1, 8, 8, dtype=torch.float64))) == 0.0


def test_save_and_load_recompute_the_certificate(fitted, tmp_path):
    noisy, _, fne, _ = fitted
    path = save_model(fne, tmp_path / "fne.safetensors")
    net = load_model(path)
    assert isinstance(net, ShrinkageNetwork) and net.firmly_nonexpansive
    assert net.smoothness == pytest.approx(fne.network_.smoothness, rel=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(net(noisy).numpy(), fne(noisy).numpy(), atol=1e-12)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        ShrinkageConfig(kernel_size=4)
    with pytest.raises(TypeError, match="unknown option"):
        ConvexShrinkageDenoiser(SIGMA, n_bin=3)
    with pytest.raises(RuntimeError, match="fit"):
        ConvexShrinkageDenoiser(SIGMA)(torch.rand(1, 1, 8, 8))
    noisy, clean = _pairs(n=2, size=8)
    with pytest.raises(ValueError, match="one (output )?channel"):
        ConvexShrinkageDenoiser(SIGMA).fit(noisy.repeat(1, 3, 1, 1), clean.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="cannot be estimated"):
        ConvexShrinkageDenoiser().fit(clean, clean)
    knots, width = ramp_knots(SIGMA, 4, 3.0)
    with pytest.raises(ValueError, match="nondecreasing"):
        ShrinkageNetwork(dct_frame(3), knots, width, -torch.ones(9, 4))
    with pytest.raises(ValueError, match=r"\(J, M\)"):
        ShrinkageNetwork(dct_frame(3), knots, width, torch.ones(9, 5))

