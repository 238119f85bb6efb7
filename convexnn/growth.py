"""Pattern growth (column generation) for eq. 4: `grow_patterns(model, noisy, clean, ...)`.

Each round prices fresh random generators against the current dual point (gated check,
`certificate.price_patterns`), keeps the `add_per_round` best whose pattern is new and whose
gated value exceeds beta, and re-solves with ADMM from the previous solution (new groups start
at zero, which is feasible) or, with `solver="ipm"`, with the interior-point solver from
scratch (no warm start, but each solve is exact to a certified 1e-8 gap and fast at small P).
Stops when no candidate prices above beta or the objective
improves by less than `rel_tol` (relative). Exposed as a function, not as an `AdmmConfig`
flag, because growing changes `generators_`, which the estimator owns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from convexnn.analysis.certificate import price_patterns
from convexnn.model.patterns import sign_masks

__all__ = ["GrowthResult", "grow_patterns"]


@dataclass
class GrowthResult:
    model: object
    history: list[dict[str, float]] = field(default_factory=list)


def _keys(x: torch.Tensor, g: torch.Tensor) -> list[bytes]:
    m = sign_masks(x, g).transpose(0, 1).reshape(g.shape[0], -1).cpu().numpy()
    return [hashlib.blake2b(np.packbits(r).tobytes(), digest_size=20).digest() for r in m]


def grow_patterns(model, noisy, clean, rounds: int = 10, add_per_round: int = 20,
                  n_candidates: int = 100_000, rel_tol: float = 1e-4, seed: int = 777,
                  solver: str = "admm", **solver_options) -> GrowthResult:
    """Column generation from a fitted `ConvexDualDenoiser`; returns the grown model.

    `solver`: "admm" (warm-started re-solves) or "ipm"; `solver_options` go to its config."""
    from convexnn.dual import ConvexDualDenoiser
    from convexnn.model.validation import check_choice

    check_choice(solver, "solver", ("admm", "ipm"))
    model._check_fitted()
    x = model._inputs(noisy)
    cur = model
    history = [{"round": 0, "n_patterns": int(cur.generators_.shape[0]),
                "objective": float(cur.objective_)}]
    for r in range(1, rounds + 1):
        pr = price_patterns(cur, x, clean, n_candidates, seed=seed + 1000 * r,
                            top_k=4 * add_per_round)
        seen = set(_keys(x, cur.generators_))
        new = []
        for g, val in zip(pr.top_generators, pr.top_gated_ratio, strict=True):
            if float(val) <= 1.0 or len(new) >= add_per_round:
                break
            key = _keys(x, g[None])[0]
            if key not in seen:
                seen.add(key)
                new.append(g)
        if not new:
            history.append({"round": r, "n_patterns": history[-1]["n_patterns"],
                            "objective": history[-1]["objective"], "stop": "no candidate"})
            break
        gens = torch.cat([cur.generators_, torch.stack(new)])
        zeros = torch.zeros((len(new),) + tuple(cur.v_.shape[1:]), dtype=torch.float64)
        nxt = ConvexDualDenoiser(kernel_size=cur.kernel_size, beta=cur.beta, loss=cur.loss,
                                 residual=cur.residual, generators=gens, dedupe=False,
                                 huber_delta=cur.huber_delta)
        if solver == "admm":
            solver_options["warm_start"] = (torch.cat([cur.v_, zeros]),
                                            torch.cat([cur.w_, zeros]))
        nxt.fit(x, clean, solver=solver, **solver_options)
        improve = (history[-1]["objective"] - nxt.objective_) / abs(history[-1]["objective"])
        history.append({"round": r, "n_patterns": int(gens.shape[0]),
                        "objective": float(nxt.objective_), "max_gated_ratio": pr.max_gated_ratio,
                        "improvement": improve})
        cur = nxt
        if improve < rel_tol:
            break
    return GrowthResult(cur, history)
