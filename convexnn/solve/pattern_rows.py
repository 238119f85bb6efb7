"""The rows of eq. 3's patch matrix, streamed, and every product of eq. 4 with sign patterns.

`PatternRows` holds this process's pixels (under `torchrun` each process holds a shard; every
sum over pixels is all-reduced, so each process sees the same result as one process holding
every pixel): the patch rows `x_n` as unit vectors `xu_n = x_n / ||x_n||` and their norms.
Signs are taken on the unit rows, `D_in = 1[xu_n . g_i >= 0]`, everywhere in the exact
large-scale path (pricing, Gram, cone rows), so all of it sees one set of patterns.

    price(g, w)            X^T D_i w for every generator (App. C: w = lambda; A^T y: w = y)
    predict(g, a)          sum_i D_i X a_i (eq. 4's prediction, this shard's pixels)
    smallest(g, v, r, t)   per candidate the r smallest cone-row values (global), with the
                           signed unit rows themselves, so a caller never needs pixel indices
    max_violation(g, u)    the largest cone-row violation of groups u, relative to their norm
    extend_gram(k, g, p0)  the Gram K = A^T A of eq. 4 for generators g, given its first p0
                           patterns' block (only the new blocks are computed, streamed)
"""

from __future__ import annotations

import torch

from convexnn.solve import kernels
from convexnn.train.distributed import DistInfo, all_reduce_sum

__all__ = ["PatternRows"]

_BLOCK = 2 ** 22          # elements of one streamed temporary
_CHUNK = 64               # new patterns per Gram pass


