"""The cone rows of eq. 4 as the interior-point solver sees them.

Group g (pattern i, v or w) has the rows `c_n = (2 D_in - 1) x_n / ||x_n||` (unit norm; zero
patches dropped). `DenseConeRows` holds every row of every group (small problems);
`GatheredConeRows` a working set of rows per pattern, given as signed row vectors (gathered
from the streamed pixels by `convexnn.solve.pattern_rows`). Both offer the products the Newton step
needs: `values` (C u), `residual`, `adjoint` (C^T z) and `weighted_grams` (C_g^T diag(w) C_g).
"""

from __future__ import annotations

import torch

from convexnn.solve.pattern_rows import PatternRows

__all__ = ["DenseConeRows", "GatheredConeRows"]


class DenseConeRows:
    """The non-zero cone rows `c_n = (2 D_in - 1) Yp_n / ||Yp_n||` of every group.

    The LP slacks and duals are kept in *signed coordinates* `sign o s`, `sign o z` (sign =
    2 D - 1 = +-1): products `s o z`, ratios `z / s`, step ratios `ds / s` are unchanged, and
    `C u` / `C^T z` become plain products with the row matrix (no pass over `sign`; the LP
    part of an iteration is bound by passes over these (M, 2P) arrays). `sign` is used only
    for the start and for reporting.
    """

    def __init__(self, rows: PatternRows, g: torch.Tensor, block_elements: int = 2 ** 24
                 ) -> None:
        self.X = rows.xu[rows.keep].contiguous()                                   # (M, d)
        self.xt = self.X.T.contiguous()
        sgn = torch.where(self.X @ g.T >= 0, 1.0, -1.0).to(self.X.dtype)          # (M, P)
        self.sign = torch.cat([sgn, sgn], 1).contiguous()                          # (M, 2P)
        self.m, self.d = self.X.shape
        # the products x_i x_j of each row for i <= j (the Gram blocks are symmetric)
        self.iu = torch.triu_indices(self.d, self.d, device=self.X.device)
        self.step = max(1, block_elements // max(self.iu.shape[1], 1))
        self.xx = None
        if self.m * self.iu.shape[1] <= block_elements:   # row products, cached if small
            self.xx = self._products(self.X).T.contiguous()                    # (d(d+1)/2, M)

    def _products(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.iu[0]] * x[:, self.iu[1]]

    def values(self, u: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
        """`sign o C u` (signed coordinates): (M, 2P) for u (2P, d); `C u - minus` if given."""
        # (u^T contiguous: with the transposed view MKL returns a layout that makes later
        # elementwise products ~10x slower; likewise the contiguous X^T / xx below)
        if minus is None:
            return self.X @ u.T.contiguous()
        return torch.addmm(minus, self.X, u.T.contiguous(), beta=-1.0)

    def residual(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """`s - sign o C u`: the LP part of the primal residual `G x + s`."""
        return torch.addmm(s, self.X, u.T.contiguous(), alpha=-1.0)

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """`C^T z` for z in signed coordinates (M, 2P): (2P, d)."""
        return (self.xt @ z).T

    def weighted_grams(self, wgt: torch.Tensor) -> torch.Tensor:
        """`C_g^T diag(wgt_g) C_g` for every group: (2P, d, d), streamed over rows."""
        if self.xx is not None:
            half = (self.xx @ wgt).T
        else:
            half = self.X.new_zeros((wgt.shape[1], self.iu.shape[1]))
            for r0 in range(0, self.m, self.step):
                half.addmm_(wgt[r0:r0 + self.step].T, self._products(self.X[r0:r0 + self.step]))
        out = half.new_empty((half.shape[0], self.d, self.d))
        out[:, self.iu[0], self.iu[1]] = half
        out[:, self.iu[1], self.iu[0]] = half
        return out


class GatheredConeRows:
    """A working set of `k` cone rows per pattern, shared by the pattern's two groups v_i, w_i:
    `rows` (P, k, d) signed unit rows `(2 D_in - 1) x_n / ||x_n||`. Slacks and duals are plain
    (sign = 1); the arrays are (k, 2P) as for `DenseConeRows`."""

    def __init__(self, rows: torch.Tensor) -> None:
        p, self.m, self.d = rows.shape
        self.xg = torch.cat([rows, rows]).contiguous()                            # (2P, k, d)
        self.xgt = self.xg.mT.contiguous()                                        # (2P, d, k)
        self.sign = torch.ones((self.m, 2 * p), dtype=rows.dtype, device=rows.device)

    def values(self, u: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
        cu = torch.bmm(self.xg, u.unsqueeze(2)).squeeze(2).T                      # (k, 2P)
        return cu.contiguous() if minus is None else cu - minus

    def residual(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s - torch.bmm(self.xg, u.unsqueeze(2)).squeeze(2).T

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.xgt, z.T.unsqueeze(2)).squeeze(2)                   # (2P, d)

    def weighted_grams(self, wgt: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.xgt * wgt.T[:, None, :], self.xg)                   # (2P, d, d)
