"""Identity (denoising) and inpainting (pixel mask) operators."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import LinearOperator, check_binary_mask

__all__ = ["Identity", "Inpainting"]


class Identity(LinearOperator):
    """``A x = x`` (denoising). Any channel count; ``in_shape`` optional (only for ``norm()``)."""

    def __init__(self, in_shape: tuple[int, int, int] | None = None) -> None:
        super().__init__(in_shape, fixed_channels=in_shape is not None)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self._check_image(x, "A: x")

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return self._check_image(y, "A_adjoint: y")


class Inpainting(LinearOperator):
    """``A x = M * x``: keep the pixels where the binary mask is 1, zero the others.

    ``mask`` is ``(H, W)`` (the same for every channel; any channel count accepted) or
    ``(C, H, W)`` (per channel; inputs must have exactly C channels). Measurements keep the image
    shape, with zeros at the missing pixels (as deepinv); ``A`` is self-adjoint.
    """

    def __init__(self, mask: Any) -> None:
        m = check_binary_mask(mask, "Inpainting: mask", (2, 3))
        per_channel = m.ndim == 3
        shape = tuple(m.shape) if per_channel else (1, *m.shape)
        super().__init__(shape, fixed_channels=per_channel)  # type: ignore[arg-type]
        self.register_buffer("mask", m if per_channel else m[None])

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        x = self._check_image(x, "A: x")
        return x * self.mask.to(dtype=x.dtype, device=x.device)  # y = M * x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        y = self._check_image(y, "A_adjoint: y")
        return y * self.mask.to(dtype=y.dtype, device=y.device)  # A^T = A (diagonal)
