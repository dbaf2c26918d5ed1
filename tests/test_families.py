"""Group-rational KAN (KAT) and RBF KAN: layers against direct formulas, registry, adapter, KAT checkpoints."""
import math
import os
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from timm_kan import apply_freeze_policy, count_parameters
from timm_kan.layers import GroupRational, GRKANMlp, RBFKANLinear

from conftest import SMALL


def _rational_direct(x, a, b):
    """P(x) / (1 + sum_j |b_j| |x|^j), written out term by term (float64)."""
    p = sum(a[i] * x ** i for i in range(6))
    q = 1 + sum(abs(b[j]) * x.abs() ** (j + 1) for j in range(4))
    return p / q


def test_rational_matches_kat_gpu_form_per_group():
    torch.manual_seed(0)
    act = GroupRational(6, groups=3).double()
    with torch.no_grad():
        act.numerator.normal_()
        act.denominator.normal_()  # negative b: the form takes |b|, so Q >= 1
    x = torch.linspace(-7, 7, 6 * 40, dtype=torch.float64).reshape(40, 6)
    y = act(x)
    for c in range(6):
        g = c // 2
        expected = _rational_direct(x[:, c], act.numerator[g].tolist(), act.denominator[g].tolist())
        torch.testing.assert_close(y[:, c], expected, rtol=1e-10, atol=1e-10)


def test_rational_matches_kats_own_kernel_as_shipped_by_ikan():
    """KAT's Triton forward (redistributed in the peer package ikan; on CPU through Triton's interpreter)
    reads the numerator in ascending powers and Q = 1 + sum |b_j| |x|^j: our loaded KAT layout means the same."""
    import importlib

    from timm_kan.bench import import_ikan
    if import_ikan()[0] is None or not (torch.cuda.is_available() or os.environ.get('TRITON_INTERPRET') == '1'):
        pytest.skip('needs ikan and a GPU or TRITON_INTERPRET=1')
    with warnings.catch_warnings():  # the peer's modules use deprecated torch.cuda.amp decorators
        warnings.simplefilter('ignore', FutureWarning)
        kat = importlib.import_module('ikan.kat_rational.rational_triton')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    act = GroupRational(16, groups=4).to(device)
    with torch.no_grad():
        act.numerator.normal_()
        act.denominator.normal_()
    x = torch.linspace(-3, 3, 20 * 16, device=device).reshape(20, 16)
    expected = kat.rational_fwd_triton(x, act.numerator.contiguous(), act.denominator.contiguous(), 4)
    torch.testing.assert_close(act(x), expected, rtol=1e-5, atol=1e-5)


def test_rational_identity_is_exact_and_fits_are_close():
    act = GroupRational(8, groups=2, init='identity')
    x = torch.randn(50, 8) * 100
    assert torch.equal(act(x), x) or torch.allclose(act(x), x, rtol=1e-6, atol=0)
    grid = torch.linspace(-3, 3, 8 * 1000).reshape(1000, 8)
    gelu_err = (GroupRational(8, init='gelu')(grid) - nn.functional.gelu(grid)).abs().max().item()
    silu_err = (GroupRational(8, init='silu')(grid) - nn.functional.silu(grid)).abs().max().item()
    assert gelu_err < 1e-2 and silu_err < 1e-2, (gelu_err, silu_err)


