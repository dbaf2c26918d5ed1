"""B-spline bases of the KAN layer (``bspline.BSplineKANLinear``, after Liu et al., arXiv:2404.19756).

A layer's B(x) has G + k bases per input. Only k + 1 of them are non-zero for any x (local support), which
the GPU kernels exploit. On a uniform grid (every layer until ``update_grid`` adapts it) this module computes
just those k + 1 values, from the interval index m and the position f in [0, 1) inside the interval, by the
uniform form of the recursion

    b^d_r = ((f + d - r) b^{d-1}_{r-1} + (r + 1 - f) b^{d-1}_r) / d,   B_{m-k+r}(x) = b^k_r,
    dB_{m-k+r}/dx = (b^{k-1}_{r-1} - b^{k-1}_r) / h,

and scatters them into the dense basis that feeds the one GEMM; adapted (non-uniform) grids take the full
Cox-de Boor recursion on the layer's knots. Both have closed-form backwards, and the layer keeps only x for
backward, which rebuilds the bases from it (``BasisLinear``).
"""
import math
from typing import List, Optional, Tuple

import torch

from .basis_linear import BasisLinear

__all__ = ['b_spline_basis', 'bspline_linear', 'grid_is_uniform', 'uniform_knots']


def uniform_knots(
        in_features: int,
        grid_size: int,
        spline_order: int,
        grid_range: Tuple[float, float],
        device=None,
) -> torch.Tensor:
    """Uniform knot vector of ``grid_size`` intervals extended by ``spline_order`` knots per side."""
    lo, hi = grid_range
    step = (hi - lo) / grid_size
    knots = torch.arange(-spline_order, grid_size + spline_order + 1, device=device, dtype=torch.float32)
    return (knots * step + lo).expand(in_features, -1).contiguous()


