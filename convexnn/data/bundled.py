"""Locate the data files shipped with convexnn (installed package data or a source checkout)."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

__all__ = ["bundled_dataset_path", "shared_datasets_dir", "SHARED_DATASETS_ENV"]

SHARED_DATASETS_ENV = "CONVEXNN_SHARED_DATASETS"

# convexnn/data/bundled.py -> repository root; same as Path(convexnn.__file__).parent.parent
_CHECKOUT_DATASETS = Path(__file__).resolve().parent.parent.parent / "datasets"


def _from_package(parts: tuple[str, ...]) -> Path:
    # the top-level folder datasets/ is installed as package convexnn.datasets (pyproject)
    node = importlib.resources.files("convexnn.datasets")
    for part in parts:
        node = node / part
    path = Path(str(node))
    if not path.exists():
        raise FileNotFoundError(str(path))
    return path


def bundled_dataset_path(*parts: str) -> Path:
    """Path of a shipped data file: ``bundled_dataset_path("mnist", "t10k-images-idx3-ubyte.gz")``.

    Looks in the installed package ``convexnn.datasets`` first, then in ``<checkout>/datasets``.
    Raises ``FileNotFoundError`` naming both places tried.
    """
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"bundled_dataset_path: expected one or more non-empty path parts, "
                         f"got {parts!r}")
    try:
        return _from_package(parts)
    except Exception as err:  # noqa: BLE001 - any import/resource failure means "not installed"
        first = f"package data convexnn.datasets/{'/'.join(parts)} ({type(err).__name__}: {err})"
    fallback = _CHECKOUT_DATASETS.joinpath(*parts)
    if fallback.exists():
        return fallback
    raise FileNotFoundError(f"shipped data file {'/'.join(parts)!r} not found; tried {first} "
                            f"and the source checkout path {fallback}")


def shared_datasets_dir() -> Path | None:
    """The folder named by ``$CONVEXNN_SHARED_DATASETS`` (extra, larger data sets), else None."""
    value = os.environ.get(SHARED_DATASETS_ENV, "").strip()
    return Path(value).expanduser() if value else None
