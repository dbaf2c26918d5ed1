"""KAN layers against independent references, numerical safety and the training hooks."""
import math

import pytest
import torch
from torch import nn

from timm_kan.layers import (
    BSplineKANLinear, ChebyshevKANLinear, GRKANMlp, KANMlp, RBFKANLinear, b_spline_basis, chebyshev_basis,
    coefficient_parameters)


def _cox_de_boor_scalar(x: float, knots, j: int, k: int) -> float:
    """Textbook per-element recursion: B_{j,0} = [t_j <= x < t_{j+1}], then the two-term blend."""
    if k == 0:
        return 1.0 if knots[j] <= x < knots[j + 1] else 0.0
    left = (x - knots[j]) / (knots[j + k] - knots[j]) * _cox_de_boor_scalar(x, knots, j, k - 1)
    right = (knots[j + k + 1] - x) / (knots[j + k + 1] - knots[j + 1]) * _cox_de_boor_scalar(x, knots, j + 1, k - 1)
    return left + right


@pytest.mark.parametrize('degree', [1, 3, 6])
def test_chebyshev_matches_direct_evaluation(degree):
    torch.manual_seed(0)
    layer = ChebyshevKANLinear(5, 4, degree=degree).double()
    x = torch.randn(11, 5, dtype=torch.float64) * 2
    t = torch.tanh(x)
    basis = torch.stack([torch.special.chebyshev_polynomial_t(t, k) for k in range(degree + 1)], dim=-1)
    expected = torch.einsum('nik,oik->no', basis, layer.coeffs)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chebyshev_basis(x, degree), basis, rtol=1e-10, atol=1e-12)


def test_chebyshev_base_branch_and_bias():
    torch.manual_seed(0)
    layer = ChebyshevKANLinear(3, 2, degree=2, base_activation=nn.GELU, bias=True).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(4, 3, dtype=torch.float64)
    spline_only = torch.einsum('nik,oik->no', chebyshev_basis(x, 2), layer.coeffs)
    expected = spline_only + nn.functional.gelu(x) @ layer.base.weight.T + layer.bias
    torch.testing.assert_close(layer(x), expected)


def test_chebyshev_init_std_is_published_one():
    layer = ChebyshevKANLinear(256, 512, degree=3)
    assert layer.coeffs.std().item() == pytest.approx(1 / (256 * 4), rel=0.02)


