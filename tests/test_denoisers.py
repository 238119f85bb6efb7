"""The denoiser protocol, its wrappers and the small DnCNN baseline with its trainer."""

from __future__ import annotations

import pytest
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.solvers.denoisers import Averaged, Rescaled, Residual, call_denoiser, check_denoiser
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, random_patches, train_denoiser


@pytest.fixture(scope="module")
def dual_model(small_pair):
    noisy, clean = small_pair
    return ConvexDualDenoiser(n_patterns=8, beta=0.05).fit(noisy, clean, solver="cvxpy")


def test_convex_dual_and_primal_satisfy_the_protocol(dual_model, small_pair):
    noisy, _ = small_pair
    out = check_denoiser(dual_model, noisy, sigma=0.5)
    assert out.shape == noisy.shape and out.dtype == noisy.dtype
    primal = dual_model.to_primal()
    out_p = check_denoiser(primal, noisy)
    # eq. 5: the reconstructed primal network computes the same map as the gated dual one
    assert torch.allclose(out_p, out, atol=1e-6)
    batch = torch.cat([noisy, noisy.flip(-1)])
    assert check_denoiser(dual_model, batch).shape == batch.shape


def test_dncnn_satisfies_the_protocol():
    net = DnCNN()
    x = torch.rand(2, 1, 12, 12)
    assert check_denoiser(net, x, 0.1).shape == x.shape
    assert net.depth == 6 and net.channels == 32
    assert sum(p.numel() for p in net.parameters()) < 60_000
    assert len([m for m in net.net if isinstance(m, torch.nn.Conv2d)]) == 6
    plain = DnCNN(depth=3, channels=4, residual=False)
    with torch.no_grad():
        assert torch.allclose(DnCNN.forward(plain, x), plain.net(x))
    color = DnCNN(in_channels=3, depth=2, channels=4)
    assert color(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_check_denoiser_errors():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="input's shape"):
        check_denoiser(lambda z, sigma=None: z[:, :, 1:], x)
    with pytest.raises(ValueError, match="non-finite"):
        check_denoiser(lambda z, sigma=None: z / 0.0, x)
    with pytest.raises(TypeError, match="tensor output"):
        check_denoiser(lambda z, sigma=None: z.numpy(), x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        check_denoiser(lambda z, sigma=None: z, torch.rand(8, 8))
    with pytest.raises(TypeError, match="callable"):
        check_denoiser(42, x)
    # the Denoiser policy: a float32 model computes in float32 and answers in the input's dtype
    primal32 = TwoLayerConvDenoiser(1, 4)
    out = check_denoiser(primal32, x.double())
    assert out.dtype == torch.float64
    assert torch.equal(out, primal32(x).double())
    with pytest.raises(ValueError, match=r"failed on an input .* expected a non-empty input "
                                         r"\(B, 1, H, W\), got shape \(1, 3, 8, 8\)"):
        check_denoiser(DnCNN(depth=2, channels=2), torch.rand(1, 3, 8, 8))


def test_call_denoiser_accepts_one_argument_callables():
    x = torch.rand(1, 1, 4, 4)
    assert torch.equal(call_denoiser(lambda z: 2 * z, x, 0.3), 2 * x)
    assert torch.equal(call_denoiser(lambda z, s: z + s, x, 0.5), x + 0.5)


def test_rescaled(dual_model, small_pair):
    from convexnn.data.mnist import MNIST_MEAN, MNIST_STD

    noisy, _ = small_pair                    # normalised MNIST pixels
    raw = noisy * MNIST_STD + MNIST_MEAN     # the same images on the [0, 1] scale
    wrapped = Rescaled.from_mean_std(dual_model, MNIST_MEAN, MNIST_STD)
    want = dual_model(noisy) * MNIST_STD + MNIST_MEAN
    assert torch.allclose(wrapped(raw), want, atol=1e-10)
    seen = {}

    def spy(z, sigma=None):
        seen["sigma"] = sigma
        return z

    r = Rescaled(spy, scale=4.0, shift=1.0)
    assert torch.allclose(r(raw, 0.1), raw)
    assert seen["sigma"] == pytest.approx(0.4)
    assert r(raw, None) is not None and seen["sigma"] is None
    with pytest.raises(ValueError, match="scale"):
        Rescaled(spy, scale=0.0)
    with pytest.raises(ValueError, match="std"):
        Rescaled.from_mean_std(spy, 0.0, 0.0)


def test_averaged_and_residual():
    x = torch.rand(1, 1, 5, 5)
    q = lambda z, sigma=None: -z          # noqa: E731 - 1-Lipschitz
    j = Averaged(q, q_is_nonexpansive=True)
    assert torch.allclose(j(x), torch.zeros_like(x)) and j.firmly_nonexpansive
    j3 = Averaged(q, alpha=0.75, q_is_nonexpansive=True)
    assert torch.allclose(j3(x), -0.5 * x) and not j3.firmly_nonexpansive
    assert not Averaged(q).firmly_nonexpansive
    with pytest.raises(ValueError, match="alpha"):
        Averaged(q, alpha=0.0)
    res = Residual(lambda z, sigma=None: 0.25 * z)
    assert torch.allclose(res(x), 0.75 * x)


def test_random_patches():
    imgs = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    p = random_patches(imgs, 4, 7, torch.Generator().manual_seed(0))
    assert p.shape == (7, 1, 4, 4)
    assert torch.equal(p[:, :, 0, 1] - p[:, :, 0, 0], torch.ones(7, 1))   # contiguous crops
    with pytest.raises(ValueError, match="patch_size"):
        random_patches(imgs, 11, 1, torch.Generator())


def test_train_denoiser_lowers_the_loss(mnist_digits):
    torch.manual_seed(0)
    net = DnCNN(depth=4, channels=16)
    images = torch.from_numpy(mnist_digits[:8]).float()
    cfg = DenoiserTrainConfig(sigma=0.5, patch_size=16, n_patches=256, epochs=4,
                              batch_size=32, lr=2e-3, seed=0)
    res = train_denoiser(net, images, cfg)
    assert res.n_steps == 32 and len(res.epoch_loss) == 4
    assert res.epoch_loss[-1] < 0.8 * res.epoch_loss[0]
    assert not net.training


def test_train_denoiser_with_penalty(mnist_digits):
    torch.manual_seed(0)
    net = DnCNN(depth=3, channels=8)
    images = torch.from_numpy(mnist_digits[:4]).float()
    cfg = DenoiserTrainConfig(sigma=0.5, patch_size=12, n_patches=64, epochs=1, batch_size=16,
                              lipschitz_penalty=1e-2, penalty_iter=3, penalty_batch=4,
                              max_steps=3)
    res = train_denoiser(net, images, cfg)
    assert res.n_steps == 3 and len(res.step_penalty) == 3
    assert all(p >= 1 - cfg.penalty_eps for p in res.step_penalty)


def test_train_denoiser_errors(mnist_digits):
    net = DnCNN(depth=2, channels=2)
    imgs = mnist_digits[:2]
    with pytest.raises(ValueError, match="loss"):
        train_denoiser(net, imgs, DenoiserTrainConfig(loss="l3"))
    with pytest.raises(ValueError, match="lipschitz_penalty"):
        train_denoiser(net, imgs, DenoiserTrainConfig(lipschitz_penalty=-1.0))
    with pytest.raises(ValueError, match="patch_size"):
        train_denoiser(net, imgs, DenoiserTrainConfig(patch_size=64))
    with pytest.raises(ValueError, match="clean_images"):
        train_denoiser(net, imgs.reshape(-1), DenoiserTrainConfig())
    with pytest.raises(ValueError, match="depth"):
        DnCNN(depth=1)
    with pytest.raises(ValueError, match="kernel_size"):
        DnCNN(kernel_size=4)


def test_relaxed_keeps_the_certificate_of_a_firmly_nonexpansive_denoiser():
    from convexnn import pretrained
    from convexnn.solvers.denoisers import Relaxed

    den = pretrained.load("gray-s10-fne")
    gen = torch.Generator().manual_seed(3)
    x = torch.rand((6, 1, 20, 20), generator=gen, dtype=torch.float64)
    y = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for alpha in (0.25, 0.6, 1.0):
        j = Relaxed(den, alpha)
        assert j.firmly_nonexpansive and j.lipschitz_certificate <= 1.0
        with torch.no_grad():
            assert torch.allclose(j(x), (1 - alpha) * x + alpha * den(x), atol=1e-12)
            d = j(x) - j(y)
        # ||J x - J y||^2 <= <J x - J y, x - y> on random pairs
        assert torch.all((d ** 2).flatten(1).sum(1) <= (d * (x - y)).flatten(1).sum(1) + 1e-12)
    assert Relaxed(torch.nn.Identity(), 0.5).lipschitz_certificate is None
    with pytest.raises(ValueError, match="alpha"):
        Relaxed(den, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        Relaxed(den, 1.5)
