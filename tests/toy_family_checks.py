"""A KAN family defined here and nowhere else: a Legendre-basis KAN layer and its table entry.

Registering it must be all it takes for create_model, list_models, compare --match-params, the bench variants,
explain (edge functions, importance, pruning), kan_init='mlp' from a ViT checkpoint, the model card and the
``local-dir:`` round trip. This module registers a family for good, so it runs in its own process (see
``test_toy_family.py``); pytest does not collect it with the suite.
"""
import json
import math
from typing import Optional, Type

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

import timm_kan
from timm_kan.layers.base import KANLinearBase, check_positive

from conftest import image_folder, make_vit


def legendre_basis(u: torch.Tensor, degree: int) -> torch.Tensor:
    """P_0..P_degree of tanh(u) by Bonnet's recurrence: (n, in) -> (n, in, degree + 1)."""
    x = torch.tanh(u)
    terms = [torch.ones_like(x), x]
    for n in range(1, degree):
        terms.append(((2 * n + 1) * x * terms[n] - n * terms[n - 1]) / (n + 1))
    return torch.stack(terms[:degree + 1], dim=-1)


class LegendreKANLinear(KANLinearBase):
    """y_o = sum_i sum_j c_oij P_j(tanh(x_i)) (+ base branch, bias)."""
    coefficient_names = ('coeffs',)
    expansion_names = ('coeffs',)
    argument_help = dict(KANLinearBase.argument_help, degree='highest Legendre degree (>= 1)')

    def __init__(self, in_features: int, out_features: int, base_activation: Optional[Type[nn.Module]] = None,
                 bias: bool = False, degree: int = 3, coeff_init: str = 'published', device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, base_activation, bias, coeff_init, device, dtype)
        check_positive('degree', degree)
        self.degree = degree
        self.coeffs = nn.Parameter(torch.empty(out_features, in_features, degree + 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_coefficients(self) -> None:
        nn.init.normal_(self.coeffs, std=1 / math.sqrt(self.in_features * (self.degree + 1)))

    def edge_basis(self, u: torch.Tensor) -> torch.Tensor:
        return legendre_basis(u, self.degree)

    def edge_coefficients(self) -> torch.Tensor:
        return self.coeffs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        basis = legendre_basis(x, self.degree).flatten(-2)
        y = F.linear(basis, self.coeffs.flatten(1), self.bias)
        return y + self.base(x) if self.base is not None else y


LEGENDRE = timm_kan.KANFamily(
    'legendre', 'legkan_vit', 'Legendre KAN', dict(degree='degree', kan_coeff_init='coeff_init'),
    'Legendre KAN, degree {degree}', layer=LegendreKANLinear, default_base='silu', bench_name='legendre')
timm_kan.register_family(LEGENDRE)

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=3)


def _images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_models_are_registered_with_timm():
    names = timm.list_models('legkan_vit_*')
    assert len(names) == 2 * len(timm_kan.models.ARCHS) and 'legkan_vit_t16' in names
    assert 'legkan_vit_tiny_patch16_224.augreg_in21k' in timm.list_pretrained('legkan_vit_*')
    model = timm.create_model('legkan_vit_t16', degree=4, **TINY)
    assert isinstance(model.blocks[0].mlp.kan1, LegendreKANLinear) and model.blocks[0].mlp.kan1.degree == 4
    assert model(_images(2)).shape == (2, 3)
    assert timm_kan.models.design_name('legkan_vit_t16') == 'Legendre KAN'
    with pytest.raises(ValueError, match="option 'groups' belongs to the grkan_vit_"):
        timm.create_model('legkan_vit_t16', groups=4, **TINY)


def test_compare_matches_parameters_and_names_the_family(tmp_path, capsys):
    data = image_folder(tmp_path / 'data', classes=('a', 'b', 'c'), count=8, size=32)
    out = tmp_path / 'run'
    from timm_kan.cli import main

    code = main([
        'compare', '--data', str(data), '--output', str(out), '--epochs', '1', '--no-progress', '--no-explain',
        '--match-params', '--models', 'vit_tiny_patch16_224', 'legkan_vit_t16',
        '--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=2'])
    assert code == 0
    vit, kan = json.loads((out / 'results.json').read_text())['results']
    assert abs(kan['params'] - vit['params']) <= 0.02 * vit['params'] and kan['hidden'] < vit['hidden']
    assert 'Legendre KAN' in capsys.readouterr().out


def test_bench_has_the_family_s_reference_row():
    from timm_kan.bench import main as bench_main

    result = bench_main(['--variants', 'mlp', 'legendre reference', '--tokens', '64', '--dim', '16', '--hidden', '32',
                         '--reps', '1', '--warmup', '0', '--device', 'cpu'])
    rows = {r['variant']: r for r in result['ffn']}
    assert set(rows) == {'mlp', 'legendre reference'} and rows['legendre reference']['fwd_bwd_ms'] > 0


def test_explain_and_prune(tmp_path):
    from timm_kan.explain import explain_model, prune, record_blocks

    model = timm.create_model('legkan_vit_t16', **TINY).eval()
    images = _images()
    records = record_blocks(model, images)
    layer = records[1].layers[0]
    assert layer.name == 'blocks.1.mlp.kan1' and layer.importance.shape == (layer.module.out_features, 192)
    # each edge's function, summed over the inputs, is the layer's output
    x = torch.randn(5, 192)
    torch.testing.assert_close(layer.module.edge_contributions(x).sum(-1), layer.module(x), atol=1e-4, rtol=1e-4)
    summary = explain_model(model, images, tmp_path / 'explain', name='legkan_vit_t16', records=records)
    assert summary['design'] == 'Legendre KAN' and (tmp_path / 'explain' / 'edges_block1_layer1.png').is_file()
    pruned = prune(model, keep=0.5, records=records)
    assert pruned.hidden_widths() == [384, 384]
    same = prune(model, keep=1.0, records=records)
    torch.testing.assert_close(same(images), model(images), atol=0, rtol=0)


def test_pretrained_mlp_into_the_family_s_layers(tmp_path):
    vit = make_vit(num_classes=3, patch_size=8)
    path = tmp_path / 'vit.safetensors'
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = timm.create_model('legkan_vit_t16', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              kan_init='mlp', **TINY).eval()
    assert model.kan_args['kan_base'] == 'mlp' and float(model.blocks[0].mlp.kan1.coeffs.detach().abs().sum()) == 0
    images = _images(4)
    torch.testing.assert_close(model(images), vit(images), atol=1e-5, rtol=1e-5)


def test_model_card_and_local_dir_round_trip(tmp_path):
    model = timm.create_model('legkan_vit_t16', degree=2, **TINY).eval()
    out = timm_kan.export_for_hub(model, tmp_path / 'export', repo_id='me/legkan')
    card = (out / 'README.md').read_text()
    assert 'Legendre KAN' in card and 'legkan_vit_t16' in card
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.blocks[0].mlp.kan1.degree == 2
    images = _images(4)
    torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)
