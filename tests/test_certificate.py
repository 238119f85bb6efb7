"""Certificate (lower bound, certified gap) and pattern pricing on an enumerable problem.

k = 1 with two channels: patches are 2-vectors, every sign pattern is one arc of a line
arrangement in R^2, so all patterns can be listed (`enumerate_generators_2d`).
"""

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexnn import ConvexDualDenoiser
from convexnn.analysis.certificate import certify, cone_sup, enumerate_generators_2d, price_patterns

BETA = 0.1


@pytest.fixture(scope="module")
def enumerable():
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((1, 1, 4, 4))
    noisy = np.concatenate([clean + 0.5 * rng.standard_normal(clean.shape),
                            rng.standard_normal(clean.shape)], 1)
    g = enumerate_generators_2d(torch.from_numpy(noisy))
    ref = ConvexDualDenoiser(kernel_size=1, beta=BETA, generators=g).fit(noisy, clean)
    return noisy, clean, g, ref


def test_enumeration_is_complete(enumerable):
    noisy, _, g, ref = enumerable
    assert ref.generators_.shape[0] == g.shape[0] == 2 * 16   # 2 N' cells, N' = 16 directions
    # fresh random generators add no new pattern
    from convexnn.model.patterns import sample_generators, select_unique_patterns
    both = torch.cat([g, sample_generators(2000, 2, 1, seed=3)])
    sel = select_unique_patterns(torch.from_numpy(noisy), both)
    assert sel.keep.numel() == g.shape[0]


def test_cone_sup_equals_socp():
    rng = np.random.default_rng(1)
    b = rng.standard_normal((30, 3))
    b = b * np.sign(b @ np.array([1.0, 0.2, -0.1]))[:, None]      # a cone with interior
    c = rng.standard_normal(3)
    v = cp.Variable(3)
    val = cp.Problem(cp.Maximize(c @ v), [cp.norm(v) <= 1, b @ v >= 0]).solve()
    assert abs(cone_sup(c, b) - val) <= 1e-6


def test_certificate_at_cvxpy_optimum_closes(enumerable):
    noisy, clean, _, ref = enumerable
    exact = certify(ref, noisy, clean, check="exact")
    gated = certify(ref, noisy, clean, check="gated")
    assert exact.lower_bound <= ref.objective_ + 1e-9
    assert exact.certified_gap <= 1e-6
    assert gated.lower_bound <= exact.lower_bound + 1e-12       # valid but looser
    assert gated.certified_gap >= exact.certified_gap


@pytest.mark.slow
def test_certified_gap_closes_as_admm_converges(enumerable):
    noisy, clean, g, ref = enumerable
    gaps = []
    for tol in (1e-3, 1e-5):
        m = ConvexDualDenoiser(kernel_size=1, beta=BETA, generators=g).fit(
            noisy, clean, solver="admm", tol=tol, max_iter=50000)
        c = certify(m, noisy, clean, check="exact")
        assert c.lower_bound <= ref.objective_ * (1 + 1e-9)      # a true lower bound
        assert m.objective_ >= ref.objective_ * (1 - 1e-7)       # feasible: an upper bound
        gaps.append(c.certified_gap)
    assert gaps[1] < gaps[0] and gaps[1] <= 1e-3


def test_pricing_with_all_patterns(enumerable):
    noisy, clean, _, ref = enumerable
    pr = price_patterns(ref, noisy, clean, n_generators=20000, block=4096)
    # every fresh pattern is already present: no generator proves an improvement
    assert pr.max_generator_ratio <= 1.0 + 1e-6
    assert pr.max_gated_ratio >= pr.max_generator_ratio
    assert pr.top_generators.shape == (64, 2, 1, 1)


def test_admm_certificate_is_a_valid_bound(enumerable):
    noisy, clean, g, ref = enumerable
    m = ConvexDualDenoiser(kernel_size=1, beta=BETA, generators=g).fit(
        noisy, clean, solver="admm", tol=1e-2, max_iter=5000)
    for check in ("exact", "gated"):
        c = certify(m, noisy, clean, check=check)
        assert c.lower_bound <= ref.objective_ * (1 + 1e-9) <= m.objective_ * (1 + 1e-7)
        assert 0 <= c.certified_gap < 1
