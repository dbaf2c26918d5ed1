"""Pieces shared by the KAN layers: the optional base branch, argument checks and the choice between the fused
kernels and the PyTorch reference (``basis_linear``: what compiled, exported and scripted graphs hold)."""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from timm.layers import is_exportable
from torch import nn
from torch.nn import functional as F

from ..kernels import use_fused
from .basis_linear import exporting, recomputed_activation

__all__ = ['BaseBranch', 'KANLinearBase', 'COEFF_INITS', 'FUSED_HELP', 'HIDDEN_HELP', 'check_positive', 'check_range',
           'check_choice', 'hidden_width', 'fused_check_case', 'coefficient_parameters', 'fused_option', 'run_fused']

# 'published': each family's published coefficient initialisation; 'variance': coefficients drawn so that
# the basis expansion preserves variance, Var(y) = Var(x) = 1 for unit-normal edge inputs (the LeCun rule KAT
# argues for), the base branch keeping its own initialisation
COEFF_INITS = ('published', 'variance')

# what the options every family with kernels / every block takes mean (the docs' option table is generated from
# each layer's and block's argument_help)
FUSED_HELP = 'Triton kernel (`True`), PyTorch reference (`False`), or the kernel on CUDA (`None`)'
HIDDEN_HELP = "width between the two layers (default: timm's `mlp_ratio` x dim); a list gives each block its own"


def coefficient_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters that shape the learned univariate functions (each module's ``coefficient_names``: spline,
    Chebyshev, RBF coefficients, spline scalers, rational numerators/denominators), once each, in module order.
    Base-branch weights, biases and norms are not among them."""
    params = {}
    for module in model.modules():
        for name in getattr(module, 'coefficient_names', ()):
            param = getattr(module, name)
            params[id(param)] = param
    return list(params.values())


def check_choice(name: str, value: Any, allowed: Sequence[Any], owner: str = '') -> None:
    """Raise a ValueError naming the option (after ``owner``, when given) unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f'{owner + ": " if owner else ""}{name} must be one of {tuple(allowed)}, got {value!r}')


def check_positive(name: str, value: int) -> None:
    """Raise a ValueError naming the option when an integer option is below 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be an integer >= 1, got {value!r}')


def hidden_width(in_features: int, hidden_features: Optional[int], kan_hidden: Optional[int]) -> int:
    """A feed-forward block's hidden width: ``kan_hidden`` (checked) over timm's ``hidden_features``, else the
    input width."""
    if kan_hidden is not None:
        check_positive('kan_hidden', kan_hidden)
        return kan_hidden
    return hidden_features or in_features


def check_range(name: str, value) -> Tuple[float, float]:
    """``(low, high)`` as floats; a ValueError naming the option unless it is two finite numbers, high > low."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be two numbers (low, high), got {value!r}') from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f'{name} must have finite bounds, got {(lo, hi)}: an infinite grid has no knots')
    if not hi > lo:
        raise ValueError(f'{name} must be (low, high) with high > low, got {(lo, hi)}')
    return lo, hi


def run_fused(x: torch.Tensor, fused: Optional[bool], kernel: str) -> bool:
    """``use_fused`` outside exports: an exported graph holds the reference even where ``fused=True``."""
    return not exporting() and use_fused(x, fused, kernel)


def fused_option(fused: Optional[bool]) -> Optional[bool]:
    """A layer's ``fused`` as built: timm's ``exportable=True`` (``create_model``, ``set_exportable``) selects the
    pure-PyTorch reference, as it does for timm's own layers; forcing the kernels as well is a contradiction."""
    if not is_exportable():
        return fused
    if fused:
        raise ValueError('fused=True (kan_fused) forces the Triton kernels, but timm exportable=True asks for the '
                         'pure-PyTorch layers: leave kan_fused unset (or False) to export')
    return False


