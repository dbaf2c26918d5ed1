"""Group-rational KAN (GR-KAN) feed-forward block.

KAT (Yang & Wang, "Kolmogorov-Arnold Transformer", arXiv:2409.10594) replaces the MLP by
``fc2(phi2(fc1(phi1(x))))``: phi is a rational function P(x) / Q(x) of order (5, 4) whose coefficients
are shared within each of ``groups`` contiguous channel groups. KAT's sources disagree on Q; this
package uses the form of KAT's GPU kernel, so that its checkpoints mean the same thing here:

    P(x) = a_0 + a_1 x + ... + a_5 x^5,    Q(x) = 1 + |b_1| |x| + |b_2| |x|^2 + |b_3| |x|^3 + |b_4| |x|^4 >= 1.

(The paper writes 1 + |sum b_i x^i|; KAT's CPU fallback 1 + sum |b_i| x^i can reach zero.) fc1/fc2 keep
their names, so ViT weights load into them as they are.
"""
import re
from functools import partial
from typing import Any, Collection, Dict, Optional, Tuple, Type

import torch
from torch import nn

from ..kernels import register_check_case
from .base import FUSED_HELP, HIDDEN_HELP, fused_check_case, fused_option, hidden_width, run_fused
from .basis_linear import capturing, exporting

__all__ = ['GroupRational', 'GRKANMlp', 'RATIONAL_INITS']

