"""The pretrained convex denoisers shipped in the package: names, cards, clear errors, and each
card's PSNRs re-measured on the reference test images (seeded noise, the card's protocol)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from convexnn import Denoiser, pretrained
from convexnn.model.adaptive import AdaptiveFilterStage
from convexnn.model.cascade import CascadeStage
from convexnn.model.shrinkage import shrinkage_frame

SHARED = Path(os.environ.get("CONVEXNN_SHARED_DATASETS", "")) if os.environ.get(
    "CONVEXNN_SHARED_DATASETS") else Path(__file__).resolve().parents[2] / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not (SHARED / "set12").is_dir(),
                                  reason="Set12 is not shipped (license): reference data absent")


def test_the_shipped_models_are_listed_with_their_noise_levels():
    names = pretrained.names()
    assert {"gray-s15", "gray-s25", "gray-s50"} <= set(names)
    for name in names:
        card = pretrained.card(name)
        assert card.name == name
        assert card.sigma == pytest.approx(float(name.split("-s")[1].split("-")[0]) / 255)
        assert card.firmly_nonexpansive == (card.lipschitz_certificate is not None
                                            and card.lipschitz_certificate <= 1)
        if card.architecture == "two-layer":         # eq. 4 solved to a certified optimum
            assert "denoise_natural.py" in card.training_command
            assert card.certified_gap is not None and card.certified_gap <= 1e-6
        elif card.architecture == "shrinkage-cascade":   # certified stage 1, exact LS stages
            assert "denoise_cascade.py" in card.training_command and card.n_blocks >= 2
            assert not card.firmly_nonexpansive and card.lipschitz_certificate is None
            assert card.certified_gap is not None and card.certified_gap <= 1e-3
        else:                                        # the QP, scaled to a certified S <= 1
            assert card.architecture == "gradient-shrinkage" and card.firmly_nonexpansive
            assert "denoise_fne.py" in card.training_command
            assert card.certified_gap is not None and card.certified_gap <= 1e-3
        assert card.training_pixels >= (10 ** 6 if card.architecture != "two-layer" else 1)
    fne = {n for n in names if pretrained.card(n).firmly_nonexpansive}
    assert {"gray-s15-fne", "gray-s25-fne", "gray-s50-fne"} <= fne


def test_a_shrinkage_model_holds_the_frame_its_card_names():
    seen = set()
    for name in pretrained.names():
        card = pretrained.card(name)
        if card.architecture == "two-layer":
            continue
        net = pretrained.load(name).net
        expect = shrinkage_frame(card.frame, card.kernel_size)
        stages = [net] if card.architecture == "gradient-shrinkage" else [
            s for s in net.stages if isinstance(s, CascadeStage)]   # adaptive stages: no frame
        assert stages
        for stage in stages:          # a cascade's stage 1 is its -fne model, checked above
            torch.testing.assert_close(stage.filters, expect, rtol=0, atol=0)
        assert card.n_filters == expect.shape[0]
        assert (f"--frame {card.frame}" in card.training_command) or card.frame == "dct"
        seen.add(card.frame)
    assert seen == {"dct", "multiscale"}


@pytest.mark.parametrize("name", pretrained.names())
def test_load_gives_a_denoiser_that_keeps_the_policy(name):
    den = pretrained.load(name)
    assert isinstance(den, Denoiser) and den.card == pretrained.card(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 12, 12), generator=gen)
    with torch.no_grad():
        out = den(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert den.firmly_nonexpansive == den.card.firmly_nonexpansive


@pytest.mark.parametrize("name", [n for n in pretrained.names()
                                  if pretrained.card(n).firmly_nonexpansive])
def test_the_fne_certificate_holds_against_power_iteration(name):
    from convexnn.solvers.lipschitz import jacobian_spectral_norm

    den = pretrained.load(name)       # load() recomputes the certificate from the weights
    assert den.net.lipschitz_certificate == den.card.lipschitz_certificate == 1.0
    assert den.net.smoothness <= 1.0
    gen = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.interpolate(torch.rand((2, 1, 8, 8), generator=gen,
                                                        dtype=torch.float64), size=(32, 32))
    x = smooth + den.card.sigma * torch.randn(smooth.shape, generator=gen, dtype=torch.float64)
    est = jacobian_spectral_norm(den, x, n_iter=100, mode="Q")   # ||grad (2J - I)(x)||
    assert 0.5 < est.value <= 1.0 + 1e-6
    # flat regions put every band coefficient on the knot at 0: autograd must take one bin's
    # slope there (a Clarke Jacobian), not the sum of the two bins that meet (2.13 if it did)
    flat = torch.full((1, 1, 32, 32), 0.5, dtype=torch.float64)
    flat[..., 16:] = 0.8
    assert jacobian_spectral_norm(den, flat, n_iter=100, mode="Q").value <= 1.0 + 1e-6


def test_a_shipped_stack_loads_as_its_chain_of_rebuilt_blocks():
    deep = [n for n in pretrained.names() if pretrained.card(n).n_blocks > 1
            and pretrained.card(n).architecture == "two-layer"]
    assert deep, "a greedy-stack model (gray-s25-deep4) is shipped"
    for name in deep:
        den = pretrained.load(name)
        assert len(den.net.blocks) == den.card.n_blocks
        assert den.card.n_filters == sum(b.n_filters for b in den.net.blocks)
        x = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
        with torch.no_grad():   # the chain is what the module computes
            z = x
            for block in den.net.blocks:
                z = block(z)
            np.testing.assert_allclose(den(x).numpy(), z.numpy(), atol=1e-12)


def test_a_shipped_cascade_starts_from_the_certified_model_and_chains_its_stages():
    cascades = [n for n in pretrained.names()
                if pretrained.card(n).architecture == "shrinkage-cascade"]
    assert cascades, "a shrinkage cascade (gray-s25-cascade4) is shipped"
    x = torch.rand((1, 1, 24, 24), generator=torch.Generator().manual_seed(3),
                   dtype=torch.float64)
    for name in cascades:
        den = pretrained.load(name)
        sigma = name.split("-")[1]
        fne = pretrained.load(f"gray-{sigma}-fne")
        assert den.net.depth == den.card.n_blocks == len(den.net.stages) + 1
        assert den.net.first.firmly_nonexpansive     # stage 1 keeps its certificate
        with torch.no_grad():
            outs = den.net.depths(x)
            np.testing.assert_allclose(outs[0].numpy(), fne(x).numpy(), atol=1e-12)
            z = outs[0]
            for stage in den.net.stages:             # each stage sees z and the noisy x
                z = stage(z, x)
            np.testing.assert_allclose(den(x).numpy(), z.numpy(), atol=1e-12)
            assert all(abs(s.skip) < 1.0 for s in den.net.stages if isinstance(s, CascadeStage))
        adaptive = [s for s in den.net.stages if isinstance(s, AdaptiveFilterStage)]
        if name.endswith("-adaptive"):   # the shipped shrinkage cascade, then its filter stage
            base = pretrained.load(name.removesuffix("-adaptive")).net
            assert len(adaptive) == 1 and den.net.stages[-1] is adaptive[0]
            for kept, shipped in zip(den.net.stages[:-1], base.stages, strict=True):
                torch.testing.assert_close(kept.slopes, shipped.slopes, rtol=0, atol=0)
        else:
            assert not adaptive


def test_unknown_names_and_colour_inputs_get_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model 'gray-s99'.*gray-s25"):
        pretrained.load("gray-s99")
    den = pretrained.load("gray-s25")
    with pytest.raises(ValueError, match="gray model.*3 channels"):
        den(torch.rand(1, 3, 8, 8))


@needs_shared
@pytest.mark.parametrize("name", pretrained.names())
def test_the_card_psnr_is_what_the_model_measures(name, monkeypatch):
    monkeypatch.setenv("CONVEXNN_SHARED_DATASETS", str(SHARED))
    from convexnn.data import load_test_images

    den = pretrained.load(name)
    check = den.card.check
    images = load_test_images(check["set"])[:len(check["per_image_psnr"])]
    got = []
    for j, x in enumerate(images):            # the experiment's noise: seed 1000 + index
        g = torch.Generator().manual_seed(1000 + j)
        y = x + den.card.sigma * torch.randn(x.shape, generator=g, dtype=torch.float64).numpy()
        with torch.no_grad():
            est = den(torch.from_numpy(y)[None, None])[0, 0].numpy()
        got.append(peak_signal_noise_ratio(x, np.clip(est, 0, 1), data_range=1.0))
        noisy_psnr = peak_signal_noise_ratio(x, np.clip(y, 0, 1), data_range=1.0)
        # it denoises (at sigma 5 / 255 even BM3D gains only about 4 dB)
        assert got[-1] > noisy_psnr + (3.0 if den.card.sigma >= 10 / 255 else 1.5)
    np.testing.assert_allclose(got, check["per_image_psnr"], atol=1e-6)
