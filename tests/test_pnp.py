"""PnP solvers (convexnn.solvers.pnp) and the history record (convexnn.solvers.history) on small
blur problems."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import CircularConv, gaussian_kernel

from convexnn.solvers.denoisers import Averaged
from convexnn.solvers.history import History, psnr, ssim
from convexnn.solvers.operators import Blur, Identity
from convexnn.solvers.pnp import (
    ConvergenceError,
    PnPConfig,
    data_prox,
    pnp_admm,
    pnp_drs,
    pnp_hqs,
    pnp_pgd,
    red,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (2 threads on a busy 2-core box make a 16x16 FFT
    ~100x slower); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SOLVERS = [pnp_pgd, pnp_admm, pnp_hqs, pnp_drs, red]




class SoftThreshold(torch.nn.Module):
    """prox of t ||x||_1: firmly nonexpansive."""

    firmly_nonexpansive = True

    def __init__(self, t: float = 0.05) -> None:
        super().__init__()
        self.t = t

    def forward(self, x, sigma=None):
        return torch.sign(x) * torch.clamp(x.abs() - self.t, min=0)


def fne_filter() -> Averaged:
    """J = (I + Q)/2 with Q a circular conv of norm exactly 1 (kernel >= 0, sum 1)."""
    q = torch.tensor([[0, 1, 0], [1, 2, 1], [0, 1, 0]], dtype=torch.float64) / 6
    return Averaged(CircularConv(q), q_is_nonexpansive=True)


@pytest.fixture(scope="module")
def blur_problem(small_pair):
    _, clean = small_pair                                    # (1, 1, 16, 16) real digit
    clean = (clean - clean.min()) / (clean.max() - clean.min())   # [0, 1]
    op = Blur(gaussian_kernel(5, 1.0))
    gen = torch.Generator().manual_seed(0)
    y = op.A(clean) + 0.01 * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
    return clean, op, y


# ------------------------------------------------------------------------------ convergence
def test_pgd_firmly_nonexpansive_filter_converges(blur_problem):
    clean, op, y = blur_problem
    x, hist = pnp_pgd(y, op, fne_filter(), PnPConfig(max_iter=300, tol=1e-6, reference=clean,
                                                     require_convergence=True))
    rc = np.array(hist.rel_change)
    assert hist.converged and rc[-1] < 1e-6
    assert np.all(np.diff(rc[3:]) <= 1e-12)          # averaged operator: monotone steps
    assert hist.flags["L"] == pytest.approx(1.0, abs=1e-6)   # Gaussian kernel, sum 1
    assert hist.flags["denoiser_fne"] == "declared"
    # the limit is a fixed point of x = J(x - gamma grad f(x))
    g = hist.flags["step"]
    fp = fne_filter()(x - g * op.A_adjoint(op.A(x) - y))
    assert float((fp - x).norm() / x.norm()) < 1e-4
    assert all(r.psnr is not None and r.ssim is not None for r in hist.records)


def test_pgd_soft_threshold_relaxed_converges(blur_problem):
    clean, _, _ = blur_problem
    op = Blur(gaussian_kernel(3, 0.5))                # mild blur: ISTA converges fast
    y = op.A(clean)
    _, hist = pnp_pgd(y, op, SoftThreshold(0.02),
                      PnPConfig(max_iter=300, tol=1e-6, relaxation=1.4, step=1.0,
                                lipschitz=1.0, require_convergence=True))
    rc = np.array(hist.rel_change)
    assert hist.converged and rc[-1] < 1e-6
    assert np.all(np.diff(rc[3:]) <= 1e-12)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.__name__)
def test_every_solver_converges_to_the_same_kind_of_point(blur_problem, solver):
    clean, op, y = blur_problem
    x, hist = solver(y, op, fne_filter(), PnPConfig(max_iter=400, tol=1e-6, reference=clean,
                                                    lipschitz=1.0, compute_ssim=False))
    assert hist.converged, hist.stop_reason
    assert torch.isfinite(x).all() and x.shape == clean.shape
    assert hist.records[-1].residual < float(y.norm())
    assert hist.psnr[-1] > 10


def test_pgd_admm_drs_share_the_fixed_point(blur_problem):
    # with J = prox-like linear filter, PGD and DRS/ADMM solve the same monotone inclusion
    clean, _, _ = blur_problem
    op = Blur(gaussian_kernel(3, 0.5))
    y = op.A(clean)
    cfg = PnPConfig(max_iter=200, tol=1e-11, step=1.0, lipschitz=1.0)
    xp, _ = pnp_pgd(y, op, fne_filter(), cfg)
    xd, _ = pnp_drs(y, op, fne_filter(), cfg)
    xa, _ = pnp_admm(y, op, fne_filter(), cfg)
    assert float((xp - xd).norm() / xp.norm()) < 1e-6
    assert float((xp - xa).norm() / xp.norm()) < 1e-6


def test_pgd_with_convex_dual_denoiser(small_pair):
    from convexnn import ConvexDualDenoiser

    noisy, clean = small_pair
    model = ConvexDualDenoiser(n_patterns=8, beta=0.05).fit(noisy, clean, solver="cvxpy")
    op = Blur(gaussian_kernel(3, 0.7))
    y = op.A(clean)
    x, hist = pnp_pgd(y, op, model, PnPConfig(max_iter=15, tol=1e-8, relaxation=0.5,
                                              lipschitz=1.0, reference=clean))
    assert torch.isfinite(x).all() and x.shape == clean.shape
    assert len(hist) == 15 and hist.stop_reason.startswith("max_iter")
    # it deblurs: 2 dB above its start (A^T y) and above the blurred measurement itself
    # (measured: 17.24 -> 19.47 dB, y at 19.20 dB)
    assert hist.psnr[-1] > hist.psnr[0] + 1.5
    assert hist.psnr[-1] > psnr(y, clean, None)
    assert hist.psnr[-1] == pytest.approx(psnr(x, clean, None))
    # the primal network (eq. 5) plugs in the same way
    primal = model.to_primal().double()
    xp, hp = pnp_pgd(y, op, primal, PnPConfig(max_iter=3, relaxation=0.5, lipschitz=1.0,
                                               reference=clean))
    assert torch.isfinite(xp).all() and len(hp) == 3
    assert hp.psnr[-1] > hp.psnr[0] + 0.5               # and deblurs too


def test_data_prox_solves_the_normal_equations(blur_problem):
    _, op, y = blur_problem
    v = torch.randn_like(y)
    u = data_prox(op, v, y, gamma=2.0, n_iter=200, tol=1e-13)
    lhs = u + 2.0 * op.A_adjoint(op.A(u))
    rhs = v + 2.0 * op.A_adjoint(y)
    assert float((lhs - rhs).norm() / rhs.norm()) < 1e-10



@pytest.mark.parametrize("solver", [pnp_admm, pnp_hqs, pnp_drs])
def test_splittings_use_the_closed_form_prox_and_match_cg(blur_problem, solver):
    """A circular blur's data prox is the FFT closed form; on a physics without one (the same
    blur hidden behind a wrapper) the solvers use conjugate gradients: same iterates."""
    clean, op, y = blur_problem

    class Hidden:                                    # A, A_adjoint only: no closed form known
        def A(self, x):  # noqa: N802
            return op.A(x)

        def A_adjoint(self, r):  # noqa: N802
            return op.A_adjoint(r)

    cfg = PnPConfig(step=3.0, max_iter=15, tol=0.0, cg_iter=300, cg_tol=1e-14)
    x_fft, h_fft = solver(y, op, SoftThreshold(0.02), cfg)
    x_cg, h_cg = solver(y, Hidden(), SoftThreshold(0.02), cfg)
    assert h_fft.flags["data_prox"] == "fft" and h_cg.flags["data_prox"] == "cg"
    assert float((x_fft - x_cg).norm() / x_cg.norm()) < 1e-9
    assert float((x_fft - y).norm()) > 1e-3           # it moved: the test compares real work

def test_identity_physics_and_red_energy_callable(blur_problem):
    clean, _, _ = blur_problem
    op = Identity()
    y = clean + 0.1
    x, hist = red(y, op, SoftThreshold(0.01),
                  PnPConfig(max_iter=5, lam=0.5, tol=0.0,
                            energy=lambda z: 0.5 * (z - y).pow(2).sum()))
    assert len(hist) == 5 and all(e is not None for e in hist.energy)
    assert hist.stop_reason.startswith("max_iter")
    assert hist.flags["step_bound"] == pytest.approx(2 / 1.5, rel=1e-6)


# ------------------------------------------------------------------------------ step checks
def test_large_step_warns_and_require_convergence_raises(blur_problem):
    _, op, y = blur_problem
    with pytest.warns(RuntimeWarning, match="2/L"):
        _, hist = pnp_pgd(y, op, fne_filter(), PnPConfig(step=2.5, lipschitz=1.0, max_iter=2))
    assert hist.flags["convergence_warnings"]
    with pytest.raises(ConvergenceError, match="gamma < 2/L"):
        pnp_pgd(y, op, fne_filter(), PnPConfig(step=2.0, lipschitz=1.0, max_iter=2,
                                                require_convergence=True))
    with pytest.raises(ConvergenceError, match="relaxation"):
        pnp_pgd(y, op, fne_filter(), PnPConfig(step=1.0, lipschitz=1.0, relaxation=1.6, max_iter=2,
                                                require_convergence=True))
    with pytest.raises(ConvergenceError, match="2/\\(L \\+ lam\\)"):
        red(y, op, fne_filter(), PnPConfig(step=1.5, lipschitz=1.0, lam=1.0, max_iter=2,
                                            require_convergence=True))
    with pytest.raises(ConvergenceError, match="\\(0, 2\\)"):
        pnp_drs(y, op, fne_filter(), PnPConfig(relaxation=2.0, step=1.0, max_iter=2,
                                                require_convergence=True))


def test_require_convergence_estimates_the_denoiser(blur_problem):
    _, op, y = blur_problem

    def expansive(x, sigma=None):           # J = 1.5 I: Q = 2 I, ||grad Q|| = 2
        return 1.5 * x

    with pytest.raises(ConvergenceError, match="not firmly nonexpansive"):
        pnp_pgd(y, op, expansive, PnPConfig(max_iter=2, lipschitz=1.0, require_convergence=True))
    undeclared = Averaged(CircularConv(torch.tensor([[0, 1, 0], [1, 2, 1], [0, 1, 0.]]) / 6))
    _, hist = pnp_hqs(y, op, undeclared, PnPConfig(max_iter=2, step=1.0, require_convergence=True))
    assert hist.flags["denoiser_q_norm_x0"] <= 1 + 1e-3


# ------------------------------------------------------------------------------ input errors
def test_input_errors(blur_problem):
    clean, op, y = blur_problem
    d = fne_filter()
    valid = Blur(gaussian_kernel(5, 1.0), padding="valid", in_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="physics expects images"):
        pnp_pgd(valid.A(clean), valid, d, PnPConfig(x0=torch.zeros(1, 1, 12, 12)))
    with pytest.raises(ValueError, match="but y has shape"):
        pnp_pgd(torch.zeros(1, 1, 10, 10), Blur(gaussian_kernel(5, 1.0), padding="valid"), d,
                PnPConfig(x0=clean))
    with pytest.raises(ValueError, match="physics.A_adjoint"):
        pnp_pgd(torch.zeros(1, 1, 9, 9), valid, d)
    with pytest.raises(ValueError, match="output of the input's shape"):
        pnp_pgd(y, op, lambda x, sigma=None: x[..., :-1], PnPConfig(max_iter=2, step=1.0,
                                                                      lipschitz=1.0))
    with pytest.raises(ValueError, match="non-finite"):
        pnp_admm(y, op, lambda x, sigma=None: x * float("nan"), PnPConfig(max_iter=2, step=1.0))
    with pytest.raises(ValueError, match="reference"):
        pnp_pgd(y, op, d, PnPConfig(reference=torch.zeros(1, 1, 8, 8)))
    with pytest.raises(TypeError, match="A_adjoint"):
        pnp_pgd(y, object(), d)
    with pytest.raises(TypeError, match="measurements"):
        pnp_pgd(y.numpy(), op, d)
    with pytest.raises(TypeError, match="PnPConfig"):
        pnp_pgd(y, op, d, {"step": 1.0})
    for bad, match in [(dict(max_iter=0), "max_iter"), (dict(step=-1.0), "step"),
                       (dict(relaxation=0.0), "relaxation"), (dict(tol=-1.0), "tol"),
                       (dict(lam=-1.0), "lam"), (dict(lipschitz=-1.0), "lipschitz")]:
        with pytest.raises(ValueError, match=match):
            pnp_pgd(y, op, d, PnPConfig(**bad))


def test_divergence_is_reported_not_raised(blur_problem):
    _, op, y = blur_problem

    def explode(x, sigma=None):
        return x * 1e200

    with pytest.warns(RuntimeWarning):
        _, hist = pnp_pgd(y, op, explode, PnPConfig(max_iter=20, step=3.0, lipschitz=1.0))
    assert not hist.converged and hist.stop_reason == "non-finite iterate"


# ------------------------------------------------------------------------------ history
def test_history_export_roundtrip(tmp_path, blur_problem):
    clean, op, y = blur_problem
    _, hist = pnp_pgd(y, op, fne_filter(), PnPConfig(max_iter=6, tol=0.0, lipschitz=1.0,
                                                          reference=clean))
    d = hist.to_dict()
    assert d["solver"] == "pnp_pgd" and d["n_iter"] == 6 and not d["converged"]
    assert set(d["records"][0]) == {"iteration", "rel_change", "step", "energy", "residual",
                                    "psnr", "ssim", "time", "flags"}
    assert d["records"][0]["energy"] is None
    path = hist.save_json(tmp_path / "h.json")
    assert json.loads(path.read_text())["config"]["reference"] == "tensor(1, 1, 16, 16)"
    back = History.load_json(path)
    assert back.rel_change == hist.rel_change and back.stop_reason == hist.stop_reason
    png = hist.plot(tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    x = ref + 0.05 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    want_p = np.mean([peak_signal_noise_ratio(ref[i, 0].numpy(), x[i, 0].numpy(),
                                              data_range=1.0) for i in range(2)])
    want_s = np.mean([structural_similarity(ref[i, 0].numpy(), x[i, 0].numpy(),
                                            data_range=1.0) for i in range(2)])
    assert psnr(x, ref, data_range=1.0) == pytest.approx(want_p, rel=1e-12)
    assert ssim(x, ref, data_range=1.0) == pytest.approx(want_s, rel=1e-12)
    assert psnr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x, ref[:1])
    h = History("x")
    h.record(rel_change=torch.tensor(0.5), step=1.0, energy=None, flag_a=3)
    assert h.series("flag_a") == [3] and h.rel_change == [0.5]
    with pytest.raises(ValueError, match="scalar"):
        h.record(rel_change=torch.ones(2))


def test_equivariant_random_denoiser_in_pnp(blur_problem):
    from convexnn.solvers.equivariant import EquivariantDenoiser

    clean, op, y = blur_problem
    skew = torch.tensor([[0.0, 0.6, 0.0], [0.1, 0.2, 0.0], [0.0, 0.1, 0.0]], dtype=torch.float64)
    eq = EquivariantDenoiser(Averaged(CircularConv(skew)), mode="random", seed=0)
    x, hist = pnp_pgd(y, op, eq, PnPConfig(max_iter=10, tol=0.0, lipschitz=1.0,
                                           reference=clean, compute_ssim=False))
    assert torch.isfinite(x).all() and hist.n_iter == 10
    assert eq.last_group_element is not None
