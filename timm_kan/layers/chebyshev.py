"""Chebyshev KAN linear layer.

Chebyshev KAN (SS. Sidharth, "Chebyshev Polynomial-Based Kolmogorov-Arnold Networks", arXiv:2405.07200)
puts one learnable function per edge, expanded in Chebyshev polynomials of the first kind of tanh(x):

    y_o = sum_i sum_k c[o, i, k] * T_k(tanh(x_i))

The basis is a fixed map, so the layer is the basis followed by one GEMM; since T_0 = 1, the reference path
folds the T_0 coefficients into a bias and runs the GEMM with K = in * degree.
T_k is built with the recurrence T_0 = 1, T_1 = t, T_{k+1} = 2 t T_k - T_{k-1}. The often-published
form cos(k * acos(tanh x)) has an infinite derivative once tanh rounds to +-1 (|x| >~ 3.5 in bf16,
>~ 9 in fp32) and turns gradients into NaN; the recurrence is a polynomial in t and stays finite.
"""
from functools import partial
from typing import Optional, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import register_check_case
from .base import FUSED_HELP, KANLinearBase, check_positive, fused_check_case, fused_option
from .basis_linear import BasisLinear

__all__ = ['ChebyshevKANLinear', 'chebyshev_basis', 'chebyshev_powers']


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in the recurrence's dtype: fp32 for fp16/bf16 inputs (as in the fused kernel), since in bf16 its rounding
    errors grow with the degree."""
    return x.float() if x.dtype == torch.float16 or x.dtype == torch.bfloat16 else x


def _chebyshev_powers(x: torch.Tensor, degree: int) -> torch.Tensor:
    """T_1..T_degree of t = tanh(x), stacked (..., degree, in): T_{k+1} = 2 t T_k - T_{k-1}, T_0 = 1. Each T_k is its
    own contiguous tensor until the one copy into the GEMM operand (no writes into views: graphs capture it)."""
    t = torch.tanh(_compute_dtype(x))
    powers = [t]
    for k in range(2, degree + 1):
        step = torch.mul(t, powers[-1]).mul_(2)
        powers.append(step.sub_(powers[-2]) if k > 2 else step.sub_(1))
    return torch.stack(powers, -2)


class _ChebyshevPowers:
    """The layer's basis for ``BasisLinear`` (T_0 = 1 is left out: its coefficients act as a bias). Its backward
    rebuilds the T_k from x and, from t = T_1, dT_k/dx = k U_{k-1}(t) (1 - t^2), with U_0 = 1,
    U_1 = 2t, U_{k+1} = 2t U_k - U_{k-1} (second kind)."""
    basis = staticmethod(_chebyshev_powers)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor, degree: int) -> Tuple[torch.Tensor, torch.Tensor]:
        powers = _chebyshev_powers(x, degree)
        t, grad = powers[..., 0, :], grad.unflatten(-1, (degree, -1))
        acc = grad[..., 0, :].to(t.dtype)
        u_prev, u = None, 2 * t
        for k in range(2, degree + 1):
            acc = acc.addcmul(grad[..., k - 1, :], u, value=k)
            if k < degree:
                u_next = torch.mul(t, u).mul_(2)
                u_prev, u = u, u_next.sub_(u_prev) if u_prev is not None else u_next.sub_(1)
        return powers, acc * (1 - t * t)


_CHEBYSHEV_LINEAR = BasisLinear('chebyshev_linear', _ChebyshevPowers, 'int degree')


def chebyshev_powers(x: torch.Tensor, degree: int) -> torch.Tensor:
    """T_1..T_degree of tanh(x), shape (..., degree, in_features), in x's dtype (computed in fp32 for fp16/bf16)."""
    return _chebyshev_powers(x, degree).to(x.dtype)


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """T_0..T_degree of tanh(x), shape (..., in_features, degree + 1), in x's dtype."""
    powers = chebyshev_powers(x, degree)
    return torch.cat([torch.ones_like(powers[..., :1, :]), powers], -2).transpose(-1, -2)


class ChebyshevKANLinear(KANLinearBase):
    """KAN layer with Chebyshev-polynomial edge functions.

    Args:
        in_features: Input width.
        out_features: Output width.
        degree: Highest polynomial degree (>= 1); each edge has degree + 1 coefficients.
        base_activation: If given, adds a base branch ``base_weight @ act(x)`` (used by the
            function-preserving initialisation from a pretrained MLP).
        bias: Adds an output bias.
        coeff_init: 'published' or 'variance' (``COEFF_INITS``).
        fused: Triton kernel (True), PyTorch reference (False) or the kernel for CUDA tensors (None).
    """

    def __init__(
            self,
            in_features: int,
            out_features: int,
            degree: int = 3,
            base_activation: Optional[Type[nn.Module]] = None,
            bias: bool = False,
            coeff_init: str = 'published',
            fused: Optional[bool] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, base_activation, bias, coeff_init, device, dtype)
        check_positive('degree', degree)
        self.fused = fused_option(fused)
        self.degree = degree
        self.coeffs = nn.Parameter(torch.empty(out_features, in_features, degree + 1, device=device, dtype=dtype))
        self.reset_parameters()

    coefficient_names = ('coeffs',)
    expansion_names = ('coeffs',)
    argument_help = dict(KANLinearBase.argument_help, degree='highest Chebyshev degree (>= 1)', fused=FUSED_HELP)
    kernel = 'chebyshev'

    def reset_coefficients(self) -> None:
        # published: std 1 / (in * (degree + 1)), as the published Chebyshev KAN initialises its coefficients
        std = self.variance_preserving_std() if self.coeff_init == 'variance' else \
            1.0 / (self.in_features * (self.degree + 1))
        nn.init.normal_(self.coeffs, mean=0.0, std=std)

    def edge_basis(self, u: torch.Tensor) -> torch.Tensor:
        return chebyshev_basis(u, self.degree)

    def edge_coefficients(self) -> torch.Tensor:
        return self.coeffs

    def fused_expansion(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.chebyshev_triton import chebyshev_kan_matmul
        return chebyshev_kan_matmul(x, self.coeffs)

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        # T_0 = 1, so its coefficients sum to a bias and the GEMM runs on T_1..T_d only (K = in * d); K is
        # ordered (degree, in) so the basis is built in contiguous blocks and only the small weight moves
        bias = self.coeffs[..., 0].sum(1)
        if self.bias is not None:
            bias = bias + self.bias
        weight = self.coeffs[..., 1:].transpose(1, 2).flatten(1)
        if torch.jit.is_scripting():  # TorchScript cannot call autograd Functions: autograd keeps every T_k here
            return F.linear(chebyshev_powers(x, self.degree).flatten(-2), weight, bias)
        return _CHEBYSHEV_LINEAR(x, weight, bias, self.degree)

    def extra_repr(self) -> str:
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, degree={self.degree}, '
            f'base={self.base is not None}, bias={self.bias is not None}'
        )


# the kernels' first-use self-check problem (see timm_kan.kernels)
register_check_case('chebyshev', partial(fused_check_case, partial(ChebyshevKANLinear, 20, 24, degree=4), (2, 9, 20)))
