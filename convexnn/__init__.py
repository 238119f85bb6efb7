"""convexnn: exact convex duals of two-layer convolutional ReLU denoisers.

Sahiner, Mardani, Ozturkler, Pilanci, Pauly, "Convex Regularization behind Neural
Reconstruction", ICLR 2021: sample ReLU sign patterns, solve the convex program (eq. 4),
rebuild the primal network (eq. 5) and check that the objectives meet.
"""

from .cvxpy_solver import CvxpyConfig, ProblemSizeError
from .deep import (
    GreedyConvexStack,
    GreedyStackConfig,
    UnrolledDenoiser,
    load_stack,
    save_stack,
    train_unrolled,
)
from .dual import ConvexDualDenoiser
from .gap import GapReport, gap_report
from .interpret import (
    PatchClusters,
    PathSparsity,
    beta_sparsity_sweep,
    cluster_patches,
    cluster_similarity,
    frequency_response,
    interpret_model,
    path_norm,
    path_sparsity,
)
from .losses import Loss
from .patches import patch_matrix
from .patterns import arrangement_bound, sample_generators, select_unique_patterns, sign_masks
from .primal import TwoLayerConvDenoiser
from .problem import ConvexSolverError

__version__ = "0.1.0"

__all__ = [
    "ConvexDualDenoiser",
    "TwoLayerConvDenoiser",
    "CvxpyConfig",
    "ConvexSolverError",
    "ProblemSizeError",
    "GapReport",
    "gap_report",
    "Loss",
    "patch_matrix",
    "sample_generators",
    "select_unique_patterns",
    "sign_masks",
    "arrangement_bound",
    "GreedyConvexStack",
    "GreedyStackConfig",
    "UnrolledDenoiser",
    "train_unrolled",
    "save_stack",
    "load_stack",
    "PathSparsity",
    "PatchClusters",
    "path_sparsity",
    "path_norm",
    "beta_sparsity_sweep",
    "frequency_response",
    "cluster_patches",
    "cluster_similarity",
    "interpret_model",
    "__version__",
]
