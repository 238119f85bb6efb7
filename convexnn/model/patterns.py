"""ReLU sign patterns `D_i = diag(1[Yp g_i >= 0])` from generator filters (paper eq. 4).

Generators are `(P, C, k, k)` filters; the pattern of generator g on images x is the pixel-wise
mask `conv2d(x, g, padding='same') >= 0`. Sampled generators are standard Gaussian; patterns are
de-duplicated over the training set and the all-zero pattern is dropped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from convexnn.model.patches import conv_same
from convexnn.model.validation import check_seed

__all__ = [
    "sample_generators",
    "sign_masks",
    "PatternSelection",
    "select_unique_patterns",
    "arrangement_bound",
    "log_arrangement_bound",
    "check_generators",
]


def sample_generators(n_patterns: int, channels: int, kernel_size: int, seed: int | None = 0,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`n_patterns` i.i.d. standard Gaussian generator filters `(P, C, k, k)`, seeded."""
    if isinstance(n_patterns, bool) or not isinstance(n_patterns, (int, np.integer)) \
            or n_patterns < 1:
        raise ValueError(f"n_patterns: expected a positive integer, got {n_patterns!r}")
    rng = np.random.default_rng(check_seed(seed))
    g = rng.standard_normal((int(n_patterns), channels, kernel_size, kernel_size))
    return torch.from_numpy(g).to(dtype)


def check_generators(generators, channels: int, kernel_size: int) -> torch.Tensor:
    """Validate user-given generators: `(P, C, k, k)` with P >= 1, finite."""
    g = torch.as_tensor(generators)
    if g.ndim == 3 and channels == 1:
        g = g.unsqueeze(1)
    if g.ndim != 4 or g.shape[1:] != (channels, kernel_size, kernel_size):
        raise ValueError(f"generators: expected shape (P, {channels}, {kernel_size}, "
                         f"{kernel_size}), got {tuple(g.shape)}")
    if g.shape[0] == 0:
        raise ValueError("generators: expected at least one generator filter, got 0")
    if not g.is_floating_point() or not bool(torch.isfinite(g).all()):
        raise ValueError("generators: expected finite floating-point filters")
    return g


def sign_masks(images: torch.Tensor, generators: torch.Tensor) -> torch.Tensor:
    """Boolean masks `(n, P, H, W)`: `D_i(x) = 1[conv(x, g_i) >= 0]` for every generator."""
    return conv_same(images, generators.to(images.dtype)) >= 0


@dataclass(frozen=True)
class PatternSelection:
    """Which sampled generators give distinct, non-empty patterns on the training set."""

    keep: torch.Tensor  # indices into the sampled generators, in sampling order
    n_sampled: int
    n_duplicates: int
    n_all_zero: int


def select_unique_patterns(images: torch.Tensor, generators: torch.Tensor,
                           block_patterns: int = 512, block_images: int = 64
                           ) -> PatternSelection:
    """De-duplicate the sign patterns of `generators` over `images`, drop all-zero ones.

    Streams over blocks of generators and images and hashes each pattern's packed bits, so no
    `N x P` matrix is materialised. Under `torchrun` (an initialised process group) each
    process hashes its own images and the digests are combined, so every process keeps the
    same generators: those whose pattern over all processes' pixels is distinct and non-empty.
    """
    n_gen = generators.shape[0]
    digests = np.zeros((n_gen, 20), dtype=np.uint8)
    active = np.zeros(n_gen, dtype=bool)
    for p0 in range(0, n_gen, block_patterns):
        g = generators[p0:p0 + block_patterns]
        hashers = [hashlib.blake2b(digest_size=20) for _ in range(g.shape[0])]
        for i0 in range(0, images.shape[0], block_images):
            m = sign_masks(images[i0:i0 + block_images], g)  # (nb, Pb, H, W)
            rows = m.transpose(0, 1).reshape(g.shape[0], -1).cpu().numpy()
            active[p0:p0 + g.shape[0]] |= rows.any(axis=1)
            packed = np.packbits(rows, axis=1)
            for j, h in enumerate(hashers):
                h.update(packed[j].tobytes())
        for j, h in enumerate(hashers):
            digests[p0 + j] = np.frombuffer(h.digest(), dtype=np.uint8)
    digests, active = _combine_over_processes(digests, active)
    keep: list[int] = []
    seen: set[bytes] = set()
    n_dup = n_zero = 0
    for j in range(n_gen):
        if not active[j]:
            n_zero += 1
            continue
        key = digests[j].tobytes()
        if key in seen:
            n_dup += 1
            continue
        seen.add(key)
        keep.append(j)
    return PatternSelection(torch.tensor(keep, dtype=torch.long), n_gen, n_dup, n_zero)


def _combine_over_processes(digests: np.ndarray, active: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Per generator, the digests of every process side by side and `active` on any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return digests, active
    d = torch.from_numpy(np.concatenate([digests, active[:, None].astype(np.uint8)], 1))
    parts = [torch.empty_like(d) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, d)
    both = torch.cat(parts, 1).numpy()
    width = digests.shape[1] + 1
    keys = np.concatenate([both[:, r * width:r * width + width - 1]
                           for r in range(len(parts))], 1)
    return keys, both[:, width - 1::width].any(axis=1)


def log_arrangement_bound(n_samples: int, rank: int) -> float:
    """Natural log of `2 r (e (N - 1) / r)^r`, the bound on the number of sign patterns."""
    if n_samples < 1 or rank < 1:
        raise ValueError(f"expected n_samples >= 1 and rank >= 1, got {n_samples}, {rank}")
    if n_samples == 1:
        return math.log(2.0)
    return math.log(2 * rank) + rank * (1.0 + math.log(n_samples - 1) - math.log(rank))


def arrangement_bound(n_samples: int, rank: int) -> float:
    """`2 r (e (N - 1) / r)^r` (MATH.md): polynomial in N for a fixed patch rank r <= C k^2.

    Returned as a float (``inf`` when it overflows); see `log_arrangement_bound`.
    """
    lb = log_arrangement_bound(n_samples, rank)
    return math.exp(lb) if lb < 709.0 else math.inf
