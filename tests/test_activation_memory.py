"""What the KAN layers keep for backward (issue: activation memory near the MLP's): the reference path's
``BasisLinear`` ops keep x, not the basis, eager and compiled; their backward equals autograd's on the plain forward.
Saved bytes per token are measured as by ``timm-kan bench`` (``timm_kan.accounting.saved_bytes_per_row``)."""
import pytest
import torch
from timm.layers import Mlp
from torch.nn import functional as F

from timm_kan.accounting import saved_bytes_per_row
from timm_kan.layers import KAN_FAMILIES, BSplineKANLinear, ChebyshevKANLinear, RBFKANLinear

DIM, HIDDEN, TOKENS = 32, 128, 64
# saved bytes per token against timm's Mlp at most: each family's table entry (the bench checks the same)
TARGETS = {f.kan_type: f.saved_target for f in KAN_FAMILIES.values() if f.saved_target is not None}


def test_every_kan_family_has_a_memory_target():
    assert sorted(TARGETS) == ['bspline', 'chebyshev', 'rational', 'rbf']
    assert TARGETS['chebyshev'] == TARGETS['rational'] == 1.5 and TARGETS['bspline'] == TARGETS['rbf'] == 2.0


def _tokens(n: int) -> torch.Tensor:
    return torch.randn(n, DIM, requires_grad=True)


def _vs_mlp(block: torch.nn.Module) -> float:
    return saved_bytes_per_row(block, _tokens, TOKENS) / saved_bytes_per_row(Mlp(DIM, HIDDEN), _tokens, TOKENS)


