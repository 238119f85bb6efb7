import math

import pytest
import torch
from helpers import tiny_mnist

from convexnn import ConvexDualDenoiser
from convexnn.model.gated import gated_predict
from convexnn.model.patches import patch_matrix
from convexnn.solve.adam.kernels import cpp_kernel_available, data_grad, hinge_pass
from convexnn.train.checkpoint import CheckpointMismatchError
from convexnn.train.loop import TrainingDivergedError

FAST = dict(progress=False, epochs=4, batch_size=2)


@pytest.fixture(scope="module")
def data():
    return tiny_mnist()


def _ref_pass(yp, g, v, w):
    gate = yp @ g.T
    lv, lw = yp @ v.T, yp @ w.T
    d = (gate >= 0).to(yp.dtype)
    s = 2 * d - 1
    return ((d * (lv - lw)).sum(1), (lv.clamp_min(0) - lw.clamp_min(0)).sum(1),
            float((-s * lv).clamp_min(0).sum().detach() + (-s * lw).clamp_min(0).sum().detach()))


@pytest.mark.parametrize("kernel", ["torch", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernels_match_autograd(kernel, dtype):
    if kernel == "cpp" and not cpp_kernel_available():
        pytest.skip("no C++ compiler")
    torch.manual_seed(0)
    x = torch.randn(3, 1, 6, 7, dtype=dtype)
    yp = patch_matrix(x, 3)
    g = torch.randn(300, 9, dtype=dtype)
    v = torch.randn(300, 9, dtype=dtype, requires_grad=True)
    w = torch.randn(300, 9, dtype=dtype, requires_grad=True)
    r = torch.randn(yp.shape[0], dtype=dtype)
    pd, pp, h = _ref_pass(yp, g, v, w)
    hp = hinge_pass(yp, g.T.contiguous(), v.detach().T.contiguous(), w.detach().T.contiguous(),
                    kernel=kernel, block=64)
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert torch.allclose(hp.pred_dual, pd.detach(), atol=tol * 10)
    assert torch.allclose(hp.pred_primal, pp.detach(), atol=tol * 10)
    assert math.isclose(hp.hinge_sum, h, rel_tol=1e-5)
    gv, gw = torch.autograd.grad(
        (-(2 * (yp @ g.T >= 0).to(dtype) - 1) * (yp @ v.T)).clamp_min(0).sum()
        + (-(2 * (yp @ g.T >= 0).to(dtype) - 1) * (yp @ w.T)).clamp_min(0).sum(), (v, w))
    assert torch.allclose(hp.grad_v.T, gv, atol=tol * 100)
    assert torch.allclose(hp.grad_w.T, gw, atol=tol * 100)
    (gf,) = torch.autograd.grad((pd * r).sum(), v)
    assert torch.allclose(data_grad(yp, g.T.contiguous(), r, kernel=kernel).T, gf,
                          atol=tol * 100)
    # and the kernels' gated prediction is the core's
    ref = gated_predict(x, g.reshape(-1, 1, 3, 3), (v - w).detach().reshape(-1, 1, 3, 3))
    assert torch.allclose(hp.pred_dual, ref.reshape(-1), atol=tol * 10)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured -4.7% (P=24): the hinge penalty at rho=max|y| is "
                   "not exact (largest cone multiplier 24x max|y|, benchmarks/adam_multipliers.py);"
                   " see docs/adam.md, 'the 2% target is not met'")
def test_adam_close_to_cvxpy_optimum():
    """Done-when: default settings, real digits, fixed generators: eq. 5 primal within 2%."""
    x, y, _, _ = tiny_mnist(n_train=2, crop=28)
    beta = 1e-3 * 2 * 784
    ref = ConvexDualDenoiser(n_patterns=24, beta=beta, seed=0).fit(x, y, solver="cvxpy")
    m = ConvexDualDenoiser(beta=beta, generators=ref.generators_).fit(
        x, y, solver="adam", progress=False)                       # defaults (batch 1)
    primal = m.to_primal().objective(x, y, beta)
    assert abs(primal - ref.objective_) / ref.objective_ < 0.02
    viol = m.constraint_violation(x)
    assert viol.relative < 0.05


def test_history_and_info(data):
    x, y, xe, ye = data
    m = ConvexDualDenoiser(n_patterns=30, beta=1.0).fit(x, y, solver="adam",
                                                        eval_set=(xe, ye), **FAST)
    assert len(m.history_) == 4
    row = m.history_[-1]
    for key in ("train_objective", "train_objective_mean", "test_objective",
                "test_objective_mean", "train_violation_max", "train_primal_objective",
                "epoch_seconds", "lr"):
        assert key in row and math.isfinite(row[key])
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    assert math.isclose(row["train_objective"] / npix, row["train_objective_mean"])
    # history's dual objective is the estimator's (float32 training, float64 re-evaluation)
    assert math.isclose(row["train_objective"], m.objective_, rel_tol=1e-4)
    assert m.solve_info_.solver == "adam" and m.solve_info_.iterations == 8
    assert m.solve_info_.details["rho"] > 0
    assert m.v_.shape == m.generators_.shape and m.v_.dtype == torch.float64


def test_pixel_batches(data):
    """batch_pixels: a full-data pixel batch is the full-data image batch (same sum, same
    steps); smaller pixel batches take more steps per epoch and lower the objective."""
    x, y, _, _ = data
    npix = x.shape[0] * x.shape[2] * x.shape[3]
    kw = dict(progress=False, epochs=3, dtype="float64", kernel="torch")
    a = ConvexDualDenoiser(n_patterns=20, beta=1.0).fit(x, y, solver="adam",
                                                        batch_size=x.shape[0], **kw)
    b = ConvexDualDenoiser(n_patterns=20, beta=1.0).fit(x, y, solver="adam",
                                                        batch_pixels=npix, **kw)
    assert a.solve_info_.iterations == b.solve_info_.iterations == 3
    assert torch.allclose(a.v_, b.v_, rtol=1e-9, atol=1e-12)
    c = ConvexDualDenoiser(n_patterns=20, beta=1.0).fit(x, y, solver="adam",
                                                        batch_pixels=npix // 8, **kw)
    assert c.solve_info_.iterations == 3 * 8
    assert c.history_[-1]["train_penalized_objective"] < b.history_[-1][
        "train_penalized_objective"]
    with pytest.raises(ValueError, match=f"batch_pixels={npix + 1} is larger than the "
                                         f"{npix} training pixels"):
        ConvexDualDenoiser(n_patterns=5, beta=1.0).fit(x, y, solver="adam", progress=False,
                                                       batch_pixels=npix + 1)
    with pytest.raises(ValueError, match="batch_pixels"):
        ConvexDualDenoiser(n_patterns=5, beta=1.0).fit(x, y, solver="adam", progress=False,
                                                       batch_pixels=0)


def test_warm_start(data, tmp_path):
    x, y, _, _ = data
    kw = dict(progress=False, epochs=3, batch_size=2, dtype="float64")
    a = ConvexDualDenoiser(n_patterns=20, beta=1.0).fit(x, y, solver="adam", **kw)
    # a warm start at a tiny learning rate stays where it started
    b = ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
        x, y, solver="adam", warm_start=a, lr=1e-12, **kw)
    assert torch.allclose(b.v_, a.v_, atol=1e-9) and torch.allclose(b.w_, a.w_, atol=1e-9)
    # continuing from a: below a's penalised objective, unlike a cold start of 3 epochs
    c = ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
        x, y, solver="adam", warm_start=(a.v_, a.w_), lr_scale=0.3, **kw)
    assert (c.history_[-1]["train_penalized_objective"]
            < a.history_[-1]["train_penalized_objective"])
    with pytest.raises(ValueError, match="other generators"):
        ConvexDualDenoiser(n_patterns=20, beta=1.0, seed=5).fit(x, y, solver="adam",
                                                                warm_start=a, **kw)
    with pytest.raises(ValueError, match="warm_start: expected"):
        ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
            x, y, solver="adam", warm_start=(a.v_[:3], a.w_), **kw)
    with pytest.raises(TypeError, match="warm_start: expected a fitted ConvexDualDenoiser"):
        ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
            x, y, solver="adam", warm_start="model.safetensors", **kw)
    # a checkpoint of a cold run is refused by a warm-started run (other start point)
    ck = tmp_path / "ck.pt"
    ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
        x, y, solver="adam", checkpoint_path=str(ck), **kw)
    with pytest.raises(CheckpointMismatchError):
        ConvexDualDenoiser(beta=1.0, generators=a.generators_).fit(
            x, y, solver="adam", checkpoint_path=str(ck), warm_start=a, **kw)


