"""Atomic training checkpoints shared by the dual (Adam) and primal trainers.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (model and optimizer
state dicts, epoch, history, a configuration fingerprint), written with `torch.save` to a
temporary file in the target folder and moved into place with `os.replace`, so a run killed at
any moment (even `kill -9` during the write) leaves either the previous or the new checkpoint,
never a torn one. It is read back with `torch.load(weights_only=True)`: nothing is unpickled.

`fingerprint(...)` hashes everything that determines a run's trajectory (data, generators,
hyper-parameters); `load_checkpoint(path, expected_fingerprint)` refuses a checkpoint from
another configuration with `CheckpointMismatchError` before anything is written.
`resume_checkpoint(path, expected_fingerprint, resume, advice)` is the trainers' resume step:
the checkpoint to continue from, None when there is none, `FileExistsError` when one exists and
`resume` is False.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointMismatchError", "fingerprint", "save_checkpoint", "load_checkpoint",
           "resume_checkpoint", "tensor_digest"]

FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint on disk belongs to another configuration (or is not a checkpoint)."""


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's float64 values and shape (device- and dtype-independent)."""
    a = t.detach().to("cpu", torch.float64).contiguous().numpy()
    h = hashlib.sha256(str(tuple(a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprint(kind: str, settings: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """Stable hash of a run: its kind, JSON-able settings and the digests of its tensors."""
    payload = {"kind": kind, "format": FORMAT_VERSION,
               "settings": {k: settings[k] for k in sorted(settings)},
               "tensors": {k: tensor_digest(v) for k, v in sorted(tensors.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write `state` atomically (temp file in the same folder + fsync + `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], expected_fingerprint: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; check its fingerprint if one is given."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(
            f"{path}: not a readable convexnn checkpoint ({type(exc).__name__}: {exc}); "
            f"it was left untouched") from exc
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise CheckpointMismatchError(f"{path}: not a convexnn checkpoint (no fingerprint); "
                                      f"it was left untouched")
    if expected_fingerprint is not None and state["fingerprint"] != expected_fingerprint:
        raise CheckpointMismatchError(
            f"{path}: checkpoint from another configuration (kind {state.get('kind')!r}, "
            f"fingerprint {str(state['fingerprint'])[:12]}..., expected "
            f"{expected_fingerprint[:12]}...): data, generators or hyper-parameters differ. "
            f"Nothing was overwritten; pass another checkpoint_path or resume=False with a "
            f"new path")
    return state


def resume_checkpoint(path: str | os.PathLike[str] | None, expected_fingerprint: str,
                      resume: bool, advice: str) -> dict[str, Any] | None:
    """The checkpoint at `path` to resume from (fingerprint checked), or None without one.

    An existing checkpoint with `resume=False` raises `FileExistsError` ("...; remove it or
    `advice`"), before anything is written.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(f"{path}: a checkpoint exists and resume=False; remove it or "
                              f"{advice}")
    return load_checkpoint(path, expected_fingerprint)
