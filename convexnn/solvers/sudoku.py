"""9x9 Sudoku as a convex feasibility problem (Sec. 5.4) and a seeded puzzle generator.

Relaxation on ``{0,1}^{9x9x9}`` (Aragon Artacho, Borwein, Tam 2014): ``u`` has shape
``(B, 9, 9, 9)`` = (batch, digit, row, column). The ``N = 5`` sets of eq. 25:
C1 each cell holds one digit (simplex over digits), C2 each digit once per row (simplex over
columns), C3 once per column (simplex over rows), C4 once per 3x3 box (simplex over the box's
9 cells), C5 the givens (``u[:, :, r, c]`` = one-hot of the given digit). ``sudoku_energy`` is
``FeasibilityEnergy`` over these projections; rounding takes the arg-max digit of each cell.

Grids are int arrays ``(9, 9)``, digits 1..9, 0 = blank. ``generate_puzzles(n, n_givens, seed)``
shuffles a valid base grid (digits, rows in bands, bands, columns in stacks, stacks,
transpose) and removes cells at random, keeping the solution unique when ``unique=True``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .energies import FeasibilityEnergy

__all__ = ["project_simplex", "SudokuEnergy", "sudoku_projections", "sudoku_energy",
           "one_hot", "givens_tensor", "round_grid", "is_valid_solution", "solve",
           "count_solutions", "random_solution", "generate_puzzles", "accuracy"]


def project_simplex(x: Tensor, dim: int) -> Tensor:
    """Euclidean projection of every fibre along ``dim`` onto ``{p >= 0, sum p = 1}``
    (sort-based, Held-Wolfe-Crowder / Duchi et al.)."""
    y = x.movedim(dim, -1)
    n = y.shape[-1]
    s, _ = torch.sort(y, dim=-1, descending=True)
    css = s.cumsum(dim=-1) - 1
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    cond = s - css / k > 0
    rho = cond.to(torch.long).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last True
    theta = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (y - theta).clamp_min(0).movedim(-1, dim)


def _box_view(u: Tensor) -> Tensor:
    """(B, 9, 9, 9) -> (B, 9 digits, 9 boxes, 9 cells)."""
    b = u.shape[0]
    return u.reshape(b, 9, 3, 3, 3, 3).permute(0, 1, 2, 4, 3, 5).reshape(b, 9, 9, 9)


def _unbox_view(v: Tensor) -> Tensor:
    b = v.shape[0]
    return v.reshape(b, 9, 3, 3, 3, 3).permute(0, 1, 2, 4, 3, 5).reshape(b, 9, 9, 9)


def one_hot(grids, dtype=torch.float64) -> Tensor:
    """Int grids ``(B, 9, 9)`` (0 = blank) -> ``(B, 9, 9, 9)`` one-hot (zeros for blanks)."""
    g = torch.as_tensor(np.asarray(grids), dtype=torch.long)
    if g.ndim == 2:
        g = g[None]
    if g.shape[1:] != (9, 9) or int(g.min()) < 0 or int(g.max()) > 9:
        raise ValueError(f"expected grids (B, 9, 9) with digits 0..9, got shape "
                         f"{tuple(g.shape)}, range [{int(g.min())}, {int(g.max())}]")
    oh = torch.nn.functional.one_hot(g, 10)[..., 1:]          # (B, 9, 9, 9): row, col, digit
    return oh.permute(0, 3, 1, 2).to(dtype)


def givens_tensor(puzzles, dtype=torch.float64) -> Tensor:
    """``(B, 10, 9, 9)``: the one-hot givens and the given mask (the energy's data)."""
    oh = one_hot(puzzles, dtype)
    return torch.cat([oh, oh.sum(dim=1, keepdim=True)], dim=1)


def sudoku_projections(givens: Tensor) -> list:
    """The projections onto C1 ... C5 for the batch of givens ``(B, 10, 9, 9)``."""
    oh, mask = givens[:, :9], givens[:, 9:10]

    def p_givens(u: Tensor) -> Tensor:
        return torch.where(mask.to(u.dtype) > 0, oh.to(u.dtype), u)

    return [lambda u: project_simplex(u, 1),                       # C1: one digit per cell
            lambda u: project_simplex(u, 3),                       # C2: once per row
            lambda u: project_simplex(u, 2),                       # C3: once per column
            lambda u: _unbox_view(project_simplex(_box_view(u), 3)),  # C4: once per box
            p_givens]                                              # C5: the givens


class SudokuEnergy(FeasibilityEnergy):
    """eq. 25 with the five Sudoku sets; ``data_image`` is the givens tensor."""

    def __init__(self, givens: Tensor) -> None:
        if not isinstance(givens, Tensor) or givens.ndim != 4 or givens.shape[1:] != (10, 9, 9):
            raise ValueError(f"SudokuEnergy: expected givens (B, 10, 9, 9) from givens_tensor, "
                             f"got {getattr(givens, 'shape', type(givens).__name__)}")
        super().__init__(sudoku_projections(givens))
        self.givens = givens

    def check_input(self, u: Tensor) -> None:
        super().check_input(u)
        if u.shape != (self.givens.shape[0], 9, 9, 9):
            raise ValueError(f"SudokuEnergy: expected u of shape ({self.givens.shape[0]}, 9, 9, "
                             f"9), got {tuple(u.shape)}")

    def data_image(self, u: Tensor) -> Tensor:
        return self.givens.to(u.dtype)

    def select(self, index: Tensor) -> SudokuEnergy:
        return SudokuEnergy(self.givens[index])


def sudoku_energy(puzzles, dtype=torch.float64) -> SudokuEnergy:
    """The feasibility energy (eq. 25) of int puzzles ``(B, 9, 9)``."""
    return SudokuEnergy(givens_tensor(puzzles, dtype))


def round_grid(u: Tensor) -> np.ndarray:
    """Arg-max digit of each cell: ``(B, 9, 9)`` int grids with digits 1..9."""
    return (u.argmax(dim=1) + 1).cpu().numpy()


def is_valid_solution(grid) -> bool:
    g = np.asarray(grid)
    want = set(range(1, 10))
    rows = all(set(g[r]) == want for r in range(9))
    cols = all(set(g[:, c]) == want for c in range(9))
    boxes = all(set(g[r:r + 3, c:c + 3].ravel()) == want for r in (0, 3, 6) for c in (0, 3, 6))
    return rows and cols and boxes


def accuracy(pred, solutions) -> tuple[float, float]:
    """(fraction of cells equal to the solution, fraction of grids fully solved)."""
    p, s = np.asarray(pred), np.asarray(solutions)
    eq = p == s
    return float(eq.mean()), float(eq.reshape(len(p), -1).all(axis=1).mean())


def _search(grid: np.ndarray, limit: int, out: list) -> int:
    """Backtracking with the most-constrained cell first; counts solutions up to ``limit``."""
    cells = np.argwhere(grid == 0)
    if len(cells) == 0:
        out.append(grid.copy())
        return 1
    best, best_opts = None, None
    for r, c in cells:
        used = set(grid[r]) | set(grid[:, c]) | set(
            grid[r // 3 * 3:r // 3 * 3 + 3, c // 3 * 3:c // 3 * 3 + 3].ravel())
        opts = [d for d in range(1, 10) if d not in used]
        if best_opts is None or len(opts) < len(best_opts):
            best, best_opts = (r, c), opts
            if len(opts) <= 1:
                break
    count = 0
    for d in best_opts:
        grid[best] = d
        count += _search(grid, limit - count, out)
        grid[best] = 0
        if count >= limit:
            break
    return count


def count_solutions(puzzle, limit: int = 2) -> int:
    return _search(np.array(puzzle, dtype=np.int64), limit, [])


def solve(puzzle) -> np.ndarray | None:
    out: list = []
    _search(np.array(puzzle, dtype=np.int64), 1, out)
    return out[0] if out else None


def random_solution(rng: np.random.Generator) -> np.ndarray:
    """A uniformly shuffled valid grid from the base pattern ``(3 r + r // 3 + c) % 9``."""
    base = np.array([[(3 * (r % 3) + r // 3 + c) % 9 for c in range(9)] for r in range(9)])
    digits = rng.permutation(9) + 1
    rows = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    cols = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
    g = digits[base][rows][:, cols]
    return g.T.copy() if rng.random() < 0.5 else g


def generate_puzzles(n: int, n_givens: int = 36, seed: int = 0, unique: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded puzzles with ``n_givens`` givens and their solutions, ``(n, 9, 9)`` each.

    ``unique=True`` removes cells one at a time in random order, skipping removals that make
    the solution ambiguous (so a puzzle may keep a few more givens when ``n_givens`` is low)."""
    if n < 1 or not 17 <= n_givens <= 81:
        raise ValueError(f"generate_puzzles: expected n >= 1 and 17 <= n_givens <= 81, got "
                         f"{n}, {n_givens}")
    rng = np.random.default_rng(seed)
    puzzles, sols = [], []
    for _ in range(n):
        sol = random_solution(rng)
        puz = sol.copy()
        filled = 81
        for idx in rng.permutation(81):
            if filled <= n_givens:
                break
            r, c = divmod(int(idx), 9)
            keep = puz[r, c]
            puz[r, c] = 0
            if unique and count_solutions(puz, 2) != 1:
                puz[r, c] = keep
                continue
            filled -= 1
        puzzles.append(puz)
        sols.append(sol)
    return np.stack(puzzles), np.stack(sols)
