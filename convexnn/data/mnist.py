"""MNIST loading, normalisation and the seeded train/test split used for denoising experiments.

convexnn ships only the official MNIST TEST set (10,000 digits, ``datasets/mnist``). The full
training images are not redistributed here; point ``root=`` or ``$CONVEXNN_MNIST_DIR`` at a
folder holding the four standard IDX files (``.gz`` or raw) to use them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch

from convexnn.data.bundled import bundled_dataset_path, shared_datasets_dir
from convexnn.data.idx import load_bytes, parse_idx
from convexnn.model.validation import check_seed

__all__ = [
    "MNIST_DIR_ENV",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_ARCHIVE_MD5",
    "MNIST_MEAN",
    "MNIST_STD",
    "load_mnist",
    "normalize_mnist",
    "denormalize_mnist",
    "MNISTDenoisingSplit",
    "mnist_denoising_split",
]

MNIST_DIR_ENV = "CONVEXNN_MNIST_DIR"

# split -> (images file stem, labels file stem); each may sit on disk as raw or ".gz"
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_SIZE = {"train": 60000, "test": 10000}

# MD5 of the DECOMPRESSED payloads (what `verify` checks): independent of how a mirror gzipped them
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# MD5 of the original LeCun .gz archives (torchvision's list). Informational only: recompressed
# mirrors, including the shipped copy, differ here while their payloads are identical.
MNIST_ARCHIVE_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# pixel statistics of the full 60,000-image training set, on the [0, 1] scale
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_cache: dict[tuple[str, int, int, bool], np.ndarray] = {}


def _check_split(split: str) -> str:
    if split not in MNIST_FILES:
        raise ValueError(f"split: expected one of {list(MNIST_FILES)}, got {split!r}")
    return split


def _resolve_root(root: str | PathLike[str] | None) -> Path | None:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(MNIST_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _locate(split: str, root: Path | None) -> tuple[Path, Path]:
    stems = MNIST_FILES[split]
    if root is not None:
        if not root.is_dir():
            raise FileNotFoundError(f"MNIST root {root} is not a folder (from the root argument "
                                    f"or ${MNIST_DIR_ENV})")
        found = [_find(root, s) for s in stems]
        missing = [s for s, f in zip(stems, found, strict=True) if f is None]
        if missing:
            raise FileNotFoundError(f"MNIST root {root}: expected files "
                                    f"{[m + '[.gz]' for m in missing]}, not found")
        return found[0], found[1]  # type: ignore[return-value]
    if split != "test":
        raise FileNotFoundError(
            f"MNIST split {split!r} is not shipped with convexnn (only the official test set "
            f"is). Download the four standard IDX files and pass their folder as root=..., or "
            f"set the environment variable {MNIST_DIR_ENV}=/path/to/mnist.")
    try:
        return (bundled_dataset_path("mnist", stems[0] + ".gz"),
                bundled_dataset_path("mnist", stems[1] + ".gz"))
    except FileNotFoundError:
        shared = shared_datasets_dir()
        if shared is not None:
            found = [_find(shared / "mnist", s) for s in stems]
            if found[0] is not None and found[1] is not None:
                return found[0], found[1]
        raise


def _read_checked(path: Path, stem: str, verify: bool) -> np.ndarray:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, verify)
    if key not in _cache:
        data = load_bytes(path)
        if verify:
            got = hashlib.md5(data).hexdigest()
            if got != MNIST_MD5[stem]:
                raise ValueError(f"{path}: md5 mismatch: the decompressed payload has md5 {got}, "
                                 f"expected {MNIST_MD5[stem]} for the official {stem}. Replace "
                                 f"the file or pass verify=False to load it anyway.")
        if len(_cache) >= 8:
            _cache.pop(next(iter(_cache)))
        _cache[key] = parse_idx(data, path)
    return _cache[key].copy()


@overload
def load_mnist(split: str = ..., root: str | PathLike[str] | None = ...,
               labels: Literal[False] = ..., verify: bool = ...) -> np.ndarray: ...
@overload
def load_mnist(split: str = ..., root: str | PathLike[str] | None = ..., *,
               labels: Literal[True], verify: bool = ...) -> tuple[np.ndarray, np.ndarray]: ...
def load_mnist(split: str = "test", root: str | PathLike[str] | None = None,
               labels: bool = False, verify: bool = True
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """MNIST digits as uint8 ``(n, 28, 28)`` (and uint8 labels ``(n,)`` if `labels`).

    `root` (or ``$CONVEXNN_MNIST_DIR``) is a folder with the standard file names, gzip or raw.
    Without one only ``split="test"`` is available, from the copy shipped with convexnn.
    `verify` checks the MD5 of the decompressed bytes against the official files.
    """
    split = _check_split(split)
    img_path, lab_path = _locate(split, _resolve_root(root))
    img_stem, lab_stem = MNIST_FILES[split]
    images = _read_checked(img_path, img_stem, verify)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images (n, 28, 28), got "
                         f"{images.dtype} {images.shape}")
    if not labels:
        return images
    targets = _read_checked(lab_path, lab_stem, verify)
    if targets.shape != (images.shape[0],) or targets.dtype != np.uint8:
        raise ValueError(f"{lab_path}: expected uint8 labels ({images.shape[0]},) matching "
                         f"{img_path}, got {targets.dtype} {targets.shape}")
    return images, targets


def normalize_mnist(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``(x / 255 - MNIST_MEAN) / MNIST_STD`` for pixels on the 0..255 scale; float out.

    Integer input becomes float64 (numpy) or the default torch dtype; float input keeps its dtype.
    """
    if isinstance(x, torch.Tensor):
        x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    elif isinstance(x, np.ndarray):
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
    else:
        raise TypeError(f"normalize_mnist: expected a numpy array or torch tensor, got "
                        f"{type(x).__name__}")
    return (x / 255.0 - MNIST_MEAN) / MNIST_STD