def _cox_de_boor(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bases of order ``spline_order`` and ``spline_order - 1`` (the latter feeds the derivative)."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    lower = bases
    for k in range(1, spline_order + 1):
        lower = bases
        left = (x - grid[:, :-(k + 1)]) * (1.0 / (grid[:, k:-1] - grid[:, :-(k + 1)]))
        right = (grid[:, k + 1:] - x) * (1.0 / (grid[:, k + 1:] - grid[:, 1:-k]))
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases, lower


def _uniform_local_bases(f: torch.Tensor, order: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The k + 1 non-zero uniform B-spline values of order k at f, and the k of order k - 1, each scaled by the
    factorial of its order: k! b^k_r(f), r = 0..k, and (k - 1)! b^{k-1}_r(f). So scaled, the recursion
    d! b^d_r = (f + d - r) (d-1)! b^{d-1}_{r-1} + (r + 1 - f) (d-1)! b^{d-1}_r has no division, and the callers
    fold 1/k! (1/(k-1)!) into a multiply they make anyway. Elementwise work on tensors shaped like ``f``."""
    if order == 0:
        return [torch.ones_like(f)], []
    g = 1 - f
    # f + c and g + c = c + 1 - f, c = 0..k-1: each used at several levels, computed once
    f_plus = [f] + [f + c for c in range(1, order)]
    g_plus = [g] + [g + c for c in range(1, order)]
    level, lower = [g, f], [torch.ones_like(f)]
    for d in range(2, order + 1):
        lower = level
        level = [g * lower[0]]
        for r in range(1, d):
            level.append((f_plus[d - r] * lower[r - 1]).addcmul_(g_plus[r], lower[r]))
        level.append(f * lower[d - 1])
    return level, lower


def _knot_positions(x: torch.Tensor, grid: torch.Tensor, order: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On a uniform grid: x's knot interval m, counted from the first knot t_0 (a float: NaN stays NaN), the
    position f in [0, 1) inside it, and the knot step h (in,)."""
    step = (grid[:, -1] - grid[:, 0]) / (grid.shape[1] - 1)
    u = (x - grid[:, order]) / step + order  # position in knot steps from t_0
    m = torch.floor(u)
    return m, u - m, step


def _placements(m: torch.Tensor, num_bases: int, order: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """For r = 0..k, where the local value b^k_r sits in the dense basis (index m - k + r, (..., in, 1)) and whether
    it is dropped (past either end of the extended grid); contiguous (..., in) work, no (..., k + 1) broadcasts."""
    # NaN.long() is INT64_MIN: a NaN input takes interval k (every index valid, so its NaN values are kept and NaN
    # propagates); an infinite one is clamped to where all k + 1 indices are dropped
    first = (m - order).nan_to_num_(0.0).clamp_(-order - 1, num_bases)
    places: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for r in range(order + 1):
        j = first + r
        dropped = (j < 0) | (j >= num_bases)
        places.append((j.clamp_(0, num_bases - 1).long().unsqueeze(-1), dropped))
    return places


def _in_compute_dtype(x: torch.Tensor, grid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x and the knots in fp32 (fp64 for fp64 inputs), whatever x's dtype."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.to(dtype), grid.to(dtype)


def _scatter_bases(x: torch.Tensor, values: List[torch.Tensor], places: List[Tuple[torch.Tensor, torch.Tensor]],
                   num_bases: int) -> torch.Tensor:
    """The k + 1 local values scattered into a fresh dense (..., in, G + k) basis (the dropped ones zeroed)."""
    bases = x.new_zeros(list(x.shape) + [num_bases])
    scale = 1 / math.factorial(len(values) - 1)  # the local values are k! times the bases
    for value, (index, dropped) in zip(values, places):
        bases.scatter_add_(-1, index, torch.where(dropped, 0.0, value * scale).unsqueeze(-1))
    return bases


def _local(x: torch.Tensor, grid: torch.Tensor, order: int, level: int) -> Tuple[
        torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[Tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """On a uniform grid: x in the compute dtype, the local values of order ``level`` and ``level - 1`` (scaled as
    ``_uniform_local_bases`` says), where the k + 1 values of order k sit in the dense basis, and the knot step."""
    x, grid = _in_compute_dtype(x, grid)
    m, f, step = _knot_positions(x, grid, order)
    values, lower = _uniform_local_bases(f, level)
    return x, values, lower, _placements(m, grid.shape[1] - order - 1, order), step


def _uniform_bases(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """(..., in) -> (..., in, G + k) B-spline bases on a uniform grid, from the k + 1 local values."""
    x, values, _, places, _ = _local(x, grid, order, order)
    return _scatter_bases(x, values, places, grid.shape[1] - order - 1)


class _UniformBases:
    """Uniform-grid bases for ``BasisLinear``. Backward rebuilds them from x, and from the same knot positions the
    local derivatives dB_{m-k+r}/dx = (b^{k-1}_{r-1} - b^{k-1}_r) / h (the recursion's level k - 1)."""
    basis = staticmethod(_uniform_bases)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor,
                       order: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, values, lower, places, step = _local(x, grid, order, order)
        bases = _scatter_bases(x, values, places, grid.shape[1] - order - 1)
        return bases, _local_input_grad(x, grad, lower, places, step)

    @staticmethod
    def input_grad(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
        x, lower, _, places, step = _local(x, grid, order, order - 1)  # the derivative needs only level k - 1
        return _local_input_grad(x, grad, lower, places, step)


def _local_input_grad(x: torch.Tensor, grad: torch.Tensor, lower: List[torch.Tensor],
                      places: List[Tuple[torch.Tensor, torch.Tensor]], step: torch.Tensor) -> torch.Tensor:
    """grad_x from the flat basis gradient: sum_r grad[m - k + r] (b^{k-1}_{r-1} - b^{k-1}_r) / h."""
    order = len(places) - 1
    grad = grad.unflatten(-1, (x.shape[-1], -1))
    dx = torch.zeros_like(x)
    for r, (index, dropped) in enumerate(places):
        d = (lower[r - 1] if r > 0 else 0) - (lower[r] if r < order else 0)
        dx.addcmul_(grad.gather(-1, index).squeeze(-1), d.masked_fill_(dropped, 0.0))
    return dx.div_(step * math.factorial(order - 1))  # the local values of order k - 1 are (k - 1)! times theirs


class _CoxDeBoorBases:
    """Bases on any knots for ``BasisLinear``, by the Cox-de Boor recursion; backward from its order k - 1 level,
    dB_{j,k}/dx = k * (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}))."""

    @staticmethod
    def basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
        return _cox_de_boor(*_in_compute_dtype(x, grid), order)[0]

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor,
                       order: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, grid = _in_compute_dtype(x, grid)
        bases, lower = _cox_de_boor(x, grid, order)
        grad = grad.unflatten(-1, bases.shape[-2:])
        k = order
        d_bases = lower[..., :-1] * (k / (grid[:, k:-1] - grid[:, :-(k + 1)])) - \
            lower[..., 1:] * (k / (grid[:, k + 1:] - grid[:, 1:-k]))
        return bases, (grad * d_bases).sum(-1)

    @staticmethod
    def input_grad(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
        return _CoxDeBoorBases.basis_backward(x, grad, grid, order)[1]  # (the recursion gives both at once)


# keep_basis: the rebuild's scatter is a quarter of the layer's eager time on CPU (kan_recompute=False skips it)
_UNIFORM_LINEAR = BasisLinear('bspline_linear', _UniformBases, 'Tensor grid, int order', keep_basis=True)
_COX_DE_BOOR_LINEAR = BasisLinear('cox_de_boor_linear', _CoxDeBoorBases, 'Tensor grid, int order', keep_basis=True)


def grid_is_uniform(grid: torch.Tensor) -> bool:
    """Whether every row of knots is evenly spaced (a meta tensor, which has no values, counts as uniform)."""
    if grid.device.type == 'meta':
        return True
    steps = grid[:, 1:] - grid[:, :-1]
    step = (grid[:, -1] - grid[:, 0]) / (grid.shape[1] - 1)
    return bool(((steps - step[:, None]).abs() <= 1e-5 * step.abs()[:, None]).all())


def b_spline_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int,
                   uniform: Optional[bool] = None) -> torch.Tensor:
    """B-spline bases, computed in fp32 (fp64 for fp64 inputs): local bases on a uniform grid, the Cox-de Boor
    recursion on any other. ``uniform`` (default: checked on ``grid``) lets a caller that knows skip the check.

    Args:
        x: (..., in_features).
        grid: (in_features, grid_size + 2 * spline_order + 1) knots, strictly increasing per row.
        spline_order: Order k >= 1.

    Returns:
        (..., in_features, grid_size + spline_order) bases; each row sums to 1 inside the grid.
    """
    is_uniform = grid_is_uniform(grid) if uniform is None else uniform
    return _uniform_bases(x, grid, spline_order) if is_uniform else _CoxDeBoorBases.basis(x, grid, spline_order)


def bspline_linear(uniform: bool) -> BasisLinear:
    """The layer's op: the local uniform bases, or Cox-de Boor on any knots."""
    return _UNIFORM_LINEAR if uniform else _COX_DE_BOOR_LINEAR
