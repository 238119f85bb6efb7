"""convexnn.data.restoration: test sets, Levin kernels, MRI slices, BART k-space, cfl files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from convexnn.data import (
    RESTORATION_DIR_ENV,
    RESTORATION_SETS,
    demo_images,
    load_bart_kspace,
    load_levin_kernels,
    load_mri_slices,
    load_test_images,
    read_cfl,
    restoration_data_dir,
    write_cfl,
)

_REPO = Path(__file__).resolve().parent.parent


def _shared_dir() -> Path | None:
    env = os.environ.get("CONVEXNN_SHARED_DATASETS", "").strip()
    from_env = [Path(env).expanduser(), _REPO / Path(env).expanduser()] if env else []
    for cand in from_env + [_REPO.parent / "shared" / "datasets"]:  # env, then ../shared
        if cand.is_dir():
            return cand
    return None


SHARED = _shared_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="restoration data not shipped (licenses): set "
    "$CONVEXNN_SHARED_DATASETS or put the reference data at ../shared/datasets")

COUNTS = {"set3c": 3, "set5": 5, "set14": 13, "set12": 11, "bsd68": 68, "cbsd10": 10}


@needs_shared
@pytest.mark.parametrize("name", RESTORATION_SETS)
def test_load_test_images_gray(name):
    ims = load_test_images(name, root=SHARED)
    assert len(ims) == COUNTS[name]
    for im in ims:
        assert im.dtype == np.float64 and im.ndim == 2 and min(im.shape) >= 228
        assert 0.0 <= im.min() < im.max() <= 1.0


@needs_shared
def test_load_test_images_color_and_luma():
    rgb = load_test_images("set3c", grayscale=False, root=SHARED)
    assert [im.shape for im in rgb] == [(256, 256, 3)] * 3
    set14 = load_test_images("set14", grayscale=False, root=SHARED)
    assert sum(im.ndim == 2 for im in set14) == 1  # bridge.bmp is gray, 12 others RGB
    # the 601 luma turns CBSD68 into BSD68 exactly: cbsd10/0000 = BSDS 3096 = bsd68/test066
    gray = load_test_images("cbsd10", root=SHARED)[0]
    bsd = load_test_images("bsd68", root=SHARED)[65]
    np.testing.assert_array_equal(gray, bsd)


@needs_shared
def test_env_variable_lookup(monkeypatch):
    monkeypatch.delenv("CONVEXNN_SHARED_DATASETS", raising=False)
    monkeypatch.setenv(RESTORATION_DIR_ENV, str(SHARED))
    assert len(load_test_images("set3c")) == 3
    monkeypatch.delenv(RESTORATION_DIR_ENV)
    monkeypatch.setenv("CONVEXNN_SHARED_DATASETS", str(SHARED))
    assert restoration_data_dir("set5") == SHARED / "set5"


@needs_shared
def test_levin_kernels(tmp_path):
    ks = load_levin_kernels(root=SHARED)
    assert [k.shape for k in ks] == [(s, s) for s in (19, 17, 15, 27, 13, 21, 23, 23)]
    for k in ks:
        assert k.dtype == np.float64 and k.min() >= 0 and abs(k.sum() - 1) < 1e-12
    pytest.importorskip("h5py")
    (tmp_path / "levin09_kernels").mkdir()  # the .mat fallback reads the same kernels
    shutil.copy(SHARED / "levin09_kernels" / "Levin09.mat", tmp_path / "levin09_kernels")
    for a, b in zip(load_levin_kernels(root=tmp_path), ks, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


@needs_shared
def test_mri_slices():
    vol = load_mri_slices(root=SHARED)
    assert vol.shape == (10, 256, 256) and vol.dtype == np.float64
    assert vol.min() >= 0 and vol.max() == 1.0


@needs_shared
def test_bart_kspace():
    data = load_bart_kspace(root=SHARED)
    ksp, ref = data
    assert ksp.shape == (8, 180, 230) and ksp.dtype == np.complex64
    assert ref.shape == (2, 180, 230) and np.iscomplexobj(ref)
    mask = data.mask
    assert 0.12 < mask.mean() < 0.135  # about 7.9x undersampled
    assert mask[90 - 10:90 + 10, 115 - 10:115 + 10].all()  # 20 x 20 calibration centre
    # centred k-space: the zero-filled root-sum-of-squares image resembles the reference
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(ksp, axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1))
    rss = np.sqrt((np.abs(img) ** 2).sum(0))
    ref_mag = np.sqrt((np.abs(ref) ** 2).sum(0))
    assert np.corrcoef(rss.ravel(), ref_mag.ravel())[0, 1] > 0.9


def test_cfl_reader_on_a_tiny_file(tmp_path):
    # hand-written pair: dims (2, 3) column-major, value j * 2 + i at [i, j], imaginary = -real
    vals = np.arange(6, dtype=np.float32)
    (tmp_path / "t.hdr").write_text("# Dimensions\n2 3 1 1 1 1 1 1 1 1 1 1 1 1 1 1 \n")
    (vals - 1j * vals).astype("<c8").tofile(tmp_path / "t.cfl")
    arr = read_cfl(tmp_path / "t.cfl")
    assert arr.shape == (2, 3) and arr.dtype == np.complex64
    assert arr[1, 2] == 5 - 5j and arr[1, 0] == 1 - 1j and arr[0, 1] == 2 - 2j
    z = (np.arange(24).reshape(2, 3, 4) * (1 + 0.5j)).astype(np.complex64)
    write_cfl(tmp_path / "z", z)
    np.testing.assert_array_equal(read_cfl(tmp_path / "z"), z)
    (tmp_path / "bad.hdr").write_text("# Dimensions\n4 4\n")
    z.reshape(-1)[:5].tofile(tmp_path / "bad.cfl")
    with pytest.raises(ValueError, match="holds 5 complex64 values"):
        read_cfl(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing.hdr"):
        read_cfl(tmp_path / "missing")


def test_demo_images_need_no_files():
    ims = demo_images()
    assert {k: v.shape for k, v in ims.items()} == {
        "camera": (512, 512), "astronaut": (512, 512), "shepp_logan_phantom": (400, 400)}
    for im in ims.values():
        assert im.dtype == np.float64 and 0.0 <= im.min() < im.max() <= 1.0


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected one of"):
        load_test_images("set99")
    monkeypatch.delenv("CONVEXNN_SHARED_DATASETS", raising=False)
    monkeypatch.delenv(RESTORATION_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="CONVEXNN_RESTORATION_DIR"):
        load_levin_kernels()
    with pytest.raises(FileNotFoundError, match="no image files"):
        load_test_images("set5", root=tmp_path)


@needs_shared
def test_train400_loads_by_path_as_gray_unit_images(monkeypatch):
    from convexnn.data import load_training_images

    monkeypatch.setenv("CONVEXNN_SHARED_DATASETS", str(SHARED))
    images = load_training_images("train400")
    assert len(images) == 400
    assert all(im.shape == (180, 180) and im.dtype == np.float64 for im in images)
    assert min(float(im.min()) for im in images) >= 0.0
    assert max(float(im.max()) for im in images) <= 1.0
    assert np.std(images[0]) > 0.05                  # real images, not blanks


def test_unknown_training_set_names_the_known_ones():
    from convexnn.data import load_training_images

    with pytest.raises(ValueError, match=r"expected one of \['train400'\], got 'bsd68'"):
        load_training_images("bsd68")
