"""convexnn: exact convex duals of two-layer convolutional ReLU denoisers.

Sahiner, Mardani, Ozturkler, Pilanci, Pauly, "Convex Regularization behind Neural
Reconstruction", ICLR 2021: sample ReLU sign patterns, solve the convex program (eq. 4) to a
certified optimum, rebuild the primal network (eq. 5) and check that the objectives meet.
This module is the public surface; the layout behind it is in docs/architecture.md, the
iterative reconstruction solvers are `convexnn.solvers`.
"""

from convexnn.analysis.certificate import Certificate, certify
from convexnn.analysis.gap import GapReport, gap_report
from convexnn.cascade import CascadeConfig, ConvexShrinkageCascade
from convexnn.deep import (
    GreedyConvexStack,
    GreedyStackConfig,
    UnrolledDenoiser,
    load_stack,
    save_stack,
    train_unrolled,
)
from convexnn.dual import ConvexDualDenoiser
from convexnn.interpret import (
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
from convexnn.io import load_model, save_model
from convexnn.model.denoiser import Denoiser
from convexnn.model.losses import Loss
from convexnn.model.patches import patch_matrix
from convexnn.model.patterns import (
    arrangement_bound,
    sample_generators,
    select_unique_patterns,
    sign_masks,
)
from convexnn.model.primal import TwoLayerConvDenoiser
from convexnn.model.problem import ConvexSolverError
from convexnn.shrinkage import ConvexShrinkageDenoiser, ShrinkageConfig
from convexnn.solve.adam.solver import AdamConfig
from convexnn.solve.admm.solver import AdmmConfig
from convexnn.solve.conic import CvxpyConfig, ProblemSizeError
from convexnn.solve.ipm.config import IpmConfig
from convexnn.solve.registry import SOLVERS, Solver, choose_solver

__version__ = "0.1.0"

__all__ = [
    "ConvexDualDenoiser",
    "ConvexShrinkageDenoiser",
    "ShrinkageConfig",
    "ConvexShrinkageCascade",
    "CascadeConfig",
    "Denoiser",
    "TwoLayerConvDenoiser",
    "IpmConfig",
    "CvxpyConfig",
    "AdmmConfig",
    "AdamConfig",
    "SOLVERS",
    "Solver",
    "choose_solver",
    "certify",
    "Certificate",
    "save_model",
    "load_model",
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
