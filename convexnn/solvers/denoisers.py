"""The denoiser protocol and small wrappers around it.

A denoiser is a `Denoiser` (`convexnn.model.denoiser`: a torch module called
`denoiser(x, sigma=None)` on `(B, C, H, W)`, returning the input's shape, dtype and device, with
declared guarantees `lipschitz_certificate` / `firmly_nonexpansive`), or any plain callable
`f(x)` / `f(x, sigma)`: the convention deepinv uses, so denoisers pass between the two
libraries (`convexnn.solvers.deepinv_adapter`). Every denoiser of the package subclasses
`Denoiser`: `ConvexDualDenoiser` (gated dual network, eq. 4), `TwoLayerConvDenoiser` (primal,
eq. 1), `FirmlyNonexpansiveDenoiser`, the deep stacks, DnCNN and the wrappers below.

Wrappers:
- `Rescaled(d, scale, shift)`: run `d` on `scale * x + shift` and map back (a denoiser trained on
  normalised MNIST pixels used on [0, 1] images).
- `Averaged(q, alpha=0.5)`: `J = (1 - alpha) I + alpha Q`; alpha = 1/2 gives `J = (I + Q)/2`,
  firmly nonexpansive when Q is 1-Lipschitz (Pesquet et al., "resolvent" parametrisation).
- `Residual(net)`: `J(x) = x - net(x)` from a noise predictor.
- `TVDenoiser(weight)`: the prox of `weight * TV` (Chambolle, scikit-image): firmly
  nonexpansive, the classical plug-and-play baseline.

The small DnCNN baseline and its trainer live in `convexnn.solvers.dncnn` (`DnCNN`,
`train_denoiser`, `DenoiserTrainConfig`).
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from convexnn.model.denoiser import Denoiser

__all__ = ["Denoiser", "check_denoiser", "call_denoiser", "Rescaled", "Averaged", "Relaxed",
           "Residual", "TVDenoiser"]


def _accepts_sigma(fn) -> bool:
    target = type(fn).forward if isinstance(fn, nn.Module) else fn
    try:
        return _signature_accepts_sigma(target)
    except TypeError:                 # an unhashable callable: inspect it every time
        return _signature_accepts_sigma.__wrapped__(target)


@functools.lru_cache(maxsize=512)
def _signature_accepts_sigma(target) -> bool:
    """Whether `target` takes a second (sigma) argument; cached per function, so a solver
    does not inspect the signature at every iteration."""
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return True
    if params and params[0].name == "self":      # an unbound forward
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (len(positional) >= 2 or any(p.name == "sigma" for p in params)
            or any(p.kind == p.VAR_POSITIONAL for p in params))


def call_denoiser(denoiser, x: torch.Tensor, sigma=None) -> torch.Tensor:
    """`denoiser(x, sigma)`; a callable that takes only `x` is called as `denoiser(x)`."""
    if isinstance(denoiser, Denoiser):            # the declared convention: no inspection
        return denoiser(x, sigma)
    if not callable(denoiser):
        raise TypeError(f"denoiser: expected a callable `denoiser(x, sigma=None)`, got "
                        f"{type(denoiser).__name__}")
    if _accepts_sigma(denoiser):
        return denoiser(x, sigma)
    return denoiser(x)


def check_denoiser(denoiser, x: torch.Tensor, sigma=None, name: str = "denoiser"
                   ) -> torch.Tensor:
    """Call the denoiser once on `x` `(B, C, H, W)` and return its output.

    Raises TypeError/ValueError with what was expected and what arrived when the input is not
    a 4-d tensor, the call fails, the output is not a tensor, differs in shape from `x`, or
    holds NaN/inf.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{name}: expected an input tensor of shape (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    try:
        out = call_denoiser(denoiser, x, sigma)
    except (RuntimeError, TypeError, ValueError) as e:
        raise type(e)(f"{name} failed on an input of shape {tuple(x.shape)}, dtype {x.dtype}, "
                      f"device {x.device}: {e}") from e
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor output, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name}: expected an output of the input's shape {tuple(x.shape)}, "
                         f"got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise ValueError(f"{name}: output has {bad} non-finite value(s) (NaN/inf) on an input "
                         f"of shape {tuple(x.shape)} with max |x| = {float(x.abs().max()):.3g}")
    return out