class PatternRows:
    """The patch rows (N, d) of this process; see the module doc."""

    def __init__(self, x: torch.Tensor, info: DistInfo | None = None) -> None:
        self.info = info or DistInfo()
        self.norms = x.norm(dim=1)
        self.keep = self.norms > 0
        self.xu = torch.where(self.keep[:, None], x / self.norms.clamp_min(1e-300)[:, None],
                              torch.zeros_like(x)).contiguous()
        self.n, self.d = x.shape
        self.device, self.dtype = x.device, x.dtype
        sizes = self._gather(torch.tensor([self.n], device=self.device))
        self.offset = int(sizes[:self.info.rank].sum()) if self.info.enabled else 0
        self.n_global = int(sizes.sum()) if self.info.enabled else self.n

    def subset(self, fraction: int, seed: int = 0) -> tuple[PatternRows, torch.Tensor]:
        """A seeded uniform sample of `1 / fraction` of this process's rows (a coarse level of
        the same program; a regular stride would sample fixed columns of every image) and the
        indices of the rows taken."""
        gen = torch.Generator().manual_seed(seed + 7919 * self.info.rank)
        idx = torch.randperm(self.n, generator=gen)[:max(1, self.n // fraction)].sort().values
        idx = idx.to(self.device)
        return PatternRows(self.xu[idx] * self.norms[idx, None], self.info), idx

    # ------------------------------------------------------------------ collectives
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate `t` over processes along dim 0 (the same shape on every process)."""
        if not self.info.enabled:
            return t
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(self.info.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.info)

    # ------------------------------------------------------------------ products
    def price(self, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """`X^T D_i w` (P, d) for generators g (P, d), pixel weights w (N,)."""
        return self.sum(kernels.price(self.xu, g, self.xu * (w * self.norms)[:, None]))

    def predict(self, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """`sum_i D_i X a_i` on this process's pixels (N,)."""
        if g.shape[0] == 0:
            return self.xu.new_zeros(self.n)
        return kernels.gated_rows(self.xu, g, a) * self.norms

    def smallest(self, g: torch.Tensor, v: torch.Tensor, r: int, thresh: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per candidate q the `r` smallest values `c_n . v_q` of its cone rows
        `c_n = sgn(xu_n . g_q) xu_n` over every pixel: (values (Q, r) ascending, +inf where
        fewer rows; rows (Q, r, d); global row ids (Q, r), -1 where none; count (Q,) of values
        below thresh). With v = g the values are the margins |xu_n . g|."""
        idx, val, cnt = kernels.smallest(self.xu, self.keep, g, v, r, thresh)
        safe = idx.clamp_min(0)
        rows = self.xu[safe]                                              # (Q, r, d)
        sgn = torch.where((rows * g[:, None, :]).sum(2) >= 0, 1.0, -1.0).to(self.dtype)
        rows = rows * sgn[:, :, None] * (idx >= 0)[:, :, None]
        ids = torch.where(idx >= 0, idx + self.offset, idx)
        if self.info.enabled:
            q = g.shape[0]
            w = self.info.world_size
            val = self._gather(val[None]).permute(1, 0, 2).reshape(q, w * r)
            rows = self._gather(rows[None]).permute(1, 0, 2, 3).reshape(q, w * r, self.d)
            ids = self._gather(ids[None]).permute(1, 0, 2).reshape(q, w * r)
            order = torch.sort(val, dim=1, stable=True).indices[:, :r]
            val, ids = val.gather(1, order), ids.gather(1, order)
            rows = rows.gather(1, order[:, :, None].expand(-1, -1, self.d))
            cnt = self.sum(cnt)
        return val, rows, ids, cnt

    def max_violation(self, g: torch.Tensor, u: torch.Tensor) -> float:
        """Largest violation of the cone rows `(2 D_i - I) X u >= 0` of eq. 4 by the groups u
        (2P, d) = [v; w] of generators g (P, d), over every pixel, relative to the largest group
        norm (the rows have unit norm). One fused pass (`kernels.smallest`)."""
        norms = u.norm(dim=1)
        top = float(norms.max()) if u.numel() else 0.0
        if top == 0:
            return 0.0
        live = norms > 0                                   # a zero group violates nothing
        thr = torch.zeros(int(live.sum()), dtype=self.dtype, device=self.device)
        val, _, _, _ = self.smallest(torch.cat([g, g])[live], u[live], 1, thr)
        return max(0.0, -float(val[:, 0].min())) / top

    def extend_gram(self, k_old: torch.Tensor | None, g: torch.Tensor, p0: int
                    ) -> torch.Tensor:
        """`K = A^T A` (P d, P d) of eq. 4 for generators g (P, d), `K[i, j] = X^T D_i D_j X`;
        `k_old` is the block of the first `p0` patterns (kept, not recomputed). The new
        patterns' blocks are computed in chunks of 64 against every earlier pattern (the
        symmetric half only), streaming blocks of pixels: nothing N x P is stored."""
        p, d = g.shape[0], self.d
        out = self.xu.new_zeros((p * d, p * d))
        if p0:
            out[:p0 * d, :p0 * d] = k_old
        for c0 in range(p0, p, _CHUNK):
            c1 = min(p, c0 + _CHUNK)
            acc = self.sum(self._gram_rows(g[:c1], c0))                   # (dl d, c1 d)
            out[c0 * d:c1 * d, :c1 * d] = acc
            out[:c0 * d, c0 * d:c1 * d] = acc[:, :c0 * d].T
        return out

    def _gram_rows(self, g: torch.Tensor, c0: int, by_products: bool | None = None
                   ) -> torch.Tensor:
        """The rows of K for patterns c0.. of g against every pattern of g, by the GEMM whose
        streamed operand is smaller: `(D_a X)^T (D_j X)` (P d columns), or, for few new
        patterns, `(D_a x x^T)^T D_j` over the d (d + 1) / 2 products of each row (P columns;
        the blocks are symmetric)."""
        c1, d = g.shape[0], self.d
        dl = c1 - c0
        gt = g.T.contiguous()
        iu = torch.triu_indices(d, d, device=self.device)
        nt = iu.shape[1]
        if by_products is None:      # measured: the product form wins for many columns
            by_products = dl * nt < c1 * d or c1 > 150
        width = dl * nt + c1 if by_products else (dl + c1) * d
        step = max(1, _BLOCK // width)
        acc = self.xu.new_zeros((dl * nt, c1) if by_products else (dl * d, c1 * d))
        for r0 in range(0, self.n, step):
            xb = self.xu[r0:r0 + step]
            m = (xb @ gt >= 0).to(self.dtype)                                   # (nb, c1)
            xs = xb * self.norms[r0:r0 + step, None]
            if by_products:
                xx = xs[:, iu[0]] * xs[:, iu[1]]                                # (nb, nt)
                y = (m[:, c0:, None] * xx[:, None, :]).reshape(xb.shape[0], dl * nt)
                acc.addmm_(y.T, m)
            else:
                ab = (m[:, :, None] * xs[:, None, :]).reshape(xb.shape[0], c1 * d)
                acc.addmm_(ab[:, c0 * d:].T, ab)
        if not by_products:
            return acc
        blocks = acc.new_empty((dl, c1, d, d))
        half = acc.reshape(dl, nt, c1).permute(0, 2, 1)                        # (dl, c1, nt)
        blocks[:, :, iu[0], iu[1]] = half
        blocks[:, :, iu[1], iu[0]] = half
        return blocks.permute(0, 2, 1, 3).reshape(dl * d, c1 * d)
