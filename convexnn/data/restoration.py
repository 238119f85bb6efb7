"""Restoration test data: classic test sets, Levin blur kernels, MRI slices and BART k-space.

None of these files is shipped with convexnn: their licenses are unclear or forbid it (see each
folder's PROVENANCE.md in the shared reference data). They load from, in this order:

1. the ``root`` argument: a folder that holds the files, or holds a ``<name>/`` subfolder;
2. ``$CONVEXNN_RESTORATION_DIR/<name>``;
3. ``$CONVEXNN_SHARED_DATASETS/<name>`` (``shared_datasets_dir()``);
4. shipped package data ``convexnn.datasets/<name>`` (none at present).

``demo_images()`` needs no files: it uses scikit-image's bundled images.
Images come back as float64 in [0, 1], ``(H, W)`` or ``(H, W, 3)``.
"""

from __future__ import annotations

import os
import re
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convexnn.data.bundled import SHARED_DATASETS_ENV, bundled_dataset_path, shared_datasets_dir

__all__ = [
    "RESTORATION_SETS",
    "RESTORATION_DIR_ENV",
    "LEVIN_DIR",
    "MRI_SLICES_DIR",
    "BART_DIR",
    "restoration_data_dir",
    "load_test_images",
    "TRAINING_SETS",
    "load_training_images",
    "load_levin_kernels",
    "load_mri_slices",
    "BartKspace",
    "load_bart_kspace",
    "read_cfl",
    "write_cfl",
    "demo_images",
]

RESTORATION_DIR_ENV = "CONVEXNN_RESTORATION_DIR"
RESTORATION_SETS = ("set3c", "set5", "set14", "set12", "bsd68", "cbsd10")
TRAINING_SETS = ("train400",)   # DnCNN's grayscale training set (400 BSDS crops, 180 x 180)
LEVIN_DIR = "levin09_kernels"
MRI_SLICES_DIR = "mri_brain_skimage"
BART_DIR = "mri_brain_bart_pics"
_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")

PathArg = str | PathLike | None


def restoration_data_dir(name: str, root: PathArg = None, must_contain: str | None = None) -> Path:
    """The folder holding data set ``name`` (see the module docstring for the search order).

    ``must_contain`` (a glob pattern) picks the first candidate with a matching file; without it
    the first existing folder wins. Raises ``FileNotFoundError`` listing every place tried.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"restoration_data_dir: expected a data set name, got {name!r}")
    candidates: list[tuple[str, Path]] = []
    if root is not None:
        base = Path(root).expanduser()
        candidates += [("root argument", base / name), ("root argument", base)]
    env = os.environ.get(RESTORATION_DIR_ENV, "").strip()
    if env:
        candidates.append((f"${RESTORATION_DIR_ENV}", Path(env).expanduser() / name))
    shared = shared_datasets_dir()
    if shared is not None:
        candidates.append((f"${SHARED_DATASETS_ENV}", shared / name))
    try:
        candidates.append(("shipped package data", bundled_dataset_path(name)))
    except (FileNotFoundError, ValueError):
        pass
    for _, path in candidates:
        if path.is_dir() and (must_contain is None or any(path.glob(must_contain))):
            return path
    tried = "; ".join(f"{label}: {path}" for label, path in candidates) or "nothing"
    want = f" with files {must_contain!r}" if must_contain else ""
    raise FileNotFoundError(
        f"data set {name!r} not found (a folder{want}); tried {tried}. It is not shipped with "
        f"convexnn (license, see its PROVENANCE.md): pass root=..., or set "
        f"${RESTORATION_DIR_ENV} or ${SHARED_DATASETS_ENV} to a folder holding {name}/")


def _image_to_unit(path: Path, grayscale: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "RGBA", "LA", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        if grayscale and im.mode == "RGB":
            im = im.convert("L")  # ITU-R 601-2 luma: turns CBSD68 into BSD68 bit for bit
        arr = np.asarray(im)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D gray or RGB image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    out = arr.astype(np.float64)
    if out.size and (out.min() < 0 or out.max() > 1):
        raise ValueError(f"{path}: float image outside [0, 1] (min {out.min()}, max {out.max()})")
    return out


def load_test_images(name: str, grayscale: bool = True, root: PathArg = None) -> list[np.ndarray]:
    """A restoration test set as float64 images in [0, 1], in file-name order.

    ``name`` is one of ``RESTORATION_SETS``. ``grayscale=True`` converts RGB with the ITU-R
    601-2 luma (PIL ``convert("L")``) and returns ``(H, W)``; otherwise RGB images are
    ``(H, W, 3)`` and gray ones stay ``(H, W)``. The shared copies: set3c 3, set5 5, set14 13
    (Lena removed), set12 11 (Lena removed), bsd68 68, cbsd10 10 images.
    """
    if not isinstance(name, str) or name.lower() not in RESTORATION_SETS:
        raise ValueError(f"load_test_images: name: expected one of {list(RESTORATION_SETS)}, "
                         f"got {name!r}")
    name = name.lower()
    folder = restoration_data_dir(name, root)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"load_test_images: no image files ({', '.join(_IMAGE_SUFFIXES)})"
                                f" in {folder}")
    return [_image_to_unit(p, grayscale) for p in files]


def load_training_images(name: str = "train400", root: PathArg = None) -> list[np.ndarray]:
    """A denoising training set as float64 gray images in [0, 1], in file-name order.

    ``name`` is one of ``TRAINING_SETS``: ``train400``, the 400 gray 180 x 180 images DnCNN
    (and TNRD before it) trains on, meant to be disjoint from the BSD68 test images. Never
    shipped (its PROVENANCE.md): it loads by path like the test sets.
    """
    if not isinstance(name, str) or name.lower() not in TRAINING_SETS:
        raise ValueError(f"load_training_images: name: expected one of {list(TRAINING_SETS)}, "
                         f"got {name!r}")
    folder = restoration_data_dir(name.lower(), root, must_contain="*.png")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    return [_image_to_unit(p, True) for p in files]


def _levin_from_mat(path: Path) -> list[np.ndarray]:
    """Levin09.mat (MATLAB v7.3 = HDF5, key 'kernels', an 8x1 cell) through h5py."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"reading {path} (MATLAB v7.3) needs h5py; or provide "
                          f"levin09_kernels_derived.npz") from err
    with h5py.File(path, "r") as f:
        refs = np.asarray(f["kernels"]).reshape(-1)
        return [np.asarray(f[ref], dtype=np.float64).T for ref in refs]  # HDF5 is transposed


