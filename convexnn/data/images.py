"""Load user images for denoising: ``.npy``, ``.npz``, an image file or a folder of images.

Everything comes back as float64 ``(n, C, H, W)``; integer images are scaled to [0, 1] by the
maximum of their dtype, float images are kept as they are.
"""

from __future__ import annotations

import zipfile
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "load_images", "load_image_pairs"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _to_unit_float(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    raise ValueError(f"{where}: expected real-valued (integer or float) pixels, got dtype "
                     f"{arr.dtype}")


def _rgb_to_gray(channels_last: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(channels_last[..., :3])


def _array_to_nchw(arr: np.ndarray, grayscale: bool, where: str) -> np.ndarray:
    """(H, W), (n, H, W) or (n, C, H, W) array -> finite float64 (n, C, H, W)."""
    x = _to_unit_float(np.asarray(arr), where)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise ValueError(f"{where}: expected an array of shape (H, W), (n, H, W) or "
                         f"(n, C, H, W), got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{where}: expected non-empty images, got shape {x.shape}")
    if grayscale and x.shape[1] in (3, 4):
        x = _rgb_to_gray(np.moveaxis(x, 1, -1))[:, None]
    elif grayscale and x.shape[1] == 2:  # gray + alpha
        x = x[:, :1]
    _check_finite(x, where)
    return np.ascontiguousarray(x)


def _check_finite(x: np.ndarray, where: str) -> None:
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{where}: expected finite pixel values, found {bad} NaN/Inf entries")


_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP",
          b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(path: Path) -> None:
    """Refuse a file whose first bytes are not those of a PNG, JPEG, BMP or TIFF image
    (a text file named .png would otherwise reach an image plug-in's confusing message)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise ValueError(f"{path}: could not open: {err}") from err
    if not any(head.startswith(m) for m in _MAGIC):
        raise ValueError(f"{path}: expected a PNG, JPEG, BMP or TIFF image, but the file does "
                         f"not start like one (first bytes {head[:8]!r})")


def _read_image(path: Path, grayscale: bool) -> np.ndarray:
    """One image file -> float64 (C, H, W) in [0, 1] for integer files."""
    from skimage.io import imread

    _sniff(path)
    try:
        img = imread(str(path))
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: could not read as an image: {err}") from err
    img = _to_unit_float(np.asarray(img), str(path))
    if img.ndim == 2:
        img = img[None]
    elif img.ndim == 3 and img.shape[-1] in (2, 3, 4):
        if grayscale:
            img = img[None, ..., 0] if img.shape[-1] == 2 else _rgb_to_gray(img)[None]
        else:
            img = np.moveaxis(img[..., :1] if img.shape[-1] == 2
                              else img[..., :3], -1, 0)  # alpha dropped
    else:
        raise ValueError(f"{path}: expected a 2-D grayscale or (H, W, 3|4) colour image, got "
                         f"shape {img.shape}")
    _check_finite(img, str(path))
    return img


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: expected image files with extensions "
                         f"{list(IMAGE_EXTENSIONS)}, found none")
    return files


def _stack(files: list[Path], grayscale: bool) -> np.ndarray:
    images = [_read_image(files[0], grayscale)]
    for f in files[1:]:
        img = _read_image(f, grayscale)
        if img.shape != images[0].shape:
            raise ValueError(f"images must all have the same size (C, H, W): {f} has "
                             f"{img.shape}, but {files[0]} has {images[0].shape}")
        images.append(img)
    return np.stack(images)


def _load_array_file(p: Path):
    """``np.load`` without pickles; a damaged file is a ValueError naming it."""
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{p}: could not read as a {p.suffix} array file: {err}") from err


def _member(archive, key: str, p: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{p}: could not read array {key!r}: {err}") from err


def _existing(path: str | PathLike[str]) -> Path:
    if not isinstance(path, (str, PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike file or folder name, got "
                        f"{type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    return p


def load_images(path: str | PathLike[str], grayscale: bool = True,
                key: str | None = None) -> np.ndarray:
    """Images at `path` as float64 ``(n, C, H, W)``.

    `path` is a ``.npy`` array ``(H, W)``, ``(n, H, W)`` or ``(n, C, H, W)``; a ``.npz`` (array
    `key`, or its only array); a single image file; or a folder of PNG/JPG/BMP/TIF images
    (sorted by name, all the same size). `grayscale` turns RGB(A) into one channel with
    ``skimage.color.rgb2gray`` (alpha is dropped).
    """
    p = _existing(path)
    if p.is_dir():
        return _stack(_image_files(p), grayscale)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _array_to_nchw(_load_array_file(p), grayscale, str(p))
    if suffix == ".npz":
        with _load_array_file(p) as archive:
            keys = list(archive.files)
            if key is None:
                if {"noisy", "clean"} <= set(keys):
                    raise ValueError(f"{p}: holds 'noisy' and 'clean' arrays; use "
                                     f"load_image_pairs(path), or load_images(path, key=...)")
                if len(keys) != 1:
                    raise ValueError(f"{p}: expected a single array or key=..., found arrays "
                                     f"{keys}")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"{p}: no array {key!r}; found {keys}")
            return _array_to_nchw(_member(archive, key, p), grayscale, f"{p}[{key!r}]")
    if suffix in IMAGE_EXTENSIONS:
        return _read_image(p, grayscale)[None]
    raise ValueError(f"{p}: expected a folder, .npy, .npz or an image file "
                     f"{list(IMAGE_EXTENSIONS)}, got extension {p.suffix!r}")


def load_image_pairs(path: str | PathLike[str],
                     grayscale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, clean)`` float64 ``(n, C, H, W)`` arrays of identical shape.

    `path` is a ``.npz`` with arrays "noisy" and "clean", or a folder with subfolders
    ``noisy/`` and ``clean/`` holding images with matching file names.
    """
    p = _existing(path)
    if p.is_dir():
        sub = {name: p / name for name in ("noisy", "clean")}
        for name, folder in sub.items():
            if not folder.is_dir():
                raise FileNotFoundError(f"{p}: expected subfolders noisy/ and clean/; "
                                        f"{name}/ is missing")
        files = {name: _image_files(folder) for name, folder in sub.items()}
        names = {k: [f.name for f in v] for k, v in files.items()}
        if names["noisy"] != names["clean"]:
            only_noisy = sorted(set(names["noisy"]) - set(names["clean"]))
            only_clean = sorted(set(names["clean"]) - set(names["noisy"]))
            raise ValueError(f"{p}: noisy/ and clean/ must hold the same file names; only in "
                             f"noisy/: {only_noisy[:5]}, only in clean/: {only_clean[:5]}")
        noisy, clean = _stack(files["noisy"], grayscale), _stack(files["clean"], grayscale)
    elif p.suffix.lower() == ".npz":
        with _load_array_file(p) as archive:
            missing = [k for k in ("noisy", "clean") if k not in archive.files]
            if missing:
                raise ValueError(f"{p}: expected arrays 'noisy' and 'clean', missing {missing} "
                                 f"(found {list(archive.files)})")
            noisy = _array_to_nchw(_member(archive, "noisy", p), grayscale, f"{p}['noisy']")
            clean = _array_to_nchw(_member(archive, "clean", p), grayscale, f"{p}['clean']")
    else:
        raise ValueError(f"{p}: expected a .npz with 'noisy' and 'clean' arrays or a folder "
                         f"with noisy/ and clean/ subfolders, got extension {p.suffix!r}")
    if noisy.shape != clean.shape:
        raise ValueError(f"{p}: noisy and clean must have the same shape, got noisy "
                         f"{noisy.shape} and clean {clean.shape}")
    return noisy, clean
