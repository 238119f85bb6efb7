"""The plug-in denoisers the solver experiments compare (`ed_pretrained.py`, `pnp_mri.py`).

Each at the noise levels of `--sigmas` (on [0, 255]) where it exists: the shipped convex
models (`gray-s<sigma>-fne`, certified firmly nonexpansive, and the plain `gray-s<sigma>`),
the TV prox (weight tuned per sigma on Train400 by `denoise_natural.tv_weight`), BM3D, and a
DnCNN and a DnCNN with the FNE penalty trained here by `pnp_deblur.py`'s recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from convexnn import pretrained
from convexnn.data import load_training_images
from convexnn.data.training_patches import natural_image_patches
from convexnn.model.denoiser import Denoiser
from convexnn.solvers.denoisers import TVDenoiser
from convexnn.solvers.dncnn import DenoiserTrainConfig, DnCNN, train_denoiser
from experiments.common import portable_settings
from experiments.denoise_natural import tv_weight


def run_settings(a) -> dict:
    """The parsed arguments for a results file: portable, without the local DnCNN cache."""
    return {k: v for k, v in portable_settings(a).items() if k != "dncnn_cache"}


def add_denoiser_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sigmas", type=float, nargs="+", default=[5.0, 10.0, 15.0],
                    help="denoiser noise levels on [0, 255]")
    add_dncnn_arguments(ap)
    ap.add_argument("--bm3d-sigmas", type=float, nargs="*", default=None,
                    help="BM3D's noise levels (default: --sigmas)")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--no-tv", action="store_true")


def add_dncnn_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of `train_dncnn` (and the seed)."""
    ap.add_argument("--dncnn-sigma", type=float, default=5.0,
                    help="noise level of the two DnCNNs trained here (0: none)")
    ap.add_argument("--dncnn-depth", type=int, default=5)
    ap.add_argument("--dncnn-channels", type=int, default=24)
    ap.add_argument("--dncnn-patches", type=int, default=1024)
    ap.add_argument("--dncnn-epochs", type=int, default=3)
    ap.add_argument("--fne-penalty", type=float, default=1e-2)
    ap.add_argument("--dncnn-cache", default=None,
                    help="folder that caches the two DnCNNs (state dicts) between runs")
    ap.add_argument("--seed", type=int, default=0)


def check_shipped_arguments(p: argparse.ArgumentParser, names: list[str], alphas: list[float],
                            tag: str, alpha_flag: str = "--fne-alphas") -> None:
    """`p.error` on an unknown or repeated shipped model name, an alpha outside (0, 1] (where
    `Relaxed(J, alpha)` keeps a firmly nonexpansive J so), a repeated alpha, or a path as tag."""
    unknown = [n for n in names if n not in pretrained.names()]
    if unknown:
        p.error(f"--pretrained: unknown {unknown}; the shipped models are {pretrained.names()}")
    if len(set(names)) != len(names):
        p.error(f"--pretrained: a name is repeated in {names}")
    bad = [a for a in alphas if not 0.0 < a <= 1.0]
    if bad:
        p.error(f"{alpha_flag}: every alpha must satisfy 0 < alpha <= 1 (Relaxed(J, alpha) = "
                f"(1 - alpha) I + alpha J keeps J firmly nonexpansive only there); got {bad}")
    if len(set(alphas)) != len(alphas):
        p.error(f"{alpha_flag}: a value is repeated in {alphas}")
    if "/" in tag or "\\" in tag:
        p.error(f"--tag: a file name suffix, not a path: {tag!r}")


