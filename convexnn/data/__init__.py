"""Data loading for convexnn: IDX/MNIST, shipped data files, synthetic noise, user images."""

from ._bundled import bundled_dataset_path, shared_datasets_dir
from .idx import idx_md5, read_idx
from .images import load_image_pairs, load_images
from .mnist import (
    MNIST_ARCHIVE_MD5,
    MNIST_DIR_ENV,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    MNISTDenoisingSplit,
    denormalize_mnist,
    load_mnist,
    mnist_denoising_split,
    normalize_mnist,
)
from .noise import (
    NOISE_KINDS,
    NoiseConfig,
    add_exponential_noise,
    add_gaussian_noise,
    add_noise,
)

__all__ = [
    "bundled_dataset_path",
    "shared_datasets_dir",
    "read_idx",
    "idx_md5",
    "load_images",
    "load_image_pairs",
    "MNIST_ARCHIVE_MD5",
    "MNIST_DIR_ENV",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_STD",
    "MNISTDenoisingSplit",
    "load_mnist",
    "normalize_mnist",
    "denormalize_mnist",
    "mnist_denoising_split",
    "NOISE_KINDS",
    "NoiseConfig",
    "add_noise",
    "add_gaussian_noise",
    "add_exponential_noise",
]
