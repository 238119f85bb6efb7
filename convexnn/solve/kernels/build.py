"""Build and load `pattern_kernels.c` once per machine: a plain C shared library (no Python or
torch headers, so it compiles in about a second), loaded with ctypes.

The library is cached under `$CONVEXNN_CACHE_DIR` (default `$XDG_CACHE_HOME/convexnn` or
`~/.cache/convexnn`) in a file named by the hash of the source, the compiler's version, the
flags and the machine architecture, so a change of any of them builds a new file and nothing
shared between environments goes stale. It is compiled into a temporary file and moved into
place, so concurrent first uses cannot load a torn library. No `-march=native`: x86-64 builds
carry AVX-512 / AVX2 / baseline clones chosen at load time, so a cache shared by machines with
different CPUs stays valid. Without a C compiler (or with `CONVEXNN_KERNELS=torch`) the torch
implementations in `convexnn.solve.kernels` are used instead (10-30x slower on CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["load_library", "cache_dir", "KernelBuildError"]

SOURCE = Path(__file__).with_name("pattern_kernels.c")
FLAGS = ["-O3", "-std=gnu11", "-shared", "-fPIC", "-Wno-psabi"]


class KernelBuildError(RuntimeError):
    """The C kernels could not be built or loaded (the message says why)."""


def cache_dir() -> Path:
    root = os.environ.get("CONVEXNN_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convexnn"


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which(
        "clang")
    if not cc:
        raise KernelBuildError("no C compiler found (set CC, or install gcc / clang)")
    return cc


def _version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"the C compiler {cc!r} does not run: {exc}") from exc
    return out.stdout.strip()


def _compile(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            raise KernelBuildError(f"{cc} failed ({res.returncode}): {res.stderr.strip()[:600]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_library(verbose: bool = False) -> ctypes.CDLL:
    """The compiled kernels (built on first use, then loaded from the cache)."""
    cc = _compiler()
    version = _version(cc)
    source = SOURCE.read_bytes()
    errors = []
    for flags in (FLAGS + ["-fopenmp"], FLAGS):      # without OpenMP: one thread
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(),
                                         sys.platform.encode()])).hexdigest()[:20]
        target = cache_dir() / "kernels" / f"pattern_kernels-{key}.so"
        if not target.exists():
            if verbose:
                print(f"convexnn: compiling the pattern kernels once ({cc}) into {target}",
                      file=sys.stderr, flush=True)
            try:
                _compile(cc, flags, target)
            except KernelBuildError as exc:
                errors.append(str(exc))
                continue
        try:
            return ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
    raise KernelBuildError("; ".join(errors))
