"""Training patches from natural images that ship with scikit-image (no download needed).

The default pool (astronaut, coffee, chelsea, rocket, coins, moon; grayscale, [0, 1]) is
disjoint from the restoration test sets used in the experiments (Set3C, Set5, Set12, Set14,
BSD68, CBSD10); `camera` is left out because Set12 holds the same cameraman picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TRAINING_IMAGES", "natural_training_images", "natural_image_patches"]

TRAINING_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "coins", "moon")


def natural_training_images(names: Sequence[str] = TRAINING_IMAGES) -> list[np.ndarray]:
    """The named scikit-image sample images as float64 grayscale arrays in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float64

    out = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"unknown scikit-image sample image {name!r}")
        img = img_as_float64(loader())
        out.append(rgb2gray(img) if img.ndim == 3 else img)
    return out


def natural_image_patches(n_patches: int, size: int, seed: int = 0,
                          images: Sequence[np.ndarray] | None = None,
                          min_std: float = 0.02) -> np.ndarray:
    """`(n_patches, size, size)` random patches, seeded, skipping nearly flat ones
    (std < `min_std`), drawn from every image in turn."""
    if n_patches < 1 or size < 1:
        raise ValueError(f"expected n_patches >= 1 and size >= 1, got {n_patches}, {size}")
    pool = list(images) if images is not None else natural_training_images()
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < n_patches:
        img = pool[len(out) % len(pool)]
        if img.shape[0] < size or img.shape[1] < size:
            raise ValueError(f"image of shape {img.shape} is smaller than the patch size {size}")
        i = rng.integers(0, img.shape[0] - size + 1)
        j = rng.integers(0, img.shape[1] - size + 1)
        patch = img[i:i + size, j:j + size]
        tries += 1
        if patch.std() >= min_std or tries > 100 * n_patches:
            out.append(patch.copy())
    return np.stack(out)