# (numerator a_0..a_5, denominator |b_1|..|b_4|). 'identity' is exact; 'gelu' and 'silu' were fitted in the
# form above by L-BFGS on a dense grid (gelu: [-8, 8] with [-3, 3] weighted 4x; silu: [-3, 3]).
RATIONAL_INITS = {
    'identity': ((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    'gelu': ((-0.0034106894, 0.49999692, 0.41912508, 0.12557936, 0.016024571, 0.00073858437),
             (1.5561313e-11, 0.25115516, 4.1102803e-06, 0.0014766452)),
    'silu': ((4.4e-07, 0.5000011, 0.24999728, 0.05325168, 0.00579629, 0.00027431),
             (5.5e-06, 0.10649875, 1.6e-06, 0.00054841)),
}


def _horner(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i coeffs[:, i] * x^i, the (groups, n, 1) coefficients broadcast over each group's channels."""
    out = torch.addcmul(coeffs[:, -2], coeffs[:, -1], x)
    for i in range(coeffs.shape[1] - 3, -1, -1):
        out = torch.addcmul(coeffs[:, i], out, x)
    return out


# |x| up to which P(x) / Q(x) is evaluated directly (x^5 is far from fp32's range there); beyond it numerator and
# denominator are divided by x^4, so that every power stays finite
_DIRECT_MAX = 1e4
Forms = Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]


def _forms(x: torch.Tensor, direct_only: bool, limit: float = _DIRECT_MAX) -> Forms:
    """(small, xs, xl, u): the direct form is a polynomial in xs where |x| <= limit (small), the x^-4-scaled one a
    polynomial in u = 1 / xl elsewhere. Each reads only inputs it is safe on (xs = 0, xl = 1 where unused): no inf
    or NaN for torch.where to leak into gradients. ``direct_only`` (no |x| is large): (None, x, x, x). (``limit`` is
    an argument because TorchScript reads no global numbers.)"""
    if direct_only:
        return None, x, x, x
    small = x.abs() <= limit
    xl = torch.where(small, 1.0, x)
    return small, torch.where(small, x, 0.0), xl, xl.reciprocal()


def _numerator(forms: Forms, a: torch.Tensor) -> torch.Tensor:
    """N: P on the direct form, P / x^4 on the scaled one, for a = a_0..a_5 (groups, 6, 1)."""
    small, xs, xl, u = forms
    n = _horner(a, xs)
    if small is None:
        return n
    return torch.where(small, n, _horner(a.flip(1), u) * xl)  # a_5 x + a_4 + a_3 u + ... + a_0 u^4


def _denominator(forms: Forms, c: torch.Tensor) -> torch.Tensor:
    """D: Q on the direct form, Q / x^4 on the scaled one, for c = 1, |b_1|..|b_4| (groups, 5, 1)."""
    small, xs, _, u = forms
    d = _horner(c, xs.abs())
    if small is None:
        return d
    return torch.where(small, d, _horner(c.flip(1), u.abs()))  # |b_4| + |b_3| |u| + ... + u^4


def _coefficients(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(groups, 6, 1) numerator and (groups, 5, 1) denominator coefficients 1, |b_1|..|b_4|; the |b| has gradient
    +1 at b = 0 (abs() has 0 there, and the identity init starts at b = 0 exactly: it would never train)."""
    c = torch.cat([torch.ones_like(b[:, :1]), torch.where(b >= 0, b, -b)], 1)
    return a[:, :, None], c[:, :, None]


def group_rational_reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                             direct_only: bool = False) -> torch.Tensor:
    """P(x) / Q(x) on x (rows, groups, channels per group) with a (groups, 6), b (groups, 4); finite for every
    finite x that does not overflow the output itself. ``direct_only``: the caller knows every |x| <= _DIRECT_MAX."""
    forms = _forms(x, direct_only)
    a, c = _coefficients(a, b)
    return _numerator(forms, a) / _denominator(forms, c)


def _moments(weight: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """sum over rows and channels of weight * v^i, i = 0..n, per group: (groups, n + 1)."""
    sums = [weight.sum((0, 2))]
    for _ in range(n):
        weight = weight * v
        sums.append(weight.sum((0, 2)))
    return torch.stack(sums, -1)


def _coefficient_sums(weight: torch.Tensor, forms: Forms, scaled_first: torch.Tensor, n: int,
                      take_abs: bool) -> torch.Tensor:
    """sum of weight * dT/dcoef_i for the polynomial T (N with n = 5, D with n = 4 and |x|): v^i on the direct form;
    first * u^(n - i) on the scaled one (first: xl for N, 1 for D)."""
    small, xs, _, u = forms
    if take_abs:
        xs, u = xs.abs(), u.abs()
    if small is None:
        return _moments(weight, xs, n)
    direct = _moments(torch.where(small, weight, 0.0), xs, n)
    return direct + _moments(torch.where(small, 0.0, weight) * scaled_first, u, n).flip(-1)


@torch.library.custom_op('timm_kan::group_rational_reference', mutates_args=())
def _group_rational_op(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, direct_only: bool) -> torch.Tensor:
    """``group_rational_reference`` as an op that keeps only x and y (y is what the next layer keeps anyway), also
    under torch.compile: its forward is one opaque node (inlined, inductor would keep the intermediates its backward
    recomputes), its backward plain tensor ops that inductor fuses."""
    return group_rational_reference(x, a, b, direct_only)


@_group_rational_op.register_fake
def _(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, direct_only: bool) -> torch.Tensor:
    return torch.empty_like(x)


def _save_rational(ctx, inputs, output) -> None:
    x, a, b, direct_only = inputs
    ctx.save_for_backward(x, output, a, b)
    ctx.direct_only = direct_only


def _group_rational_backward(ctx, grad: torch.Tensor):
    """Closed form: dy/dx = (N' - y D') / D, with N' = P' and D' = dQ/dx, both divided by x^4 on the scaled form;
    dy/da_i = dN/da_i / D, dy/d|b_j| = -y dD/d|b_j| / D."""
    x, y, a, b = ctx.saved_tensors
    forms = _forms(x, ctx.direct_only)
    a, c = _coefficients(a, b)
    # P' = sum i a_i x^(i-1) and dQ/d|x| as polynomials (the scaled forms: their coefficients reversed)
    dp = a[:, 1:] * torch.arange(1, 6, dtype=a.dtype, device=a.device)[:, None]
    dq = c[:, 1:] * torch.arange(1, 5, dtype=c.dtype, device=c.device)[:, None]
    small, xs, _, u = forms
    dn, dd = _horner(dp, xs), _horner(dq, xs.abs())
    if small is not None:
        dn = torch.where(small, dn, _horner(dp.flip(1), u))
        dd = torch.where(small, dd, _horner(dq.flip(1), u.abs()) * u.abs())
    r = grad / _denominator(forms, c)
    dx = (dn - y * dd * torch.sign(x)) * r
    grad_a = _coefficient_sums(r, forms, forms[2], 5, False)
    grad_c = _coefficient_sums(-r * y, forms, torch.ones_like(x), 4, True)
    return dx, grad_a, grad_c[:, 1:] * torch.where(b >= 0, 1.0, -1.0), None


_group_rational_op.register_autograd(_group_rational_backward, setup_context=_save_rational)


class GroupRational(nn.Module):
    """Rational activation P(x) / Q(x) with one coefficient set per channel group (last dimension).

    Evaluated in fp32 (fp64 for fp64 inputs) whatever the input dtype, cast back: for |x| > 1 numerator and
    denominator are divided by x^4 first, so no power overflows and the function stays finite.

    Args:
        num_channels: Size of the last dimension.
        groups: Number of contiguous channel groups (must divide ``num_channels``).
        init: 'identity', 'gelu' or 'silu'.
        fused: Triton kernel (True), PyTorch reference (False) or the kernel for CUDA tensors (None).
    """

    coefficient_names = ('numerator', 'denominator')

    def __init__(
            self,
            num_channels: int,
            groups: int = 8,
            init: str = 'identity',
            fused: Optional[bool] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.fused = fused_option(fused)
        if groups < 1 or num_channels % groups:
            raise ValueError(f'groups must divide num_channels={num_channels}, got groups={groups}')
        if init not in RATIONAL_INITS:
            raise ValueError(f'init must be one of {tuple(RATIONAL_INITS)}, got {init!r}')
        self.num_channels = num_channels
        self.groups = groups
        self.init = init
        self.numerator = nn.Parameter(torch.empty(groups, 6, device=device, dtype=dtype))
        self.denominator = nn.Parameter(torch.empty(groups, 4, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        num, den = RATIONAL_INITS[self.init]
        with torch.no_grad():
            self.numerator.copy_(torch.tensor(num).expand(self.groups, -1))
            self.denominator.copy_(torch.tensor(den).expand(self.groups, -1))

    def init_weights(self) -> None:
        """Hook called by timm's ViT weight init."""
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_channels:
            raise ValueError(f'GroupRational expects {self.num_channels} channels, got {x.shape[-1]}')
        if not torch.jit.is_scripting():  # (TorchScript compiles only what a bare is_scripting() test leaves)
            if run_fused(x, self.fused, 'rational'):
                return self._fused(x)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        xg = x.to(dtype).reshape(-1, self.groups, self.num_channels // self.groups)
        a, b = self.numerator.to(dtype), self.denominator.to(dtype)
        if torch.jit.is_scripting():  # TorchScript cannot call custom autograd: autograd differentiates it
            y = group_rational_reference(xg, a, b)
        elif exporting():  # an exported graph holds plain tensor ops, for any runtime
            y = group_rational_reference(xg, a, b)
        else:
            # in eager, the usual inputs (no |x| > _DIRECT_MAX) skip the scaled form; graph captures keep both
            # (a meta tensor, built only to be counted, has no values to look at)
            direct_only = not capturing() and (xg.numel() == 0 or xg.device.type == 'meta'
                                               or bool(xg.detach().abs().max() <= _DIRECT_MAX))
            y = _group_rational_op(xg, a, b, direct_only)
        return y.reshape(x.shape).to(x.dtype)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.rational_triton import group_rational
        return group_rational(x, self.numerator, self.denominator)

    @torch.no_grad()
    def group_functions(self, u: torch.Tensor) -> torch.Tensor:
        """Each group's phi on the values u (n,) -> (groups, n)."""
        x = u.reshape(-1, 1, 1).expand(-1, self.groups, self.num_channels // self.groups).reshape(-1, self.num_channels)
        return self(x.to(self.numerator.dtype)).reshape(len(u), self.groups, -1)[..., 0].T.float()

    def initial_functions(self, u: torch.Tensor) -> torch.Tensor:
        """Each group's phi at initialisation (its ``init`` fit) on the values u (n,) -> (groups, n)."""
        return GroupRational(self.groups, self.groups, self.init).group_functions(u.cpu())

    def extra_repr(self) -> str:
        return f'num_channels={self.num_channels}, groups={self.groups}, order=(5, 4), init={self.init}'


# the rational activations' keys in KAT's released checkpoints
_KAT_RATIONAL = re.compile(r'^(blocks\.\d+\.mlp\.act[12])\.weight_(numerator|denominator)$')


class GRKANMlp(nn.Module):
    """``fc2(act2(fc1(act1(x))))`` with group-rational activations; timm ``Block`` signature.

    Args:
        in_features, hidden_features, out_features, bias, drop: as timm's ``Mlp``.
        act_layer: timm's MLP activation; selects act2's initial fit when it is GELU or SiLU.
        norm_layer: Set by timm with ``scale_mlp_norm``; applied after act2.
        groups: Rational coefficient groups per activation.
        kan_act_init: Initial function of act2, 'gelu' or 'silu' (default: from ``act_layer``).
        kan_fused: Triton kernel for the rationals (True), PyTorch (False), or the kernel on CUDA (None).
    """
    # fc1/fc2 keep a ViT's names and act1 starts as the identity, so kan_init='mlp' needs no other options
    block_options = ('kan_hidden',)
    mlp_init_options: Dict[str, Any] = {}
    argument_help = {'groups': 'rational coefficient groups per activation (every hidden width is a multiple)',
                     'kan_act_init': "phi2's initial fit, `gelu` or `silu` (`None`: from `act_layer`)",
                     'kan_fused': FUSED_HELP, 'kan_hidden': HIDDEN_HELP}

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
            groups: int = 8,
            kan_act_init: Optional[str] = None,
            kan_hidden: Optional[int] = None,
            kan_fused: Optional[bool] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        out_features = out_features or in_features
        hidden_features = hidden_width(in_features, hidden_features, kan_hidden)
        if kan_act_init is None:
            kan_act_init = 'silu' if act_layer in (nn.SiLU,) else 'gelu'
        if kan_act_init not in ('gelu', 'silu'):
            raise ValueError(f"kan_act_init must be 'gelu' or 'silu', got {kan_act_init!r}")
        self.act1 = GroupRational(in_features, groups, 'identity', fused=kan_fused, **dd)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **dd)
        self.act2 = GroupRational(hidden_features, groups, kan_act_init, fused=kan_fused, **dd)
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.drop2 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)

    @staticmethod
    def structure_from_keys(keys: Collection[str], prefix: str) -> Optional[Dict[str, Any]]:
        """The block options a checkpoint's key names show for the block at ``prefix`` (none: the block has no
        structure options); None when the keys are not a ``GRKANMlp``'s (or KAT's)."""
        return {} if any(k.startswith(prefix + 'act1.') for k in keys) else None

    @staticmethod
    def adapt_checkpoint(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """KAT's released checkpoints in this block's layout: its ``actN.weight_numerator`` (1, 6), one numerator
        shared by all groups, and ``actN.weight_denominator`` (groups, 4) become the per-group ``actN.numerator``
        (groups, 6) and ``actN.denominator``; the rational form is the same (KAT's GPU kernel)."""
        if not any(_KAT_RATIONAL.match(k) for k in state_dict):
            return state_dict
        out = {}
        for k, v in state_dict.items():
            m = _KAT_RATIONAL.match(k)
            if m is None:
                out[k] = v
            elif m.group(2) == 'numerator':
                groups = state_dict[f'{m.group(1)}.weight_denominator'].shape[0]
                out[f'{m.group(1)}.numerator'] = v.reshape(-1, v.shape[-1]).expand(groups, -1).clone()
            else:
                out[f'{m.group(1)}.denominator'] = v
        return out

    def explain_parts(self) -> Tuple[str, Tuple[nn.Module, nn.Module], Dict[str, nn.Module]]:
        """What explain records: the kind, the two maps (linear here) and the learned activations."""
        return 'rational', (self.fc1, self.fc2), {'act1': self.act1, 'act2': self.act2}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(self.drop1(self.act1(x)))
        x = self.drop2(self.norm(self.act2(x)))
        return self.fc2(x)


# the kernels' first-use self-check problem (see timm_kan.kernels)
register_check_case(
    'rational', partial(fused_check_case, partial(GroupRational, 24, groups=4, init='gelu'), (2, 9, 24)))
