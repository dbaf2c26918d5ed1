"""Pieces shared by the KAN layers: the optional base branch and argument checks."""
import math
from typing import Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ['BaseBranch', 'check_positive', 'check_range']


def check_positive(name: str, value: int) -> None:
    """Raise a ValueError naming the option when an integer option is below 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be an integer >= 1, got {value!r}')


def check_range(name: str, value) -> Tuple[float, float]:
    """``(low, high)`` as floats; a ValueError naming the option unless high > low."""
    lo, hi = value
    if not hi > lo:
        raise ValueError(f'{name} must be (low, high) with high > low, got {tuple(value)}')
    return float(lo), float(hi)


class BaseBranch(nn.Module):
    """``weight @ act(x)``: the residual-like base term of a KAN layer (efficient-KAN's ``base_weight``)."""

    def __init__(
            self,
            in_features: int,
            out_features: int,
            activation: Type[nn.Module],
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.act = activation()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the default nn.Linear initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.weight)