@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_rational_extreme_inputs_finite(dtype):
    block = GRKANMlp(16, 32)
    x = torch.tensor([1e4, -1e4, 3.0, -0.5] * 4).repeat(3, 1).requires_grad_()
    ctx = torch.autocast('cpu', dtype=dtype) if dtype else torch.autocast('cpu', enabled=False)
    with ctx:
        y = block(x)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_rational_gradcheck():
    torch.manual_seed(0)
    act = GroupRational(4, groups=2, init='gelu').double()
    x = (torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(act, (x,))


@pytest.mark.parametrize('basis', ['gaussian', 'rswaf'])
def test_rbf_layer_matches_formula_and_gradcheck(basis):
    torch.manual_seed(0)
    layer = RBFKANLinear(3, 2, grid_size=5, basis=basis, bias=True).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(7, 3, dtype=torch.float64)
    z = (layer.norm(x)[..., None] - torch.linspace(-2, 2, 5, dtype=torch.float64)) / 1.0
    phi = torch.exp(-z ** 2) if basis == 'gaussian' else 1 - torch.tanh(z) ** 2
    expected = (phi.flatten(1) @ layer.spline_weight.flatten(1).T + layer.bias
                + nn.functional.silu(x) @ layer.base.weight.T)
    torch.testing.assert_close(layer(x), expected)
    assert torch.autograd.gradcheck(layer, (x.clone().requires_grad_(),))


def test_rbf_bad_options():
    with pytest.raises(ValueError, match=r"grid_size must be an integer >= 2 for RBF KAN, got 1"):
        RBFKANLinear(4, 4, grid_size=1)
    with pytest.raises(ValueError, match=r"basis must be one of .* got 'cubic'"):
        RBFKANLinear(4, 4, basis='cubic')


def test_grkan_parameters_and_flops_within_a_tenth_of_a_percent_of_the_mlp():
    vit = timm.create_model('vit_base_patch16_224', num_classes=1000, device='meta')
    gr = timm.create_model('grkan_vit_base_patch16_224', num_classes=1000, device='meta')
    pv, pg = count_parameters(vit)['total'], count_parameters(gr)['total']
    assert pg - pv == 12 * 2 * 8 * 10 and (pg - pv) / pv < 1e-3


def test_rbf_hidden_width_option():
    model = timm.create_model('rbfkan_vit_t16', kan_hidden=20, rbf_basis='rswaf', **SMALL)
    assert model.blocks[0].mlp.kan1.out_features == 20 and model.blocks[0].mlp.kan1.basis == 'rswaf'
    with pytest.raises(ValueError, match=r"'degree' belongs to the chebykan_vit_\* family; grkan_vit_\* takes"):
        timm.create_model('grkan_vit_t16', degree=3)


def _vit_file(tmp_path, vit):
    path = tmp_path / 'vit.safetensors'
    save_file(vit.state_dict(), str(path))
    return dict(file=str(path), num_classes=7)


def test_vit_into_rbfkan_is_exact_and_into_grkan_is_close(vit_checkpoint, tmp_path):
    vit = vit_checkpoint['vit']
    overlay = _vit_file(tmp_path, vit)
    x = torch.randn(4, 3, 32, 32)
    rbf = timm.create_model('rbfkan_vit_t16', pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay,
                            **SMALL).eval()
    gr = timm.create_model('grkan_vit_t16', pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay,
                           **SMALL).eval()
    with torch.no_grad():
        ref = vit(x)
        assert (rbf(x) - ref).abs().max().item() < 1e-4
        gr_diff = (gr(x) - ref).abs().max().item()
    # the rational GELU fit is within 0.004 on [-8, 8]: a small logit shift, not an exact copy
    assert gr_diff < 0.05, gr_diff
    assert torch.equal(gr.blocks[1].mlp.fc2.weight, vit_checkpoint['state']['blocks.1.mlp.fc2.weight'])
    counts = count_parameters(gr)
    assert counts['trainable'] == counts['ffn'] + 7 * 192 + 7  # backbone frozen, GR-KAN FFN and head train


def test_kat_checkpoint_layout_loads_with_kats_meaning(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('grkan_vit_t16', num_classes=7, **SMALL).eval()
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith('.numerator'):  # KAT: one numerator (1, 6) for all groups
            state[k.replace('.numerator', '.weight_numerator')] = (v[:1] + torch.randn(1, 6) * 0.01)
        elif k.endswith('.denominator'):
            state[k.replace('.denominator', '.weight_denominator')] = v + torch.randn_like(v) * 0.01
        else:
            state[k] = v
    path = tmp_path / 'kat_tiny.safetensors'
    save_file(state, str(path))
    loaded = timm.create_model('grkan_vit_t16', pretrained=True, num_classes=7, **SMALL,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    assert loaded.checkpoint_layout == 'kan'
    act = loaded.blocks[0].mlp.act2
    a = state['blocks.0.mlp.act2.weight_numerator'][0].double().tolist()
    x = torch.linspace(-4, 4, 768, dtype=torch.float64)[None]
    for g in (0, 5):
        b = state['blocks.0.mlp.act2.weight_denominator'][g].double().tolist()
        ch = slice(g * 96, (g + 1) * 96)
        torch.testing.assert_close(act.double()(x)[0, ch], _rational_direct(x[0, ch], a, b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', ['grkan_vit_t16', 'rbfkan_vit_t16'])
def test_new_families_round_trip_through_local_dir(tmp_path, name):
    from timm_kan.hub import export_for_hub
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **SMALL).eval()
    out = export_for_hub(model, tmp_path / 'export')
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    kan_type = {'grkan_vit_t16': 'group-rational KAN', 'rbfkan_vit_t16': 'RBF KAN'}[name]
    assert f'**KAN type:** {kan_type}' in (out / 'README.md').read_text()


def test_grkan_head_freeze_is_refused_for_fresh_rationals(vit_checkpoint, tmp_path):
    overlay = _vit_file(tmp_path, vit_checkpoint['vit'])
    model = timm.create_model('grkan_vit_t16', pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay,
                              freeze='none', **SMALL)
    with pytest.raises(ValueError, match='freshly initialised'):
        apply_freeze_policy(model, 'head')
    assert math.isclose(count_parameters(model)['trainable'], count_parameters(model)['total'])
