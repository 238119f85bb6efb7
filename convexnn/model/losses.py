"""Convex data losses of the training problem (eq. 2 / eq. 4 squared; Appendix E: any convex loss).

`squared`: 1/2 ||r||^2;  `l1`: ||r||_1;  `huber`: sum_j h_delta(r_j) with h = r^2 / 2 for
|r| <= delta and delta (|r| - delta / 2) beyond (torch's `huber_loss`). `reduction="sum"` is the
papers' formula; `"mean"` divides by the number of output pixels (Appendix B curves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convexnn.model.validation import check_choice, check_positive

__all__ = ["LOSSES", "REDUCTIONS", "Loss", "data_loss", "check_reduction"]

LOSSES = ("squared", "l1", "huber")
REDUCTIONS = ("sum", "mean")


def check_reduction(reduction: str) -> str:
    return check_choice(reduction, "reduction", REDUCTIONS)


@dataclass(frozen=True)
class Loss:
    """A convex loss `l(pred, target)` with its name and Huber threshold."""

    name: str = "squared"
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_choice(self.name, "loss", LOSSES))
        object.__setattr__(self, "huber_delta", check_positive(self.huber_delta, "huber_delta"))

    def __call__(self, pred: torch.Tensor, target: torch.Tensor,
                 reduction: str = "sum") -> torch.Tensor:
        return data_loss(pred, target, self, reduction)

    def cvxpy(self, residual):
        """The same loss as a CVXPY expression of the residual `pred - target` (sum form)."""
        import cvxpy as cp

        if self.name == "squared":
            return 0.5 * cp.sum_squares(residual)
        if self.name == "l1":
            return cp.norm1(residual)
        # cp.huber(r, M) = r^2 for |r| <= M, 2 M |r| - M^2 beyond: twice our h_delta.
        return 0.5 * cp.sum(cp.huber(residual, self.huber_delta))


def data_loss(pred: torch.Tensor, target: torch.Tensor, loss: Loss,
              reduction: str = "sum") -> torch.Tensor:
    r = pred - target
    if loss.name == "squared":
        value = 0.5 * (r * r).sum()
    elif loss.name == "l1":
        value = r.abs().sum()
    else:
        value = F.huber_loss(pred, target, reduction="sum", delta=loss.huber_delta)
    if check_reduction(reduction) == "mean":
        value = value / r.numel()
    return value
