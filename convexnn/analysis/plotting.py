"""Figures people look at: reconstruction grids (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_reconstruction_grid", "psnr"]


def psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB with the reference's dynamic range as peak (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio

    ref = np.asarray(reference, dtype=np.float64)
    rng = float(ref.max() - ref.min()) or 1.0
    return float(peak_signal_noise_ratio(ref, np.asarray(estimate, dtype=np.float64),
                                         data_range=rng))


def save_reconstruction_grid(path: str | Path, columns: Sequence[tuple[str, np.ndarray]],
                             row_labels: Sequence[str] | None = None,
                             title: str | None = None, reference: int = 0) -> Path:
    """One row per image, one column per named stack `(n, H, W)`; PSNR vs column `reference`.

    All columns share the grey-level range of the reference column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = [np.asarray(c[1], dtype=np.float64) for c in columns]
    n = stacks[0].shape[0]
    ref = stacks[reference]
    vmin, vmax = float(ref.min()), float(ref.max())
    fig, axes = plt.subplots(n, len(columns), figsize=(1.9 * len(columns), 1.9 * n + 0.4),
                             squeeze=False)
    for r in range(n):
        for c, (name, _) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(stacks[c][r], cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            label = name if r == 0 else ""
            if c != reference:
                label = (label + "\n" if label else "") + f"{psnr(stacks[c][r], ref[r]):.2f} dB"
            ax.set_title(label, fontsize=8)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
