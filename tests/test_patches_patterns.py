"""Patch ordering against conv2d/unfold, sign patterns, de-duplication, arrangement bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convexnn.model.patches import conv_same, patch_matrix
from convexnn.model.patterns import (
    arrangement_bound,
    check_generators,
    log_arrangement_bound,
    sample_generators,
    select_unique_patterns,
    sign_masks,
)


def _loop_patches(x: np.ndarray, k: int) -> np.ndarray:
    """Reference patch matrix by explicit loops over a zero-padded image (independent of unfold)."""
    n, c, h, w = x.shape
    r = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    rows = []
    for i in range(n):
        for a in range(h):
            for b in range(w):
                rows.append(xp[i, :, a:a + k, b:b + k].reshape(-1))
    return np.array(rows)


@pytest.mark.parametrize("k,c", [(1, 1), (3, 1), (3, 2), (5, 3)])
def test_patch_matrix_matches_conv2d_and_loops(k, c):
    torch.manual_seed(0)
    x = torch.randn(2, c, 7, 6, dtype=torch.float64)
    filters = torch.randn(4, c, k, k, dtype=torch.float64)
    yp = patch_matrix(x, k)
    assert yp.shape == (2 * 7 * 6, c * k * k)
    np.testing.assert_allclose(yp.numpy(), _loop_patches(x.numpy(), k), atol=0)
    via_patches = (yp @ filters.reshape(4, -1).T)                     # (N, P)
    via_conv = F.conv2d(x, filters, padding=k // 2).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(via_patches, via_conv, rtol=1e-12, atol=1e-12)
    cols = F.unfold(x, k, padding=k // 2).transpose(1, 2).reshape(-1, c * k * k)
    torch.testing.assert_close(yp, cols, rtol=0, atol=0)
    torch.testing.assert_close(conv_same(x, filters), F.conv2d(x, filters, padding=k // 2))


def test_sign_masks_are_pixelwise_conv_signs(mnist_digits):
    x = torch.from_numpy(mnist_digits[:2]).unsqueeze(1)
    g = sample_generators(5, 1, 3, seed=3)
    m = sign_masks(x, g)
    ref = (patch_matrix(x, 3) @ g.reshape(5, -1).T >= 0).reshape(2, 28, 28, 5).permute(0, 3, 1, 2)
    assert m.dtype == torch.bool and m.shape == (2, 5, 28, 28)
    assert torch.equal(m, ref)


def test_generators_seeded_and_gaussian():
    a = sample_generators(4000, 1, 3, seed=7)
    assert torch.equal(a, sample_generators(4000, 1, 3, seed=7))
    assert not torch.equal(a, sample_generators(4000, 1, 3, seed=8))
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1.0) < 0.02


def test_dedupe_drops_duplicates_and_all_zero_keeps_complements(mnist_digits):
    x = torch.from_numpy(mnist_digits[:3]).unsqueeze(1) + 1.0       # strictly positive images
    g = sample_generators(6, 1, 3, seed=0)
    all_neg = -torch.ones(1, 1, 3, 3, dtype=torch.float64)           # conv < 0 everywhere
    gens = torch.cat([g, 2.5 * g[:2], -g[:1], all_neg, g[3:4]])      # 2 scaled copies, 1 repeat
    sel = select_unique_patterns(x, gens, block_patterns=4, block_images=2)
    # reference: brute force over explicit masks, first occurrence wins
    flat = sign_masks(x, gens).transpose(0, 1).reshape(len(gens), -1)
    seen, keep, zero = set(), [], 0
    for i, row in enumerate(flat):
        key = tuple(row.tolist())
        if not any(key):
            zero += 1
        elif key not in seen:
            seen.add(key)
            keep.append(i)
    assert sel.n_sampled == 11
    assert sel.keep.tolist() == keep
    assert sel.n_all_zero == zero >= 1 and 9 not in keep          # all_neg is dropped
    assert sel.n_duplicates == 11 - zero - len(keep) >= 2
    assert 6 not in keep and 7 not in keep and 10 not in keep     # scaled copies and repeat
    assert 8 in keep or not flat[0].any()                         # complement -g0 is kept


def test_arrangement_bound():
    assert arrangement_bound(1, 3) == 2.0
    assert arrangement_bound(11, 1) == pytest.approx(2 * math.e * 10)
    assert arrangement_bound(101, 2) == pytest.approx(4 * (math.e * 100 / 2) ** 2)
    assert log_arrangement_bound(10**6, 9) == pytest.approx(
        math.log(18) + 9 * (1 + math.log(10**6 - 1) - math.log(9)))
    assert arrangement_bound(10**9, 400) == math.inf
    with pytest.raises(ValueError):
        arrangement_bound(0, 3)


def test_check_generators_errors():
    with pytest.raises(ValueError, match=r"expected shape \(P, 1, 3, 3\)"):
        check_generators(torch.zeros(4, 1, 5, 5), 1, 3)
    with pytest.raises(ValueError, match="at least one"):
        check_generators(torch.zeros(0, 1, 3, 3), 1, 3)
    with pytest.raises(ValueError, match="finite"):
        check_generators(torch.full((2, 1, 3, 3), float("nan")), 1, 3)
    assert check_generators(torch.zeros(2, 3, 3), 1, 3).shape == (2, 1, 3, 3)
    with pytest.raises(ValueError, match="n_patterns"):
        sample_generators(0, 1, 3)