def load_levin_kernels(root: PathArg = None) -> list[np.ndarray]:
    """The 8 motion-blur kernels of Levin et al. (CVPR 2009), float64, each summing to 1.

    Sizes 19, 17, 15, 27, 13, 21, 23, 23 (square). Read from ``levin09_kernels_derived.npz``
    (keys ``kernel_0`` .. ``kernel_7``, MATLAB orientation), else from ``Levin09.mat`` with h5py.
    """
    folder = restoration_data_dir(LEVIN_DIR, root, must_contain="*evin09*")
    npz = folder / "levin09_kernels_derived.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as data:
            keys = sorted((k for k in data.files if re.fullmatch(r"kernel_\d+", k)),
                          key=lambda k: int(k.split("_")[1]))
            kernels = [np.asarray(data[k], dtype=np.float64) for k in keys]
    elif (folder / "Levin09.mat").is_file():
        kernels = _levin_from_mat(folder / "Levin09.mat")
    else:
        raise FileNotFoundError(f"load_levin_kernels: neither levin09_kernels_derived.npz nor "
                                f"Levin09.mat in {folder}")
    if len(kernels) != 8:
        raise ValueError(f"load_levin_kernels: expected 8 kernels, found {len(kernels)} in "
                         f"{folder}")
    out = []
    for i, k in enumerate(kernels):
        if k.ndim != 2 or not np.all(np.isfinite(k)) or k.min() < 0 or k.sum() <= 0:
            raise ValueError(f"load_levin_kernels: kernel {i} must be a finite non-negative 2-D "
                             f"array with a positive sum, got shape {k.shape}")
        out.append(k / k.sum())  # normalise: sum 1
    return out


def load_mri_slices(root: PathArg = None) -> np.ndarray:
    """The 10 axial 256 x 256 MRI head slices (scikit-image 'brain'), float64 in [0, 1].

    Magnitude images (no k-space): divided by the volume's maximum. Shape ``(10, 256, 256)``.
    """
    from PIL import Image

    folder = restoration_data_dir(MRI_SLICES_DIR, root, must_contain="brain.tif*")
    path = next(p for p in (folder / "brain.tiff", folder / "brain.tif") if p.is_file())
    with Image.open(path) as im:
        frames = []
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            frames.append(np.asarray(im).astype(np.float64))
    vol = np.stack(frames)
    if vol.ndim != 3 or vol.max() <= 0:
        raise ValueError(f"load_mri_slices: expected a non-empty (n, H, W) volume in {path}, got "
                         f"shape {vol.shape}, max {vol.max()}")
    return vol / vol.max()


