"""Patch matrices in exactly the ordering of `torch.nn.functional.conv2d` ('same' padding).

Row `n*H*W + h*W + w` of `Yp` is the k x k x C patch centred at pixel (h, w) of image n,
flattened channel-major (c, i, j) like a conv weight `(P, C, k, k).reshape(P, -1)`, so that
`Yp @ weight.reshape(P, -1).T` equals `conv2d(x, weight, padding=k // 2)` pixel by pixel
(paper eq. 3, the patch form of eq. 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["patch_matrix", "conv_same", "patch_dim", "n_pixels"]


def patch_dim(channels: int, kernel_size: int) -> int:
    """Length of one flattened patch, C k^2."""
    return channels * kernel_size * kernel_size


def n_pixels(images: torch.Tensor) -> int:
    """Number of output pixels n H W (rows of the patch matrix)."""
    return images.shape[0] * images.shape[2] * images.shape[3]


def patch_matrix(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """`Yp` of eq. 3: `(n H W, C k^2)` rows of 'same'-padded patches, conv2d ordering."""
    n, c, h, w = images.shape
    cols = F.unfold(images, kernel_size, padding=kernel_size // 2)  # (n, C k^2, H W)
    return cols.transpose(1, 2).reshape(n * h * w, c * kernel_size * kernel_size)


def conv_same(images: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Cross-correlate `(n, C, H, W)` with filters `(P, C, k, k)`, 'same' zero padding."""
    return F.conv2d(images, filters, padding=filters.shape[-1] // 2)