class Rescaled(Denoiser):
    """`x -> (D(a x + b, a sigma) - b) / a`: apply `denoiser` in an affinely rescaled space.

    `a = scale`, `b = shift`. A denoiser trained on normalised pixels `(p - mean) / std`
    is used on raw pixels with `Rescaled.from_mean_std(d, mean, std)` (a = 1/std,
    b = -mean/std). The Jacobian is unchanged, so Lipschitz constants carry over.
    """

    def __init__(self, denoiser, scale: float = 1.0, shift: float = 0.0,
                 rescale_sigma: bool = True) -> None:
        super().__init__()
        scale = float(scale)
        if scale == 0.0 or scale != scale:
            raise ValueError(f"scale: expected a non-zero finite number, got {scale}")
        self.denoiser = denoiser
        self.scale = scale
        self.shift = float(shift)
        self.rescale_sigma = bool(rescale_sigma)

    @classmethod
    def from_mean_std(cls, denoiser, mean: float, std: float) -> Rescaled:
        if std <= 0:
            raise ValueError(f"std: expected > 0, got {std}")
        return cls(denoiser, 1.0 / std, -mean / std)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        s = sigma * abs(self.scale) if (sigma is not None and self.rescale_sigma) else sigma
        out = call_denoiser(self.denoiser, self.scale * x + self.shift, s)
        return (out - self.shift) / self.scale

    @property
    def lipschitz_certificate(self) -> float | None:
        """The inner denoiser's (the Jacobian, hence `2 J - I`'s, is unchanged)."""
        return getattr(self.denoiser, "lipschitz_certificate", None)

    @property
    def firmly_nonexpansive(self) -> bool:
        return bool(getattr(self.denoiser, "firmly_nonexpansive", False))


class Averaged(Denoiser):
    """`J = (1 - alpha) I + alpha Q` (alpha-averaged operator when Q is nonexpansive).

    With alpha = 1/2, `J = (I + Q)/2` is firmly nonexpansive iff Q is 1-Lipschitz (Pesquet
    et al., definition of firm nonexpansiveness). Pass `q_is_nonexpansive=True` only when Q
    is 1-Lipschitz by construction; it sets `firmly_nonexpansive` (for alpha <= 1/2), which
    `pnp_*(..., require_convergence=True)` trusts instead of estimating.
    """

    def __init__(self, q, alpha: float = 0.5, q_is_nonexpansive: bool = False) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: expected 0 < alpha <= 1, got {alpha}")
        self.q = q
        self.alpha = float(alpha)
        self.q_is_nonexpansive = bool(q_is_nonexpansive)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        return (1.0 - self.alpha) * x + self.alpha * call_denoiser(self.q, x, sigma)

    @property
    def lipschitz_certificate(self) -> float | None:
        """`Lip(2 J - I) <= |1 - 2 alpha| + 2 alpha Lip(Q)`, with `Lip(Q) <= 1` when declared."""
        if not self.q_is_nonexpansive:
            return None
        return abs(1.0 - 2.0 * self.alpha) + 2.0 * self.alpha


class Relaxed(Denoiser):
    """`J_alpha = (1 - alpha) I + alpha J`: a weaker denoiser that keeps J's certificate.

    `2 J_alpha - I = (1 - alpha) I + alpha (2 J - I)`, so
    `Lip(2 J_alpha - I) <= (1 - alpha) + alpha Lip(2 J - I)`: for `0 < alpha <= 1` a firmly
    nonexpansive J stays firmly nonexpansive. The strength knob for a model trained at one
    noise level (e.g. a shipped `gray-s<sigma>-fne`) used at a lower one in PnP.
    """

    def __init__(self, denoiser, alpha: float) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Relaxed: alpha: expected 0 < alpha <= 1, got {alpha!r}")
        if not callable(denoiser):
            raise TypeError(f"Relaxed: expected a denoiser(x, sigma=None), got "
                            f"{type(denoiser).__name__}")
        self.denoiser = denoiser
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        return (1.0 - self.alpha) * x + self.alpha * call_denoiser(self.denoiser, x, sigma)

    @property
    def lipschitz_certificate(self) -> float | None:
        c = getattr(self.denoiser, "lipschitz_certificate", None)
        return None if c is None else (1.0 - self.alpha) + self.alpha * float(c)


class Residual(Denoiser):
    """`J(x) = x - net(x, sigma)`: a denoiser from a noise predictor (DnCNN residual learning)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        return x - call_denoiser(self.net, x, sigma)


class TVDenoiser(Denoiser):
    """prox of `weight * TV` (Chambolle's algorithm in scikit-image): firmly nonexpansive."""

    lipschitz_certificate = 1.0        # a proximal operator: 2 J - I is nonexpansive

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        import numpy
        from skimage.restoration import denoise_tv_chambolle

        self.check_input(x)
        arr = x.detach().cpu().numpy()
        out = numpy.stack([[denoise_tv_chambolle(c, weight=self.weight) for c in im] for im in arr])
        return torch.from_numpy(out).to(x)
