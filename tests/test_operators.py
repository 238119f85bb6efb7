"""convexnn.solvers.operators: adjoints, norms, gradients, masks, reference comparisons, input
errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import radon, resize

from convexnn.solvers.operators import (
    CT,
    MRI,
    Blur,
    Downsample,
    Identity,
    Inpainting,
    LinearOperator,
    acceleration_of,
    bicubic_kernel,
    cartesian_mask,
    poisson_disc_mask,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny FFTs are dominated by thread start-up on a shared CPU: run this module on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _coil_maps(n: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.complex(_rand(n, h, w, seed=seed), _rand(n, h, w, seed=seed + 1))


def _binary(shape: tuple[int, ...], seed: int = 5) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.4).to(F64)


# name -> (operator builder, x shape with batch B = 2); several channels where allowed
CASES = {
    "identity": (lambda: Identity(), (2, 3, 5, 6)),
    "blur_circular": (lambda: Blur(_rand(5, 4, seed=1).abs()), (2, 3, 7, 8)),
    "blur_circular_big_kernel": (lambda: Blur(_rand(9, 9, seed=1).abs()), (2, 1, 6, 7)),
    "blur_valid": (lambda: Blur(_rand(3, 4, seed=2).abs(), padding="valid"), (2, 3, 8, 9)),
    **{f"downsample_{flt}_x{f}": ((lambda f=f, flt=flt: Downsample(f, flt)), (2, 3, 12, 12))
       for flt in ("average", "bicubic") for f in (2, 3, 4)},
    "mri_single_coil": (lambda: MRI(cartesian_mask((8, 10), 2, center_lines=2)), (2, 2, 8, 10)),
    "mri_multi_coil": (lambda: MRI(_binary((8, 10)), coil_maps=_coil_maps(3, 8, 10)),
                       (2, 2, 8, 10)),
    "ct": (lambda: CT(7, 10), (2, 3, 10, 10)),
    "ct_wide_detector": (lambda: CT([0.0, 33.0, 71.5, 120.0, 179.0], 9, n_detectors=13),
                         (2, 1, 9, 9)),
    "inpainting_2d_mask": (lambda: Inpainting(_binary((6, 7))), (2, 3, 6, 7)),
    "inpainting_3d_mask": (lambda: Inpainting(_binary((3, 6, 7))), (2, 3, 6, 7)),
}
NORM_CASES = [n for n in CASES if n != "identity"]


def _dense_matrix(op: LinearOperator, in_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of A, column by column: A e_j for each unit image e_j of shape in_shape."""
    n = int(np.prod(in_shape))
    cols = []
    for j in range(n):
        e = torch.zeros(n, dtype=F64)
        e[j] = 1.0
        cols.append(op.A(e.reshape(1, *in_shape)).reshape(-1).numpy())
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("name", list(CASES))
def test_adjoint_identity(name):
    op, shape = CASES[name][0](), CASES[name][1]
    x = _rand(*shape, seed=10)
    ax = op.A(x)
    y = _rand(*ax.shape, seed=11)
    lhs = float((ax * y).sum())
    rhs = float((x * op.A_adjoint(y)).sum())
    assert op.A_adjoint(y).shape == x.shape
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs), (name, lhs, rhs)  # <A x, y> = <x, A^T y>


@pytest.mark.parametrize("name", NORM_CASES)
def test_norm_matches_dense_reference(name):
    op, shape = CASES[name][0](), CASES[name][1]
    in_shape = (1, *shape[2:]) if not op.fixed_channels else shape[1:]
    mat = _dense_matrix(op, in_shape)
    ref = float(np.linalg.eigvalsh(mat.T @ mat).max())  # largest eigenvalue of A^T A
    got = op.norm(torch.zeros(1, *in_shape, dtype=F64), n_iter=600, tol=1e-14)
    assert abs(got - ref) <= 1e-6 * ref, (name, got, ref)
    if op.in_shape is not None:  # shape from in_shape: same value (per-channel ops: C-free)
        assert abs(op.norm(n_iter=600, tol=1e-14) - ref) <= 1e-6 * ref


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_autograd(name):
    op, shape = CASES[name][0](), CASES[name][1]
    x = _rand(*shape, seed=20).requires_grad_(True)
    y = _rand(*op.A(x).shape, seed=21)
    f = op.data_fidelity(x, y)
    assert f.shape == (shape[0],)
    ref = 0.5 * ((op.A(x) - y).flatten(1) ** 2).sum(1)
    torch.testing.assert_close(f, ref)
    (auto,) = torch.autograd.grad(f.sum(), x)
    torch.testing.assert_close(op.gradient(x.detach(), y), auto, rtol=1e-10, atol=1e-12)


def test_default_norm_settings_and_float32():
    op = Blur(_rand(3, 3, seed=4).abs(), in_shape=(1, 8, 8))
    x32 = torch.rand(2, 3, 8, 8)
    assert op.A(x32).dtype == torch.float32 and op.A_adjoint(x32).dtype == torch.float32
    dc = float(op.kernel.sum()) ** 2  # a non-negative kernel's top eigenvalue is at DC
    assert abs(op.norm() - dc) <= 1e-6 * dc
    assert abs(Downsample(4).norm(torch.zeros(1, 1, 8, 8)) - 1 / 16) < 1e-6


