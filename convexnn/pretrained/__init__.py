"""Pretrained convex-trained denoisers, shipped inside the package (safetensors + a JSON card).

    from convexnn import pretrained
    pretrained.names()                  # the shipped models
    den = pretrained.load("gray-s25")   # a Denoiser: den(x, sigma=None) on (B, 1, H, W) in [0, 1]
    den.card                            # ModelCard: noise level, guarantees, data, command, PSNR

Four kinds, each trained exactly by convex programs on the gray Train400 set (DnCNN's):

- `gray-s<sigma>` (and `-deep<B>` stacks): the residual two-layer ReLU network rebuilt by
  eq. 5 from an exactly solved dual (eq. 4, the default `fit()` path, certified gap in the
  card); `experiments/denoise_natural.py` regenerates them.
- `gray-s<sigma>-fne`: the gradient-form shrinkage network `J = I - grad Phi` (Phi convex and
  1-smooth, `convexnn.shrinkage`), trained by its convex QP; firmly nonexpansive by a
  certificate recomputed from the weights at every load; `experiments/denoise_fne.py`.
- `gray-s<sigma>-cascade<T>`: the greedy shrinkage cascade (`convexnn.cascade`): the certified
  `-fne` model as stage 1, then T - 1 stages on the previous estimate and the noisy input, each
  an exactly solved least-squares problem; not certified firmly nonexpansive;
  `experiments/denoise_cascade.py`.
- `gray-s<sigma>-cascade<T>-adaptive`: that cascade followed by one content-adaptive filter
  stage (`convexnn.model.adaptive`: a least-squares 7 x 7 filter of the estimate and of the
  noisy residual per structure-tensor class of the estimate, one exact system per class); the
  best convex-trained denoisers shipped.

Each card holds the seeded command that regenerates the model and the measured PSNR table.
Loading reads tensors and JSON only (no pickle) and works offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convexnn.deep import UnrolledDenoiser, is_stack_file, load_stack
from convexnn.io import load_model
from convexnn.model.cascade import ShrinkageCascade
from convexnn.model.denoiser import Denoiser
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.shrinkage import ShrinkageNetwork

__all__ = ["ModelCard", "PretrainedDenoiser", "names", "card", "load", "MODELS_DIR"]

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ModelCard:
    """What a shipped model is, how it was made, and what it measured.

    sigma : the noise standard deviation it was trained for, on the [0, 1] pixel scale.
    firmly_nonexpansive : proven (by `lipschitz_certificate` <= 1), never estimated.
    lipschitz_certificate : a proven upper bound of Lip(2 J - I), or None.
    psnr : measured PSNR in dB, {test set: {noise level on [0, 255]: dB}}, with BM3D beside it.
    """

    name: str
    sigma: float
    firmly_nonexpansive: bool
    lipschitz_certificate: float | None
    kernel_size: int
    n_filters: int
    residual: bool
    training_data: str
    training_pixels: int
    training_command: str
    n_patterns: int
    beta_per_pixel: float
    solver: str
    certified_gap: float | None
    fit_seconds: float
    psnr: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)   # per-image PSNRs a test re-measures
    n_blocks: int = 1          # > 1: a greedy stack (Sec. 4.3) of exact residual blocks
    architecture: str = "two-layer"   # or "gradient-shrinkage", "shrinkage-cascade"
    frame: str = "dct"         # the shrinkage filters (`shrinkage_frame`): "dct", "multiscale"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = set(cls.__dataclass_fields__)
        missing = known - set(d) - {"psnr", "baselines", "check", "n_blocks", "architecture",
                                    "frame"}
        if missing:
            raise ValueError(f"model card: missing fields {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})


class PretrainedDenoiser(Denoiser):
    """A shipped network: `J(x)` on one-channel images in [0, 1]; `card` says what it is.

    The shipped network itself: a residual two-layer network (Cor. 1.1), for
    `card.n_blocks > 1` the chain of such blocks of a greedy stack (Sec. 4.3), each rebuilt by
    eq. 5 from its dual, or a gradient-form shrinkage network (`J = I - grad Phi`, certified
    firmly nonexpansive). `averaged=True` serves `J = (I + Q) / 2` from a shipped `Q`."""

    def __init__(self, net: TwoLayerConvDenoiser | UnrolledDenoiser | ShrinkageNetwork
                 | ShrinkageCascade,
                 card: ModelCard,
                 averaged: bool) -> None:
        super().__init__()
        self.net = net
        self.card = card
        self.averaged = bool(averaged)

    @property
    def lipschitz_certificate(self) -> float | None:
        return self.card.lipschitz_certificate

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] != 1:
            raise ValueError(f"pretrained {self.card.name!r} is a gray model: expected (B, 1, H, W)"
                             f" in [0, 1], got {x.shape[1]} channels (convert colour images to "
                             f"gray first, e.g. PIL's convert('L'))")
        self.check_input(x, 1)
        q = self.net(x)
        return 0.5 * (x + q) if self.averaged else q


def names() -> list[str]:
    """The shipped models, sorted."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.safetensors")
                  if p.with_suffix(".json").is_file())


def card(name: str) -> ModelCard:
    """The card of one shipped model (no weights are read)."""
    return ModelCard.from_dict(json.loads(_path(name).with_suffix(".json").read_text()))


def load(name: str) -> PretrainedDenoiser:
    """A shipped model by name (`names()`), as a `Denoiser` with its `card`."""
    path = _path(name)
    c = card(name)
    if c.architecture == "gradient-shrinkage":
        net = load_model(path)
        if not isinstance(net, ShrinkageNetwork):
            raise ValueError(f"{path}: the card says a shrinkage network, the file holds "
                             f"{type(net).__name__}")
        if c.firmly_nonexpansive and not net.firmly_nonexpansive:
            raise ValueError(f"{path}: the card says firmly nonexpansive, but the certificate "
                             f"recomputed from the weights is {net.lipschitz_certificate}")
        return PretrainedDenoiser(net, c, averaged=False)
    if c.architecture == "shrinkage-cascade":
        net = load_model(path)
        if not isinstance(net, ShrinkageCascade) or net.depth != c.n_blocks:
            raise ValueError(f"{path}: the card says a shrinkage cascade of depth {c.n_blocks}, "
                             f"the file holds {type(net).__name__} of depth "
                             f"{getattr(net, 'depth', 1)}")
        if c.firmly_nonexpansive:
            raise ValueError(f"{path}: a shrinkage cascade carries no firm-nonexpansiveness "
                             f"certificate, but the card claims one")
        return PretrainedDenoiser(net, c, averaged=False)
    if c.architecture != "two-layer":
        raise ValueError(f"{path}: unknown architecture {c.architecture!r} in the card")
    if c.n_blocks > 1:
        if not is_stack_file(path):
            raise ValueError(f"{path}: the card says {c.n_blocks} blocks, expected a stack file")
        net = load_stack(path).to_primal()
        if len(net.blocks) != c.n_blocks:
            raise ValueError(f"{path}: the card says {c.n_blocks} blocks, the file holds "
                             f"{len(net.blocks)}")
    else:
        net = load_model(path)
        if not isinstance(net, TwoLayerConvDenoiser):
            raise ValueError(f"{path}: expected a saved primal network, got "
                             f"{type(net).__name__}")
    return PretrainedDenoiser(net, c, averaged=c.firmly_nonexpansive)


def _path(name: str) -> Path:
    available = names()
    if not isinstance(name, str) or name not in available:
        raise ValueError(f"pretrained: unknown model {name!r}; the shipped models are "
                         f"{available}")
    return MODELS_DIR / f"{name}.safetensors"
