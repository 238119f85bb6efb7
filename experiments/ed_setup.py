"""Shared helpers of the energy-dissipation experiments (ed_*.py): paths, seeding, JSON."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import RESULTS, use_reference_data


def setup(seed: int, threads: int = 2) -> None:
    use_reference_data()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)


def _clean(v):
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_json(path: Path, payload: dict) -> Path:
    payload = {**payload, "environment": {"torch": torch.__version__,
                                          "python": platform.python_version(),
                                          "threads": torch.get_num_threads(),
                                          "written": time.strftime("%Y-%m-%d %H:%M:%S")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=1))
    return path


def progress(iterable, quiet: bool, **kw):
    if quiet:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, **kw)


def default_out() -> str:
    """The results folder, relative to the working directory when it lies below it (so that
    the JSON files record no machine-specific path)."""
    try:
        return str(RESULTS.relative_to(Path.cwd()))
    except ValueError:
        return str(RESULTS)
