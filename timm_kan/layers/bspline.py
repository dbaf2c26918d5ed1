"""B-spline KAN linear layer.

KAN (Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv:2404.19756) in the efficient formulation
popularised by efficient-KAN: every edge function is ``w_b * act(x) + w_s * spline(x)``, the spline a
sum of B-spline bases of order k on a uniform grid of G intervals extended by k knots on each side.
Evaluated as a batch:

    y = base_weight @ act(x) + (spline_weight * spline_scaler) @ B(x)

where B(x) has G + k bases per input. Only k + 1 of them are non-zero for any x (local support), which
the GPU kernels exploit. On a uniform grid (every layer until ``update_grid`` adapts it) this module computes
just those k + 1 values, from the interval index m and the position f in [0, 1) inside the interval, by the
uniform form of the recursion

    b^d_r = ((f + d - r) b^{d-1}_{r-1} + (r + 1 - f) b^{d-1}_r) / d,   B_{m-k+r}(x) = b^k_r,
    dB_{m-k+r}/dx = (b^{k-1}_{r-1} - b^{k-1}_r) / h,

and scatters them into the dense basis that feeds the one GEMM; adapted (non-uniform) grids take the full
Cox-de Boor recursion on the layer's knots. Both have closed-form backwards, and the layer keeps only x for
backward, which rebuilds the bases from it (``BasisLinear``).
"""
from functools import partial
import math
from typing import List, Optional, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import register_check_case
from .base import (
    FUSED_HELP, BasisLinear, KANLinearBase, capturing, check_positive, check_range, fused_check_case, fused_option)

__all__ = ['BSplineKANLinear', 'b_spline_basis', 'uniform_knots', 'grid_is_uniform']


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


