"""The primal network of eq. 1-2: forward pass, objective, residual, init, errors."""

from __future__ import annotations

import math

import pytest
import torch

from convexnn import Loss, TwoLayerConvDenoiser
from convexnn.model.patches import patch_matrix


def test_forward_is_sum_of_relu_filters(small_pair):
    noisy, _ = small_pair
    torch.manual_seed(0)
    u = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    alpha = torch.randn(5, dtype=torch.float64)
    net = TwoLayerConvDenoiser.from_weights(u, alpha)
    yp = patch_matrix(noisy, 3)                                   # eq. 3
    ref = (torch.relu(yp @ u.reshape(5, -1).T) @ alpha).reshape(noisy.shape)
    torch.testing.assert_close(net(noisy), ref, rtol=1e-12, atol=1e-12)
    res = TwoLayerConvDenoiser.from_weights(u, alpha, residual=True)
    torch.testing.assert_close(res(noisy), ref + noisy, rtol=1e-12, atol=1e-12)


def test_objective_is_eq2(small_pair):
    noisy, clean = small_pair
    torch.manual_seed(1)
    net = TwoLayerConvDenoiser(1, 7, 3, dtype=torch.float64)
    beta = 0.3
    pred = net(noisy).detach()
    wd = float(net.weight_decay().detach())
    expected = 0.5 * float(((pred - clean) ** 2).sum()) + beta / 2 * wd
    assert net.objective(noisy, clean, beta) == pytest.approx(expected, rel=1e-12)
    mean = 0.5 * float(((pred - clean) ** 2).sum()) / clean.numel() + beta / 2 * wd
    assert net.objective(noisy, clean, beta, "mean") == pytest.approx(mean, rel=1e-12)
    l1 = float((pred - clean).abs().sum()) + beta / 2 * wd
    assert net.objective(noisy, clean, beta, loss="l1") == pytest.approx(l1, rel=1e-12)
    hub = Loss("huber", 0.2)(pred, clean)
    r = (pred - clean).abs()
    ref = torch.where(r <= 0.2, 0.5 * r**2, 0.2 * (r - 0.1)).sum()
    assert float(hub) == pytest.approx(float(ref), rel=1e-12)


def test_kaiming_uniform_bounds():
    torch.manual_seed(0)
    net = TwoLayerConvDenoiser(2, 512, 3)
    # kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in)
    b1 = 1 / math.sqrt(2 * 9)
    w1 = net.conv1.weight.detach()
    assert float(w1.abs().max()) <= b1 and float(w1.abs().max()) > 0.95 * b1
    assert float(net.conv2.weight.detach().abs().max()) <= 1 / math.sqrt(512)
    assert net.conv1.padding == (1, 1) and net.conv1.bias is None and net.conv2.bias is None


def test_primal_errors(small_pair):
    noisy, clean = small_pair
    with pytest.raises(ValueError, match="kernel_size"):
        TwoLayerConvDenoiser(1, 4, 2)
    with pytest.raises(ValueError, match="in_channels == 1"):
        TwoLayerConvDenoiser(2, 4, 3, residual=True)
    net = TwoLayerConvDenoiser(1, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="beta"):
        net.objective(noisy, clean, beta=0.0)
    with pytest.raises(ValueError, match="same count and size"):
        net.objective(noisy, clean[..., :-1], beta=1.0)
    with pytest.raises(ValueError, match="loss"):
        net.objective(noisy, clean, 1.0, loss="hinge")
    with pytest.raises(ValueError, match="reduction"):
        net.objective(noisy, clean, 1.0, reduction="avg")


def test_objective_is_chunked_and_matches_one_pass():
    """eq. 2 evaluated in image chunks (paper scale would need 30 GB in one pass)."""
    torch.manual_seed(0)
    net = TwoLayerConvDenoiser(n_filters=6, kernel_size=3).double()
    x, y = torch.randn(7, 1, 5, 6, dtype=torch.float64), torch.randn(7, 1, 5, 6,
                                                                      dtype=torch.float64)
    with torch.no_grad():
        direct = 0.5 * float((net(x) - y).pow(2).sum()) + 0.5 * 0.3 * float(net.weight_decay())
    # pretend the hidden layer is huge so that every chunk holds one image (only the
    # chunk-size arithmetic reads out_channels; the convolution uses the weight tensor)
    net.conv1.out_channels = 2 ** 26
    try:
        chunked = net.objective(x, y, 0.3)
    finally:
        net.conv1.out_channels = 6
    assert abs(chunked - direct) <= 1e-12 * abs(direct)
    assert abs(net.objective(x, y, 0.3) - direct) <= 1e-12 * abs(direct)
    mean = net.objective(x, y, 0.3, reduction="mean")
    assert abs(mean - (direct - 0.15 * float(net.weight_decay())) / y.numel()
               - 0.15 * float(net.weight_decay())) <= 1e-12 * abs(direct)


@pytest.mark.parametrize("residual", [False, True])
def test_dual_point_is_a_feasible_dual_point_with_the_same_predictions(small_pair, residual):
    """dual_point(): same predictions as the network, every cone constraint of eq. 4 holds, the
    eq. 4 objective is at most eq. 2 and equal once the layers are balanced."""
    from convexnn import ConvexDualDenoiser
    from convexnn.solve.adam.solver import AdamConfig

    noisy, clean = small_pair
    torch.manual_seed(1)
    u = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    alpha = torch.randn(6, dtype=torch.float64)
    alpha[0] = 0.0                                     # a dead neuron: v = w = 0
    net = TwoLayerConvDenoiser.from_weights(u, 0.3 * alpha, residual=residual)
    g, v, w = net.dual_point()
    assert torch.equal(g, u) and float(v[0].abs().sum() + w[0].abs().sum()) == 0.0
    assert bool(((v > 0) & (w > 0)).sum() == 0)        # a neuron is either v or w
    # a fitted model at exactly this point: one Adam step of size 1e-300 moves nothing
    dual = ConvexDualDenoiser(kernel_size=3, beta=0.2, residual=residual, generators=g,
                              dedupe=False)
    dual.fit(noisy, clean, solver="adam", config=AdamConfig(
        epochs=1, lr=1e-300, warm_start=(v, w), progress=False, dtype="float64"))
    assert torch.allclose(dual.predict(noisy), net(noisy), atol=1e-12)
    assert dual.constraint_violation(noisy).max <= 1e-250   # the 1e-300 step only
    d, p = dual.objective(noisy, clean), net.objective(noisy, clean, 0.2)
    assert d < p                                       # unbalanced layers: strictly below
    # balance each neuron (u_j, alpha_j) -> (u_j c, alpha_j / c), c^2 = |alpha_j| / ||u_j||
    c = (0.3 * alpha.abs() / u.flatten(1).norm(dim=1)).clamp_min(1e-300).sqrt()
    bal = TwoLayerConvDenoiser.from_weights(u * c[:, None, None, None], 0.3 * alpha / c,
                                            residual=residual)
    assert torch.allclose(bal(noisy), net(noisy), atol=1e-12)
    assert bal.objective(noisy, clean, 0.2) == pytest.approx(d, rel=1e-12)
