"""``BasisLinear``: a KAN layer's basis expansion and GEMM as one custom op that keeps x, not the basis, for backward
(the reference path's activation memory), and the base branch's activations as such ops. Also what the layers ask
of a graph capture in progress (``exporting``, ``capturing``)."""
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import register_flop_formula

__all__ = ['BasisLinear', 'capturing', 'exporting', 'recomputed_activation']


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


def recomputed_activation(act: nn.Module) -> Optional[BasisLinear]:
    """``weight @ act(x)`` as a ``BasisLinear`` for a base activation with a closed-form derivative, else None."""
    if type(act) is nn.SiLU:
        return _SILU_LINEAR
    if type(act) is nn.GELU and act.approximate == 'none':
        return _GELU_LINEAR
    return None
