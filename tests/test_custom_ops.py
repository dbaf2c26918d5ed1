"""The Triton kernels as torch custom ops (torch.ops.timm_kan.*): schemas, fake implementations, opcheck, the layers
through the ops, torch.compile and torch.export. On CPU the ops run through Triton's interpreter, on tiny shapes.

The ops are ``triton_op``s: by default AOTAutograd (torch.compile's aot backends, opcheck's
test_aot_dispatch_dynamic) decomposes them into their Triton launches, which it traces on FakeTensors; that needs
compiled (CUDA) kernels, as the interpreter reads the tensors' data. With
``torch._functorch.config.decompose_custom_triton_ops = False`` (what torch.export does) each op stays one opaque
node, traced by its fake implementation and run eagerly (through the interpreter on CPU): the CPU tests take that.
"""
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch._dynamo
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from timm_kan.layers import BSplineKANLinear, ChebyshevKANLinear, GroupRational

pytest.importorskip('triton')
from timm_kan.kernels import bspline_triton, chebyshev_triton, rational_triton  # noqa: E402  needs triton

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
# (decompose_custom_triton_ops, ...): the default decomposition traces the launches, which needs compiled kernels
DECOMPOSE = [False, pytest.param(True, marks=pytest.mark.skipif(
    not CUDA, reason='decomposing a triton_op traces its launches on FakeTensors: Triton\'s CPU interpreter reads '
    'their data ("Attempted to access the data pointer on an invalid python storage"); compiled kernels need CUDA'))]

SCHEMAS = {
    'chebyshev_kan': '(Tensor x, Tensor w) -> Tensor',
    'chebyshev_kan_dx': '(Tensor x, Tensor w, Tensor dy) -> Tensor',
    'chebyshev_kan_dw': '(Tensor x, Tensor w, Tensor dy) -> Tensor',
    'bspline_kan': '(Tensor x, Tensor grid, Tensor w, int order) -> Tensor',
    'bspline_kan_dx': '(Tensor x, Tensor grid, Tensor w, Tensor dy, int order) -> Tensor',
    'bspline_kan_dw': '(Tensor x, Tensor grid, Tensor w, Tensor dy, int order) -> Tensor',
    'group_rational': '(Tensor x, Tensor numerator, Tensor denominator) -> Tensor',
    'group_rational_backward': '(Tensor x, Tensor dy, Tensor numerator, Tensor denominator) -> (Tensor, Tensor)',
}
# the forward ops have autograd formulas (the backward ops are what those call)
FORWARD_OPS = ('chebyshev_kan', 'bspline_kan', 'group_rational')


def _args(name: str, grad: bool = False, dtype: torch.dtype = torch.float32) -> Tuple:
    """Tiny arguments of op ``name`` (5 rows: the interpreter's 16-row tiles are masked), weights in ``dtype``;
    the forward ops' float inputs require grad when ``grad``."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=g).to(DEVICE, dt).requires_grad_(grad and name in FORWARD_OPS)

    x = rand(5, 6)
    if name.startswith('chebyshev'):
        w = rand(3, 6, 7, dt=dtype)  # degree 2
        return (x, w) if name == 'chebyshev_kan' else (x, w, rand(5, 7))
    if name.startswith('bspline'):
        grid = torch.linspace(-1.6, 1.6, 12, device=DEVICE).expand(6, -1).contiguous()  # order 3, 5 intervals
        w = rand(8, 6, 7, dt=dtype)
        return (x * 1.2, grid, w, 3) if name == 'bspline_kan' else (x, grid, w, rand(5, 7), 3)
    x, a, b = rand(5, 8, dt=dtype), rand(2, 6), rand(2, 4)  # 2 groups of 4 channels
    return (x, a, b) if name == 'group_rational' else (x, rand(5, 8, dt=dtype), a, b)


def _op(name: str) -> torch._ops.OpOverload:
    return getattr(torch.ops.timm_kan, name).default


@pytest.mark.parametrize('name', sorted(SCHEMAS))
def test_op_is_registered_with_its_schema(name):
    assert str(_op(name)._schema) == f'timm_kan::{name}{SCHEMAS[name]}'


# op -> (shape, dtype) of each output for _args(name, dtype=bfloat16): products in the weights' dtype, dW in fp32
FAKE_OUTPUTS: Dict[str, List[Tuple[Tuple[int, ...], torch.dtype]]] = {
    'chebyshev_kan': [((5, 7), torch.bfloat16)], 'chebyshev_kan_dx': [((5, 6), torch.float32)],
    'chebyshev_kan_dw': [((3, 6, 7), torch.float32)], 'bspline_kan': [((5, 7), torch.bfloat16)],
    'bspline_kan_dx': [((5, 6), torch.float32)], 'bspline_kan_dw': [((8, 6, 7), torch.float32)],
    'group_rational': [((5, 8), torch.bfloat16)],
    # dx, and the coefficient-gradient sums of each (row block, group): one block of 8 (CPU) or 64 (CUDA) rows
    'group_rational_backward': [((5, 8), torch.bfloat16), ((1, 2, 10), torch.float32)],
}


@pytest.mark.parametrize('name', sorted(SCHEMAS))
def test_fake_implementation_gives_shapes_and_dtypes_without_launching(name, monkeypatch):
    def no_launch(kernel):
        raise AssertionError('a Triton kernel was launched')

    # every launch goes through the kernel module's wrap_triton
    module = {'chebyshev': chebyshev_triton, 'bspline': bspline_triton, 'group': rational_triton}[name.split('_')[0]]
    monkeypatch.setattr(module, 'wrap_triton', no_launch)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in _args(name, dtype=torch.bfloat16)]
        out = _op(name)(*args)
    outs = out if isinstance(out, tuple) else (out,)
    assert [(tuple(o.shape), o.dtype) for o in outs] == FAKE_OUTPUTS[name]
    assert all(o.device.type == DEVICE and o.is_contiguous() for o in outs)
    with pytest.raises(AssertionError, match='was launched'):  # what the real op runs: the patched kernel
        _op(name)(*_args(name))


OPCHECK = ('test_schema', 'test_autograd_registration', 'test_faketensor', 'test_aot_dispatch_dynamic')


@pytest.mark.parametrize('decompose', DECOMPOSE)
@pytest.mark.parametrize('name', sorted(SCHEMAS))
def test_opcheck(name, decompose):
    """Schema, autograd registration and fake implementation against the real op (through the interpreter on CPU),
    and eager against AOT dispatch with dynamic shapes (outputs, and gradients through the registered backward)."""
    with torch._functorch.config.patch(decompose_custom_triton_ops=decompose):
        torch.library.opcheck(_op(name), _args(name, grad=True), test_utils=OPCHECK, atol=1e-5, rtol=1e-5)


class _OpLog(TorchDispatchMode):
    """The timm_kan ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == 'timm_kan':
            self.ops.append(func.__name__.split('.')[0])
        return func(*args, **(kwargs or {}))