def test_bspline_basis_matches_scalar_recursion():
    layer = BSplineKANLinear(2, 1, grid_size=4, spline_order=3, grid_range=(-1, 1))
    knots = layer.grid[0].tolist()
    xs = torch.tensor([[-1.3, -0.99], [-0.5, 0.0], [0.123, 0.77], [0.999, 1.4]], dtype=torch.float64)
    bases = b_spline_basis(xs, layer.grid, 3)
    for n in range(xs.shape[0]):
        for i in range(2):
            ref = [_cox_de_boor_scalar(xs[n, i].item(), knots, j, 3) for j in range(4 + 3)]
            torch.testing.assert_close(bases[n, i], torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('grid_size,order', [(5, 3), (8, 2), (3, 1)])
def test_bspline_partition_of_unity_inside_grid(grid_size, order):
    layer = BSplineKANLinear(3, 2, grid_size=grid_size, spline_order=order, grid_range=(-2, 1))
    x = torch.rand(500, 3) * 2.999 - 2
    sums = b_spline_basis(x, layer.grid, order).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
    # local support: at most order + 1 bases are non-zero
    assert (b_spline_basis(x, layer.grid, order) > 0).sum(-1).max().item() <= order + 1


def test_bspline_basis_backward_matches_autograd_of_recursion():
    layer = BSplineKANLinear(4, 1, grid_size=5, spline_order=3)
    x = (torch.rand(6, 4, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: b_spline_basis(v, layer.grid.double(), 3), (x,))


def test_bspline_layer_matches_formula():
    torch.manual_seed(0)
    layer = BSplineKANLinear(3, 2, grid_size=5, spline_order=3).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    spline = torch.einsum('nic,oic->no', b_spline_basis(x, layer.grid, 3),
                          layer.spline_weight * layer.spline_scaler[..., None])
    expected = spline + nn.functional.silu(x) @ layer.base.weight.T
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize('make', [
    lambda: ChebyshevKANLinear(8, 6, degree=4),
    lambda: BSplineKANLinear(8, 6),
    lambda: KANMlp(8, 16, kan_type='chebyshev'),
    lambda: KANMlp(8, 16, kan_type='bspline', kan_base='mlp'),
])
@pytest.mark.parametrize('dtype,scale', [(None, 1e4), (torch.bfloat16, 1e4), (torch.float16, 100.0)])
def test_extreme_inputs_give_finite_outputs_and_gradients(make, dtype, scale):
    """|x| = 1e4 in fp32 and bf16. fp16 tops out at 65504, so any branch linear in x (a plain Linear
    as much as a SiLU base) overflows there at 1e4; it is checked at |x| = 100."""
    torch.manual_seed(0)
    layer = make()
    x = torch.tensor([scale, -scale, 3.6, -9.5, 0.0, 1e-3, 50.0, -3.5]).repeat(5, 1).requires_grad_()
    ctx = torch.autocast('cpu', dtype=dtype) if dtype else torch.autocast('cpu', enabled=False)
    with ctx:
        y = layer(x)
    assert torch.isfinite(y).all()
    y.float().pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_published_acos_form_is_what_we_avoid():
    """The recurrence stays finite where cos(k * acos(tanh x)) does not (fp32, |x| ~ 10)."""
    x = torch.tensor([10.0, -10.0], requires_grad=True)
    torch.cos(3 * torch.acos(torch.tanh(x))).sum().backward()
    assert not torch.isfinite(x.grad).all()
    x2 = x.detach().clone().requires_grad_()
    chebyshev_basis(x2, 3).sum().backward()
    assert torch.isfinite(x2.grad).all()


@pytest.mark.parametrize('cls,kwargs,name', [
    (ChebyshevKANLinear, dict(degree=0), 'degree'),
    (BSplineKANLinear, dict(grid_size=0), 'grid_size'),
    (BSplineKANLinear, dict(spline_order=0), 'spline_order'),
])
def test_bad_layer_options_name_the_option(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf'{name} must be an integer >= 1, got 0'):
        cls(4, 4, **kwargs)


def test_bad_grid_range_and_kan_type():
    with pytest.raises(ValueError, match=r'grid_range .* got \(1.0, -1.0\)'):
        BSplineKANLinear(4, 4, grid_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="kan_type must be one of .* got 'fourier'"):
        KANMlp(4, 8, kan_type='fourier')


def test_update_grid_on_vit_tokens_keeps_the_function():
    torch.manual_seed(0)
    layer = BSplineKANLinear(16, 24, grid_size=5)
    tokens = torch.randn(6, 197, 16) * 0.4 + 0.3  # (B, N, C) like ViT activations, off-centre
    before = layer(tokens)
    spline_before = before - layer.base(tokens)
    layer.update_grid(tokens, max_rows=512, generator=torch.Generator().manual_seed(0))
    after = layer(tokens)
    spline_after = after - layer.base(tokens)
    assert torch.all(layer.grid.diff(dim=1) > 0)
    assert (after - before).norm() / before.norm() < 0.01
    assert (spline_after - spline_before).norm() / spline_before.norm() < 0.1


def test_update_grid_brackets_the_rows_it_used():
    torch.manual_seed(0)
    layer = BSplineKANLinear(16, 8, grid_size=5)
    tokens = torch.randn(2, 50, 16) * 3
    layer.update_grid(tokens, max_rows=10_000)
    flat = tokens.reshape(-1, 16)
    # first / last inner knot: grid_eps * (min - margin) + (1 - grid_eps) * min, likewise at the max
    torch.testing.assert_close(layer.grid[:, 3], flat.min(0).values - 0.02 * 0.01, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.grid[:, -4], flat.max(0).values + 0.02 * 0.01, rtol=0, atol=1e-5)


def test_update_grid_rejects_wrong_width():
    with pytest.raises(ValueError, match='expects last dimension 4, got 5'):
        BSplineKANLinear(4, 3).update_grid(torch.randn(10, 5))


def test_regularization_loss_value_and_gradient():
    layer = BSplineKANLinear(3, 2, grid_size=4)
    with torch.no_grad():
        layer.spline_weight.fill_(0.5)
    # equal mean |coeff| on 6 edges: L1 = 6 * 0.5, entropy = log 6
    loss = layer.regularization_loss()
    assert loss.item() == pytest.approx(3.0 + math.log(6), rel=1e-5)
    loss.backward()
    assert torch.isfinite(layer.spline_weight.grad).all()


def test_kan_mlp_shapes_and_options():
    block = KANMlp(12, 48, act_layer=nn.GELU, bias=True, kan_type='chebyshev', kan_base='mlp', kan_mid_norm=False,
                   degree=2)
    assert block(torch.randn(2, 7, 12)).shape == (2, 7, 12)
    assert isinstance(block.norm, nn.Identity)
    assert block.kan1.bias is not None and isinstance(block.kan2.base.act, nn.GELU)
    assert block.kan1.coeffs.shape == (48, 12, 3)
    hidden = KANMlp(12, 48, kan_hidden=20, kan_type='bspline')
    assert hidden.kan1.out_features == 20 and hidden.kan2.in_features == 20
    # timm's scale_mlp_norm passes a norm layer: it becomes the between-layer norm
    assert isinstance(KANMlp(12, 48, norm_layer=nn.LayerNorm, kan_mid_norm=False).norm, nn.LayerNorm)


@pytest.mark.parametrize('kwargs,name', [
    (dict(kan_type='bspline', grid_size=0), 'grid_size'),
    (dict(kan_type='chebyshev', kan_hidden=0), 'kan_hidden'),
])
def test_kan_mlp_zero_options_are_errors_not_defaults(kwargs, name):
    with pytest.raises(ValueError, match=rf'{name} must be an integer >= 1, got 0'):
        KANMlp(8, 16, **kwargs)


def test_chebyshev_basis_of_half_precision_inputs_is_computed_in_fp32():
    x = torch.linspace(-4, 4, 301).reshape(7, 43).bfloat16()
    basis = chebyshev_basis(x, 6)
    assert basis.dtype == torch.bfloat16
    # the fp32 recurrence rounded once at the end; the bf16 recurrence is off by several bf16 steps at degree 6
    torch.testing.assert_close(basis, chebyshev_basis(x.float(), 6).bfloat16(), rtol=0, atol=0)


def test_kan_mlp_mid_norm_runs_in_the_activation_dtype_under_autocast():
    """Autocast would give the between-layer norm an fp32 output (on CUDA), and the norm and kan2 would each
    keep an fp32 copy of the hidden activations for backward: the block runs the norm with autocast off."""
    seen = []

    class RecordingNorm(nn.LayerNorm):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled('cpu'), x.dtype))
            return super().forward(x)

    block = KANMlp(8, 16, kan_type='chebyshev', norm_layer=RecordingNorm)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(torch.randn(2, 3, 8))
    assert seen == [(False, torch.bfloat16)] and y.dtype == torch.bfloat16
    block(torch.randn(2, 3, 8))
    assert seen[-1] == (False, torch.float32)