def _partitioned(block: torch.nn.Module) -> torch.nn.Module:
    """``block`` through torch.compile's graph capture and inductor's partitioner (what a compiled graph saves for
    backward), without inductor's code generation (seconds, not a C++ build per shape)."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    def run(gm, example_inputs):
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=run, bw_compiler=run, partition_fn=min_cut_rematerialization_partition)
    return torch.compile(block, fullgraph=True, backend=backend)


@pytest.mark.parametrize('kan_type', sorted(TARGETS))
def test_saved_bytes_per_token_meet_the_targets_eager_and_compiled(kan_type):
    block = KAN_FAMILIES[kan_type].block(DIM, HIDDEN)
    eager = _vs_mlp(block)
    assert eager <= TARGETS[kan_type], f'{kan_type}: {eager:.2f}x the MLP'
    torch._dynamo.reset()
    compiled = _vs_mlp(_partitioned(block))
    assert compiled <= TARGETS[kan_type], f'{kan_type} compiled: {compiled:.2f}x the MLP'


def test_the_measure_sees_a_dense_basis():
    """The definition counts what a layer keeps: a plain basis + F.linear keeps its (degree x larger) basis."""
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = ChebyshevKANLinear(DIM, HIDDEN, degree=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from timm_kan.layers.chebyshev import chebyshev_powers
            return F.linear(chebyshev_powers(x, 4).flatten(-2), self.layer.coeffs[..., 1:].transpose(1, 2).flatten(1))

    per_token = saved_bytes_per_row(Plain(), _tokens, TOKENS)
    assert per_token >= 4 * DIM * 4  # at least the four T_k of x, fp32, and the recurrence's intermediates
    assert saved_bytes_per_row(Plain().layer, _tokens, TOKENS) == 0  # the layer keeps only x


LAYERS = {
    'chebyshev': lambda: ChebyshevKANLinear(5, 7, degree=3, bias=True),
    'bspline': lambda: BSplineKANLinear(5, 7, grid_size=4, spline_order=3),
    'rbf': lambda: RBFKANLinear(5, 7, grid_size=4, basis='rswaf'),
    'rbf gaussian': lambda: RBFKANLinear(5, 7, grid_size=4),
}


def _adapted(layer: BSplineKANLinear) -> BSplineKANLinear:
    layer.update_grid(torch.randn(64, 5))  # quantile knots: the Cox-de Boor op
    return layer


@pytest.mark.parametrize('name', sorted(LAYERS) + ['bspline adapted'])
def test_backward_equals_autograd_on_the_plain_forward(name):
    torch.manual_seed(0)
    layer = _adapted(LAYERS['bspline']()) if name == 'bspline adapted' else LAYERS[name]()
    layer = layer.double()
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 1.5).requires_grad_()
    params = [p for p in layer.parameters()]
    y = layer(x)
    grads = torch.autograd.grad(y, [x, *params], torch.ones_like(y))
    plain = torch.jit.trace(layer, (x.detach(),), check_trace=False)  # traced: BasisLinear's plain forward
    y2 = plain(x)
    grads2 = torch.autograd.grad(y2, [x, *params], torch.ones_like(y2))
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _op_args(name: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def w(k):
        return torch.randn(3, k, generator=g, dtype=torch.float64, requires_grad=True)

    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    grid = torch.linspace(-2, 2, 12, dtype=torch.float64).expand(5, -1).contiguous()
    return {'chebyshev_linear': (x, w(15), bias, 3),
            'rbf_linear': (x, w(20), bias, [-1.0, 0.0, 0.5, 1.0], 0.7, 'rswaf'),
            'bspline_linear': (x, w(40), bias, grid, 3), 'cox_de_boor_linear': (x, w(40), None, grid ** 3 / 2, 3),
            'silu_linear': (x, w(5), None), 'gelu_linear': (x, w(5), bias)}[name]


OPS = ('chebyshev_linear', 'rbf_linear', 'bspline_linear', 'cox_de_boor_linear', 'silu_linear', 'gelu_linear',
       'bspline_linear_keep_basis', 'cox_de_boor_linear_keep_basis')


@pytest.mark.parametrize('name', OPS)
def test_reference_op_passes_opcheck_and_gradcheck(name):
    op = getattr(torch.ops.timm_kan, name).default
    args = _op_args(name.removesuffix('_keep_basis'))
    torch.library.opcheck(op, args, test_utils=('test_schema', 'test_autograd_registration', 'test_faketensor',
                                                'test_aot_dispatch_dynamic'))
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*inputs):
        full = list(args)
        for i, t in zip(tensors, inputs):
            full[i] = t
        out = op(*full)
        return out[0] if name.endswith('_keep_basis') else out  # (the kept basis is what backward reads, no output)

    assert torch.autograd.gradcheck(f, [args[i] for i in tensors])


def test_reference_op_follows_autocast_like_f_linear():
    layer = ChebyshevKANLinear(8, 6, degree=3, bias=True)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.coeffs.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x).detach(), rtol=3e-2, atol=3e-2)


def test_flop_counts_see_the_reference_ops_gemms():
    """The ops are opaque to FlopCounterMode: their formula counts the GEMM (K = in x bases), base branch included."""
    from timm_kan.accounting import count_flops

    x = torch.randn(4, 5)
    for layer, k in ((ChebyshevKANLinear(5, 7, degree=3), 5 * 3), (BSplineKANLinear(5, 7, grid_size=4), 5 * 7 + 5),
                     (RBFKANLinear(5, 7, grid_size=4), 5 * 4 + 5)):
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            layer(x)
        assert counter.get_total_flops() == 2 * 4 * k * 7, type(layer).__name__
    import timm
    model = timm.create_model('chebykan_vit_t16', img_size=32, patch_size=8, depth=2)
    assert count_flops(model) == 79756416  # as before the ops (the GEMMs of the plain F.linear path)


@pytest.mark.parametrize('adapted', [False, True], ids=['uniform', 'adapted'])
def test_bspline_kan_recompute_false_keeps_the_bases_with_the_same_gradients(adapted):
    """kan_recompute=False trades memory for time: it keeps the (G + k) x larger bases, and its gradients are the
    recomputing path's."""
    torch.manual_seed(0)
    lean = BSplineKANLinear(DIM, 24, grid_size=4, spline_order=3, fused=False)
    if adapted:
        lean.update_grid(torch.randn(64, DIM))  # quantile knots: the Cox-de Boor op
    keeping = BSplineKANLinear(DIM, 24, grid_size=4, spline_order=3, fused=False, recompute=False)
    keeping.load_state_dict(lean.state_dict())
    kept, rebuilt = saved_bytes_per_row(keeping, _tokens, TOKENS), saved_bytes_per_row(lean, _tokens, TOKENS)
    assert rebuilt == 0 and kept == DIM * (4 + 3) * 4  # the fp32 bases of one token; x is the input, not counted
    x = (torch.randn(3, 5, DIM) * 1.5).requires_grad_()
    grads = []
    for layer in (lean, keeping):
        y = layer(x)
        grads.append(torch.autograd.grad(y, [x, *layer.parameters()], torch.ones_like(y)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_kan_recompute_is_a_bspline_option():
    import timm
    model = timm.create_model('kan_vit_t16', img_size=32, patch_size=8, depth=1, kan_recompute=False)
    assert model.blocks[0].mlp.kan1.recompute is False and model.blocks[0].mlp.kan2.recompute is False
    with pytest.raises(ValueError, match=r"option 'kan_recompute' belongs to the kan_vit_\* family"):
        timm.create_model('chebykan_vit_t16', img_size=32, patch_size=8, depth=1, kan_recompute=False)
    with pytest.raises(ValueError, match=r"recompute must be True or False, got 'no'"):
        BSplineKANLinear(4, 4, recompute='no')
