"""The history record every iterative solver returns.

Per iteration: energy (None where the algorithm has none), `rel_change = ||x_k - x_{k-1}|| /
||x_0||` (the monotonicity diagnostic of Pesquet et al., fig. "Influence of the Jacobian
penalization"), step size, data residual `||A x_k - y||`, PSNR and SSIM against a reference
(scikit-image metrics) and a dict of solver-specific flags (line-search steps, fallbacks, ...).
At the end: `converged` and `stop_reason`.

    hist = History("pnp_pgd", config={...})
    hist.record(rel_change=..., step=..., residual=..., x=x, reference=ref)
    hist.finish(converged=True, stop_reason="rel_change < tol")
    hist.save_json("h.json"); hist.plot("h.png")
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["IterationRecord", "History", "psnr", "ssim"]


def _as_numpy_images(x) -> np.ndarray:
    """`(B, C, H, W)` float64 numpy array from a tensor / array of 2, 3 or 4 dims."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_complex():
            x = x.abs()
        x = x.to(torch.float64).cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (H, W), (C, H, W) or (B, C, H, W), got "
                         f"{x.shape}")
    return x


def _pair(x, reference) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_numpy_images(x), _as_numpy_images(reference)
    if a.shape != b.shape:
        raise ValueError(f"estimate and reference differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not (
                math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range: expected a positive finite number or None, got "
                             f"{data_range!r}")
        return float(data_range)
    rng = float(ref.max() - ref.min())
    return rng if rng > 0 else 1.0


def psnr(x, reference, data_range: float | None = None) -> float:
    """Mean over the batch of the PSNR `10 log10(data_range^2 / mse)` (scikit-image's
    `peak_signal_noise_ratio` formula, computed inline: it is called every iteration);
    `data_range` defaults to the reference's `max - min` per image."""
    a, b = _pair(x, reference)
    vals = []
    for xi, ri in zip(a, b, strict=True):
        mse = float(np.mean((xi - ri) ** 2))
        dr = _data_range(ri, data_range)
        if math.isnan(mse) or mse == 0.0:
            vals.append(math.nan if math.isnan(mse) else math.inf)
        else:
            ratio = dr * dr / mse                    # 0 when mse = inf: a diverged estimate
            vals.append(10.0 * math.log10(ratio) if ratio > 0.0 else -math.inf)
    return float(np.mean(vals))


def ssim(x, reference, data_range: float | None = None) -> float:
    """Mean over the batch of scikit-image's SSIM (channel axis 0; the window shrinks to the
    largest odd size <= 7 that fits small images)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(x, reference)
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    vals = [structural_similarity(ri, xi, data_range=_data_range(ri, data_range),
                                  channel_axis=0, win_size=win)
            for xi, ri in zip(a, b, strict=True)]
    return float(np.mean(vals))


def _clean(value):
    """JSON-safe scalar: tensors -> float, inf/nan -> str."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _unclean(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _unclean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unclean(v) for v in value]
    return value


@dataclass
class IterationRecord:
    """One iteration. `rel_change = ||x_k - x_{k-1}|| / ||x_0||`; `energy` None where the
    algorithm minimises no explicit objective; `psnr`/`ssim` None without a reference."""

    iteration: int
    rel_change: float
    step: float | None = None
    energy: float | None = None
    residual: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    time: float | None = None
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """Iteration records of one solver run, plus how and why it stopped."""

    solver: str
    records: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    stop_reason: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)   # run-level facts (step checks, ...)

    # ----------------------------------------------------------------- building
    def record(self, rel_change: float, step: float | None = None,
               energy: float | None = None, residual: float | None = None,
               x: torch.Tensor | None = None, reference: torch.Tensor | None = None,
               data_range: float | None = None, compute_ssim: bool = True,
               time: float | None = None, **flags: Any) -> IterationRecord:
        """Append the next iteration; PSNR/SSIM are computed from `x` when `reference` is
        given. Extra keywords become the record's flags."""
        p = s = None
        if reference is not None and x is not None:
            p = psnr(x, reference, data_range)
            s = ssim(x, reference, data_range) if compute_ssim else None
        rec = IterationRecord(len(self.records) + 1, _float(rel_change), _float(step),
                              _float(energy), _float(residual), p, s, _float(time),
                              dict(flags))
        self.records.append(rec)
        return rec

    def finish(self, converged: bool, stop_reason: str) -> History:
        self.converged = bool(converged)
        self.stop_reason = str(stop_reason)
        return self

    # ----------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_iter(self) -> int:
        return len(self.records)

    def series(self, name: str) -> list:
        """The per-iteration values of one field (`"rel_change"`, `"psnr"`, ...) or flag."""
        if name in IterationRecord.__dataclass_fields__:
            return [getattr(r, name) for r in self.records]
        return [r.flags.get(name) for r in self.records]

    @property
    def rel_change(self) -> list[float]:
        return self.series("rel_change")

    @property
    def energy(self) -> list[float | None]:
        return self.series("energy")

    @property
    def residual(self) -> list[float | None]:
        return self.series("residual")

    @property
    def psnr(self) -> list[float | None]:
        return self.series("psnr")

    @property
    def ssim(self) -> list[float | None]:
        return self.series("ssim")

    @property
    def step(self) -> list[float | None]:
        return self.series("step")

    # ----------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "converged": self.converged,
                "stop_reason": self.stop_reason, "n_iter": self.n_iter,
                "config": _clean(self.config), "flags": _clean(self.flags),
                "records": [_clean(asdict(r)) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        records = [IterationRecord(**_unclean(r)) for r in d.get("records", [])]
        return cls(d["solver"], records, bool(d.get("converged", False)),
                   d.get("stop_reason", ""), d.get("config", {}), _unclean(d.get("flags", {})))

    def save_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load_json(cls, path) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path, title: str | None = None) -> Path:
        """PNG of the curves that have values: rel_change and residual (log), energy, PSNR,
        SSIM, step. Draws on a bare `Figure` rendered by Agg: no display, no pyplot state."""
        from matplotlib.figure import Figure

        panels = [(n, log) for n, log in [("rel_change", True), ("residual", True),
                                          ("energy", False), ("psnr", False),
                                          ("ssim", False), ("step", True)]
                  if any(_finite(v) for v in self.series(n))]
        if not panels:
            panels = [("rel_change", True)]
        fig = Figure(figsize=(3.2 * len(panels), 3.0))
        for i, (name, log) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            its = [r.iteration for r in self.records]
            vals = [v if _finite(v) else np.nan for v in self.series(name)]
            if log and any(_finite(v) and v > 0 for v in vals):
                ax.semilogy(its, [v if _finite(v) and v > 0 else np.nan for v in vals])
            else:
                ax.plot(its, vals)
            ax.set_xlabel("iteration")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        fig.suptitle(title or f"{self.solver}: {self.stop_reason} "
                     f"({'converged' if self.converged else 'not converged'})", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path


def _float(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"expected a scalar, got a tensor of shape {tuple(v.shape)}")
        return float(v.detach().real.item())
    return float(v)


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
