"""Chebyshev KAN linear layer.

Chebyshev KAN (SS. Sidharth, "Chebyshev Polynomial-Based Kolmogorov-Arnold Networks", arXiv:2405.07200)
puts one learnable function per edge, expanded in Chebyshev polynomials of the first kind of tanh(x):

    y_o = sum_i sum_k c[o, i, k] * T_k(tanh(x_i))

The basis is a fixed map, so the layer is the basis followed by one GEMM with K = in * (degree + 1).
T_k is built with the recurrence T_0 = 1, T_1 = t, T_{k+1} = 2 t T_k - T_{k-1}. The often-published
form cos(k * acos(tanh x)) has an infinite derivative once tanh rounds to +-1 (|x| >~ 3.5 in bf16,
>~ 9 in fp32) and turns gradients into NaN; the recurrence is a polynomial in t and stays finite.
"""
from functools import partial
from typing import Optional, Type

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import register_check_case, use_fused
from .base import KANLinearBase, check_positive, fused_check_case

__all__ = ['ChebyshevKANLinear', 'chebyshev_basis']


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Return T_0..T_degree of tanh(x), shape (..., in_features, degree + 1), in x's dtype.

    The recurrence runs in fp32 for fp16/bf16 inputs (as in the fused kernel): in bf16 its rounding
    errors grow with the degree.
    """
    t = torch.tanh(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)
    polys = [torch.ones_like(t), t]
    for _ in range(2, degree + 1):
        polys.append(2 * t * polys[-1] - polys[-2])
    return torch.stack(polys, dim=-1).to(x.dtype)


class ChebyshevKANLinear(KANLinearBase):
    """KAN layer with Chebyshev-polynomial edge functions.

    Args:
        in_features: Input width.
        out_features: Output width.
        degree: Highest polynomial degree (>= 1); each edge has degree + 1 coefficients.
        base_activation: If given, adds a base branch ``base_weight @ act(x)`` (used by the
            function-preserving initialisation from a pretrained MLP).
        bias: Adds an output bias.
        fused: Triton kernel (True), PyTorch reference (False) or the kernel for CUDA tensors (None).
    """

    def __init__(
            self,
            in_features: int,
            out_features: int,
            degree: int = 3,
            base_activation: Optional[Type[nn.Module]] = None,
            bias: bool = False,
            fused: Optional[bool] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, base_activation, bias, device, dtype)
        check_positive('degree', degree)
        self.fused = fused
        self.degree = degree
        self.coeffs = nn.Parameter(torch.empty(out_features, in_features, degree + 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_coefficients(self) -> None:
        # std 1 / (in * (degree + 1)), as the published Chebyshev KAN initialises its coefficients
        nn.init.normal_(self.coeffs, mean=0.0, std=1.0 / (self.in_features * (self.degree + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(x, self.fused, 'chebyshev'):
            from ..kernels.chebyshev_triton import chebyshev_kan_matmul
            y = chebyshev_kan_matmul(x, self.coeffs)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)  # as F.linear under autocast: no fp32 upcast of y
        else:
            basis = chebyshev_basis(x, self.degree).flatten(-2)
            y = F.linear(basis, self.coeffs.flatten(1), self.bias)
        if self.base is not None:
            y = y + self.base(x)
        return y

    def extra_repr(self) -> str:
        return (
            f'in_features={self.in_features}, out_features={self.out_features}, degree={self.degree}, '
            f'base={self.base is not None}, bias={self.bias is not None}'
        )


# the kernels' first-use self-check problem (see timm_kan.kernels)
register_check_case('chebyshev', partial(fused_check_case, partial(ChebyshevKANLinear, 20, 36, degree=4), (2, 9, 20)))