class BM3DDenoiser(Denoiser):
    """BM3D (the `bm3d` package) at a fixed noise level, as a plug-in denoiser."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        import bm3d

        self.check_input(x)
        arr = x.detach().cpu().double().numpy()
        out = np.stack([[bm3d.bm3d(c, self.sigma) for c in im] for im in arr])
        return torch.from_numpy(out).to(x)


def train_dncnn(sigma: float, penalty: float, a, log) -> tuple[DnCNN, dict]:
    """pnp_deblur.py's DnCNN recipe (depth 5, 24 channels, float64, scikit-image patches).

    Cached in `--dncnn-cache` (a state dict, loaded with weights_only=True, and a JSON of the
    recipe it was trained with; a different recipe retrains)."""
    torch.manual_seed(a.seed)
    net = DnCNN(depth=a.dncnn_depth, channels=a.dncnn_channels, dtype=torch.float64)
    recipe = {"sigma": sigma, "fne_penalty": penalty, "depth": a.dncnn_depth,
              "channels": a.dncnn_channels, "patches": a.dncnn_patches,
              "epochs": a.dncnn_epochs, "seed": a.seed}
    cache = None
    if getattr(a, "dncnn_cache", None):
        cache = Path(a.dncnn_cache) / (f"plugin_dncnn_s{sigma * 255:g}_p{penalty:g}_d"
                                       f"{a.dncnn_depth}x{a.dncnn_channels}.pt")
        meta = cache.with_suffix(".json")
        if cache.is_file() and meta.is_file():
            cached = json.loads(meta.read_text())
            if cached.get("recipe") == recipe:
                net.load_state_dict(torch.load(cache, weights_only=True))
                net.eval()
                log(f"DnCNN (FNE penalty {penalty:g}) loaded from {cache.name}")
                return net, {**cached["info"], "cached": cache.name}
    imgs = [torch.from_numpy(p) for p in natural_image_patches(64, 96, seed=1)]
    cfg = DenoiserTrainConfig(sigma=sigma, patch_size=32, n_patches=a.dncnn_patches,
                              epochs=a.dncnn_epochs, lr=1e-3, batch_size=32, seed=a.seed,
                              lipschitz_penalty=penalty, progress=False)
    res = train_denoiser(net, imgs, cfg)
    net.eval()
    log(f"DnCNN (FNE penalty {penalty:g}) trained in {res.seconds:.0f} s")
    info = {"sigma": sigma, "fne_penalty": penalty, "seconds": res.seconds,
            "final_loss": res.epoch_loss[-1], "depth": a.dncnn_depth,
            "channels": a.dncnn_channels}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), cache)
        cache.with_suffix(".json").write_text(json.dumps({"recipe": recipe, "info": info},
                                                         indent=1))
    return net, info


def denoisers(a, log) -> tuple[dict[str, object], dict[str, dict]]:
    """name -> denoiser, name -> what it is (family, sigma, certificate)."""
    den, info = {}, {}
    shipped = pretrained.names()
    train = None
    for s in a.sigmas:
        for kind, name in (("convex FNE", f"gray-s{s:g}-fne"), ("convex plain", f"gray-s{s:g}")):
            if name in shipped:
                den[name] = pretrained.load(name)
                card = den[name].card
                info[name] = {"family": kind, "sigma": s, "certified_gap": card.certified_gap,
                              "firmly_nonexpansive": card.firmly_nonexpansive,
                              "lipschitz_certificate": card.lipschitz_certificate}
        if not a.no_tv:
            train = train if train is not None else load_training_images()
            w = tv_weight(train, s)
            den[f"tv-s{s:g}"] = TVDenoiser(w)
            info[f"tv-s{s:g}"] = {"family": "TV", "sigma": s, "weight": w,
                                  "firmly_nonexpansive": True}
        if not a.no_bm3d and (a.bm3d_sigmas is None or s in a.bm3d_sigmas):
            den[f"bm3d-s{s:g}"] = BM3DDenoiser(s / 255.0)
            info[f"bm3d-s{s:g}"] = {"family": "BM3D", "sigma": s}
    if a.dncnn_sigma > 0:
        for name, penalty in (("dncnn", 0.0), ("dncnn-fne-penalty", a.fne_penalty)):
            den[name], fit = train_dncnn(a.dncnn_sigma / 255.0, penalty, a, log)
            info[name] = {"family": "DnCNN" if penalty == 0 else "DnCNN + FNE penalty",
                          "sigma": a.dncnn_sigma, **fit}
    return den, info