@pytest.mark.parametrize('cls,kwargs', [
    (ChebyshevKANLinear, dict(degree=3)), (ChebyshevKANLinear, dict(degree=6)),
    (BSplineKANLinear, dict(grid_size=5)), (RBFKANLinear, dict(grid_size=8))])
def test_variance_preserving_coefficient_init(cls, kwargs):
    # 'variance': unit-variance output for unit-normal inputs; 'published' keeps each paper's (much smaller) scale
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    with torch.no_grad():
        variance = cls(256, 512, base_activation=None, coeff_init='variance', **kwargs)(x).var().item()
        published = cls(256, 512, base_activation=None, **kwargs)(x).var().item()
    assert 0.85 < variance < 1.15
    assert published < 0.1


def test_variance_preserving_std_is_the_closed_form_for_chebyshev():
    # E[T_0^2 + T_1(tanh u)^2] = 1 + E[tanh(u)^2] for u ~ N(0, 1); E[tanh^2] = 0.39429... (numerical integral)
    u = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    tanh2 = float(torch.trapezoid(torch.tanh(u) ** 2 * torch.exp(-u * u / 2), u) / math.sqrt(2 * math.pi))
    layer = ChebyshevKANLinear(10, 3, degree=1, coeff_init='variance')
    assert layer.variance_preserving_std() == pytest.approx(1 / math.sqrt(10 * (1 + tanh2)), rel=1e-4)


