"""Linear operators of eq. 4 in patch form, for the ADMM solver (`convexnn.solve.admm.solver`).

With the patch matrix `X = Yp` (N x d, d = C k^2, eq. 3) and the pattern masks `D` (N x P):

    A a   = sum_i D_i X a_i                      (prediction of a = v - w; N)
    A^T r = [X^T D_i r]_i                        (P x d)
    G u   = E (2 D_i - I) X u_i  for u = [v; w]  (constraint rows, N x 2P)

`E = diag(1 / ||X_n||)` scales every constraint row to unit norm (zero patches, whose
constraint is `0 >= 0`, get 0); the cone `{v : G v >= 0}` does not change. Masks are cached as
one byte per (pixel, pattern) and all products stream over blocks of pixels, so no temporary
exceeds `block_elements` floats.
"""

from __future__ import annotations

import torch

from convexnn.model.patches import patch_matrix
from convexnn.model.patterns import sign_masks

__all__ = ["PatternOperators"]


class PatternOperators:
    """`A`, `A^T`, `G`, `G^T` and the Gram matrices of eq. 4 for fixed data and patterns."""

    def __init__(self, images: torch.Tensor, generators: torch.Tensor, x_scale: float = 1.0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
                 block_elements: int = 2 ** 24) -> None:
        k = int(generators.shape[-1])
        x = images.to(device=device, dtype=dtype)
        g = generators.to(device=device, dtype=dtype)
        self.device, self.dtype = x.device, dtype
        n, _, h, w = x.shape
        self.n_patterns = int(g.shape[0])
        # eq. 3: patch matrix, scaled for conditioning (the masks do not depend on the scale)
        self.X = (patch_matrix(x, k) / x_scale).contiguous()                   # (N, d)
        self.n_pixels, self.dim = self.X.shape
        # D_i = 1[X g_i >= 0], streamed over images, kept as uint8 (N, P)
        per_image = h * w * self.n_patterns
        nb = max(1, block_elements // max(per_image, 1))
        parts = []
        for i0 in range(0, n, nb):
            m = sign_masks(x[i0:i0 + nb], g)                                   # (nb, P, H, W)
            parts.append(m.permute(0, 2, 3, 1).reshape(-1, self.n_patterns).to(torch.uint8))
        self.masks = torch.cat(parts).contiguous()                              # (N, P)
        rows = self.X.norm(dim=1)
        self.unit_scale = torch.where(rows > 0, 1.0 / rows.clamp_min(1e-300),
                                      torch.zeros_like(rows))                  # (N,)
        self.row_scale = self.unit_scale
        self.block = max(1, block_elements // max(2 * self.n_patterns, 1))
        self.blocks = [(r0, min(r0 + self.block, self.n_pixels))
                       for r0 in range(0, self.n_pixels, self.block)]
        self._cache = self.n_pixels * self.n_patterns <= block_elements
        if self._cache:  # small problems: keep float masks and signed row scales
            self._d = self.masks.to(dtype)
            self._se = (2.0 * self._d - 1.0) * self.row_scale[:, None]

    @property
    def storage(self) -> str:
        return ("float masks cached (N x P)" if self._cache else
                f"uint8 masks (N x P), {len(self.blocks)} pixel blocks")

    def _dm(self, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache:
            return self._d[r0:r1], self._se[r0:r1]
        d = self.masks[r0:r1].to(self.dtype)
        return d, (2.0 * d - 1.0) * self.row_scale[r0:r1, None]

    # ------------------------------------------------------------------ products
    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(A (v - w), G u)` for `u = [v; w]` of shape (2P, d): one pass over the pixels."""
        p = self.n_patterns
        pred = self.X.new_empty(self.n_pixels)
        gu = self.X.new_empty((self.n_pixels, 2 * p))
        ut = u.T.contiguous()
        for r0, r1 in self.blocks:
            d, se = self._dm(r0, r1)
            xu = self.X[r0:r1] @ ut                                             # (nb, 2P)
            pred[r0:r1] = (d * (xu[:, :p] - xu[:, p:])).sum(1)
            gu[r0:r1, :p] = se * xu[:, :p]
            gu[r0:r1, p:] = se * xu[:, p:]
        return pred, gu

    def A(self, a: torch.Tensor) -> torch.Tensor:
        """`sum_i D_i X a_i` (N,) for a of shape (P, d)."""
        out = self.X.new_empty(self.n_pixels)
        at = a.T.contiguous()
        for r0, r1 in self.blocks:
            d, _ = self._dm(r0, r1)
            out[r0:r1] = (d * (self.X[r0:r1] @ at)).sum(1)
        return out

    def At(self, r: torch.Tensor) -> torch.Tensor:
        """`[X^T D_i r]_i` (P, d) for r of shape (N,) or (N, m) -> (m, P, d)."""
        single = r.ndim == 1
        rr = r[:, None] if single else r
        out = self.X.new_zeros((rr.shape[1], self.n_patterns, self.dim))
        for r0, r1 in self.blocks:
            d, _ = self._dm(r0, r1)
            dr = d[:, None, :] * rr[r0:r1, :, None]                             # (nb, m, P)
            out += torch.einsum("nmp,nd->mpd", dr, self.X[r0:r1])
        return out[0] if single else out

    # ------------------------------------------------------------------ Gram matrices
    def pattern_grams(self) -> torch.Tensor:
        """`X^T D_i X` for every pattern, (P, d, d) (block diagonal of `A^T A`)."""
        out = self.X.new_zeros((self.n_patterns, self.dim, self.dim))
        for r0, r1 in self.blocks:
            d, _ = self._dm(r0, r1)
            xx = self.X[r0:r1, :, None] * self.X[r0:r1, None, :]                # (nb, d, d)
            out += torch.einsum("np,nij->pij", d, xx)
        return out

    def gram(self, transform: torch.Tensor | None = None) -> torch.Tensor:
        """`T^T A^T A T` (P d x P d) with `T = blockdiag(transform)`; streams the pixels."""
        pd = self.n_patterns * self.dim
        xt = self.X if transform is None else self.X @ transform
        out = self.X.new_zeros((pd, pd))
        step = max(1, (2 ** 22) // max(pd, 1))
        for r0 in range(0, self.n_pixels, step):
            r1 = min(r0 + step, self.n_pixels)
            d = self.masks[r0:r1].to(self.dtype)
            ab = (d[:, :, None] * xt[r0:r1, None, :]).reshape(r1 - r0, pd)
            out.addmm_(ab.T, ab)
        return out
