"""Save and load fitted models as safetensors: tensors plus a JSON header, never a pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from convexnn.cascade import ConvexShrinkageCascade
from convexnn.dual import ConvexDualDenoiser
from convexnn.model.adaptive import AdaptiveFilterStage
from convexnn.model.cascade import CascadeStage, ShrinkageCascade
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.shrinkage import ShrinkageNetwork
from convexnn.shrinkage import ConvexShrinkageDenoiser

__all__ = ["save_model", "load_model", "atomic_save_safetensors"]

_FORMAT = "convexnn-model-v1"


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)        # like any file the user writes (mkstemp: 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


Model = ConvexDualDenoiser | TwoLayerConvDenoiser | ShrinkageNetwork | ShrinkageCascade


def save_model(model: Model | ConvexShrinkageDenoiser | ConvexShrinkageCascade,
               path: str | Path) -> Path:
    """Save a fitted `ConvexDualDenoiser`, a `TwoLayerConvDenoiser`, a shrinkage network or a
    shrinkage cascade (a fitted `ConvexShrinkageDenoiser` / `ConvexShrinkageCascade` saves its
    `network_`) to `path` (.safetensors)."""
    path = Path(path)
    if isinstance(model, (ConvexShrinkageDenoiser, ConvexShrinkageCascade)):
        if not hasattr(model, "network_"):
            raise RuntimeError(f"save_model: the {type(model).__name__} is not fitted")
        model = model.network_
    if isinstance(model, ShrinkageCascade):
        first = model.first
        tensors = {"filters": first.filters, "knots": first.knots, "slopes": first.slopes}
        shrink = [s for s in model.stages if isinstance(s, CascadeStage)]
        adaptive = model.stages[len(shrink):]
        if not all(isinstance(s, AdaptiveFilterStage) for s in adaptive):
            raise ValueError("save_model: expected the shrinkage stages first, then the "
                             "adaptive filter stages")
        for t, s in enumerate(shrink, start=2):
            tensors.update({f"stage{t}.filters": s.filters, f"stage{t}.knots": s.knots,
                            f"stage{t}.slopes": s.slopes})
        for t, s in enumerate(adaptive, start=2 + len(shrink)):
            tensors.update({f"stage{t}.weights": s.weights,
                            f"stage{t}.strength_thresholds": s.strength_thresholds,
                            f"stage{t}.coherence_thresholds": s.coherence_thresholds})
        header = {"kind": "shrinkage-cascade", "width": first.width,
                  "stage_widths": [s.width for s in shrink],
                  "stage_skips": [s.skip for s in shrink],
                  "adaptive_angles": [s.n_angles for s in adaptive],
                  "smoothness_certificate": first.smoothness}
    elif isinstance(model, ShrinkageNetwork):
        tensors = {"filters": model.filters, "knots": model.knots, "slopes": model.slopes}
        header = {"kind": "shrinkage", "width": model.width,
                  "smoothness_certificate": model.smoothness}
    elif isinstance(model, ConvexDualDenoiser):
        model._check_fitted()
        tensors = {"generators": model.generators_, "v": model.v_, "w": model.w_}
        header = {"kind": "dual", "params": model.saved_params(),
                  "objective": float(model.objective_) if hasattr(model, "objective_") else None,
                  "n_channels": int(model.n_channels_), "solver": model.solve_info_.solver,
                  "status": model.solve_info_.status}
    elif isinstance(model, TwoLayerConvDenoiser):
        tensors = {"conv1": model.conv1.weight, "conv2": model.conv2.weight.reshape(-1)}
        header = {"kind": "primal", "residual": model.residual}
    else:
        raise TypeError(f"save_model: expected ConvexDualDenoiser, TwoLayerConvDenoiser, a "
                        f"shrinkage network or cascade, got {type(model).__name__}")
    atomic_save_safetensors(tensors, path, {"format": _FORMAT, "header": json.dumps(header)})
    return path


def load_model(path: str | Path) -> Model:
    """Load a model written by `save_model` (safetensors: no code is ever unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a convexnn safetensors model file ({exc})") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: expected a '{_FORMAT}' file written by convexnn.save_model, "
                         f"got format {meta.get('format')!r}")
    try:
        return _from_header(json.loads(meta["header"]), tensors)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: expected the header and tensors that convexnn.save_model "
                         f"writes, but the file is damaged ({type(exc).__name__}: {exc})"
                         ) from None


def _from_header(header: dict, tensors: dict[str, torch.Tensor]) -> Model:
    if header["kind"] == "shrinkage-cascade":    # stage 1's certificate is recomputed
        first = ShrinkageNetwork(tensors["filters"], tensors["knots"], float(header["width"]),
                                 tensors["slopes"])
        stages = [CascadeStage(tensors[f"stage{t}.filters"], tensors[f"stage{t}.knots"],
                               float(w), tensors[f"stage{t}.slopes"], float(a))
                  for t, (w, a) in enumerate(zip(header["stage_widths"], header["stage_skips"],
                                                 strict=True), start=2)]
        stages += [AdaptiveFilterStage(tensors[f"stage{t}.weights"], int(n),
                                       tensors[f"stage{t}.strength_thresholds"],
                                       tensors[f"stage{t}.coherence_thresholds"])
                   for t, n in enumerate(header.get("adaptive_angles", []),
                                         start=2 + len(stages))]
        return ShrinkageCascade(first, stages)
    if header["kind"] == "shrinkage":            # the certificate is recomputed, never trusted
        return ShrinkageNetwork(tensors["filters"], tensors["knots"], float(header["width"]),
                                tensors["slopes"])
    if header["kind"] == "primal":
        return TwoLayerConvDenoiser.from_weights(tensors["conv1"], tensors["conv2"],
                                                 bool(header["residual"]))
    params = {k: v for k, v in header["params"].items() if k != "generators"}
    model = ConvexDualDenoiser(generators=tensors["generators"], **params)
    model.n_channels_ = int(header["n_channels"])
    model.generators_ = tensors["generators"].to(torch.float64)
    model.v_ = tensors["v"].to(torch.float64)
    model.w_ = tensors["w"].to(torch.float64)
    if not model.v_.shape == model.w_.shape == model.generators_.shape:
        raise ValueError(f"v, w and generators of one shape (P, C, k, k), got "
                       f"{tuple(model.v_.shape)}, {tuple(model.w_.shape)} and "
                       f"{tuple(model.generators_.shape)}")
    from convexnn.model.problem import SolveInfo

    model.solve_info_ = SolveInfo(solver=header.get("solver", "unknown"), status="loaded",
                                  details={"loaded_from_file": True,
                                           "fit_status": header.get("status", "unknown")})
    model.history_ = []
    if header.get("objective") is not None:
        model.objective_ = float(header["objective"])
    return model
