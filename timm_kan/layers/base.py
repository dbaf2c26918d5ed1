"""Pieces shared by the KAN layers: the optional base branch, argument checks and the choice between the fused
kernels and the PyTorch reference (which is what compiled, exported and scripted graphs hold)."""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from timm.layers import is_exportable
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import register_flop_formula

from ..kernels import use_fused

__all__ = ['BaseBranch', 'KANLinearBase', 'COEFF_INITS', 'FUSED_HELP', 'HIDDEN_HELP', 'check_positive', 'check_range',
           'hidden_width',
           'fused_check_case', 'coefficient_parameters', 'BasisLinear', 'capturing', 'exporting',
           'fused_option', 'run_fused']

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


def exporting() -> bool:
    """Whether a graph is being captured for another runtime: torch.export and the dynamo ONNX exporter
    (``torch.compiler.is_exporting``), jit.trace and the legacy ONNX exporter (``torch.jit.is_tracing``). The Triton
    kernels are Python launches such a graph cannot hold, so the layers run the reference there, and the reference's
    custom ops are plain tensor ops there, for any runtime to read."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def capturing() -> bool:
    """Whether torch.compile, torch.export or jit.trace is recording a graph: nothing may read tensor values on
    the host then (a sync, and a value frozen into the graph)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class BasisLinear:
    """``F.linear(spec.basis(x, *args).flatten(-2), weight, bias)`` as the custom op ``torch.ops.timm_kan.<name>``,
    which keeps x for backward, not the basis (J times x's size): backward rebuilds the basis from x, for the weight
    gradient, in the same pass that takes the input gradient through the basis's closed-form derivative. So a KAN
    layer keeps what a linear layer keeps, also under torch.compile: the op's forward is one opaque node whose saved
    set is this one (inlined, inductor would merge the backward's rebuild with the forward and keep the basis),
    while its backward is plain tensor ops that inductor fuses. Exports (``exporting``) hold the plain forward
    instead, left to autograd: no runtime knows the op, and the legacy ONNX exporter mis-inlines autograd Functions
    (its peephole pass drops a ``t * 1`` and fails, 'Argument passed to at() was not in the map').

    ``spec`` is a class with two static methods: ``basis(x, *args)``, the (..., a, b) basis in its compute dtype,
    and ``basis_backward(x, grad_basis, *args)`` -> (basis, grad_x), with the gradient flat, (..., a * b).
    ``schema`` declares ``args`` (e.g. ``'int degree'``). The GEMM runs in autocast's dtype where autocast is on, as
    ``F.linear`` would.

    ``keep_basis=True`` also registers ``<name>_keep_basis``, which keeps the basis (in the GEMM's dtype) next to x
    and so skips its rebuild in backward: time for memory, where the rebuild costs much (B-spline's scatter).
    ``spec.input_grad(x, grad_basis, *args)`` then gives grad_x alone.
    """

    def __init__(self, name: str, spec: type, schema: str = '', keep_basis: bool = False) -> None:
        self.spec = spec
        args = ', '.join(['Tensor x', 'Tensor weight', 'Tensor? bias'] + ([schema] if schema else []))
        self.op = self._register(name, self._forward, self._output, f'({args}) -> Tensor')
        self.keep_op = self._register(f'{name}_keep_basis', self._forward_keeping_basis, self._outputs,
                                      f'({args}) -> (Tensor, Tensor)') if keep_basis else None

    def _register(self, name: str, forward: Callable, fake: Callable, schema: str) -> Any:
        op = torch.library.custom_op(f'timm_kan::{name}', forward, mutates_args=(), schema=schema)
        op.register_fake(fake)
        op.register_autograd(self._backward, setup_context=self._save)
        register_flop_formula(getattr(torch.ops.timm_kan, name))(self._flops)
        return op

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *args,
                 recompute: bool = True) -> torch.Tensor:
        device = x.device.type
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if exporting():  # an exported graph holds plain tensor ops, for any runtime (the legacy ONNX exporter too)
            return F.linear(self.spec.basis(x, *args).flatten(-2).to(dtype), weight, bias)
        if not recompute:  # (only the ops built with keep_basis=True are called so)
            return self.keep_op(x, weight, bias, *args)[0]
        return self.op(x, weight, bias, *args)

    def _forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *args) -> torch.Tensor:
        return F.linear(self.spec.basis(x, *args).flatten(-2).to(weight.dtype), weight, bias)

    def _forward_keeping_basis(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                               *args) -> Tuple[torch.Tensor, torch.Tensor]:
        basis = self.spec.basis(x, *args).flatten(-2).to(weight.dtype)
        return F.linear(basis, weight, bias), basis

    @staticmethod
    def _output(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *args) -> torch.Tensor:
        return x.new_empty(x.shape[:-1] + (weight.shape[0],), dtype=weight.dtype)

    @staticmethod
    def _outputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 *args) -> Tuple[torch.Tensor, torch.Tensor]:
        return (x.new_empty(x.shape[:-1] + (weight.shape[0],), dtype=weight.dtype),
                x.new_empty(x.shape[:-1] + (weight.shape[1],), dtype=weight.dtype))

    @staticmethod
    def _flops(x_shape: Sequence[int], weight_shape: Sequence[int], *args, **kwargs) -> int:
        # the GEMM's, as for F.linear (its backward's GEMMs are counted as they run): FLOP counts see the op whole
        return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * weight_shape[1]

    @staticmethod
    def _save(ctx: Any, inputs: Sequence[Any], output: Any) -> None:
        x, weight, bias, *args = inputs
        # tensor arguments (B-spline knots) are saved, the others kept as they are
        ctx.arg_is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.plain_args = [None if isinstance(a, torch.Tensor) else a for a in args]
        ctx.has_bias = bias is not None
        ctx.keeps_basis = isinstance(output, tuple)  # the _keep_basis op: (y, basis)
        kept = (output[1],) if ctx.keeps_basis else ()
        ctx.save_for_backward(x, weight, *kept, *[a for a in args if isinstance(a, torch.Tensor)])

    def _backward(self, ctx: Any, grad: torch.Tensor, *_):
        x, weight, *saved = ctx.saved_tensors  # (read once: activation checkpointing allows no second unpack)
        kept = saved.pop(0) if ctx.keeps_basis else None
        tensors = iter(saved)
        args = [next(tensors) if is_tensor else a for is_tensor, a in zip(ctx.arg_is_tensor, ctx.plain_args)]
        rows = grad.reshape(-1, grad.shape[-1])
        grad_basis = (rows @ weight).view(x.shape[:-1] + (-1,))
        if kept is None:
            basis, grad_x = self.spec.basis_backward(x, grad_basis, *args)
        else:
            basis, grad_x = kept, self.spec.input_grad(x, grad_basis, *args)
        grad_weight = rows.mT @ basis.reshape(rows.shape[0], -1).to(rows.dtype)
        grad_bias = rows.sum(0) if ctx.has_bias else None
        return (grad_x.to(x.dtype), grad_weight, grad_bias) + (None,) * len(args)


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


