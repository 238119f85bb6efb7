"""Tests for convexnn.data: IDX/MNIST loading, denoising split, noise, user images."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from skimage.io import imsave

from convexnn.data import (
    MNIST_MEAN,
    MNIST_STD,
    MNISTDenoisingSplit,
    NoiseConfig,
    add_exponential_noise,
    add_gaussian_noise,
    add_noise,
    bundled_dataset_path,
    denormalize_mnist,
    idx_md5,
    load_image_pairs,
    load_images,
    load_mnist,
    mnist_denoising_split,
    normalize_mnist,
    read_idx,
    shared_datasets_dir,
)

IMAGES_GZ = "t10k-images-idx3-ubyte.gz"
LABELS_GZ = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def _no_mnist_env(monkeypatch):
    monkeypatch.delenv("CONVEXNN_MNIST_DIR", raising=False)


@pytest.fixture(scope="module")
def test_images():
    return read_idx(bundled_dataset_path("mnist", IMAGES_GZ))


# ---------------------------------------------------------------- shipped files, IDX reader


def test_bundled_dataset_path_finds_mnist():
    p = bundled_dataset_path("mnist", IMAGES_GZ)
    assert p.is_file() and p.name == IMAGES_GZ
    with pytest.raises(FileNotFoundError, match="no-such-file"):
        bundled_dataset_path("mnist", "no-such-file.gz")


def test_shared_datasets_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVEXNN_SHARED_DATASETS", raising=False)
    assert shared_datasets_dir() is None
    monkeypatch.setenv("CONVEXNN_SHARED_DATASETS", str(tmp_path))
    assert shared_datasets_dir() == tmp_path


def test_read_idx_bundled_test_set(test_images):
    labels = read_idx(bundled_dataset_path("mnist", LABELS_GZ))
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels, minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert idx_md5(bundled_dataset_path("mnist", IMAGES_GZ)) == "2646ac647ad5339dbf082846283269ea"
    assert idx_md5(bundled_dataset_path("mnist", LABELS_GZ)) == "27ae3e4e09519cfbb04c329615203637"


def test_read_idx_raw_equals_gz(tmp_path):
    gz = bundled_dataset_path("mnist", LABELS_GZ)
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    np.testing.assert_array_equal(read_idx(raw), read_idx(gz))
    assert idx_md5(raw) == idx_md5(gz)


def test_read_idx_other_dtypes(tmp_path):
    arr = (np.arange(24).reshape(2, 3, 4) / 7).astype(">f4")
    path = tmp_path / "floats.idx"
    path.write_bytes(bytes([0, 0, 0x0D, 3]) + np.array([2, 3, 4], ">u4").tobytes()
                     + arr.tobytes())
    out = read_idx(path)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_errors_name_the_file(tmp_path):
    raw = gzip.decompress(bundled_dataset_path("mnist", LABELS_GZ).read_bytes())
    cases = {
        "truncated-raw": raw[:-10],
        "trailing-bytes": raw + b"\x00\x00",
        "bad-magic": b"\x08\x03\x00\x00" + raw[4:],
        "html.gz": b"<!DOCTYPE html><html><body>Not Found</body></html>\n" * 50,
        "truncated.gz": gzip.compress(raw)[:500],
        "tiny": b"\x00\x00",
    }
    expected = {"truncated-raw": "truncated", "trailing-bytes": "trailing",
                "bad-magic": "magic", "html.gz": "HTML", "truncated.gz": "gzip", "tiny": "header"}
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=expected[name]) as info:
            read_idx(path)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing.gz")


# ---------------------------------------------------------------- load_mnist


def test_load_mnist_test_split(test_images):
    images, labels = load_mnist("test", labels=True)
    np.testing.assert_array_equal(images, test_images)
    assert labels[:3].tolist() == [7, 2, 1]
    images[0] = 0  # a copy: the cache must not be modified
    assert load_mnist("test")[0].any()
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


def test_load_mnist_train_needs_root():
    with pytest.raises(FileNotFoundError, match="CONVEXNN_MNIST_DIR"):
        load_mnist("train")


def _fake_train_root(tmp_path):
    """Copies of the test files renamed as train files (one gzip, one raw)."""
    shutil.copy(bundled_dataset_path("mnist", IMAGES_GZ), tmp_path / "train-images-idx3-ubyte.gz")
    raw = gzip.decompress(bundled_dataset_path("mnist", LABELS_GZ).read_bytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw)
    return tmp_path


def test_load_mnist_root_and_env(tmp_path, monkeypatch, test_images):
    root = _fake_train_root(tmp_path)
    images, labels = load_mnist("train", root=root, labels=True, verify=False)
    np.testing.assert_array_equal(images, test_images)
    assert labels.shape == (10000,)
    with pytest.raises(ValueError, match="md5 mismatch"):
        load_mnist("train", root=root, verify=True)
    monkeypatch.setenv("CONVEXNN_MNIST_DIR", str(root))
    assert load_mnist("train", verify=False).shape == (10000, 28, 28)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist("test")  # the env folder has no test files
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist("test", root=tmp_path / "nope")


def test_normalize_roundtrip():
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    z = normalize_mnist(x)
    assert z.dtype == np.float64
    np.testing.assert_allclose(z[0, 0], -MNIST_MEAN / MNIST_STD)
    np.testing.assert_allclose(denormalize_mnist(z), x)
    t = normalize_mnist(torch.from_numpy(x))
    assert t.is_floating_point()
    np.testing.assert_allclose(t.numpy(), z, rtol=1e-6)


# ---------------------------------------------------------------- denoising split


def test_mnist_denoising_split():
    s = mnist_denoising_split(n_train=600, n_test=1000, seed=0)
    assert isinstance(s, MNISTDenoisingSplit)
    assert s.train_clean.shape == (600, 1, 28, 28) and s.test_clean.shape == (1000, 1, 28, 28)
    assert s.train_clean.dtype == torch.float32
    assert len(set(s.train_indices)) == 600 and len(set(s.test_indices)) == 1000
    assert not set(s.train_indices) & set(s.test_indices)
    assert "TEST" in s.source
    assert abs(float(s.train_clean.mean())) < 0.1
    assert abs(float(s.train_clean.std()) - 1.0) < 0.15
    # the tensors are the normalised source images at the stated indices
    src = load_mnist("test")
    np.testing.assert_allclose(s.test_clean[:5, 0].numpy(),
                               normalize_mnist(src[s.test_indices[:5]]), rtol=1e-6, atol=1e-6)

    again = mnist_denoising_split(n_train=600, n_test=1000, seed=0)
    np.testing.assert_array_equal(again.train_indices, s.train_indices)
    assert torch.equal(again.test_clean, s.test_clean)
    other = mnist_denoising_split(n_train=600, n_test=1000, seed=1)
    assert not np.array_equal(other.train_indices, s.train_indices)
    assert mnist_denoising_split(5, 5, dtype=torch.float64).train_clean.dtype == torch.float64


def test_mnist_denoising_split_errors():
    with pytest.raises(ValueError, match="exceeds"):
        mnist_denoising_split(n_train=9001, n_test=1000)
    for bad in ({"n_train": 0}, {"n_test": -1}, {"n_train": 1.5}):
        with pytest.raises(ValueError):
            mnist_denoising_split(**bad)


def test_mnist_denoising_split_with_root(tmp_path):
    root = _fake_train_root(tmp_path)
    shutil.copy(bundled_dataset_path("mnist", IMAGES_GZ), root / IMAGES_GZ)
    shutil.copy(bundled_dataset_path("mnist", LABELS_GZ), root / LABELS_GZ)
    with pytest.raises(ValueError, match="md5 mismatch"):  # fake train files are rejected
        mnist_denoising_split(10, 10, root=root)
    with pytest.raises(ValueError, match="60000"):
        mnist_denoising_split(60001, 10, root=root)


# ---------------------------------------------------------------- noise


def test_noise_config_validation():
    assert NoiseConfig("Gaussian").kind == "gaussian"
    for bad in ({"kind": "poisson"}, {"sigma": 0.0}, {"sigma": -1.0}, {"sigma": float("nan")},
                {"sigma": float("inf")}, {"sigma": True}, {"seed": -1}, {"seed": 1.5}):
        with pytest.raises(ValueError):
            NoiseConfig(**bad)
    with pytest.raises(TypeError):
        add_noise(np.zeros(3, dtype=np.uint8), NoiseConfig())


def test_gaussian_noise_statistics_and_determinism():
    clean = np.zeros(100_000)
    noisy = add_gaussian_noise(clean, sigma=0.5, seed=3)
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    assert abs(noisy.std() / 0.5 - 1) < 0.02
    assert abs(noisy.mean()) < 0.01
    np.testing.assert_array_equal(noisy, add_gaussian_noise(clean, 0.5, seed=3))
    assert not np.array_equal(noisy, add_gaussian_noise(clean, 0.5, seed=4))
    np.testing.assert_array_equal(noisy, add_noise(clean, NoiseConfig("gaussian", 0.5, 3)))


def test_exponential_noise_statistics():
    clean = np.zeros(100_000)
    noisy = add_exponential_noise(clean, scale=0.25, seed=0)
    assert noisy.min() >= 0
    assert abs(noisy.mean() / 0.25 - 1) < 0.03


def test_noise_numpy_and_torch_agree():
    x = np.linspace(-1, 1, 2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)
    for kind in ("gaussian", "exponential"):
        cfg = NoiseConfig(kind, 0.75, seed=7)
        out_np = add_noise(x, cfg)
        out_t = add_noise(torch.from_numpy(x), cfg)
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
        assert out_np.dtype == np.float32 and out_t.shape == x.shape
        np.testing.assert_array_equal(out_t.numpy(), out_np)
        out64 = add_noise(torch.from_numpy(x.astype(np.float64)), cfg)
        assert out64.dtype == torch.float64


# ---------------------------------------------------------------- user images


def test_load_images_npy_npz(tmp_path):
    u8 = (np.arange(3 * 5 * 6) % 256).astype(np.uint8).reshape(3, 5, 6)
    np.save(tmp_path / "a.npy", u8)
    out = load_images(tmp_path / "a.npy")
    assert out.shape == (3, 1, 5, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, 0], u8 / 255.0)
    np.save(tmp_path / "single.npy", np.ones((5, 6), dtype=np.float32))
    assert load_images(tmp_path / "single.npy").shape == (1, 1, 5, 6)
    rgb = np.random.default_rng(0).random((2, 3, 5, 6))
    np.save(tmp_path / "rgb.npy", rgb)
    assert load_images(tmp_path / "rgb.npy").shape == (2, 1, 5, 6)
    assert load_images(tmp_path / "rgb.npy", grayscale=False).shape == (2, 3, 5, 6)

    np.savez(tmp_path / "one.npz", images=u8)
    np.testing.assert_array_equal(load_images(tmp_path / "one.npz"), out)
    np.savez(tmp_path / "two.npz", a=u8, b=u8[:1])
    assert load_images(tmp_path / "two.npz", key="b").shape == (1, 1, 5, 6)
    with pytest.raises(ValueError, match="key"):
        load_images(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="'nope'"):
        load_images(tmp_path / "two.npz", key="nope")

    np.savez(tmp_path / "pairs.npz", noisy=u8, clean=u8)
    with pytest.raises(ValueError, match="load_image_pairs"):
        load_images(tmp_path / "pairs.npz")
    bad = np.zeros((2, 4, 4))
    bad[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        load_images(tmp_path / "nan.npy")
    np.save(tmp_path / "5d.npy", np.zeros((1, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        load_images(tmp_path / "5d.npy")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="extension"):
        load_images(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing.npy")


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        imsave(folder / f"img{i:02d}.png", img, check_contrast=False)


def test_load_images_png_folder(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 8, 9), dtype=np.uint8)
    _write_pngs(tmp_path / "gray", gray)
    (tmp_path / "gray" / "notes.txt").write_text("ignored")
    out = load_images(tmp_path / "gray")
    assert out.shape == (3, 1, 8, 9)
    np.testing.assert_allclose(out[:, 0], gray / 255.0)
    assert load_images(tmp_path / "gray" / "img01.png").shape == (1, 1, 8, 9)

    rgb = rng.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    _write_pngs(tmp_path / "rgb", rgb)
    assert load_images(tmp_path / "rgb").shape == (2, 1, 8, 9)
    col = load_images(tmp_path / "rgb", grayscale=False)
    assert col.shape == (2, 3, 8, 9)
    np.testing.assert_allclose(col[1], np.moveaxis(rgb[1], -1, 0) / 255.0)

    _write_pngs(tmp_path / "mixed", [gray[0], gray[1, :7]])
    with pytest.raises(ValueError, match="img01.png"):
        load_images(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none"):
        load_images(tmp_path / "empty")


def test_load_image_pairs(tmp_path):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (2, 6, 7), dtype=np.uint8)
    noisy = rng.integers(0, 256, (2, 6, 7), dtype=np.uint8)
    _write_pngs(tmp_path / "pairs" / "clean", clean)
    _write_pngs(tmp_path / "pairs" / "noisy", noisy)
    n, c = load_image_pairs(tmp_path / "pairs")
    assert n.shape == c.shape == (2, 1, 6, 7)
    np.testing.assert_allclose(n[:, 0], noisy / 255.0)
    np.testing.assert_allclose(c[:, 0], clean / 255.0)

    np.savez(tmp_path / "p.npz", noisy=noisy.astype(np.float32) / 255, clean=clean)
    n2, c2 = load_image_pairs(tmp_path / "p.npz")
    np.testing.assert_allclose(n2, n, rtol=1e-6)
    np.testing.assert_allclose(c2, c)

    np.savez(tmp_path / "shape.npz", noisy=noisy, clean=clean[:1])
    with pytest.raises(ValueError, match="same shape"):
        load_image_pairs(tmp_path / "shape.npz")
    np.savez(tmp_path / "nokeys.npz", images=noisy)
    with pytest.raises(ValueError, match="clean"):
        load_image_pairs(tmp_path / "nokeys.npz")
    (tmp_path / "pairs" / "noisy" / "img01.png").rename(tmp_path / "pairs" / "noisy" / "zz.png")
    with pytest.raises(ValueError, match="zz.png"):
        load_image_pairs(tmp_path / "pairs")
    (tmp_path / "half" / "noisy").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="clean"):
        load_image_pairs(tmp_path / "half")
    with pytest.raises(FileNotFoundError):
        load_image_pairs(tmp_path / "missing")
