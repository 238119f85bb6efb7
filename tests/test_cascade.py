"""The greedy shrinkage cascade (`convexnn.cascade`): every stage the exact least-squares
optimum (against numpy's solver), the network reproduces what the stage was fitted to, depth
lowers the training loss, save / load, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import piecewise_smooth_pairs

from convexnn import CascadeConfig, ConvexShrinkageCascade, load_model, save_model
from convexnn.model.adaptive import (
    AdaptiveFilterStage,
    patch_features,
    structure_classes,
    structure_tensor,
)
from convexnn.model.cascade import CascadeStage, ShrinkageCascade
from convexnn.model.shrinkage import (
    dct_frame,
    ramp_knots,
    shrinkage_features,
    shrinkage_frame,
)

SIGMA = 0.1


def _pairs(n=8, size=16, seed=0):
    return piecewise_smooth_pairs(n, size, seed, SIGMA)


@pytest.fixture(scope="module")
def fitted():
    noisy, clean = _pairs()
    cfg = CascadeConfig(n_stages=3, kernel_size=3, n_bins=6, first_kernel_size=3)
    model = ConvexShrinkageCascade(SIGMA, cfg).fit(noisy, clean)
    return noisy, clean, model


def test_each_stage_is_the_least_squares_optimum(fitted):
    noisy, clean, model = fitted
    _check_stages(noisy, clean, model)


def test_a_multiscale_cascade_uses_its_frame_in_every_stage():
    noisy, clean = _pairs(seed=3)
    cfg = CascadeConfig(n_stages=3, kernel_size=3, n_bins=6, first_kernel_size=3,
                        frame="multiscale")
    model = ConvexShrinkageCascade(SIGMA, cfg).fit(noisy, clean)
    frame = shrinkage_frame("multiscale", 3)
    assert frame.shape[0] == 9 + 4
    for stage in [model.network_.first, *model.network_.stages]:
        torch.testing.assert_close(stage.filters, frame, rtol=0, atol=0)
    assert model.history_[0]["n_parameters"] == 13 * 6 + 1
    _check_stages(noisy, clean, model)
    with pytest.raises(ValueError, match="frame"):
        CascadeConfig(frame="haar")


def _check_stages(noisy, clean, model):
    net = model.network_
    assert net.depth == 3 and len(model.history_) == 2
    assert model.first_info_ is not None and net.first.firmly_nonexpansive
    outs = net.depths(noisy)
    for t, (stage, rec) in enumerate(zip(net.stages, model.history_, strict=True)):
        z = outs[t]
        # the same problem solved independently: numpy's least squares on the explicit matrix
        feats = torch.cat([shrinkage_features(z, stage.filters, stage.knots, stage.width),
                           noisy - z], 1)
        a = feats.transpose(0, 1).reshape(feats.shape[1], -1).T.numpy()
        theta, *_ = np.linalg.lstsq(a, (clean - z).reshape(-1).numpy(), rcond=None)
        best = 0.5 * float(np.sum((a @ theta - (clean - z).reshape(-1).numpy()) ** 2))
        n_pix = clean.numel()
        assert rec["objective_after"] == pytest.approx(best / n_pix, rel=1e-6)
        assert rec["normal_residual"] < 1e-8
        # the module computes what the stage was fitted to: its loss is the LS optimum
        got = 0.5 * float(((outs[t + 1] - clean) ** 2).sum()) / n_pix
        assert got == pytest.approx(rec["objective_after"], rel=1e-8)
        assert rec["objective_after"] < rec["objective_before"]
        assert rec["objective_before"] == pytest.approx(
            0.5 * float(((z - clean) ** 2).sum()) / n_pix, rel=1e-12)
    losses = [float(((o - clean) ** 2).mean()) for o in outs]
    assert losses[0] > losses[1] > losses[2]           # depth helps on the training pairs


def test_given_first_stage_and_stage_data(fitted):
    noisy, clean, model = fitted
    fresh = [_pairs(seed=s) for s in (5, 6)]
    again = ConvexShrinkageCascade(SIGMA, n_stages=3, kernel_size=3, n_bins=6)
    again.fit(noisy, clean, first=model.network_.first, stage_data=fresh)
    assert again.first_info_ is None and again.network_.first is model.network_.first
    assert [h["training_pixels"] for h in again.history_] == [fresh[0][0].numel()] * 2
    # a different training set per stage gives different stages
    assert not torch.allclose(again.network_.stages[0].slopes, model.network_.stages[0].slopes)


def test_save_and_load_roundtrip(fitted, tmp_path):
    noisy, _, model = fitted
    path = save_model(model, tmp_path / "cascade.safetensors")
    back = load_model(path)
    assert isinstance(back, ShrinkageCascade) and back.depth == 3
    torch.testing.assert_close(back(noisy), model(noisy), rtol=0, atol=1e-14)
    assert [s.skip for s in back.stages] == [s.skip for s in model.network_.stages]
    x32 = noisy.float()                                  # the Denoiser dtype policy
    assert back(x32).dtype == torch.float32


def test_clear_errors(fitted):
    noisy, clean, model = fitted
    with pytest.raises(TypeError, match="unknown option"):
        ConvexShrinkageCascade(SIGMA, n_stage=3)
    with pytest.raises(ValueError, match="odd"):
        CascadeConfig(kernel_size=4)
    with pytest.raises(ValueError, match="stage_data: expected 2"):
        ConvexShrinkageCascade(SIGMA, n_stages=3, kernel_size=3).fit(
            noisy, clean, first=model.network_.first, stage_data=[_pairs()])
    with pytest.raises(TypeError, match="first: expected a ShrinkageNetwork"):
        ConvexShrinkageCascade(SIGMA, n_stages=2).fit(noisy, clean, first=torch.nn.Identity())
    with pytest.raises(RuntimeError, match="call fit"):
        ConvexShrinkageCascade(SIGMA)(noisy)
    with pytest.raises(ValueError, match="one output channel"):
        ConvexShrinkageCascade(SIGMA).fit(noisy.repeat(1, 3, 1, 1), clean.repeat(1, 3, 1, 1))
    knots, width = ramp_knots(SIGMA, 4, 3.0)
    with pytest.raises(ValueError, match="slopes"):
        CascadeStage(dct_frame(3), knots, width, torch.zeros(9, 5), 0.0)
    with pytest.raises(TypeError, match="ShrinkageNetwork"):
        ShrinkageCascade(torch.nn.Identity(), [])


# --- content-adaptive filter stages (convexnn.model.adaptive, (LS-b)) -----------------------

ADAPTIVE = dict(adaptive_stages=1, adaptive_patch=3, adaptive_angles=4, adaptive_strengths=2,
                adaptive_coherences=2)


@pytest.fixture(scope="module")
def adaptive(fitted):
    noisy, clean, model = fitted
    more = ConvexShrinkageCascade(SIGMA, n_stages=3, kernel_size=3, n_bins=6, **ADAPTIVE)
    more.fit(noisy, clean, first=model.network_)
    return more


def test_an_adaptive_stage_is_the_exact_optimum_of_its_class_problems(fitted, adaptive):
    noisy, clean, model = fitted
    net = adaptive.network_
    # built on the given cascade: its three stages are kept as they are, one stage is added
    assert net.depth == 4 and list(net.stages)[:2] == list(model.network_.stages)
    stage, rec = net.stages[-1], adaptive.history_[-1]
    assert isinstance(stage, AdaptiveFilterStage) and rec["kind"] == "adaptive"
    z = net.depths(noisy)[-2]
    feats = patch_features(z, noisy, 3).numpy()
    cls = stage.classes(z).reshape(-1).numpy()
    r = (clean - z).reshape(-1).numpy()
    cfg = adaptive.config
    # (LS-b) solved independently: one ridge least-squares problem per class in numpy (rows
    # sqrt(eps_b) I stacked under the class's pixels)
    scale = np.mean(np.diag(feats.T @ feats))
    total = 0.0
    for b in range(stage.n_classes):
        fb, rb = feats[cls == b], r[cls == b]
        eps = cfg.adaptive_ridge * (np.mean(np.sum(fb ** 2, 0)) if len(fb) else 0.0) \
            + 1e-12 * scale
        a = np.vstack([fb, np.sqrt(eps) * np.eye(feats.shape[1])])
        t = np.concatenate([rb, np.zeros(feats.shape[1])])
        w, *_ = np.linalg.lstsq(a, t, rcond=None)
        np.testing.assert_allclose(stage.weights[b].numpy(), w, rtol=1e-6, atol=1e-9)
        total += 0.5 * float(np.sum((fb @ w - rb) ** 2))
    assert rec["normal_residual"] < 1e-8
    assert rec["objective_after"] == pytest.approx(total / r.size, rel=1e-8)
    # the module computes what the stage was fitted to, and it lowers the training loss
    got = 0.5 * float(((net(noisy) - clean) ** 2).sum()) / r.size
    assert got == pytest.approx(rec["objective_after"], rel=1e-8)
    assert rec["objective_after"] < rec["objective_before"]


def test_structure_classes_follow_the_edge_orientation():
    x = torch.zeros((1, 1, 24, 24), dtype=torch.float64)
    x[..., 12:] = 1.0                                       # a vertical edge: gradient along x
    angle, strength, coherence = structure_tensor(x)
    assert float(angle[0, 12, 12].abs()) < 1e-6 and float(coherence[0, 12, 12]) > 0.99
    assert float(strength[0, 12, 2]) == 0.0                 # flat far from the edge
    angle_t, _, _ = structure_tensor(x.transpose(-1, -2))   # the horizontal edge
    assert float(angle_t[0, 12, 12].abs()) == pytest.approx(np.pi / 2, abs=1e-6)
    cls = structure_classes(x, 4, torch.tensor([0.01]), torch.tensor([0.5]))
    # class = (angle bin * 2 + strength bin) * 2 + coherence bin
    assert int(cls[0, 12, 12]) == (2 * 2 + 1) * 2 + 1 and int(cls[0, 12, 2]) == (2 * 2) * 2


def test_an_adaptive_stage_with_one_filter_everywhere_is_that_filter():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(19, generator=gen, dtype=torch.float64)
    stage = AdaptiveFilterStage(w.expand(4 * 2 * 2, 19), 4, torch.tensor([0.1]),
                                torch.tensor([0.5]))
    z = torch.rand((2, 1, 10, 10), generator=gen, dtype=torch.float64)
    y = torch.rand((2, 1, 10, 10), generator=gen, dtype=torch.float64)
    pad = torch.nn.functional.pad
    expect = z + torch.nn.functional.conv2d(pad(z, (1,) * 4, mode="reflect"),
                                            w[:9].view(1, 1, 3, 3)) \
        + torch.nn.functional.conv2d(pad(y - z, (1,) * 4, mode="reflect"),
                                     w[9:18].view(1, 1, 3, 3)) + w[18]
    torch.testing.assert_close(stage(z, y), expect, rtol=0, atol=1e-12)


def test_adaptive_save_load_and_errors(fitted, adaptive, tmp_path):
    noisy, clean, model = fitted
    back = load_model(save_model(adaptive, tmp_path / "adaptive.safetensors"))
    assert isinstance(back.stages[-1], AdaptiveFilterStage) and back.depth == 4
    torch.testing.assert_close(back(noisy), adaptive(noisy), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="weights: expected"):
        AdaptiveFilterStage(torch.zeros(7, 19), 4, torch.tensor([0.1]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="2 k\\^2 \\+ 1 columns"):
        AdaptiveFilterStage(torch.zeros(16, 20), 4, torch.tensor([0.1]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="odd"):
        CascadeConfig(adaptive_patch=4)
    with pytest.raises(ValueError, match="stage_data: expected 1"):
        ConvexShrinkageCascade(SIGMA, n_stages=3, **ADAPTIVE).fit(
            noisy, clean, first=model.network_, stage_data=[_pairs(), _pairs()])
    with pytest.raises(ValueError, match="at most n_stages = 2"):
        ConvexShrinkageCascade(SIGMA, n_stages=2, **ADAPTIVE).fit(
            noisy, clean, first=model.network_)
    with pytest.raises(TypeError, match="AdaptiveFilterStage"):
        ShrinkageCascade(model.network_.first, [torch.nn.Identity()])
