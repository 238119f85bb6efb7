"""What a trained two-layer denoiser (or its convex dual) learned: paper Sec. 4.1-4.2, Fig. 4-5.

* Paths (Sec. 4.1, eq. 7): every dual group `v_i` / `w_i` is a product of primal weights
  `u_j alpha_j`; `||v_i||_2` is the path norm and eq. 4's group-lasso makes paths sparse.
  A path counts as nonzero when its norm exceeds `max(tol * largest path norm, atol)`
  (defaults `tol = 1e-3`, `atol = 1e-8`): relative, so the count does not depend on the image
  scale; the absolute floor makes an all-zero model (beta above its critical value) count 0.
  Exact solvers (cvxpy) return zeros far below the threshold; Adam leaves small nonzero norms.
* Filters (Sec. 4.2, Fig. 4): the dual is piecewise linear filtering, so each path is a linear
  k x k filter (`v_i`, `-w_i`; `u_j alpha_j` for a primal); shown with the magnitude of its
  zero-padded 2-D DFT, fftshifted (zero frequency in the centre).
* Clusters (eq. 8, Fig. 5a): each output pixel gets the binary vector of the active nonzero
  paths -- dual: `D_i(x) = 1[conv(x, g_i) >= 0]` of the patterns i with `v_i` or `w_i` nonzero;
  primal: `1[conv(x, u_j) > 0]` of the filters with a nonzero path -- and k-means (k = 12,
  seeded, fixed n_init) clusters those vectors.

Deep models (`convexnn.deep`: greedy stacks, unrolled networks) expose `stages(images)`, a list
of `(two-layer block, block input)`; `interpret_model` applies all of the above per block.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convexnn.dual import ConvexDualDenoiser
from convexnn.model.patches import conv_same
from convexnn.model.patterns import sign_masks
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.validation import as_images, check_positive, check_seed

__all__ = [
    "DEFAULT_TOL", "DEFAULT_ATOL", "TwoLayerModel", "path_norms", "linear_filters",
    "nonzero_paths", "path_norm", "PathSparsity", "path_sparsity", "BetaSparsityPoint",
    "beta_sparsity_sweep", "frequency_response", "top_filters", "save_filter_figure",
    "activation_codes", "PatchClusters", "cluster_codes", "cluster_patches",
    "cluster_similarity", "save_cluster_maps", "interpret_model", "load_interpretable",
]

DEFAULT_TOL = 1e-3
DEFAULT_ATOL = 1e-8
TwoLayerModel = ConvexDualDenoiser | TwoLayerConvDenoiser


def _check_model(model: Any) -> None:
    if isinstance(model, ConvexDualDenoiser):
        model._check_fitted()
    elif not isinstance(model, TwoLayerConvDenoiser):
        raise TypeError(f"model: expected a fitted ConvexDualDenoiser or a TwoLayerConvDenoiser, "
                        f"got {type(model).__name__}")


# ---------------------------------------------------------------------- paths (Sec. 4.1)
def linear_filters(model: TwoLayerModel) -> torch.Tensor:
    """Signed linear filter of every path, `(G, C, k, k)` float64: dual `[v_i; -w_i]`
    (G = 2P), primal `u_j alpha_j` (G = m)."""
    _check_model(model)
    if isinstance(model, ConvexDualDenoiser):
        return torch.cat([model.v_, -model.w_])
    u = model.conv1.weight.detach().to(torch.float64)
    alpha = model.conv2.weight.detach().to(torch.float64).reshape(-1)
    return u * alpha.reshape(-1, 1, 1, 1)  # eq. 7: v = u alpha


def path_norms(model: TwoLayerModel) -> torch.Tensor:
    """`(G,)` path norms: dual `[||v_i||; ||w_i||]`, primal `||u_j||_2 |alpha_j|` (eq. 7)."""
    return linear_filters(model).flatten(1).norm(dim=1)


def _threshold(norms: torch.Tensor, tol: float, atol: float) -> float:
    largest = float(norms.max()) if norms.numel() else 0.0
    return max(tol * largest, atol)


def nonzero_paths(model: TwoLayerModel, tol: float = DEFAULT_TOL,
                  atol: float = DEFAULT_ATOL) -> torch.Tensor:
    """Boolean `(G,)`: path norm > `max(tol * largest, atol)` (see the module docstring)."""
    norms = path_norms(model)
    return norms > _threshold(norms, tol, atol)


def path_norm(model: TwoLayerModel) -> float:
    """Path norm `sum_j ||u_j||_2 |alpha_j|` (eq. 7, Neyshabur et al. 2015); for a dual the
    group-lasso term `sum_i ||v_i|| + ||w_i||` of eq. 4, which equals the path norm of
    `to_primal()` (eq. 5)."""
    return float(path_norms(model).sum())  # eq. 7: sum_j ||u_j||_2 |alpha_j|


@dataclass
class PathSparsity:
    """Sparsity summary of one two-layer model (JSON-able through `to_dict`)."""

    kind: str                     # "dual" or "primal"
    n_paths: int                  # 2P (dual) or m (primal)
    n_nonzero: int
    tol: float
    atol: float
    threshold: float              # absolute norm threshold used
    path_norm: float              # eq. 7
    largest: float
    n_for_90_percent: int         # fewest paths carrying 90 % of the path norm
    n_patterns: int | None = None           # dual only: P
    n_nonzero_patterns: int | None = None   # dual only: i with v_i or w_i nonzero
    n_nonzero_v: int | None = None
    n_nonzero_w: int | None = None
    top_norms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def path_sparsity(model: TwoLayerModel, tol: float = DEFAULT_TOL,
                  atol: float = DEFAULT_ATOL) -> PathSparsity:
    """Which paths are nonzero, their norms and the path norm (Sec. 4.1, eq. 7)."""
    norms = path_norms(model)
    thr = _threshold(norms, tol, atol)
    nz = norms > thr
    ordered = torch.sort(norms, descending=True).values
    total = float(norms.sum())
    n90 = int((torch.cumsum(ordered, 0) < 0.9 * total).sum()) + 1 if total > 0 else 0
    out = PathSparsity("primal", int(norms.numel()), int(nz.sum()), tol, atol, thr, total,
                       float(ordered[0]) if norms.numel() else 0.0, n90,
                       top_norms=[float(a) for a in ordered[:10]])
    if isinstance(model, ConvexDualDenoiser):
        p = model.v_.shape[0]
        out.kind, out.n_patterns = "dual", p
        out.n_nonzero_v, out.n_nonzero_w = int(nz[:p].sum()), int(nz[p:].sum())
        out.n_nonzero_patterns = int((nz[:p] | nz[p:]).sum())
    return out


@dataclass
class BetaSparsityPoint:
    beta: float
    n_paths: int
    n_nonzero: int
    n_nonzero_patterns: int
    n_for_90_percent: int
    path_norm: float
    objective: float              # dual objective, reduction="sum"
    seconds: float
    status: str


def beta_sparsity_sweep(noisy, clean, betas: Sequence[float], solver: str = "cvxpy",
                        config: Any = None, tol: float = DEFAULT_TOL,
                        atol: float = DEFAULT_ATOL, model_kwargs: dict[str, Any] | None = None,
                        **options: Any) -> list[BetaSparsityPoint]:
    """Fit `ConvexDualDenoiser(beta=b, **model_kwargs)` for every b (same seed, so the same
    generators) with any solver and count the nonzero paths: how eq. 4's group lasso sparsifies
    the paths as beta grows (Sec. 4.1)."""
    betas = [check_positive(b, "betas") for b in betas]
    if not betas:
        raise ValueError("betas: expected at least one value")
    points = []
    for beta in betas:
        t0 = time.perf_counter()
        model = ConvexDualDenoiser(beta=beta, **(model_kwargs or {}))
        model.fit(noisy, clean, solver=solver, config=config, **options)
        s = path_sparsity(model, tol, atol)
        points.append(BetaSparsityPoint(beta, s.n_paths, s.n_nonzero, int(s.n_nonzero_patterns),
                                        s.n_for_90_percent, s.path_norm, float(model.objective_),
                                        time.perf_counter() - t0, model.solve_info_.status))
    return points


# ---------------------------------------------------------------------- filters (Fig. 4)
def frequency_response(filters: torch.Tensor, size: int = 32) -> torch.Tensor:
    """`|fftshift(DFT_size x size(filter zero-padded))|` over the last two axes (Fig. 4)."""
    f = torch.as_tensor(filters)
    if f.ndim < 2 or f.shape[-1] > size or f.shape[-2] > size:
        raise ValueError(f"filters: expected (..., k, k) with k <= size={size}, got shape "
                         f"{tuple(f.shape)}")
    spec = torch.fft.fft2(f.to(torch.float64), s=(size, size))  # Fig. 4: zero-padded DFT
    return torch.fft.fftshift(spec, dim=(-2, -1)).abs()


def top_filters(model: TwoLayerModel, n: int = 16, tol: float = DEFAULT_TOL,
                atol: float = DEFAULT_ATOL) -> torch.Tensor:
    """Indices of the (at most) `n` nonzero paths with the largest norms, largest first."""
    norms = path_norms(model)
    order = torch.argsort(norms, descending=True, stable=True)
    keep = order[norms[order] > _threshold(norms, tol, atol)]
    return keep[:max(int(n), 0)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def save_filter_figure(path: str | Path, model: TwoLayerModel, n_filters: int = 16,
                       fft_size: int = 32, tol: float = DEFAULT_TOL, columns: int = 8,
                       title: str | None = None) -> Path:
    """PNG: the `n_filters` largest nonzero path filters (channel 0) above their frequency
    responses (paper Fig. 4). Dual labels `v_i` / `w_i` name the group and its norm."""
    idx = top_filters(model, n_filters, tol)
    if idx.numel() == 0:
        raise ValueError("the model has no nonzero path to show (every path norm is below the "
                         "threshold)")
    filters, norms = linear_filters(model)[idx, 0], path_norms(model)[idx]
    resp = frequency_response(filters, fft_size)
    p = model.v_.shape[0] if isinstance(model, ConvexDualDenoiser) else None
    cols = min(columns, idx.numel())
    rows = -(-idx.numel() // cols)
    plt = _pyplot()
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.45 * cols, 2.9 * rows + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, i in enumerate(idx.tolist()):
        r, c = 2 * (n // cols), n % cols
        name = f"u{i}a" if p is None else (f"v{i}" if i < p else f"-w{i - p}")
        lim = float(filters[n].abs().max()) or 1.0
        axes[r, c].imshow(filters[n].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[r, c].set_title(f"{name} |{norms[n]:.2g}|", fontsize=7)
        axes[r + 1, c].imshow(resp[n].numpy(), cmap="viridis")
        axes[r + 1, c].set_title("|DFT|", fontsize=7)
    fig.suptitle(title or f"largest {idx.numel()} path filters (top) and their frequency "
                          f"responses (bottom, zero frequency centred)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------- clusters (eq. 8)
def activation_codes(model: TwoLayerModel, images, tol: float = DEFAULT_TOL,
                     atol: float = DEFAULT_ATOL) -> torch.Tensor:
    """Boolean `(n, G', H, W)`: per output pixel, which nonzero paths are active (eq. 8).

    Dual: `D_i(x)` for every pattern i with `v_i` or `w_i` nonzero; primal: ReLU active,
    `conv(x, u_j) > 0`, for every filter j with a nonzero path.
    """
    nz = nonzero_paths(model, tol, atol)
    if isinstance(model, ConvexDualDenoiser):
        x = model._inputs(images, "images")
        p = model.v_.shape[0]
        return sign_masks(x, model.generators_[nz[:p] | nz[p:]])  # eq. 8: [D_i]_pp
    u = model.conv1.weight.detach()
    x = as_images(images, "images", dtype=u.dtype, device=u.device)
    if x.shape[1] != model.in_channels:
        raise ValueError(f"images: the model takes {model.in_channels} channel(s), got "
                         f"{x.shape[1]}")
    with torch.no_grad():
        return conv_same(x, u[nz.to(u.device)]).cpu() > 0  # eq. 1: (x * u_j)_+ active


@dataclass
class PatchClusters:
    """k-means of the per-pixel activation codes (Fig. 5a); labels ordered by cluster size."""

    labels: np.ndarray            # (n, H, W) int, 0 = largest cluster
    n_clusters: int               # used: min(requested, distinct codes)
    requested: int
    sizes: list[int]
    n_features: int               # nonzero paths in the code
    n_distinct_codes: int
    inertia: float

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "labels"}


def cluster_codes(codes: torch.Tensor | np.ndarray, n_clusters: int = 12, seed: int = 0,
                  n_init: int = 4) -> PatchClusters:
    """k-means (scikit-learn, seeded, `n_init` restarts) of boolean codes `(n, G, H, W)`."""
    from sklearn.cluster import KMeans

    c = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes).astype(bool)
    if c.ndim != 4 or min(c.shape) == 0:
        raise ValueError(f"codes: expected a non-empty (n, G, H, W) array, got shape {c.shape}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters: expected a positive integer, got {n_clusters!r}")
    seed = check_seed(seed)
    n, g, h, w = c.shape
    rows = np.ascontiguousarray(c.transpose(0, 2, 3, 1).reshape(-1, g))
    distinct = int(np.unique(np.packbits(rows, axis=1), axis=0).shape[0])
    k = min(n_clusters, distinct)
    # eq. 8 / Fig. 5a: k-means of the per-pixel binary vectors
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(rows.astype(np.float32))
    sizes = np.bincount(km.labels_, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(k)
    labels = rank[km.labels_].reshape(n, h, w)
    return PatchClusters(labels, k, n_clusters, sorted(sizes.tolist(), reverse=True), g,
                         distinct, float(km.inertia_))


def cluster_patches(model: TwoLayerModel, images, n_clusters: int = 12, seed: int = 0,
                    n_init: int = 4, tol: float = DEFAULT_TOL) -> PatchClusters:
    """Cluster every output pixel of `images` by its active nonzero paths (eq. 8, Fig. 5a)."""
    return cluster_codes(activation_codes(model, images, tol), n_clusters, seed, n_init)


def cluster_similarity(a: np.ndarray | PatchClusters, b: np.ndarray | PatchClusters,
                       mask: np.ndarray | torch.Tensor | None = None) -> dict[str, float]:
    """Adjusted Rand index and normalised mutual information of two pixel partitions, over
    the pixels where the boolean `mask` (same shape as the label maps) is true, if given."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    la = np.asarray(a.labels if isinstance(a, PatchClusters) else a).reshape(-1)
    lb = np.asarray(b.labels if isinstance(b, PatchClusters) else b).reshape(-1)
    if la.shape != lb.shape:
        raise ValueError(f"label maps must cover the same pixels, got {la.size} and {lb.size}")
    if mask is not None:
        keep = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        if keep.size != la.size:
            raise ValueError(f"mask: expected {la.size} pixels like the label maps, got "
                             f"{keep.size}")
        la, lb = la[keep.reshape(-1)], lb[keep.reshape(-1)]
    return {"adjusted_rand": float(adjusted_rand_score(la, lb)),
            "normalized_mutual_info": float(normalized_mutual_info_score(la, lb))}


