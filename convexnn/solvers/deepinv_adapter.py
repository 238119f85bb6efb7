"""Two-way adapters between this package and deepinv (https://deepinv.github.io).

- `to_deepinv_denoiser(d)`: our `denoiser(x, sigma=None)` as a `deepinv.models.Denoiser`.
- `from_deepinv_denoiser(m, default_sigma=None)`: a deepinv denoiser in our protocol.
- `to_deepinv_physics(op)`: our `LinearOperator` as a `deepinv.physics.LinearPhysics`.
- `from_deepinv_physics(p)`: a deepinv `LinearPhysics` as our `LinearOperator`.

Round trips return the original object (the wrappers unwrap). deepinv is an optional extra,
imported only when an adapter is used.
"""

from __future__ import annotations

import functools

import torch

from .denoisers import Denoiser, call_denoiser

__all__ = ["to_deepinv_denoiser", "from_deepinv_denoiser", "to_deepinv_physics",
           "from_deepinv_physics", "DeepinvDenoiser", "require_deepinv"]


def require_deepinv():
    """Import deepinv or raise an ImportError that says how to install it."""
    try:
        import deepinv
    except ImportError as e:
        raise ImportError("the deepinv adapters need the optional dependency deepinv: "
                          "`pip install deepinv`") from e
    return deepinv


def _sigma_for_us(sigma):
    """deepinv passes sigma as float or a (B,) tensor; a constant tensor becomes a float."""
    if isinstance(sigma, torch.Tensor):
        flat = sigma.detach().reshape(-1)
        if flat.numel() >= 1 and bool((flat == flat[0]).all()):
            return float(flat[0])
    return sigma


@functools.cache
def _denoiser_class():
    dinv = require_deepinv()

    class ToDeepinvDenoiser(dinv.models.Denoiser):
        """Our denoiser as a `deepinv.models.Denoiser` (forward(x, sigma=None))."""

        def __init__(self, denoiser) -> None:
            super().__init__()
            self.denoiser = denoiser

        def forward(self, x, sigma=None, **kwargs):
            return call_denoiser(self.denoiser, x, _sigma_for_us(sigma))

    return ToDeepinvDenoiser


class DeepinvDenoiser(Denoiser):
    """A deepinv denoiser in our protocol: `forward(x, sigma=None)` calls `model(x, sigma)`,
    with `sigma = default_sigma` when None is passed (deepinv models that need a noise level
    raise otherwise)."""

    def __init__(self, model, default_sigma: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.default_sigma = default_sigma

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        s = self.default_sigma if sigma is None else sigma
        return self.model(x, s)


def to_deepinv_denoiser(denoiser):
    """`deepinv.models.Denoiser` that calls `denoiser(x, sigma)`."""
    if isinstance(denoiser, DeepinvDenoiser):
        return denoiser.model
    if not callable(denoiser):
        raise TypeError(f"to_deepinv_denoiser: expected a callable denoiser(x, sigma=None), got "
                        f"{type(denoiser).__name__}")
    return _denoiser_class()(denoiser)


def from_deepinv_denoiser(model, default_sigma: float | None = None):
    """Our-protocol denoiser around a deepinv denoiser `model(x, sigma)`."""
    require_deepinv()
    if isinstance(model, _denoiser_class()):
        return model.denoiser
    if not callable(model):
        raise TypeError(f"from_deepinv_denoiser: expected a deepinv denoiser, got "
                        f"{type(model).__name__}")
    return DeepinvDenoiser(model, default_sigma)


@functools.cache
def _physics_class():
    dinv = require_deepinv()

    class ToDeepinvPhysics(dinv.physics.LinearPhysics):
        """Our `LinearOperator` as a deepinv `LinearPhysics` (A, A_adjoint delegate)."""

        def __init__(self, op, **kwargs) -> None:
            super().__init__(img_size=getattr(op, "in_shape", None), **kwargs)
            self.op = op

        def A(self, x, *args, **kwargs):  # noqa: N802
            return self.op.A(x)

        def A_adjoint(self, y, *args, **kwargs):  # noqa: N802
            return self.op.A_adjoint(y)

    return ToDeepinvPhysics


def _linear_operator_base():
    from .operators.base import LinearOperator

    return LinearOperator


@functools.cache
def _operator_class():
    base = _linear_operator_base()

    class FromDeepinvPhysics(base):
        """A deepinv `LinearPhysics` as our `LinearOperator` (A, A_adjoint delegate; norm,
        gradient and data_fidelity from the base class)."""

        def __init__(self, physics) -> None:
            size = getattr(physics, "img_size", None)
            shape = tuple(size) if size is not None and len(tuple(size)) == 3 else None
            super().__init__(shape)
            self.physics = physics

        def A(self, x):  # noqa: N802
            return self.physics.A(x)

        def A_adjoint(self, y):  # noqa: N802
            return self.physics.A_adjoint(y)

    return FromDeepinvPhysics


def to_deepinv_physics(op, **kwargs):
    """`deepinv.physics.LinearPhysics` with `A = op.A`, `A_adjoint = op.A_adjoint`
    (kwargs, e.g. `noise_model=`, go to LinearPhysics)."""
    if isinstance(op, _operator_class()):
        return op.physics
    for attr in ("A", "A_adjoint"):
        if not callable(getattr(op, attr, None)):
            raise TypeError(f"to_deepinv_physics: expected a linear operator with A and "
                            f"A_adjoint, got {type(op).__name__} without {attr}")
    return _physics_class()(op, **kwargs)


def from_deepinv_physics(physics):
    """Our `LinearOperator` around a deepinv `LinearPhysics`."""
    dinv = require_deepinv()
    if isinstance(physics, _physics_class()):
        return physics.op
    if not isinstance(physics, dinv.physics.LinearPhysics):
        raise TypeError(f"from_deepinv_physics: expected a deepinv.physics.LinearPhysics, got "
                        f"{type(physics).__name__}")
    return _operator_class()(physics)
