"""Reader for IDX files (the MNIST container format), gzip-compressed or raw.

IDX layout: magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
``prod(sizes)`` big-endian items. Every mismatch raises a ``ValueError`` naming the file and
what was expected versus found.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "idx_md5"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _looks_like_text(head: bytes) -> str:
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return " (the file looks like an HTML/XML page, e.g. a download error page)"
    if stripped.startswith((b"version https://git-lfs", b"../.git/annex", b"/annex/")):
        return " (the file looks like a Git LFS / git-annex pointer, not the data itself)"
    return ""


def load_bytes(path: str | PathLike[str]) -> bytes:
    """The decompressed IDX bytes of `path` (gzip is detected by its magic bytes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: expected a valid gzip stream ({len(data)} bytes read), "
                         f"decompression failed: {err} (truncated or corrupt download?)") from None


def parse_idx(data: bytes, path: str | PathLike[str]) -> np.ndarray:
    """Parse decompressed IDX bytes; `path` is only used in error messages."""
    if len(data) < 4:
        raise ValueError(f"{path}: expected an IDX header of at least 4 bytes, found only "
                         f"{len(data)} bytes")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: expected IDX magic 00 00 <type in "
                         f"{sorted(f'{c:#04x}' for c in _IDX_DTYPES)}> <ndim>, found "
                         f"{data[:4].hex(' ')}{_looks_like_text(data[:64])}")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: expected a {header}-byte header for {ndim} dimensions, "
                         f"found only {len(data)} bytes (truncated)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "trailing bytes"
        raise ValueError(f"{path}: expected {expected} payload bytes for shape {dims} of "
                         f"{dtype.str[1:]}, found {found} ({kind})")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a native-endian numpy array of its stored shape."""
    return parse_idx(load_bytes(path), path)


def idx_md5(path: str | PathLike[str]) -> str:
    """MD5 hex digest of the DECOMPRESSED bytes of `path` (independent of gzip recompression)."""
    return hashlib.md5(load_bytes(path)).hexdigest()
