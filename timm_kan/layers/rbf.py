"""RBF KAN linear layer (FastKAN / FasterKAN bases, as Vision-KAN uses them).

FastKAN (Li, "Kolmogorov-Arnold Networks are Radial Basis Function Networks", arXiv:2405.06721)
approximates B-splines by radial bases: LayerNorm on the input, G bases per input on a uniform grid
g_1..g_G in [-2, 2] with width h = 4 / (G - 1), their concatenation fed to one linear layer, plus an
optional SiLU base branch:

    gaussian:  phi_j(x) = exp(-((x - g_j) / h)^2)
    rswaf:     phi_j(x) = 1 - tanh((x - g_j) / h)^2      (FasterKAN's reflectional switch)

The bases are computed per centre as contiguous (..., in) blocks laid out (..., G, in), the GEMM's operand. The
layer keeps only its (normalised) input for backward, which rebuilds the bases with their closed-form derivatives:
d/dx exp(-z^2) = -2 z phi / h and d/dx (1 - tanh(z)^2) = -2 tanh(z) phi / h.
"""
import math
from typing import List, Optional, Type, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .base import KANLinearBase, check_range
from .basis_linear import BasisLinear

__all__ = ['RBFKANLinear', 'RBF_BASES', 'rbf_basis']

RBF_BASES = ('gaussian', 'rswaf')


def _radial(x: torch.Tensor, center: float, width: float, basis: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """One centre's bases phi and s, with dphi/dx = -2 s phi / h: s = z for the gaussian, tanh(z) for rswaf."""
    z = (x - center) * (1 / width)
    if basis == 'gaussian':
        return torch.exp(-(z * z)), z
    s = torch.tanh(z)
    return 1 - s * s, s


def _rbf_bases(x: torch.Tensor, centers: List[float], width: float, basis: str) -> torch.Tensor:
    """(..., in) -> (..., G, in) radial bases, one contiguous (..., in) block per centre until the one copy into the
    GEMM operand (out of place: TorchScript's path differentiates this with autograd)."""
    return torch.stack([_radial(x, c, width, basis)[0] for c in centers], -2)


class _RadialBases:
    """The layer's basis for ``BasisLinear``; its backward rebuilds each centre's bases from x, with their
    closed-form derivatives, in one loop."""
    basis = staticmethod(_rbf_bases)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor, centers: List[float], width: float,
                       basis: str) -> Tuple[torch.Tensor, torch.Tensor]:
        bases, grad = [], grad.unflatten(-1, (len(centers), -1))
        dx = torch.zeros_like(x)
        for g, c in enumerate(centers):
            phi, s = _radial(x, c, width, basis)
            bases.append(phi)
            dx = dx.addcmul(grad[..., g, :] * phi, s, value=-2 / width)
        return torch.stack(bases, -2), dx


_RBF_LINEAR = BasisLinear('rbf_linear', _RadialBases, 'float[] centers, float width, str basis')


def rbf_basis(x: torch.Tensor, centers: List[float], width: float, basis: str) -> torch.Tensor:
    """(..., in) -> (..., in, G) radial bases (a view of the layer's (..., G, in) GEMM layout)."""
    return _rbf_bases(x, centers, width, basis).transpose(-1, -2)


class RBFKANLinear(KANLinearBase):
    """KAN layer with radial-basis edge functions.

    Args:
        in_features: Input width.
        out_features: Output width.
        grid_size: Number of bases G per input (>= 2).
        basis: 'gaussian' or 'rswaf'.
        grid_range: Interval of the centres.
        base_activation: Optional base branch activation (SiLU in FastKAN); None removes it.
        bias: Adds an output bias.
        coeff_init: 'published' or 'variance' (``COEFF_INITS``).

    ``spline_weight`` holds the (out, in, G) coefficients of each edge's bases.
    """

    def __init__(
            self,
            in_features: int,
            out_features: int,
            grid_size: int = 8,
            basis: str = 'gaussian',
            grid_range: tuple = (-2.0, 2.0),
            base_activation: Optional[Type[nn.Module]] = nn.SiLU,
            bias: bool = False,
            coeff_init: str = 'published',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, base_activation, bias, coeff_init, device, dtype)
        dd = {'device': device, 'dtype': dtype}
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f'grid_size must be an integer >= 2 for RBF KAN, got {grid_size!r}')
        if basis not in RBF_BASES:
            raise ValueError(f'basis must be one of {RBF_BASES}, got {basis!r}')
        lo, hi = check_range('grid_range', grid_range)
        self.grid_size = grid_size
        self.basis = basis
        self.width = (hi - lo) / (grid_size - 1)
        self.norm = nn.LayerNorm(in_features, **dd)
        # a list of numbers, not a buffer: graph captures and TorchScript read them as constants, and a model built
        # empty and then loaded (transformers does) cannot lose them
        self.center_values = torch.linspace(lo, hi, grid_size).tolist()
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size, **dd))
        self.reset_parameters()

    coefficient_names = ('spline_weight',)
    expansion_names = ('spline_weight',)
    argument_help = dict(KANLinearBase.argument_help, grid_size='RBF centres (>= 1)',
                         basis='radial basis: ' + ', '.join(f'`{b}`' for b in RBF_BASES),
                         grid_range="the centres' (low, high)")
    base_on_raw_input = True

    def knots(self, i: int) -> torch.Tensor:
        return torch.tensor(self.center_values)

    def basis_range(self) -> Tuple[float, float]:
        return self.center_values[0], self.center_values[-1]

    def reset_coefficients(self) -> None:
        self.norm.reset_parameters()
        if self.coeff_init == 'variance':
            nn.init.normal_(self.spline_weight, std=self.variance_preserving_std())
            return
        # uniform(+-1/sqrt(fan_in)) over the in * G basis inputs, as FastKAN's linear layer starts
        bound = 1 / math.sqrt(self.in_features * self.grid_size)
        nn.init.uniform_(self.spline_weight, -bound, bound)

    def edge_basis(self, u: torch.Tensor) -> torch.Tensor:
        return rbf_basis(u, self.center_values, self.width, self.basis)

    def edge_coefficients(self) -> torch.Tensor:
        return self.spline_weight

    def edge_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    @torch.no_grad()
    def edge_contributions(self, x: torch.Tensor) -> torch.Tensor:
        # the radial bases see the LayerNorm'd input, the base branch the raw one
        phi = self.edge_functions(self.edge_inputs(x), base=False)
        return phi + self.base_terms(x) if self.base is not None else phi

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        # K ordered (centre, in): each centre's bases are one contiguous block, only the small weight moves
        u, weight = self.norm(x), self.spline_weight.transpose(1, 2).flatten(1)
        if torch.jit.is_scripting():  # TorchScript cannot call autograd Functions: autograd keeps the bases here
            return F.linear(_rbf_bases(u, self.center_values, self.width, self.basis).flatten(-2), weight, self.bias)
        return _RBF_LINEAR(u, weight, self.bias, self.center_values, self.width, self.basis)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, '
                f'basis={self.basis}, base={self.base is not None}, bias={self.bias is not None}')