LAYERS: Dict[str, Tuple[Callable[..., torch.nn.Module], int]] = {
    'chebyshev': (lambda fused: ChebyshevKANLinear(6, 7, degree=2, bias=True, fused=fused), 6),
    'bspline': (lambda fused: BSplineKANLinear(6, 7, grid_size=4, spline_order=2, fused=fused), 6),
    'rational': (lambda fused: GroupRational(8, groups=2, init='gelu', fused=fused), 8),
}
# (forward ops, backward ops) of each layer; the B-spline layer's SiLU base branch is the reference op silu_linear,
# whose backward is plain tensor ops
LAYER_OPS = {'chebyshev': (['chebyshev_kan'], ['chebyshev_kan_dx', 'chebyshev_kan_dw']),
             'bspline': (['bspline_kan', 'silu_linear'], ['bspline_kan_dx', 'bspline_kan_dw']),
             'rational': (['group_rational'], ['group_rational_backward'])}
TOL = dict(rtol=2e-3, atol=2e-3) if CUDA else dict(rtol=1e-4, atol=1e-5)


def _layers(kind: str) -> Tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(fused=True layer, fused=False layer with the same parameters, input (2, 3, in)) of one family."""
    make, width = LAYERS[kind]
    torch.manual_seed(0)
    fused, reference = make(True).to(DEVICE), make(False).to(DEVICE)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    reference.load_state_dict(fused.state_dict())
    return fused, reference, torch.randn(2, 3, width, device=DEVICE) * 1.5


def _outputs_and_grads(module: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    x = x.clone().requires_grad_()
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape)).sum().backward()
    grads = [y.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize('kind', sorted(LAYERS))
def test_fused_layer_runs_the_ops_and_matches_the_reference(kind):
    fused, reference, x = _layers(kind)
    with _OpLog() as log:
        got = _outputs_and_grads(fused, x)
    assert log.ops == sum(LAYER_OPS[kind], [])  # forward, then the backward ops its autograd formula calls
    for a, b in zip(got, _outputs_and_grads(reference, x)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize('decompose', DECOMPOSE)
@pytest.mark.parametrize('kind', sorted(LAYERS))
def test_compile_fullgraph_of_a_fused_layer(kind, decompose):
    """One graph (no breaks) for forward and backward, equal to the reference. Opaque ops: the forward graph holds
    the forward op and the backward graph the ops the autograd formula calls; decomposed (CUDA): Triton launches."""
    fused, reference, x = _layers(kind)
    graphs: List[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs) -> Callable:
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch._functorch.config.patch(decompose_custom_triton_ops=decompose):
        got = _outputs_and_grads(torch.compile(fused, fullgraph=True, backend=aot_autograd(fw_compiler=record,
                                                                                            bw_compiler=record)), x)
    assert not torch._dynamo.utils.counters['graph_break'] and len(graphs) == 2
    targets = [[str(n.target) for n in gm.graph.nodes if n.op == 'call_function'] for gm in graphs]
    if decompose:
        assert all(any('triton_kernel_wrapper' in t for t in ts) for ts in targets)
    else:
        ops = [[t.split('.')[1] for t in ts if t.startswith('timm_kan.')] for ts in targets]
        assert ops == list(LAYER_OPS[kind]), ops
    for a, b in zip(got, _outputs_and_grads(reference, x)):
        torch.testing.assert_close(a, b, **TOL)


class _ChebyshevMatmul(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.coeffs = torch.nn.Parameter(torch.randn(7, 6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return chebyshev_triton.chebyshev_kan_matmul(x, self.coeffs)


def test_export_keeps_the_op_as_one_node():
    """torch.export holds the kernel entry's op (the layers themselves export their reference, see test_export)."""
    module = _ChebyshevMatmul().to(DEVICE)
    x = torch.randn(2, 5, 6, device=DEVICE)
    program = torch.export.export(module, (x,))
    targets = [n.target for n in program.graph.nodes if n.op == 'call_function']
    assert torch.ops.timm_kan.chebyshev_kan.default in targets
    torch.testing.assert_close(program.module()(x), module(x), rtol=0, atol=0)
