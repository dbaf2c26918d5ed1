"""KAN feed-forward block for timm's ViT ``Block``: two KAN layers in place of fc1 -> act -> fc2."""
from typing import Optional, Tuple, Type

import torch
from torch import nn

from .base import check_positive
from .bspline import BSplineKANLinear
from .chebyshev import ChebyshevKANLinear
from .rbf import RBFKANLinear

__all__ = ['KANMlp', 'KAN_TYPES', 'KAN_BASES', 'default_kan_base']

KAN_TYPES = ('chebyshev', 'bspline', 'rbf')
# 'none': no base branch (published Chebyshev KAN); 'silu': SiLU base (efficient-KAN's B-spline);
# 'mlp': identity base in layer 1 and the MLP activation in layer 2, with biases, so that copying
# fc1/fc2 into the base weights and zeroing the KAN coefficients reproduces the MLP exactly.
KAN_BASES = ('none', 'silu', 'mlp')


def default_kan_base(kan_type: str) -> str:
    return 'none' if kan_type == 'chebyshev' else 'silu'


# the grid each basis is defined on unless grid_range is given
_DEFAULT_GRID_RANGE = {'bspline': (-1.0, 1.0), 'rbf': (-2.0, 2.0)}


class KANMlp(nn.Module):
    """``kan2(norm(kan1(x)))`` on (B, N, C) tokens, with the constructor signature timm's ``Block`` uses.

    Args:
        in_features: Token width.
        hidden_features: Width between the KAN layers (timm passes ``dim * mlp_ratio``).
        out_features: Output width (defaults to ``in_features``).
        act_layer: MLP activation; the layer-2 base activation when ``kan_base='mlp'``.
        norm_layer: Set by timm when ``scale_mlp_norm`` is on; used as the between-layer norm.
        bias: timm's projection-bias flag; the KAN layers carry a bias only with ``kan_base='mlp'``.
        drop: Dropout after each KAN layer.
        kan_type: ``'chebyshev'``, ``'bspline'`` or ``'rbf'``.
        kan_base: Base branch, one of ``KAN_BASES`` (default: the published form of ``kan_type``).
        kan_mid_norm: LayerNorm between the two KAN layers (bounds the second layer's inputs).
        kan_hidden: Overrides ``hidden_features``.
        kan_fused: Triton kernel (True), PyTorch reference (False), or the kernel on CUDA (None);
            Chebyshev and B-spline (RBF has no kernel).
        degree: Chebyshev degree.
        grid_size, spline_order, grid_range: B-spline grid (grid_size and grid_range also RBF's).
        rbf_basis: RBF basis, 'gaussian' or 'rswaf'.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            device=None,
            dtype=None,
            kan_type: str = 'chebyshev',
            kan_base: Optional[str] = None,
            kan_mid_norm: bool = True,
            kan_hidden: Optional[int] = None,
            kan_fused: Optional[bool] = None,
            degree: int = 3,
            grid_size: Optional[int] = None,
            spline_order: int = 3,
            grid_range: Optional[Tuple[float, float]] = None,
            rbf_basis: str = 'gaussian',
            **kwargs,  # arguments a newer timm Block may pass; the KAN block has no use for them
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if kan_type not in KAN_TYPES:
            raise ValueError(f'kan_type must be one of {KAN_TYPES}, got {kan_type!r}')
        kan_base = kan_base or default_kan_base(kan_type)
        if kan_base not in KAN_BASES:
            raise ValueError(f'kan_base must be one of {KAN_BASES}, got {kan_base!r}')
        if kan_fused and kan_type == 'rbf':
            raise ValueError(
                'kan_fused=True: there is no fused kernel for rbf KAN yet (chebyshev and bspline have one)')
        out_features = out_features or in_features
        if kan_hidden is not None:
            check_positive('kan_hidden', kan_hidden)
            hidden_features = kan_hidden
        hidden_features = hidden_features or in_features
        self.kan_type = kan_type
        self.kan_base = kan_base
        if grid_range is None:
            grid_range = _DEFAULT_GRID_RANGE.get(kan_type)
        if grid_size is None:
            grid_size = 8 if kan_type == 'rbf' else 5

        with_bias = bias and kan_base == 'mlp'
        base1, base2 = {'none': (None, None), 'silu': (nn.SiLU, nn.SiLU), 'mlp': (nn.Identity, act_layer)}[kan_base]

        def make(i: int, o: int, base_activation: Optional[Type[nn.Module]]) -> nn.Module:
            if kan_type == 'chebyshev':
                return ChebyshevKANLinear(
                    i, o, degree=degree, base_activation=base_activation, bias=with_bias, fused=kan_fused, **dd)
            if kan_type == 'rbf':
                return RBFKANLinear(i, o, grid_size=grid_size, basis=rbf_basis, grid_range=grid_range,
                                    base_activation=base_activation, bias=with_bias, **dd)
            return BSplineKANLinear(
                i, o, grid_size=grid_size, spline_order=spline_order, grid_range=grid_range,
                base_activation=base_activation, bias=with_bias, fused=kan_fused, **dd)

        self.kan1 = make(in_features, hidden_features, base1)
        self.drop1 = nn.Dropout(drop)
        if norm_layer is not None:
            self.norm = norm_layer(hidden_features, **dd)
        elif kan_mid_norm:
            self.norm = nn.LayerNorm(hidden_features, **dd)
        else:
            self.norm = nn.Identity()
        self.kan2 = make(hidden_features, out_features, base2)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.kan1(x))
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            # autocast would return the norm in fp32, and both it and kan2 would keep that fp32 copy of the
            # hidden activations for backward: run it in kan1's output dtype (statistics are fp32 inside)
            with torch.autocast(device, enabled=False):
                x = self.norm(x)
        else:
            x = self.norm(x)
        return self.drop2(self.kan2(x))