def test_deterministic_cpu(data):
    x, y, _, _ = data
    a = ConvexDualDenoiser(n_patterns=30, beta=1.0).fit(x, y, solver="adam", **FAST)
    b = ConvexDualDenoiser(n_patterns=30, beta=1.0).fit(x, y, solver="adam", **FAST)
    assert torch.equal(a.v_, b.v_) and torch.equal(a.w_, b.w_)


def test_objective_decreases_and_torch_kernel_agrees(data):
    x, y, _, _ = data
    kw = dict(FAST, epochs=6, dtype="float64")
    a = ConvexDualDenoiser(n_patterns=30, beta=1.0).fit(x, y, solver="adam", kernel="torch",
                                                        **kw)
    b = ConvexDualDenoiser(n_patterns=30, beta=1.0).fit(x, y, solver="adam", **kw)
    h = [r["train_penalized_objective"] for r in a.history_]
    assert h[-1] < h[0]
    assert torch.allclose(a.v_, b.v_, rtol=1e-6, atol=1e-9)


def test_bad_input(data, tmp_path):
    x, y, xe, ye = data
    m = ConvexDualDenoiser(n_patterns=10, beta=1.0)
    with pytest.raises(ValueError, match="batch_size=10 is larger than the 4"):
        m.fit(x, y, solver="adam", progress=False, batch_size=10)
    with pytest.raises(ValueError, match="eval_set"):
        m.fit(x, y, solver="adam", progress=False, eval_set=(xe[:, :, :10, :10],
                                                             ye[:, :, :10, :10]))
    with pytest.raises(ValueError, match="rho"):
        m.fit(x, y, solver="adam", progress=False, rho=-1.0)
    with pytest.raises(TypeError, match="unknown option"):
        m.fit(x, y, solver="adam", progress=False, learning_rate=1.0)
    with pytest.raises(ValueError, match="dtype"):
        m.fit(x, y, solver="adam", progress=False, dtype="int8")