def denormalize_mnist(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`normalize_mnist`: float pixels on the 0..255 scale (no rounding/clip)."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"denormalize_mnist: expected a numpy array or torch tensor, got "
                        f"{type(x).__name__}")
    return (x * MNIST_STD + MNIST_MEAN) * 255.0


@dataclass(frozen=True)
class MNISTDenoisingSplit:
    """Clean, normalised MNIST images ``(n, 1, 28, 28)`` for training and testing a denoiser.

    `train_indices` / `test_indices` index into the source split(s) described by `source`.
    """

    train_clean: torch.Tensor
    test_clean: torch.Tensor
    train_indices: np.ndarray
    test_indices: np.ndarray
    source: str


def _check_count(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: expected a positive integer, got {n!r}")
    return int(n)


def _to_tensor(images: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    x = torch.from_numpy(normalize_mnist(images.astype(np.float64)))
    return x.unsqueeze(1).to(dtype).contiguous()


def mnist_denoising_split(n_train: int = 600, n_test: int = 1000, seed: int = 0,
                          root: str | PathLike[str] | None = None,
                          dtype: torch.dtype = torch.float32) -> MNISTDenoisingSplit:
    """Seeded random clean train/test images for the MNIST denoising experiments.

    WARNING - without full MNIST (no `root`, no ``$CONVEXNN_MNIST_DIR``) BOTH parts are drawn,
    disjointly, from the shipped official MNIST TEST set (10,000 digits): ``train_clean`` is NOT
    the official training set, and ``n_train + n_test <= 10000``. The paper trains on 600 images
    and tests on the full 10,000 test set; that protocol needs full MNIST. With `root` given,
    train images come from the official train split (60,000) and test images from the official
    test split, each a seeded random subset.

    Images are normalised with the training-set statistics (``normalize_mnist``). Indices are
    sorted. ``numpy.random.default_rng(seed)`` makes the split identical on every machine.
    """
    n_train = _check_count(n_train, "n_train")
    n_test = _check_count(n_test, "n_test")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    rng = np.random.default_rng(check_seed(seed))
    resolved = _resolve_root(root)
    if resolved is None:
        images = load_mnist("test")
        n_avail = images.shape[0]
        if n_train + n_test > n_avail:
            raise ValueError(f"n_train + n_test = {n_train} + {n_test} = {n_train + n_test} "
                             f"exceeds the {n_avail} images of the shipped MNIST test set that "
                             f"both parts are drawn from; ask for fewer, or give full MNIST via "
                             f"root=... or ${MNIST_DIR_ENV}")
        perm = rng.permutation(n_avail)
        train_idx = np.sort(perm[:n_train])
        test_idx = np.sort(perm[n_train:n_train + n_test])
        train_images, test_images = images[train_idx], images[test_idx]
        source = ("shipped official MNIST TEST set (t10k, 10,000 digits), split into disjoint "
                  "train/test parts; both index sets index into it")
    else:
        for n, split, name in ((n_train, "train", "n_train"), (n_test, "test", "n_test")):
            if n > _SPLIT_SIZE[split]:
                raise ValueError(f"{name} = {n} exceeds the {_SPLIT_SIZE[split]} images of the "
                                 f"official MNIST {split} split")
        train_all = load_mnist("train", resolved)
        test_all = load_mnist("test", resolved)
        for n, arr, name in ((n_train, train_all, "n_train"), (n_test, test_all, "n_test")):
            if n > arr.shape[0]:
                raise ValueError(f"{name} = {n} exceeds the {arr.shape[0]} images found")
        train_idx = np.sort(rng.permutation(train_all.shape[0])[:n_train])
        test_idx = np.sort(rng.permutation(test_all.shape[0])[:n_test])
        train_images, test_images = train_all[train_idx], test_all[test_idx]
        source = (f"official MNIST train split (train_indices) and official test split "
                  f"(test_indices) from {resolved}")
    return MNISTDenoisingSplit(train_clean=_to_tensor(train_images, dtype),
                               test_clean=_to_tensor(test_images, dtype),
                               train_indices=train_idx, test_indices=test_idx, source=source)
