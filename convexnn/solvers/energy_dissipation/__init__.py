"""Energy-dissipating networks (Moeller, Moellenhoff, Cremers, ICCV 2019).

A network predicts a descent direction ``d = G(u, f, grad E(u); theta)`` (eq. 3) whose last layer
projects onto a set of descent directions (eq. 8 by eq. 21, eq. 15 by eq. 22), so that Algorithm 1
(``energy_dissipating_descent``, Armijo line search) decreases the energy ``E``
(``convexnn.solvers.energies``) at every step, whatever the weights. ``train_lagged`` trains on eq.
7 with the lagged distribution of iterates of Sec. 4.2.
"""

from .descent import DescentConfig, energy_dissipating_descent, gradient_descent
from .networks import (
    MLP,
    ConvexDenoiserDirection,
    DirectionNetwork,
    GradientDirection,
    PaperDnCNN,
    SetNet,
    SmallConvNet,
)
from .projection import (
    GRAD_NORM_FLOOR,
    HalfSpaceProjection,
    TwoSidedProjection,
    check_zetas,
    in_half_space,
    in_two_sided_set,
)
from .solve import energy_dissipation_solve
from .training import (
    LaggedTrainingConfig,
    LaggedTrainingResult,
    TrainingProblem,
    generate_iterates,
    train_lagged,
)

__all__ = [
    "energy_dissipation_solve", "DescentConfig", "energy_dissipating_descent", "gradient_descent",
    "DirectionNetwork", "PaperDnCNN", "SmallConvNet", "MLP", "SetNet",
    "ConvexDenoiserDirection", "GradientDirection",
    "HalfSpaceProjection", "TwoSidedProjection", "GRAD_NORM_FLOOR", "check_zetas",
    "in_half_space", "in_two_sided_set",
    "TrainingProblem", "LaggedTrainingConfig", "LaggedTrainingResult", "generate_iterates",
    "train_lagged",
]
