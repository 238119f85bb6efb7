"""The zero-duality-gap report: dual objective vs the primal rebuilt by eq. 5 (App. C)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from convexnn.model.validation import as_images, as_targets

__all__ = ["GapReport", "gap_report"]


@dataclass
class GapReport:
    """Dual vs reconstructed-primal objective on one data set, with feasibility and timings."""

    dual_objective: float                 # eq. 4, sum over pixels (the papers' formula)
    primal_objective: float               # eq. 2 at the eq. 5 weights, sum
    relative_gap: float
    dual_objective_per_pixel: float       # the sum / N
    primal_objective_per_pixel: float
    dual_objective_appendix_b: float      # data term / N + the whole regulariser (App. B)
    primal_objective_appendix_b: float
    max_violation: float
    total_violation: float
    relative_violation: float
    n_patterns: int
    n_groups: int
    n_nonzero_groups: int
    n_pixels: int
    max_prediction_difference: float
    solver: str
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    lower_bound: float | None = None      # the solver's certified lower bound (App. C), if any
    certified_gap: float | None = None
    loaded_from_file: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_table(self) -> str:
        rows = [
            ("dual objective (eq. 4, sum over pixels)", f"{self.dual_objective:.10g}"),
            ("primal objective (eq. 2 at eq. 5 weights, sum)", f"{self.primal_objective:.10g}"),
            ("relative gap |p - d| / |d|", f"{self.relative_gap:.3e}"),
            ("dual / primal objective per pixel (sum / N)",
             f"{self.dual_objective_per_pixel:.6g} / {self.primal_objective_per_pixel:.6g}"),
            ("App. B scale (data / N + regulariser)",
             f"{self.dual_objective_appendix_b:.6g} / {self.primal_objective_appendix_b:.6g}"),
        ]
        if self.lower_bound is not None:
            rows += [("certified lower bound (App. C, sum)", f"{self.lower_bound:.10g}"),
                     ("certified gap (objective - bound) / objective",
                      f"{self.certified_gap:.3e}")]
        rows += [
            ("max / relative constraint violation",
             f"{self.max_violation:.3e} / {self.relative_violation:.3e}"),
            ("max |dual - primal prediction| (*)", f"{self.max_prediction_difference:.3e}"),
            ("sign patterns P", f"{self.n_patterns}"),
            ("nonzero groups (of 2P)", f"{self.n_nonzero_groups} / {self.n_groups}"),
            ("pixels N", f"{self.n_pixels}"),
            ("solver / status", f"{self.solver} / {self.status}" if not self.loaded_from_file
             else f"fitted by {self.solver}; loaded from a file (no timings)"),
        ]
        rows += [(f"time: {k} [s]", f"{v:.3f}") for k, v in self.timings.items()]
        width = max(len(r[0]) for r in rows)
        return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + [
            "(*) 0 on the training images at a feasible dual point; on other images the gated "
            "dual (eq. 4) and the ReLU primal (eq. 5) are different functions"])

    def __str__(self) -> str:
        return self.to_table()


def gap_report(model, noisy, clean, nonzero_tol: float = 1e-6) -> GapReport:
    """Compare `model` (a fitted `ConvexDualDenoiser`) with its eq. 5 primal on (noisy, clean).

    `nonzero_tol` is relative to the largest group norm and only affects the sparsity count.
    """
    model._check_fitted()
    x = model._inputs(noisy)
    y = as_targets(clean, as_images(x))
    t0 = time.perf_counter()
    primal = model.to_primal()
    t_rebuild = time.perf_counter() - t0
    d_sum = model.objective(x, y, "sum")
    d_mean = model.objective(x, y, "mean")
    p_sum = primal.objective(x, y, model.beta, "sum", model.loss_)
    p_mean = primal.objective(x, y, model.beta, "mean", model.loss_)
    n_pix = int(x.shape[0] * x.shape[2] * x.shape[3])
    viol = model.constraint_violation(x)
    with torch.no_grad():
        diff = float((model.predict(x) - primal(x)).abs().max())
    nv, nw = model.group_norms()
    norms = torch.cat([nv, nw])
    top = float(norms.max()) if norms.numel() else 0.0
    nonzero = int((norms > nonzero_tol * top).sum()) if top > 0 else 0
    info = model.solve_info_
    loaded = bool(info.details.get("loaded_from_file"))
    timings = {} if loaded else {
        "patterns": float(info.details.get("pattern_seconds", 0.0)),
        "setup": info.setup_seconds, "solve": info.solve_seconds,
        "fit_total": float(info.details.get("fit_seconds", info.total_seconds)),
        "rebuild_primal": t_rebuild}
    cert = info.details.get("certificate") or {}
    # the solver's certificate is about its training data: shown when these are those images
    same = hasattr(model, "objective_") and abs(d_sum - model.objective_) <= 1e-9 * abs(d_sum)
    lower = info.details.get("lower_bound", cert.get("lower_bound")) if same else None
    gap = info.details.get("certified_gap", cert.get("certified_gap")) if same else None
    return GapReport(
        dual_objective=d_sum, primal_objective=p_sum,
        relative_gap=abs(p_sum - d_sum) / max(abs(d_sum), 1e-300),
        dual_objective_per_pixel=d_sum / n_pix, primal_objective_per_pixel=p_sum / n_pix,
        dual_objective_appendix_b=d_mean, primal_objective_appendix_b=p_mean,
        lower_bound=lower, certified_gap=gap, loaded_from_file=loaded,
        max_violation=viol.max, total_violation=viol.total, relative_violation=viol.relative,
        n_patterns=int(model.generators_.shape[0]), n_groups=int(norms.numel()),
        n_nonzero_groups=nonzero, n_pixels=n_pix,
        max_prediction_difference=diff, solver=info.solver, status=info.status,
        timings=timings)
