"""What limits the convex denoisers on natural images: one exact block against the best linear
filter of the same and larger support (sigma 25, Train400 patches -> Set12).

The linear reference is the least-squares residual filter (k x k weights + bias) on the same
training pairs as the convex block, the best any linear k x k denoiser can do on them. The convex
blocks are residual two-layer networks rebuilt (eq. 5) from eq. 4 solved exactly by the default
`fit()` (certified gap), varying beta and the kernel size. Writes
`experiments/results/denoise_capacity[_quick].{json,png}`.

    PYTHONPATH=. python experiments/denoise_capacity.py            # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convexnn import ConvexDualDenoiser
from convexnn.data import load_test_images, load_training_images
from experiments.common import (
    RESULTS,
    portable_settings,
    timed_log,
    use_reference_data,
    write_json,
)
from experiments.denoise_natural import noisy_of, patches, scores


def unfold(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rows `[k x k patch, 1]` of every pixel ('same' zero padding)."""
    z = F.unfold(x, k, padding=k // 2).transpose(1, 2).reshape(-1, k * k)
    return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], 1)


def linear_filter(noisy: torch.Tensor, clean: torch.Tensor, k: int):
    """The least-squares residual k x k filter with bias: `x + [patch, 1] w`."""
    w = torch.linalg.lstsq(unfold(noisy, k), (clean - noisy).reshape(-1, 1)).solution
    return lambda y: y + (unfold(y, k) @ w).reshape(y.shape)


def mean_psnr(f, images: list[np.ndarray], sigma: float) -> float:
    out = []
    for j, x in enumerate(images):
        y = torch.from_numpy(noisy_of(x, sigma, 1000 + j))[None, None]
        with torch.no_grad():
            out.append(scores(f(y)[0, 0].numpy(), x)[0])
    return float(np.mean(out))


def plot(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lin = payload["linear"]
    ax.plot([r["kernel"] for r in lin], [r["psnr"] for r in lin], "s-",
            label="best linear filter (least squares)")
    for r in payload["convex"]:
        ax.plot(r["kernel"], r["psnr"], "o", ms=8,
                label=f"exact convex block, {r['patterns']} patterns, beta {r['beta_per_pixel']:g}")
    ax.axhline(payload["noisy_psnr"], color="k", ls=":", label="noisy")
    ax.set_xlabel("kernel size k (k x k support)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"sigma {payload['sigma']:g}, Set12 (first {payload['n_test']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--patches", type=int, default=40)
    ap.add_argument("--patch-size", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--linear-kernels", type=int, nargs="+", default=[5, 7, 9, 13, 17])
    ap.add_argument("--convex", nargs="+", default=["5:100:1e-5", "5:100:1e-6", "7:100:1e-6"],
                    help="kernel:patterns:beta-per-pixel of each exact convex block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.quick:
        a.patches, a.patch_size, a.n_test = 4, 20, 2
        a.linear_kernels, a.convex = [3, 5], ["3:12:1e-5"]
    use_reference_data()
    log = timed_log(a.quiet)
    train = load_training_images()
    test = load_test_images("set12")[:a.n_test]
    clean = torch.from_numpy(patches(train, a.patches, a.patch_size, a.seed))[:, None]
    noisy = torch.from_numpy(noisy_of(clean.numpy(), a.sigma, a.seed + 1))
    payload = {"experiment": "denoise_capacity", "settings": portable_settings(a), "sigma": a.sigma,
               "n_test": len(test), "training_pixels": int(clean.numel()),
               "noisy_psnr": mean_psnr(lambda y: y, test, a.sigma), "linear": [], "convex": []}
    for k in a.linear_kernels:
        payload["linear"].append({"kernel": k, "psnr": mean_psnr(
            linear_filter(noisy, clean, k), test, a.sigma)})
        log(f"linear {k} x {k}: {payload['linear'][-1]['psnr']:.2f} dB")
    for spec in a.convex:
        k, p, b = spec.split(":")
        t = time.perf_counter()
        m = ConvexDualDenoiser(kernel_size=int(k), n_patterns=int(p), beta=float(b) * clean.numel(),
                               residual=True, seed=a.seed).fit(noisy, clean)
        row = {"kernel": int(k), "patterns": int(p), "beta_per_pixel": float(b),
               "seconds": time.perf_counter() - t, "status": m.solve_info_.status,
               "certified_gap": m.solve_info_.details.get("certified_gap"),
               "psnr": mean_psnr(m.to_primal(), test, a.sigma)}
        payload["convex"].append(row)
        log(f"convex {spec}: {row['psnr']:.2f} dB, {row['status']}, {row['seconds']:.0f} s")
    path = Path(a.out) / f"denoise_capacity{'_quick' if a.quick else ''}.json"
    write_json(path, payload)
    plot(path.with_suffix(".png"), payload)
    return payload


if __name__ == "__main__":
    main()