def fused_check_case(
        factory: Callable[..., nn.Module], x_shape: Sequence[int], device: torch.device, x_scale: float = 2.0,
) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """(fused, reference, input) for a kernel's first-use self-check: two modules with the same parameters, drawn
    from N(0, 1) so that every term of the output (not only a dominant base branch) is checked; sizes that are
    not multiples of the kernels' tiles exercise their masks."""
    fused, reference = factory(fused=True, device=device), factory(fused=False, device=device)
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_()
    reference.load_state_dict(fused.state_dict())
    return fused, reference, torch.randn(*x_shape, device=device) * x_scale


class BaseBranch(nn.Module):
    """``weight @ act(x)``: the residual-like base term of a KAN layer (efficient-KAN's ``base_weight``). SiLU and
    GELU are recomputed in backward from x, which the layer keeps anyway, instead of keeping act(x)."""

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
        self.recomputed = recomputed_activation(self.act)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the default nn.Linear initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # (TorchScript cannot call autograd Functions)
            if self.recomputed is not None:
                return self.recomputed(x, self.weight, None)
        return F.linear(self.act(x), self.weight)


class KANLinearBase(nn.Module):
    """What every KAN linear layer shares: its widths, the optional base branch and output bias, and the
    initialisation hooks. Subclasses add their coefficients and ``reset_coefficients``.

    The layer computes ``y_o = sum_i phi_oi(x_i) + bias_o`` with ``phi_oi = basis expansion (+ base branch)``.
    ``coefficient_names`` names the parameters of the basis expansion (see ``coefficient_parameters``);
    ``expansion_names`` those among them that, all zero, make the expansion vanish: ``kan_init='mlp'`` zeroes them,
    so that the layer is its base branch.
    """
    coefficient_names: Tuple[str, ...] = ()
    expansion_names: Tuple[str, ...] = ()
    # what each constructor argument a create_model option sets means (subclasses add theirs)
    argument_help: Dict[str, str] = {
        'coeff_init': "coefficient init: `published` (the family's paper) or `variance` (Var(y) = Var(x) = 1 for "
                      'N(0, 1) edge inputs, the LeCun rule KAT argues for)'}
    # the base branch reads the layer's raw input, not the edge input (RBF: its edge inputs are LayerNorm'd)
    base_on_raw_input = False
    # the fused kernel's name in ``timm_kan.kernels`` (None: the layer has none) and the layer's ``fused`` option
    kernel: Optional[str] = None
    fused: Optional[bool] = False

    def __init__(
            self,
            in_features: int,
            out_features: int,
            base_activation: Optional[Type[nn.Module]],
            bias: bool,
            coeff_init: str = 'published',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        check_positive('in_features', in_features)
        check_positive('out_features', out_features)
        if coeff_init not in COEFF_INITS:
            raise ValueError(f'coeff_init must be one of {COEFF_INITS}, got {coeff_init!r}')
        self.coeff_init = coeff_init
        self.in_features = in_features
        self.out_features = out_features
        self.base = BaseBranch(in_features, out_features, base_activation, device, dtype) if base_activation else None
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None

    def reset_coefficients(self) -> None:
        raise NotImplementedError

    def reset_base(self) -> None:
        self.base.reset_parameters()

    @torch.no_grad()
    def variance_preserving_std(self) -> float:
        """Coefficient std for which the basis expansion has Var(y) = 1 when every edge input is N(0, 1) (the
        LayerNorm'd tokens a ViT block feeds it): 1 / sqrt(in * E[sum_j B_j(u)^2]), the expectation taken by
        64-point Gauss-Hermite quadrature over the layer's own basis (a smooth or piecewise-smooth function of u,
        so the rule is accurate, not exact: 1e-4 relative for Chebyshev-of-tanh, see the tests)."""
        device = next(self.parameters()).device
        if device.type == 'meta':  # a layer built only to be counted or loaded into: its values are never read
            return 1.0
        nodes, weights = np.polynomial.hermite_e.hermegauss(64)
        u = torch.as_tensor(nodes, dtype=torch.float32, device=device)[:, None].expand(-1, self.in_features)
        second_moment = self.edge_basis(u).float().pow(2).sum(-1).mean(-1).cpu().double()  # per node, mean over inputs
        mean_square = float((second_moment * torch.as_tensor(weights / weights.sum())).sum())
        return 1.0 / math.sqrt(self.in_features * mean_square)

    def reset_parameters(self) -> None:
        self.reset_coefficients()
        if self.base is not None:
            self.reset_base()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_weights(self) -> None:
        """Hook called by timm's ViT weight init (instead of its nn.Linear truncated normal)."""
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._expansion(x)
        if self.base is not None:
            y = y + self.base(x)
        return y

    def _expansion(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript compiles only what a bare is_scripting() test leaves: neither the kernel choice nor a launch
        if not torch.jit.is_scripting():
            if self.kernel is not None and run_fused(x, self.fused, self.kernel):
                y = self.fused_expansion(x)
                return y if self.bias is None else y + self.bias.to(y.dtype)  # as F.linear under autocast: no upcast
        return self.expansion(x)

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        """The basis expansion plus the output bias, in PyTorch (the reference)."""
        raise NotImplementedError

    def fused_expansion(self, x: torch.Tensor) -> torch.Tensor:
        """The basis expansion by the layer's Triton kernel (no bias)."""
        raise NotImplementedError

    # ---- the learned univariate functions, for explaining a layer ----

    def edge_basis(self, u: torch.Tensor) -> torch.Tensor:
        """(n, in) edge inputs -> (n, in, J) basis values of each input's expansion."""
        raise NotImplementedError

    def edge_coefficients(self) -> torch.Tensor:
        """(out, in, J) effective coefficients of each edge's basis expansion (scalers applied)."""
        raise NotImplementedError

    def edge_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What each edge's function is evaluated at, for data rows x (n, in): x itself, unless the layer
        transforms its input first (RBF: the LayerNorm'd input)."""
        return x

    @torch.no_grad()
    def edge_functions(self, u: torch.Tensor, base: bool = True) -> torch.Tensor:
        """phi_oi(u_i) for every edge: (n, in) edge inputs -> (n, out, in).

        phi_oi(u) = sum_j c_oij B_j(u) + w_oi act(u) + bias_o / in: the basis expansion, the base branch (when the
        layer has one and ``base``) and an equal share of the output bias, so that sum_i phi_oi(x_i) is the layer's
        output y_o for a layer whose edge inputs are its inputs.
        """
        dt = torch.float64 if u.dtype == torch.float64 else torch.float32
        phi = torch.einsum('nij,oij->noi', self.edge_basis(u).to(dt), self.edge_coefficients().to(dt))
        if base and self.base is not None:
            phi += self.base_terms(u)
        if self.bias is not None:
            phi += self.bias.to(dt)[None, :, None] / self.in_features
        return phi

    def knots(self, i: int) -> torch.Tensor:
        """Where input i's basis changes piece or centre (B-spline knots, RBF centres); none for a global basis."""
        return torch.empty(0)

    def basis_range(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(lo, hi) per input (or for all) of the interval the basis covers (outside, only the base branch acts);
        None for a basis that covers every input."""
        return None

    def base_terms(self, x: torch.Tensor) -> torch.Tensor:
        """The base branch's w_oi act(x_i) per edge, (n, out, in)."""
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self.base.act(x).to(dt)[:, None, :] * self.base.weight.to(dt)[None]

    @torch.no_grad()
    def edge_contributions(self, x: torch.Tensor) -> torch.Tensor:
        """Each edge's exact contribution to the output for data rows x (n, in) -> (n, out, in); summing over
        the inputs gives the layer's output."""
        return self.edge_functions(self.edge_inputs(x))
