"""B-spline KAN linear layer.

KAN (Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv:2404.19756) in the efficient formulation
popularised by efficient-KAN: every edge function is ``w_b * act(x) + w_s * spline(x)``, the spline a
sum of B-spline bases of order k on a uniform grid of G intervals extended by k knots on each side.
Evaluated as a batch:

    y = base_weight @ act(x) + (spline_weight * spline_scaler) @ B(x)

where B(x) has G + k bases per input (``bspline_basis``: the local uniform form, or Cox-de Boor on adapted
knots), and the layer keeps only x for backward, which rebuilds the bases from it (``BasisLinear``), unless
``recompute=False``.
"""
from functools import partial
import math
from typing import Optional, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import register_check_case
from .base import FUSED_HELP, KANLinearBase, check_positive, check_range, fused_check_case, fused_option
from .basis_linear import capturing
from .bspline_basis import b_spline_basis, bspline_linear, grid_is_uniform, uniform_knots

__all__ = ['BSplineKANLinear', 'b_spline_basis', 'uniform_knots', 'grid_is_uniform']


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
        return bspline_linear(uniform)(x, weight, self.bias, self.grid, self.spline_order, recompute=self.recompute)

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
