"""`ConvexShrinkageCascade`: a deep denoiser trained greedily, every stage by an exact convex
program (the network: `convexnn.model.cascade`).

Stage 1 is a certified firmly nonexpansive shrinkage network (`ConvexShrinkageDenoiser`, its
QP), or a given one. Stage t >= 2 maps the previous estimate `z` and the noisy input `y` to

    z + sum_jm c_jm C_j^T r_m(C_j z) + a (y - z),          (C_j: the frame, `shrinkage_frame`)

linear in `(c, a)`; with `r = x - z` the residual to the clean image it is trained by

    min_{c, a}  1/2 || sum_jm c_jm g_jm(z) + a (y - z) - r ||^2 + eps/2 ||(c, a)||^2      (LS)

(`g_jm(z) = C_j^T r_m(C_j z)`, `shrinkage_features`; eps a 1e-9 relative ridge), solved exactly
by a Cholesky factorisation of the streamed Gram matrix. Its optimality certificate is the
normal-equation residual `||(G + eps I) theta - b|| / ||b||`, reported per stage with the
objective before (theta = 0: the stage does nothing) and after. The knots of stage t cover
`+- span * std(z - x)` on its training pairs. The stage takes the output of the stages before
it (greedy, Sec. 4.3 of the core paper), on its own training pairs when `stage_data` is given.

Content-adaptive stages (`AdaptiveFilterStage`, `config.adaptive_stages` of them after the
shrinkage stages) map `z` to `z + W_b(p) f_p` with `f_p = [P_p(z); P_p(y - z); 1]` and `b(p)` the
structure class of `z` at pixel p; with the classes fixed by `z` the problem

    min_W  1/2 sum_p (W_b(p) f_p - r_p)^2 + 1/2 sum_b eps_b ||W_b||^2                    (LS-b)

with `eps_b = eps' mean diag(G_b) + 1e-12 mean diag(G)` (a relative ridge; a class without
training pixels keeps `W_b = 0`, the stage does nothing there), splits into one system
`(G_b + eps_b I) w_b = h_b` per class, each solved exactly by Cholesky; its certificate is the
largest normal-equation residual over the classes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from convexnn.model.adaptive import AdaptiveFilterStage, patch_features, structure_tensor
from convexnn.model.cascade import CascadeStage, ShrinkageCascade
from convexnn.model.denoiser import Denoiser
from convexnn.model.shrinkage import (
    FRAMES,
    ShrinkageNetwork,
    ramp_knots,
    shrinkage_features,
    shrinkage_frame,
)
from convexnn.model.validation import as_images, as_targets, check_int, check_positive
from convexnn.shrinkage import ConvexShrinkageDenoiser

__all__ = ["ConvexShrinkageCascade", "CascadeConfig"]


@dataclass(frozen=True)
class CascadeConfig:
    """n_stages: the number of shrinkage stages T, stage 1 included; the frame
    (`shrinkage_frame`; "multiscale", the better one: +0.16 dB on BSD68 at sigma 25 over "dct",
    `experiments/denoise_cascade.py`), its kernel size and the ramp grid of stages 2..T (and of a
    stage 1 fitted here); the relative ridge eps of (LS); the Gram streaming block;
    `first_kernel_size` the kernel size of a stage 1 fitted here (certified firmly
    nonexpansive). `adaptive_stages` content-adaptive filter stages follow the T shrinkage
    stages (`convexnn.model.adaptive`, trained by (LS-b)): k x k patches (`adaptive_patch`),
    `adaptive_angles` x `adaptive_strengths` x `adaptive_coherences` structure classes, relative
    ridge `adaptive_ridge` per class."""

    n_stages: int = 4
    kernel_size: int = 7
    frame: str = "multiscale"
    n_bins: int = 16
    span: float = 4.0
    ridge: float = 1e-9
    batch_pixels: int = 1 << 15
    first_kernel_size: int = 7
    adaptive_stages: int = 0
    adaptive_patch: int = 7
    adaptive_angles: int = 12
    adaptive_strengths: int = 8
    adaptive_coherences: int = 3
    adaptive_ridge: float = 1e-3

    def __post_init__(self) -> None:
        check_int(self.n_stages, "n_stages")
        for name in ("kernel_size", "first_kernel_size"):
            check_int(getattr(self, name), name)
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name}: expected an odd size, got {getattr(self, name)}")
        if self.frame not in FRAMES:
            raise ValueError(f"frame: expected one of {list(FRAMES)}, got {self.frame!r}")
        check_int(self.n_bins, "n_bins")
        check_positive(self.span, "span")
        check_positive(self.ridge, "ridge")
        check_int(self.batch_pixels, "batch_pixels")
        check_int(self.adaptive_stages, "adaptive_stages", minimum=0)
        for name in ("adaptive_patch", "adaptive_angles", "adaptive_strengths",
                     "adaptive_coherences"):
            check_int(getattr(self, name), name)
        if self.adaptive_patch % 2 == 0:
            raise ValueError(f"adaptive_patch: expected an odd size, got {self.adaptive_patch}")
        check_positive(self.adaptive_ridge, "adaptive_ridge")


def _pairs(noisy, clean, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    y = as_images(noisy, f"{what} noisy", dtype=torch.float64)
    x = as_targets(clean, y, f"{what} clean").to(torch.float64)
    if y.shape[1] != 1:
        raise ValueError(f"{what} noisy: expected one channel (n, 1, H, W), got "
                         f"{tuple(y.shape)}")
    return y, x


class ConvexShrinkageCascade(Denoiser):
    """Estimator: `fit(noisy, clean)` trains stage 1 (its QP) and stages 2..T (LS) greedily;
    then `model(x)` denoises with all T stages.

    sigma : the training noise level on the image scale (stage 1's knots); None estimates it.
    config : `CascadeConfig`, or its fields as keyword options.

    Fitted: `network_` (`ShrinkageCascade`), `history_` (one dict per stage: training pixels,
    residual std before it, LS objective per pixel before and after, the normal-equation
    residual, the skip weight, seconds), `first_info_` (stage 1's `SolveInfo`, or None when
    stage 1 was given).
    """

    def __init__(self, sigma: float | None = None, config: CascadeConfig | None = None,
                 **options: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, CascadeConfig):
            raise TypeError(f"config: expected CascadeConfig, got {type(config).__name__}")
        unknown = sorted(set(options) - set(CascadeConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; CascadeConfig accepts "
                            f"{sorted(CascadeConfig.__dataclass_fields__)}")
        self.config = CascadeConfig(**{**(asdict(config) if config else {}), **options})
        self.sigma = None if sigma is None else check_positive(sigma, "sigma")

    def fit(self, noisy, clean, first: ShrinkageNetwork | ShrinkageCascade | None = None,
            stage_data: list[tuple[Any, Any]] | None = None,
            progress: bool = False) -> ConvexShrinkageCascade:
        """Train the cascade on pairs `(n, 1, H, W)`. `first`: a trained stage 1 to build on
        (e.g. `pretrained.load("gray-s25-fne").net`), or a trained cascade whose stages are kept
        (e.g. `pretrained.load("gray-s25-cascade4").net`, then only the stages it lacks are
        trained); else stage 1 is fitted on `(noisy, clean)`. `stage_data`: one `(noisy, clean)`
        pair set per stage trained after stage 1 / the given cascade (fresh data per stage);
        default: `(noisy, clean)` for every stage."""
        cfg, t_start = self.config, time.perf_counter()
        y0, x0 = _pairs(noisy, clean, "fit:")
        kept: list = []
        if isinstance(first, ShrinkageCascade):
            if any(isinstance(s, AdaptiveFilterStage) for s in first.stages) \
                    or first.depth > cfg.n_stages:
                raise ValueError(f"first: expected a cascade of at most n_stages = "
                                 f"{cfg.n_stages} shrinkage stages, got depth {first.depth} "
                                 f"with stages {[type(s).__name__ for s in first.stages]}")
            first, kept = first.first, list(first.stages)
        kinds = ["shrinkage"] * (cfg.n_stages - 1 - len(kept)) \
            + ["adaptive"] * cfg.adaptive_stages
        if stage_data is not None and len(stage_data) != len(kinds):
            raise ValueError(f"stage_data: expected {len(kinds)} pair sets (one per stage to "
                             f"train: {kinds}), got {len(stage_data)}")
        data = [(y0, x0)] * len(kinds) if stage_data is None else [
            _pairs(n, c, f"stage_data[{i}]") for i, (n, c) in enumerate(stage_data)]
        self.first_info_ = None
        if first is None:
            est = ConvexShrinkageDenoiser(self.sigma, kernel_size=cfg.first_kernel_size,
                                          frame=cfg.frame, firmly_nonexpansive=True)
            est.fit(y0, x0, progress)
            first, self.first_info_ = est.network_, est.solve_info_
        elif not isinstance(first, ShrinkageNetwork):
            raise TypeError(f"first: expected a ShrinkageNetwork (a trained stage 1) or a "
                            f"ShrinkageCascade, got {type(first).__name__}")
        filters = shrinkage_frame(cfg.frame, cfg.kernel_size)
        self.network_ = ShrinkageCascade(first, kept)
        self.history_: list[dict[str, Any]] = []
        for t, (kind, (y, x)) in enumerate(zip(kinds, data, strict=True),
                                           start=self.network_.depth + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                z = torch.cat([self.network_.depths(y[i:i + 64])[-1]
                               for i in range(0, y.shape[0], 64)])
            if kind == "shrinkage":
                stage, record = fit_stage(z, y, x, filters, cfg)
            else:
                stage, record = fit_adaptive_stage(z, y, x, cfg)
            self.network_.stages.append(stage)
            record.update(stage=t, kind=kind, seconds=time.perf_counter() - t0)
            self.history_.append(record)
            if progress:
                extra = (f"skip {record['skip']:.3f}" if kind == "shrinkage" else
                         f"{record['n_classes']} classes, training pixels per class min "
                         f"{record['pixels_per_class_min']}")
                print(f"  stage {t} ({kind}): residual std {record['residual_std']:.4g}, LS "
                      f"objective per pixel {record['objective_before']:.4g} -> "
                      f"{record['objective_after']:.4g}, normal-equation residual "
                      f"{record['normal_residual']:.1e}, {extra}, {record['seconds']:.0f} s",
                      flush=True)
        self.seconds_ = time.perf_counter() - t_start
        return self

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        if not hasattr(self, "network_"):
            raise RuntimeError("ConvexShrinkageCascade: call fit(noisy, clean) first")
        return self.network_(x, sigma)

    predict = forward


def fit_stage(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor, filters: torch.Tensor,
              cfg: CascadeConfig) -> tuple[CascadeStage, dict[str, Any]]:
    """One stage by (LS): stream the Gram of `[g_jm(z), y - z]` against `r = x - z`, solve by
    Cholesky, and report the objective before and after and the normal-equation residual."""
    r_all = x - z
    sres = float(r_all.std())
    if not sres > 0:
        raise ValueError("stage training: the previous stages already reproduce the clean "
                         "images exactly; nothing is left to fit")
    knots, width = ramp_knots(sres, cfg.n_bins, cfg.span)
    d = filters.shape[0] * knots.numel() + 1
    gram = torch.zeros(d, d, dtype=torch.float64)
    rhs = torch.zeros(d, dtype=torch.float64)
    target_sq = 0.0
    per = max(1, cfg.batch_pixels // (z.shape[-1] * z.shape[-2]))
    for i in range(0, z.shape[0], per):
        zi, yi = z[i:i + per], y[i:i + per]
        feats = torch.cat([shrinkage_features(zi, filters, knots, width), yi - zi], 1)
        feats = feats.transpose(0, 1).reshape(d, -1)
        r = r_all[i:i + per].reshape(-1)
        gram += feats @ feats.T
        rhs += feats @ r
        target_sq += float(r @ r)
    ridge = cfg.ridge * float(gram.diagonal().mean())
    system = gram + ridge * torch.eye(d, dtype=torch.float64)
    theta = torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(system))[:, 0]
    normal = float(torch.linalg.vector_norm(system @ theta - rhs)
                   / torch.linalg.vector_norm(rhs).clamp_min(1e-300))
    n_pix = z[:, :1].numel()
    after = 0.5 * float(theta @ gram @ theta) - float(rhs @ theta) + 0.5 * target_sq
    stage = CascadeStage(filters, knots, width, theta[:-1].reshape(filters.shape[0], -1),
                         float(theta[-1]))
    return stage, {"training_pixels": n_pix, "residual_std": sres,
                   "objective_before": 0.5 * target_sq / n_pix, "objective_after": after / n_pix,
                   "normal_residual": normal, "skip": float(theta[-1]), "n_parameters": d}


def fit_adaptive_stage(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                       cfg: CascadeConfig) -> tuple[AdaptiveFilterStage, dict[str, Any]]:
    """One content-adaptive stage by (LS-b): class thresholds at the quantiles of the training
    estimates' structure tensor, one streamed Gram per class, one Cholesky solve per class."""
    r_all = x - z
    sres = float(r_all.std())
    if not sres > 0:
        raise ValueError("stage training: the previous stages already reproduce the clean "
                         "images exactly; nothing is left to fit")
    _, strength, coherence = structure_tensor(z[: max(1, (1 << 20) // z[0].numel())])
    step = max(1, strength.numel() // (1 << 18))

    def quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
        levels = torch.linspace(0, 1, n + 1, dtype=torch.float64)[1:-1]
        return torch.quantile(v.flatten()[::step], levels)

    s_thr = quantiles(strength, cfg.adaptive_strengths)
    c_thr = quantiles(coherence, cfg.adaptive_coherences)
    n_classes = cfg.adaptive_angles * cfg.adaptive_strengths * cfg.adaptive_coherences
    probe = AdaptiveFilterStage(torch.zeros(n_classes, 2 * cfg.adaptive_patch ** 2 + 1),
                                cfg.adaptive_angles, s_thr, c_thr)
    d = probe.weights.shape[1]
    gram = torch.zeros(n_classes, d, d, dtype=torch.float64)
    rhs = torch.zeros(n_classes, d, dtype=torch.float64)
    count = torch.zeros(n_classes, dtype=torch.long)
    target_sq = 0.0
    per = max(1, cfg.batch_pixels // (z.shape[-1] * z.shape[-2]))
    for i in range(0, z.shape[0], per):
        zi = z[i:i + per]
        feats = patch_features(zi, y[i:i + per], cfg.adaptive_patch)
        r = r_all[i:i + per].reshape(-1)
        cls = probe.classes(zi).reshape(-1)
        order = torch.argsort(cls)
        feats, r, cls = feats[order], r[order], cls[order]
        labels, sizes = torch.unique_consecutive(cls, return_counts=True)
        for b, f, rb in zip(labels.tolist(), feats.split(sizes.tolist()),
                            r.split(sizes.tolist()), strict=True):
            gram[b] += f.T @ f
            rhs[b] += f.T @ rb
            count[b] += f.shape[0]
        target_sq += float(r @ r)
    eye = torch.eye(d, dtype=torch.float64)
    n_pix = z[:, :1].numel()
    scale = float(gram.sum(0).diagonal().mean())
    ridge = cfg.adaptive_ridge * gram.diagonal(dim1=1, dim2=2).mean(1) + 1e-12 * scale
    system = gram + ridge[:, None, None] * eye
    weights = torch.cholesky_solve(rhs[..., None], torch.linalg.cholesky(system))[..., 0]
    resid = torch.linalg.vector_norm((system @ weights[..., None])[..., 0] - rhs, dim=1)
    normal = float((resid / torch.linalg.vector_norm(rhs, dim=1).clamp_min(1e-300)).max())
    after = sum(0.5 * float(w @ g @ w) - float(h @ w)
                for w, g, h in zip(weights, gram, rhs, strict=True)) + 0.5 * target_sq
    stage = AdaptiveFilterStage(weights, cfg.adaptive_angles, s_thr, c_thr)
    return stage, {"training_pixels": n_pix, "residual_std": sres,
                   "objective_before": 0.5 * target_sq / n_pix, "objective_after": after / n_pix,
                   "normal_residual": normal, "n_classes": n_classes,
                   "pixels_per_class_min": int(count.min()),
                   "pixels_per_class_median": int(count.median()),
                   "n_parameters": n_classes * d}