def _cfl_base(path: str | PathLike) -> Path:
    p = Path(path).expanduser()
    return p.with_suffix("") if p.suffix in (".cfl", ".hdr") else p


def read_cfl(path: str | PathLike) -> np.ndarray:
    """Read a BART ``.cfl``/``.hdr`` pair (``path`` with or without extension).

    The ``.hdr`` holds the dimensions on the line after ``# Dimensions``; the ``.cfl`` is raw
    little-endian complex64 in column-major (Fortran) order. Trailing singleton dimensions are
    dropped (BART writes 16).
    """
    base = _cfl_base(path)
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    if not hdr.is_file() or not cfl.is_file():
        raise FileNotFoundError(f"read_cfl: expected {hdr} and {cfl}")
    lines = hdr.read_text().splitlines()
    try:
        i = next(j for j, line in enumerate(lines) if line.strip() == "# Dimensions")
        dims = [int(d) for d in lines[i + 1].split()]
    except (StopIteration, IndexError, ValueError):
        raise ValueError(f"read_cfl: {hdr}: expected a '# Dimensions' line followed by "
                         f"integers") from None
    if not dims or min(dims) < 0:
        raise ValueError(f"read_cfl: {hdr}: bad dimensions {dims}")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    count = int(np.prod(dims))
    data = np.fromfile(cfl, dtype="<c8")
    if data.size != count:
        raise ValueError(f"read_cfl: {cfl} holds {data.size} complex64 values, the header "
                         f"{dims} says {count}")
    return data.reshape(dims, order="F")


def write_cfl(path: str | PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a BART ``.cfl``/``.hdr`` pair (complex64, column-major)."""
    base = _cfl_base(path)
    arr = np.asarray(array)
    dims = list(arr.shape) + [1] * max(0, 16 - arr.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + " \n")
    np.asarray(arr, dtype="<c8").reshape(-1, order="F").tofile(base.with_suffix(".cfl"))


class BartKspace(NamedTuple):
    """BART 'pics-brain' data: 8-coil k-space of one 180 x 230 plane, and its reference."""

    kspace: np.ndarray  # complex64 (8, 180, 230): coils first, centred k-space, ~12.7% sampled
    reference: np.ndarray  # complex64 (2, 180, 230): 2-map ESPIRiT recon of the full data

    @property
    def mask(self) -> np.ndarray:
        """The sampling pattern: 1.0 where any coil has a non-zero sample, float64 (H, W)."""
        return (np.abs(self.kspace).sum(axis=0) > 0).astype(np.float64)


def load_bart_kspace(root: PathArg = None) -> BartKspace:
    """Real multi-coil brain k-space (BART ISMRM 2016 workshop) and its reference image.

    ``ksp`` (BART dims READ=1, PHS1=180, PHS2=230, COIL=8) becomes ``kspace (8, 180, 230)``;
    ``img`` (1, 180, 230, 1, MAPS=2) becomes ``reference (2, 180, 230)``.
    """
    folder = restoration_data_dir(BART_DIR, root, must_contain="ksp.cfl")
    ksp, img = read_cfl(folder / "ksp"), read_cfl(folder / "img")
    if ksp.ndim != 4 or ksp.shape[0] != 1:
        raise ValueError(f"load_bart_kspace: expected ksp dims (1, H, W, coils), got {ksp.shape}")
    ref = img.reshape(img.shape[1], img.shape[2], -1)
    return BartKspace(np.ascontiguousarray(np.moveaxis(ksp[0], -1, 0)),
                      np.ascontiguousarray(np.moveaxis(ref, -1, 0)))


def demo_images() -> dict[str, np.ndarray]:
    """scikit-image's bundled images, no files needed: float64 in [0, 1], gray.

    ``camera`` (512, 512), ``astronaut`` (512, 512; ITU-R 601-2 luma of the RGB original) and
    ``shepp_logan_phantom`` (400, 400).
    """
    from PIL import Image
    from skimage import data

    astro = np.asarray(Image.fromarray(data.astronaut()).convert("L"))
    return {
        "camera": data.camera().astype(np.float64) / 255.0,
        "astronaut": astro.astype(np.float64) / 255.0,
        "shepp_logan_phantom": np.clip(data.shepp_logan_phantom().astype(np.float64), 0, 1),
    }
