"""Bad input is refused where it enters, with what was expected and what arrived."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convexnn import (
    ConvexDualDenoiser,
    ConvexSolverError,
    CvxpyConfig,
    ProblemSizeError,
    sample_generators,
)


def test_nan_and_inf_pixels(small_pair):
    noisy, clean = small_pair
    bad = noisy.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="noisy: expected finite pixel values, got 1 NaN/Inf"):
        ConvexDualDenoiser(n_patterns=4).fit(bad, clean)
    bad = clean.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="clean: expected finite"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, bad)


def test_shape_mismatch_and_empty(small_pair):
    noisy, clean = small_pair
    msg = r"same count and size.*\(1, 1, 16, 16\).*\(1, 1, 15, 16\)"
    with pytest.raises(ValueError, match=msg):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, clean[:, :, :-1])
    with pytest.raises(ValueError, match="same count"):
        ConvexDualDenoiser(n_patterns=4).fit(torch.cat([noisy, noisy]), clean)
    with pytest.raises(ValueError, match="non-empty"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy[:0], clean[:0])
    with pytest.raises(ValueError, match=r"\(n, C, H, W\) or \(n, H, W\)"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy[0, 0, 0], clean[0, 0, 0])
    with pytest.raises(ValueError, match="one output channel"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, torch.cat([clean, clean], 1))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        ConvexDualDenoiser(n_patterns=4).fit([[1.0]], clean)
    with pytest.raises(TypeError, match="real values"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy.to(torch.complex128), clean)


@pytest.mark.parametrize("k", [0, 2, -3, 4, 2.5, True])
def test_bad_kernel_size(k):
    with pytest.raises(ValueError, match="kernel_size: expected a positive odd integer"):
        ConvexDualDenoiser(kernel_size=k)


@pytest.mark.parametrize("beta", [0, -1e-3, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta: expected a positive finite number"):
        ConvexDualDenoiser(beta=beta)


def test_bad_names_and_counts(small_pair):
    noisy, clean = small_pair
    with pytest.raises(ValueError, match=r"loss: expected one of \['squared', 'l1', 'huber'\]"):
        ConvexDualDenoiser(loss="hinge")
    with pytest.raises(ValueError, match="solver: expected one of"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, clean, solver="newton")
    with pytest.raises(ValueError, match="cvxpy_solver: expected one of"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, clean, solver="cvxpy",
                                             cvxpy_solver="GUROBI")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['tolerance'\]"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, clean, tolerance=1e-3)
    with pytest.raises(ValueError, match="n_patterns: expected a positive integer"):
        ConvexDualDenoiser(n_patterns=0)
    with pytest.raises(ValueError, match=r"generators: expected shape \(P, 1, 3, 3\)"):
        ConvexDualDenoiser(generators=torch.zeros(3, 1, 5, 5)).fit(noisy, clean)
    with pytest.raises(ValueError, match="at least one generator"):
        ConvexDualDenoiser(generators=torch.zeros(0, 1, 3, 3)).fit(noisy, clean)
    with pytest.raises(ValueError, match="residual=True needs one-channel"):
        ConvexDualDenoiser(n_patterns=3, residual=True).fit(torch.cat([noisy, noisy], 1), clean)


def test_all_zero_patterns_refused(small_pair):
    _, clean = small_pair
    positive = clean - clean.min() + 1.0
    with pytest.raises(ValueError, match="all-zero sign pattern"):
        ConvexDualDenoiser(generators=-torch.ones(2, 1, 3, 3)).fit(positive, clean)


def test_unfitted_model():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ConvexDualDenoiser().predict(np.zeros((1, 8, 8)))


def test_wrong_channel_count_at_predict(small_pair):
    noisy, clean = small_pair
    model = ConvexDualDenoiser(n_patterns=3, beta=0.1).fit(noisy, clean)
    with pytest.raises(ValueError, match="fitted on 1 channel"):
        model.predict(torch.cat([noisy, noisy], 1))


def test_size_guard_names_scalable_solvers(small_pair):
    noisy, clean = small_pair
    with pytest.raises(ProblemSizeError, match="solver='ipm'.*solver='admm'.*--force"):
        ConvexDualDenoiser(n_patterns=4).fit(noisy, clean, solver="cvxpy", max_constraints=100)
    # forcing it builds and solves
    m = ConvexDualDenoiser(n_patterns=4, beta=0.1).fit(noisy, clean, solver="cvxpy",
                                                       max_constraints=100, force=True)
    assert m.solve_info_.status == "optimal"


def test_mosek_without_license_is_explained(small_pair):
    noisy, clean = small_pair
    try:
        ConvexDualDenoiser(n_patterns=3, beta=0.1).fit(noisy, clean, solver="cvxpy",
                                                       cvxpy_solver="MOSEK")
    except ConvexSolverError as exc:
        assert "licen" in str(exc) and "CLARABEL" in str(exc)
    else:  # a licensed MOSEK is present: then it must have solved
        pass


def test_solver_failure_is_reported_not_returned(small_pair):
    noisy, clean = small_pair
    gens = sample_generators(6, 1, 3, seed=0)
    model = ConvexDualDenoiser(beta=0.05, generators=gens)
    with pytest.raises(ConvexSolverError, match="status") as info:
        model.fit(noisy, clean, solver="cvxpy", solver_options={"max_iter": 2})
    assert info.value.status not in (None, "optimal")
    assert not hasattr(model, "v_")
    assert info.value.status == "user_limit"
    # SCS stopped early reports 'optimal_inaccurate': refused unless explicitly accepted
    scs_early = {"solver": "cvxpy", "cvxpy_solver": "SCS", "solver_options": {"max_iters": 20}}
    with pytest.raises(ConvexSolverError, match="optimal_inaccurate"):
        model.fit(noisy, clean, **scs_early)
    with pytest.warns(RuntimeWarning, match="optimal_inaccurate"):
        model.fit(noisy, clean, solver="cvxpy", config=CvxpyConfig(
            allow_inaccurate=True, cvxpy_solver="SCS", solver_options={"max_iters": 20}))
    assert model.solve_info_.status == "optimal_inaccurate"