def test_coefficient_parameters_are_the_edge_functions_only():
    mlp = KANMlp(8, 16, kan_type='bspline', kan_base='silu')
    names = {n for n, p in mlp.named_parameters() if any(p is q for q in coefficient_parameters(mlp))}
    assert names == {'kan1.spline_weight', 'kan1.spline_scaler', 'kan2.spline_weight', 'kan2.spline_scaler'}
    rational = GRKANMlp(8, 16)
    names = {n for n, p in rational.named_parameters() if any(p is q for q in coefficient_parameters(rational))}
    assert names == {'act1.numerator', 'act1.denominator', 'act2.numerator', 'act2.denominator'}


def test_bad_coeff_init_names_the_choices():
    with pytest.raises(ValueError, match=r"coeff_init must be one of \('published', 'variance'\), got 'lecun'"):
        ChebyshevKANLinear(4, 4, coeff_init='lecun')


def test_variance_init_on_the_meta_device_builds_without_data():
    # parameter matching and checkpoint loading build models on 'meta', where no value exists to compute from
    layer = RBFKANLinear(6, 4, coeff_init='variance', device='meta')
    assert layer.spline_weight.is_meta and layer.variance_preserving_std() == 1.0


def test_family_table_refuses_a_clash_and_an_entry_that_is_neither_layer_nor_block():
    from timm_kan.layers import ChebyshevKANLinear, KANFamily, add_family

    with pytest.raises(ValueError, match="clashes with the registered 'chebyshev' \\(prefix 'chebykan_vit'\\)"):
        add_family(KANFamily('cheby2', 'chebykan_vit', 'x', {}, 'x', layer=ChebyshevKANLinear, default_base='none'))
    with pytest.raises(ValueError, match='exactly one of layer'):
        KANFamily('neither', 'neither_vit', 'x', {}, 'x')
    with pytest.raises(ValueError, match='needs default_base'):
        KANFamily('nobase', 'nobase_vit', 'x', {}, 'x', layer=ChebyshevKANLinear)
    with pytest.raises(ValueError, match="no help for option\\(s\\) kan_order; add each argument's meaning to "
                                         'ChebyshevKANLinear.argument_help'):
        add_family(KANFamily('cheby3', 'cheby3_vit', 'x', dict(kan_order='order'), 'x', layer=ChebyshevKANLinear,
                             default_base='none'))


def test_every_option_default_comes_from_a_signature():
    from timm_kan.layers import KAN_FAMILIES

    cheb, rational = KAN_FAMILIES['chebyshev'], KAN_FAMILIES['rational']
    assert cheb.defaults() == dict(kan_base='none', kan_mid_norm=True, kan_hidden=None, degree=3,
                                   kan_coeff_init='published', kan_fused=None)
    assert rational.defaults() == dict(kan_hidden=None, groups=8, kan_act_init=None, kan_fused=None)
    assert cheb.mlp_init_options == dict(kan_base='mlp', kan_mid_norm=False) and rational.mlp_init_options == {}