def _uniform_bases(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """(..., in) -> (..., in, G + k) B-spline bases on a uniform grid, from the k + 1 local values."""
    x, grid = _in_compute_dtype(x, grid)
    m, f, _ = _knot_positions(x, grid, order)
    num_bases = grid.shape[1] - order - 1
    return _scatter_bases(x, _uniform_local_bases(f, order)[0], _placements(m, num_bases, order), num_bases)


class _UniformBases:
    """Uniform-grid bases for ``BasisLinear``. Backward rebuilds them from x, and from the same knot positions the
    local derivatives dB_{m-k+r}/dx = (b^{k-1}_{r-1} - b^{k-1}_r) / h (the recursion's level k - 1)."""
    basis = staticmethod(_uniform_bases)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor,
                       order: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, grid = _in_compute_dtype(x, grid)
        m, f, step = _knot_positions(x, grid, order)
        values, lower = _uniform_local_bases(f, order)
        num_bases = grid.shape[1] - order - 1
        places = _placements(m, num_bases, order)
        return _scatter_bases(x, values, places, num_bases), _local_input_grad(x, grad, lower, places, step)

    @staticmethod
    def input_grad(x: torch.Tensor, grad: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
        x, grid = _in_compute_dtype(x, grid)
        m, f, step = _knot_positions(x, grid, order)
        lower = _uniform_local_bases(f, order - 1)[0]  # the derivative needs only level k - 1
        return _local_input_grad(x, grad, lower, _placements(m, grid.shape[1] - order - 1, order), step)


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


class BSplineKANLinear(KANLinearBase):
    """KAN layer with B-spline edge functions and a base branch (efficient-KAN's parameterisation).

    Args:
        in_features: Input width.
        out_features: Output width.
        grid_size: Number of grid intervals G (>= 1).
        spline_order: Spline order k (>= 1); each edge has G + k spline coefficients.
        grid_range: Interval covered by the initial uniform grid.
        base_activation: Activation of the base branch; None removes the branch.
        bias: Adds an output bias.
        coeff_init: 'published' or 'variance' (``COEFF_INITS``).
        scale_noise: Amplitude of the random initial spline coefficients.
        scale_base: Gain of the base weight's Kaiming initialisation.
        scale_spline: Gain of the spline scaler's Kaiming initialisation.
        fused: Triton kernel (True), PyTorch reference (False) or the kernel for CUDA tensors (None).
        recompute: The reference rebuilds the bases in backward from x (True: it keeps what a linear layer keeps),
            or keeps them (False: G + k times x's size, for a faster backward).
    """

    def __init__(
            self,
            in_features: int,
            out_features: int,
            grid_size: int = 5,
            spline_order: int = 3,
            grid_range: Tuple[float, float] = (-1.0, 1.0),
            base_activation: Optional[Type[nn.Module]] = nn.SiLU,
            bias: bool = False,
            coeff_init: str = 'published',
            scale_noise: float = 0.1,
            scale_base: float = 1.0,
            scale_spline: float = 1.0,
            fused: Optional[bool] = None,
            recompute: bool = True,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, base_activation, bias, coeff_init, device, dtype)
        dd = {'device': device, 'dtype': dtype}
        self.fused = fused_option(fused)
        if not isinstance(recompute, bool):
            raise ValueError(f'recompute must be True or False, got {recompute!r}')
        self.recompute = recompute
        check_positive('grid_size', grid_size)
        check_positive('spline_order', spline_order)
        lo, hi = check_range('grid_range', grid_range)
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.grid_range = (lo, hi)
        self.scale_noise = scale_noise
        self.scale_base = scale_base
        self.scale_spline = scale_spline
        self.register_buffer('grid', uniform_knots(in_features, grid_size, spline_order, (lo, hi), device))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order, **dd))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features, **dd))
        self._uniform_key = None
        self._uniform = True
        self.reset_parameters()
        self.register_load_state_dict_post_hook(BSplineKANLinear._check_grid)

    @property
    def num_bases(self) -> int:
        return self.grid_size + self.spline_order

    coefficient_names = ('spline_weight', 'spline_scaler')
    expansion_names = ('spline_weight',)
    argument_help = dict(KANLinearBase.argument_help, grid_size='B-spline grid intervals (>= 1)',
                         spline_order='spline order (>= 1)', grid_range="the grid's (low, high)", fused=FUSED_HELP,
                         recompute='the reference rebuilds the bases in backward (`True`: memory of a linear layer) '
                                   'or keeps them (`False`: G + k times more, a faster backward)')
    kernel = 'bspline'

    def knots(self, i: int) -> torch.Tensor:
        return self.grid[i].detach().cpu()

    def basis_range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        k = self.spline_order
        return self.grid[:, k].detach().cpu(), self.grid[:, -k - 1].detach().cpu()

    def reset_coefficients(self) -> None:
        with torch.no_grad():
            self.grid.copy_(uniform_knots(
                self.in_features, self.grid_size, self.spline_order, self.grid_range, self.grid.device))
        self._check_grid()
        if self.coeff_init == 'variance':
            nn.init.ones_(self.spline_scaler)
            nn.init.normal_(self.spline_weight, std=self.variance_preserving_std())
            return
        # small random spline coefficients: the layer starts close to its base branch
        nn.init.uniform_(self.spline_weight, -0.5 * self.scale_noise / self.grid_size,
                         0.5 * self.scale_noise / self.grid_size)
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * self.scale_spline)

    def reset_base(self) -> None:
        nn.init.kaiming_uniform_(self.base.weight, a=math.sqrt(5) * self.scale_base)

    def scaled_spline_weight(self) -> torch.Tensor:
        """Effective spline coefficients, (out, in, grid_size + spline_order)."""
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def edge_basis(self, u: torch.Tensor) -> torch.Tensor:
        return b_spline_basis(u, self.grid, self.spline_order)

    def edge_coefficients(self) -> torch.Tensor:
        return self.scaled_spline_weight()

    def fused_expansion(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.bspline_triton import bspline_kan_matmul
        return bspline_kan_matmul(x, self.grid, self.scaled_spline_weight(), self.spline_order)

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        weight, uniform = self.scaled_spline_weight().flatten(1), self._grid_is_uniform()
        if torch.jit.is_scripting():  # TorchScript cannot call autograd Functions: autograd keeps the bases here
            bases = b_spline_basis(x, self.grid, self.spline_order, uniform)
            return F.linear(bases.flatten(-2).to(x.dtype), weight, self.bias)
        op = _UNIFORM_LINEAR if uniform else _COX_DE_BOOR_LINEAR
        return op(x, weight, self.bias, self.grid, self.spline_order, recompute=self.recompute)

    def _grid_is_uniform(self) -> bool:
        """``grid_is_uniform`` of the knots, rechecked in eager only when they change (a state-dict load, a move, an
        in-place edit). Graph captures read the value kept by the last check (a Python bool, which torch.compile
        guards on), so they hold no host sync on the knots; loads and ``update_grid`` check at once for them."""
        if not torch.jit.is_scripting():
            if not capturing():
                self._check_grid()
        return self._uniform

    def _check_grid(self, *_) -> None:
        key = (self.grid._version, self.grid.data_ptr(), self.grid.device)
        if self._uniform_key != key:
            self._uniform_key, self._uniform = key, grid_is_uniform(self.grid)

    @torch.no_grad()
    def update_grid(
            self,
            x: torch.Tensor,
            margin: float = 0.01,
            grid_eps: float = 0.02,
            max_rows: int = 8192,
            generator: Optional[torch.Generator] = None,
    ) -> None:
        """Move the knots to the data's quantiles and refit the coefficients to keep the function.

        ``x`` may hold any number of rows (e.g. ViT tokens, (B, N, C)); at most ``max_rows`` are used.
        The refit solves the least-squares normal equations per input with (G+k)x(G+k) Gram matrices,
        so memory is O(rows * in * (G+k) + in * (G+k) * out), never O(in * rows * out).

        Args:
            x: Inputs with last dimension ``in_features``.
            margin: Extra room added on both sides of the data range.
            grid_eps: Mix of uniform (1) and quantile (0) knot placement.
            max_rows: Row subsample size.
            generator: Random generator for the subsample.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(f'update_grid expects last dimension {self.in_features}, got {x.shape[-1]}')
        x = x.reshape(-1, self.in_features).float()
        if x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=generator, device='cpu')[:max_rows].to(x.device)]
        rows = x.shape[0]
        old_bases = b_spline_basis(x, self.grid, self.spline_order).transpose(0, 1)  # (in, rows, C)
        coeff = self.scaled_spline_weight().float().permute(1, 2, 0)  # (in, C, out)

        x_sorted = x.sort(dim=0).values
        quantile_idx = torch.linspace(0, rows - 1, self.grid_size + 1, device=x.device).long()
        grid_adaptive = x_sorted[quantile_idx]  # (G+1, in)
        step = (x_sorted[-1] - x_sorted[0] + 2 * margin) / self.grid_size  # (in,)
        ticks = torch.arange(self.grid_size + 1, device=x.device, dtype=torch.float32).unsqueeze(1)
        grid_uniform = ticks * step + x_sorted[0] - margin
        inner = grid_eps * grid_uniform + (1 - grid_eps) * grid_adaptive
        ext = torch.arange(1, self.spline_order + 1, device=x.device, dtype=torch.float32).unsqueeze(1)
        grid = torch.cat([inner[:1] - ext.flip(0) * step, inner, inner[-1:] + ext * step]).T.contiguous()

        new_bases = b_spline_basis(x, grid, self.spline_order).transpose(0, 1)  # (in, rows, C)
        gram = new_bases.mT @ new_bases
        rhs = (new_bases.mT @ old_bases) @ coeff
        # a small ridge keeps bases that no sample reaches at zero instead of making gram singular
        ridge = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        eye = torch.eye(self.num_bases, device=x.device)
        new_coeff = torch.linalg.solve(gram + ridge[:, None, None] * eye, rhs)  # (in, C, out)

        self.grid.copy_(grid)
        self.spline_weight.copy_(new_coeff.permute(2, 0, 1))
        self.spline_scaler.fill_(1.0)
        self._check_grid()

    def regularization_loss(self, regularize_activation: float = 1.0, regularize_entropy: float = 1.0) -> torch.Tensor:
        """KAN's sparsity regulariser: L1 of the mean |coefficient| per edge plus the entropy of its spread."""
        l1 = self.spline_weight.abs().mean(-1)
        total = l1.sum()
        p = l1 / total
        entropy = -torch.sum(p * torch.log(p.clamp_min(1e-12)))
        return regularize_activation * total + regularize_entropy * entropy

    def extra_repr(self) -> str:
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, '
            f'spline_order={self.spline_order}, grid_range={self.grid_range}, base={self.base is not None}, '
            f'bias={self.bias is not None}'
        )


# the kernels' first-use self-check problem (see timm_kan.kernels)
register_check_case('bspline', partial(fused_check_case, partial(BSplineKANLinear, 20, 24), (2, 9, 20), x_scale=0.7))