def test_foreign_checkpoint_refused(data, tmp_path):
    x, y, _, _ = data
    ck = tmp_path / "dual.pt"
    ConvexDualDenoiser(n_patterns=10, beta=1.0).fit(x, y, solver="adam", checkpoint_path=str(ck),
                                                    **FAST)
    before = ck.read_bytes()
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        ConvexDualDenoiser(n_patterns=10, beta=2.0).fit(x, y, solver="adam",
                                                        checkpoint_path=str(ck), **FAST)
    assert ck.read_bytes() == before


def test_resume_in_process_is_exact(data, tmp_path):
    x, y, _, _ = data
    full = ConvexDualDenoiser(n_patterns=10, beta=1.0).fit(x, y, solver="adam", **FAST)
    ck = tmp_path / "d.pt"

    def stop_after_two(row, module):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ConvexDualDenoiser(n_patterns=10, beta=1.0).fit(
            x, y, solver="adam", checkpoint_path=str(ck), callback=stop_after_two, **FAST)
    resumed = ConvexDualDenoiser(n_patterns=10, beta=1.0).fit(
        x, y, solver="adam", checkpoint_path=str(ck), **FAST)
    assert resumed.solve_info_.details["resumed_from_epoch"] == 2
    assert torch.equal(resumed.v_, full.v_) and torch.equal(resumed.w_, full.w_)
    assert len(resumed.history_) == 4


def test_nan_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    x, y, _, _ = data
    ck = tmp_path / "d.pt"

    def poison(row, module):
        if row["epoch"] == 2:
            with torch.no_grad():
                module.v.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="epoch 3") as exc:
        ConvexDualDenoiser(n_patterns=10, beta=1.0).fit(
            x, y, solver="adam", checkpoint_path=str(ck), callback=poison, **FAST)
    assert exc.value.epoch == 3 and exc.value.checkpoint_epoch == 2
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 2 and bool(torch.isfinite(state["model"]["v"]).all())
