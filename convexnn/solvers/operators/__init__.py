"""Forward operators (physics) ``y = A x`` with exact adjoints, for the iterative solvers.

Every operator is a ``LinearOperator`` (``A``, ``A_adjoint``, ``norm``, ``gradient``,
``data_fidelity``) acting on real batches ``(B, C, H, W)``; complex MRI images are two real
channels (real, imaginary).
"""

from .base import LinearOperator
from .basic import Identity, Inpainting
from .blur import BLUR_PADDINGS, Blur
from .ct import CT, radon_matrix
from .downsample import DOWNSAMPLE_FACTORS, DOWNSAMPLE_FILTERS, Downsample, bicubic_kernel
from .masks import acceleration_of, cartesian_mask, poisson_disc_mask
from .mri import MRI, calibration_size, estimate_coil_maps, fft2c, ifft2c

__all__ = [
    "LinearOperator",
    "Identity",
    "Inpainting",
    "Blur",
    "BLUR_PADDINGS",
    "Downsample",
    "DOWNSAMPLE_FACTORS",
    "DOWNSAMPLE_FILTERS",
    "bicubic_kernel",
    "MRI",
    "fft2c",
    "ifft2c",
    "calibration_size",
    "estimate_coil_maps",
    "cartesian_mask",
    "poisson_disc_mask",
    "acceleration_of",
    "CT",
    "radon_matrix",
]
