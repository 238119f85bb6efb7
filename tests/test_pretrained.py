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
        assert card.training_pixels > 0 and "denoise_natural.py" in card.training_command
        assert card.firmly_nonexpansive == (card.lipschitz_certificate is not None
                                            and card.lipschitz_certificate <= 1)
        assert card.certified_gap is not None and card.certified_gap <= 1e-6


@pytest.mark.parametrize("name", pretrained.names())
def test_load_gives_a_denoiser_that_keeps_the_policy(name):
    den = pretrained.load(name)
    assert isinstance(den, Denoiser) and den.card == pretrained.card(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 12, 12), generator=gen)
    with torch.no_grad():
        out = den(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert not den.firmly_nonexpansive


def test_a_shipped_stack_loads_as_its_chain_of_rebuilt_blocks():
    deep = [n for n in pretrained.names() if pretrained.card(n).n_blocks > 1]
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
        assert got[-1] > noisy_psnr + 3.0          # it denoises
    np.testing.assert_allclose(got, check["per_image_psnr"], atol=1e-6)