# ---------------------------------------------------------------- reference behaviour
def test_blur_conventions():
    k = _rand(5, 5, seed=6)
    x = _rand(1, 1, 11, 12, seed=7)
    wrap = scipy.ndimage.convolve(x[0, 0].numpy(), k.numpy(), mode="wrap")
    np.testing.assert_allclose(Blur(k).A(x)[0, 0].numpy(), wrap, atol=1e-12)
    k2 = _rand(4, 3, seed=8)  # valid output = crop of the circular one from (kh // 2, kw // 2)
    full, valid = Blur(k2).A(x), Blur(k2, "valid").A(x)
    torch.testing.assert_close(valid, full[..., 2:2 + 8, 1:1 + 10])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downsample_references(factor):
    x = _rand(1, 2, 48, 48, seed=9)
    avg = Downsample(factor).A(x)
    ref = x.reshape(1, 2, 48 // factor, factor, 48 // factor, factor).mean((3, 5))
    torch.testing.assert_close(avg, ref)
    k = bicubic_kernel(factor)
    assert abs(float(k.sum()) - 1) < 1e-12 and k.shape[0] == (4 * factor - (factor % 2))
    # bicubic = torch's antialiased bicubic (PIL's filter) away from the (circular) border
    bic = Downsample(factor, "bicubic").A(x)
    tref = torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="bicubic",
                                           antialias=True, align_corners=False)
    torch.testing.assert_close(bic[..., 2:-2, 2:-2], tref[..., 2:-2, 2:-2])
    ones = torch.ones(1, 1, 24, 24, dtype=F64)
    torch.testing.assert_close(Downsample(factor, "bicubic").A(ones),
                               torch.ones(1, 1, 24 // factor, 24 // factor, dtype=F64))


def test_mri_is_unitary_with_full_mask():
    h, w = 8, 10
    x = _rand(2, 2, h, w, seed=12)
    op = MRI(torch.ones(h, w))
    torch.testing.assert_close(op.A_adjoint(op.A(x)), x)
    assert op.A(x).shape == (2, 2, h, w)
    s = _coil_maps(4, h, w)
    s = s / s.abs().pow(2).sum(0).sqrt()  # sum_c |S_c|^2 = 1 -> A^T A = I
    mc = MRI(torch.ones(h, w), coil_maps=s)
    assert mc.A(x).shape == (2, 2, 4, h, w)  # (B, 2, Ncoil, H, W), deepinv's layout
    torch.testing.assert_close(mc.A_adjoint(mc.A(x)), x)
    # k-space is centred: a constant image has all its energy at (H // 2, W // 2)
    k = op.A(torch.ones(1, 2, h, w, dtype=F64))
    assert float(k[0, 0, h // 2, w // 2]) == pytest.approx(np.sqrt(h * w))
    assert abs(op.norm(n_iter=50) - 1.0) < 1e-10


def test_ct_matches_skimage_radon():
    n = 48
    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    yy, xx = np.mgrid[:n, :n]
    img[(yy - n // 2) ** 2 + (xx - n // 2) ** 2 > (n // 2) ** 2] = 0.0  # skimage circle=True
    theta = np.linspace(0.0, 180.0, 24, endpoint=False)
    ref = radon(img, theta=theta, circle=True)  # (n_det, n_angles)
    got = CT(theta, n).A(torch.from_numpy(img)[None, None])[0, 0].numpy()
    assert got.shape == ref.shape
    # the brief asks for sinogram correlation > 0.99 after a least-squares scaling; the same
    # bilinear sampling as skimage makes them equal to rounding, which is checked as well
    scale = float((got * ref).sum() / (got * got).sum())
    assert np.corrcoef((scale * got).ravel(), ref.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(got, ref, atol=1e-9)
    wide = radon(img, theta=theta, circle=False)  # n_detectors ~ sqrt(2) n sees the square
    got_wide = CT(theta, n, n_detectors=wide.shape[0]).A(torch.from_numpy(img)[None, None])
    np.testing.assert_allclose(got_wide[0, 0].numpy(), wide, atol=1e-9)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("accel", [2, 3, 4, 8])
def test_cartesian_mask_acceleration(accel):
    m = cartesian_mask((40, 96), accel, center_fraction=0.08, seed=1)
    assert m.shape == (40, 96) and set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(acceleration_of(m) - accel) / accel < 0.03
    assert bool((m == m[:1]).all())  # whole phase-encoding columns
    n_center = round(0.08 * 96)
    assert bool(m[:, 48 - n_center // 2:48 - n_center // 2 + n_center].all())
    assert torch.equal(m, cartesian_mask((40, 96), accel, seed=1))
    assert not torch.equal(m, cartesian_mask((40, 96), accel, seed=2))
    assert bool(cartesian_mask((8, 32), 4, center_lines=6)[:, 13:19].all())


@pytest.mark.parametrize("accel", [2, 4, 8])
def test_poisson_disc_mask_acceleration(accel):
    h, w = 64, 72
    m = poisson_disc_mask((h, w), accel, calib=(16, 16), seed=0)
    assert m.shape == (h, w) and set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(acceleration_of(m) - accel) / accel <= 0.02
    assert bool(m[h // 2 - 8:h // 2 + 8, w // 2 - 8:w // 2 + 8].all())  # calibration region
    assert torch.equal(m, poisson_disc_mask((h, w), accel, seed=0))
    assert not torch.equal(m, poisson_disc_mask((h, w), accel, seed=1))
    yy, xx = np.mgrid[:h, :w]
    rad = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    mk = m.numpy()
    inner = mk[(rad > 0.3) & (rad < 0.5)].mean()
    outer = mk[(rad > 0.7) & (rad < 0.95)].mean()
    assert inner > outer  # variable density: denser near the centre
    assert mk[:6, :6].sum() + mk[:6, -6:].sum() + mk[-6:, :6].sum() + mk[-6:, -6:].sum() == 0


# ---------------------------------------------------------------- errors
def test_kernel_errors():
    with pytest.raises(ValueError, match="finite"):
        Blur(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-zero finite sum"):
        Blur(torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        Blur(torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        Blur(torch.ones(1, 3, 3))
    with pytest.raises(TypeError, match="real"):
        Blur(torch.ones(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="padding"):
        Blur(torch.ones(3, 3), padding="reflect")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        Blur(torch.ones(5, 5), "valid", in_shape=(1, 4, 8))
    with pytest.raises(ValueError, match="at least as large as the kernel"):
        Blur(torch.ones(5, 5), "valid").A(torch.zeros(1, 1, 4, 8))


def test_shape_errors():
    x = torch.zeros(1, 1, 10, 10)
    with pytest.raises(ValueError, match=r"built for images \(B, C, 8, 8\)"):
        Blur(torch.ones(3, 3), in_shape=(1, 8, 8)).A(x)
    with pytest.raises(ValueError, match=r"built for images \(B, 2, 8, 8\)"):
        MRI(torch.ones(8, 8)).A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"built for images \(B, 2, 8, 8\)"):
        MRI(torch.ones(8, 8)).A(torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match=r"built for images \(B, C, 12, 12\)"):
        CT(5, 12).A(x)
    with pytest.raises(ValueError, match=r"built for images \(B, 3, 10, 10\)"):
        Inpainting(torch.ones(3, 10, 10)).A(x)
    with pytest.raises(ValueError, match=r"built for images \(B, C, 9, 10\)"):
        Inpainting(torch.ones(9, 10)).A(x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Identity().A(torch.zeros(10, 10))
    with pytest.raises(TypeError, match="real floating"):
        Identity().A(torch.zeros(1, 1, 4, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Identity().A(np.zeros((1, 1, 4, 4)))
    mc = MRI(torch.ones(8, 8), coil_maps=_coil_maps(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(\*, 2, 2, 8, 8\)"):
        mc.A_adjoint(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(\*, \*, 10, 5\)"):
        CT(5, 10).A_adjoint(torch.zeros(1, 1, 5, 10))
    with pytest.raises(ValueError, match="measurements y of shape"):
        Identity().data_fidelity(x, torch.zeros(1, 1, 9, 9))


def test_norm_needs_a_shape():
    with pytest.raises(ValueError, match="in_shape"):
        Blur(torch.ones(3, 3)).norm()
    with pytest.raises(ValueError, match="n_iter"):
        Identity((1, 4, 4)).norm(n_iter=0)
    assert Identity((1, 4, 4)).norm() == pytest.approx(1.0)


def test_mask_and_operator_argument_errors():
    with pytest.raises(ValueError, match="binary"):
        MRI(torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="binary"):
        Inpainting(torch.tensor([[0.0, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="dimensions"):
        MRI(torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 8, 8\) matching the mask"):
        MRI(torch.ones(8, 8), coil_maps=_coil_maps(2, 8, 9))
    with pytest.raises(TypeError, match="complex dtype"):
        MRI(torch.ones(8, 8), coil_maps=torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="factor"):
        Downsample(5)
    with pytest.raises(ValueError, match="filter"):
        Downsample(2, "nearest")
    with pytest.raises(ValueError, match="divisible by the factor 3"):
        Downsample(3).A(torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="img_size"):
        CT(5, 0)
    with pytest.raises(ValueError, match="angles"):
        CT([], 8)
    with pytest.raises(ValueError, match="unreachable"):
        poisson_disc_mask((32, 32), 8, calib=(16, 16))
    with pytest.raises(ValueError, match="acceleration"):
        cartesian_mask((8, 8), 0.5)
    with pytest.raises(ValueError, match="exceed"):
        cartesian_mask((8, 64), 8, center_lines=16)