class _SiLU:
    """SiLU as a one-row basis for ``BasisLinear`` (so a base branch keeps x, not act(x)): x s, s = sigmoid(x),
    with derivative s (1 + x (1 - s))."""

    @staticmethod
    def basis(x: torch.Tensor) -> torch.Tensor:
        return F.silu(x).unsqueeze(-2)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(x)
        return (x * s).unsqueeze(-2), grad * (s * (1 + x * (1 - s)))


class _GELU:
    """Exact GELU as a one-row basis for ``BasisLinear``: x Phi(x), with derivative Phi(x) + x phi(x)."""

    @staticmethod
    def basis(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x).unsqueeze(-2)

    @staticmethod
    def basis_backward(x: torch.Tensor, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cdf = 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return (x * cdf).unsqueeze(-2), grad * (cdf + x * pdf)


_SILU_LINEAR = BasisLinear('silu_linear', _SiLU)
_GELU_LINEAR = BasisLinear('gelu_linear', _GELU)


def _recomputed_activation(act: nn.Module) -> Optional[BasisLinear]:
    """``weight @ act(x)`` as a ``BasisLinear`` for a base activation with a closed-form derivative, else None."""
    if type(act) is nn.SiLU:
        return _SILU_LINEAR
    if type(act) is nn.GELU and act.approximate == 'none':
        return _GELU_LINEAR
    return None


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
        self.recomputed = _recomputed_activation(self.act)
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