def save_cluster_maps(path: str | Path, images, label_maps: Sequence[tuple[str, np.ndarray]],
                      n_clusters: int = 12, title: str | None = None) -> Path:
    """PNG: the images (top row) and one row of cluster maps `(n, H, W)` per named labelling."""
    x = as_images(images, "images").cpu().numpy()[:, 0]
    plt = _pyplot()
    rows = 1 + len(label_maps)
    fig, axes = plt.subplots(rows, x.shape[0], figsize=(1.3 * x.shape[0] + 0.8, 1.35 * rows + 0.4),
                             squeeze=False)
    cmap = plt.get_cmap("tab20", max(n_clusters, 2))
    for c in range(x.shape[0]):
        axes[0, c].imshow(x[c], cmap="gray")
        for r, (_, labels) in enumerate(label_maps, start=1):
            axes[r, c].imshow(np.asarray(labels)[c], cmap=cmap, vmin=-0.5,
                              vmax=max(n_clusters, 2) - 0.5, interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, name in enumerate(["input"] + [n for n, _ in label_maps]):
        axes[r, 0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------- everything at once
def _stages(model: Any, images: torch.Tensor) -> list[tuple[TwoLayerModel, torch.Tensor]]:
    if isinstance(model, (ConvexDualDenoiser, TwoLayerConvDenoiser)):
        return [(model, images)]
    if hasattr(model, "stages"):
        return model.stages(images)
    raise TypeError(f"model: expected a ConvexDualDenoiser, TwoLayerConvDenoiser or a deep "
                    f"model with stages() (convexnn.deep), got {type(model).__name__}")


def load_interpretable(path: str | Path) -> Any:
    """A model file for `interpret_model`: a greedy stack (`convexnn.deep.save_stack`) or one
    dual/primal model (`convexnn.io.save_model`); FileNotFoundError/ValueError when bad."""
    from convexnn.deep import is_stack_file, load_stack
    from convexnn.io import load_model

    return load_stack(path) if is_stack_file(path) else load_model(path)


def interpret_model(model: Any, images, out: str | Path, n_clusters: int = 12,
                    n_filters: int = 16, fft_size: int = 32, tol: float = DEFAULT_TOL,
                    seed: int = 0, n_init: int = 4) -> dict[str, Any]:
    """Sparsity summary, filter/frequency PNG per block and one cluster-map PNG for `images`
    (feed clean images, as the paper does); writes `out/interpret.json` and returns its dict."""
    out = Path(out)
    seed = check_seed(seed)
    x = as_images(images, "images", dtype=torch.float64)
    stages = _stages(model, x)
    blocks, maps, files = [], [], {}
    for b, (block, z) in enumerate(stages):
        tag = "" if len(stages) == 1 else f"_block{b + 1}"
        s = path_sparsity(block, tol)
        entry: dict[str, Any] = {"sparsity": s.to_dict()}
        if s.n_nonzero:
            files[f"filters{tag}"] = str(save_filter_figure(out / f"filters{tag}.png", block,
                                                            n_filters, fft_size, tol))
            cl = cluster_patches(block, z, n_clusters, seed, n_init, tol)
            entry["clusters"] = cl.summary()
            maps.append((f"block {b + 1}" if tag else "clusters", cl.labels))
        blocks.append(entry)
    result: dict[str, Any] = {"model": type(model).__name__, "n_images": int(x.shape[0]),
                              "image_shape": list(x.shape[1:]), "blocks": blocks}
    if len(maps) > 1:
        result["block_similarity_to_first"] = [cluster_similarity(maps[0][1], m)
                                               for _, m in maps[1:]]
    if maps:
        files["clusters"] = str(save_cluster_maps(out / "clusters.png", x, maps, n_clusters,
                                                  "k-means of active nonzero paths (eq. 8)"))
    else:
        warnings.warn("every path is zero: no filters or clusters to show", stacklevel=2)
    result["files"] = {**files, "summary": str(out / "interpret.json")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "interpret.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
