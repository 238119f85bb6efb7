"""Shared set-up of the MNIST experiments (paper Sec. 5.1, App. B): data, both trainers, plots."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.data import NoiseConfig, add_noise, mnist_denoising_split
from convexnn.solve.adam.solver import AdamConfig
from convexnn.train.primal import PrimalTrainConfig, train_primal
from experiments.common import RESULTS, write_json

__all__ = ["RESULTS", "BETA_MEAN", "write_json", "load_data", "run_primal", "run_dual",
           "final_objectives", "plot_curves", "plot_reconstructions"]

BETA_MEAN = 1e-3   # weight decay in the mean scale; eq. 2/4 use beta = BETA_MEAN * N pixels


def load_data(n_train: int, n_test: int, sigma: float, kind: str = "gaussian", seed: int = 0):
    split = mnist_denoising_split(n_train=n_train, n_test=n_test, seed=seed)
    tr, te = split.train_clean, split.test_clean
    return (add_noise(tr, NoiseConfig(kind, sigma, seed)), tr,
            add_noise(te, NoiseConfig(kind, sigma, seed + 1)), te)


def run_primal(x, y, xe, ye, n_filters: int, beta: float, epochs: int, lr: float = 1e-3,
               seed: int = 0, quiet: bool = False, checkpoint: str | None = None,
               max_seconds: float | None = None, eval_every: int = 1):
    torch.manual_seed(seed)
    model = TwoLayerConvDenoiser(n_filters=n_filters, kernel_size=3)
    cfg = PrimalTrainConfig(beta=beta, lr=lr, epochs=epochs, batch_size=25, seed=seed,
                            progress=not quiet, checkpoint_path=checkpoint,
                            max_seconds=max_seconds, eval_every=eval_every, device="cpu")
    res = train_primal(model, x, y, cfg, eval_set=(xe, ye))
    return model, res


def run_dual(x, y, xe, ye, n_patterns: int, beta: float, epochs: int, seed: int = 0,
             quiet: bool = False, checkpoint: str | None = None,
             max_seconds: float | None = None, eval_every: int = 1, **kw):
    model = ConvexDualDenoiser(kernel_size=3, n_patterns=n_patterns, beta=beta, seed=seed)
    cfg = AdamConfig(epochs=epochs, seed=seed, progress=not quiet,
                     checkpoint_path=checkpoint, max_seconds=max_seconds,
                     eval_every=eval_every, device="cpu", **kw)
    t = time.perf_counter()
    model.fit(x, y, solver="adam", config=cfg, eval_set=(xe, ye))
    return model, time.perf_counter() - t


def final_objectives(primal_model, dual_model, x, y, xe, ye, beta):
    """eq. 2 of the trained primal and of the dual's eq. 5 primal, train and test (sum/mean)."""
    rebuilt = dual_model.to_primal().float()
    out = {}
    for name, (a, b) in {"train": (x, y), "test": (xe, ye)}.items():
        npix = a.shape[0] * a.shape[2] * a.shape[3]
        p = primal_model.objective(a, b, beta)
        d = rebuilt.objective(a, b, beta)
        out[name] = {"primal": p, "dual_rebuilt_primal": d,
                     "primal_mean": p / npix, "dual_rebuilt_primal_mean": d / npix,
                     "relative_difference": (d - p) / p}
    return out


def plot_curves(path: Path, primal_hist, dual_hist, title: str, hlines=None) -> None:
    """Objective vs epoch per split; `hlines` {label: {"train": y, "test": y}} adds levels
    (e.g. an exact solver's optimum, which has no epochs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for hist, label, key in ((primal_hist, "primal (eq. 2)", f"{split}_objective_mean"),
                                 (dual_hist, "dual, eq. 5 primal",
                                  f"{split}_primal_objective_mean"),
                                 (dual_hist, "dual (eq. 4)", f"{split}_objective_mean")):
            pts = [(r["epoch"], r[key]) for r in hist if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label, marker="." if len(pts) < 30 else None)
        for i, (label, ys) in enumerate((hlines or {}).items()):
            ax.axhline(ys[split], color=f"C{3 + i}", linestyle="--", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} objective (mean)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_reconstructions(path: Path, noisy, clean, primal_model, dual_model, n: int = 6) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        p = primal_model(noisy[:n].float())
        d = dual_model.predict(noisy[:n])
    rows = [("noisy", noisy[:n]), ("primal", p), ("dual", d), ("clean", clean[:n])]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(imgs[c, 0], dtype=float), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
