"""What the KAN layers learned: edge functions against the layers, importance, symbolic fits, pruning, explain."""
import json

import pytest
import timm
import torch
from torch import nn

from timm_kan.cli import main as cli_main
from timm_kan.explain import (
    edge_importance, explain_model, fit_symbolic, prune, record_blocks, summary_table)
from timm_kan.hub import export_for_hub
from timm_kan.layers import BSplineKANLinear, ChebyshevKANLinear, GroupRational, RBFKANLinear

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
PNG = b'\x89PNG\r\n\x1a\n'


def _random(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer.double()


LAYERS = {
    'chebyshev': lambda: ChebyshevKANLinear(6, 4, degree=4, base_activation=nn.SiLU, bias=True),
    'bspline': lambda: BSplineKANLinear(6, 4, bias=True),
    'rbf': lambda: RBFKANLinear(6, 4, bias=True),
}


@pytest.mark.parametrize('family', list(LAYERS))
def test_edge_function_is_what_the_layer_outputs_when_one_input_varies(family):
    torch.manual_seed(0)
    layer = _random(LAYERS[family]())
    if family == 'rbf':
        layer.norm = nn.Identity()  # its edges see the LayerNorm'd input: vary that input directly
    x0 = torch.randn(1, 6, dtype=torch.float64)
    u = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)
    for i in range(6):
        x = x0.repeat(len(u), 1)
        x[:, i] = u
        others = layer(x) - layer.edge_functions(x)[:, :, i]  # the other inputs' contribution: constant
        torch.testing.assert_close(others, others[:1].expand_as(others), rtol=0, atol=1e-5)


@pytest.mark.parametrize('family', list(LAYERS))
def test_edge_contributions_sum_to_the_output(family):
    torch.manual_seed(0)
    layer = _random(LAYERS[family]())
    x = torch.randn(9, 6, dtype=torch.float64) * 1.5
    torch.testing.assert_close(layer.edge_contributions(x).sum(-1), layer(x), rtol=0, atol=1e-10)


def test_rational_group_functions_are_each_groups_rational():
    torch.manual_seed(0)
    act = GroupRational(8, groups=4, init='gelu')
    with torch.no_grad():
        act.numerator.normal_()
    u = torch.linspace(-3, 3, 25)
    phi = act.group_functions(u)
    for g in range(4):
        a, b = act.numerator[g].detach(), act.denominator[g].detach().abs()
        p = sum(a[i] * u ** i for i in range(6))
        q = 1 + sum(b[j - 1] * u.abs() ** j for j in range(1, 5))
        torch.testing.assert_close(phi[g], p / q, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def images():
    return torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_records_scores_and_the_mlp_analogue(images):
    torch.manual_seed(0)
    kan = timm.create_model('kan_vit_t16', **TINY).eval()
    records = record_blocks(kan, images, max_rows=64)
    assert [r.block for r in records] == [0, 1] and records[0].kind == 'kan'
    layer = records[1].layers[0]
    assert layer.inputs.shape == (64, 32) and layer.importance.shape == (128, 32)
    contrib = layer.module.edge_contributions(layer.inputs)
    torch.testing.assert_close(layer.importance, contrib.abs().mean(0), rtol=1e-5, atol=1e-6)
    k = layer.module.spline_order
    lo, hi = layer.module.grid[:, k], layer.module.grid[:, -k - 1]
    torch.testing.assert_close(layer.outside_grid, ((layer.inputs < lo) | (layer.inputs > hi)).float().mean(0))
    assert records[0].unit_score.shape == (128,) and 1 <= records[0].units_for_mass(0.9) <= 128

    vit = timm.create_model('vit_tiny_patch16_224', **TINY).eval()
    fc = record_blocks(vit, images, max_rows=64)[0].layers[1]
    torch.testing.assert_close(fc.importance, fc.module.weight.abs() * fc.inputs.std(0)[None])
    assert edge_importance(fc.module, fc.inputs).shape == (32, 128)


@pytest.mark.parametrize('f,expected', [
    (lambda x: 2 * torch.sin(3 * x + 0.5) - 1, 'sin'),
    (lambda x: 0.7 * x - 0.2, 'x'),
    (lambda x: (x - 0.3) ** 2, 'x^2'),
    (lambda x: -1.5 * torch.tanh(2 * x) + 0.1, 'tanh'),
])
def test_symbolic_fit_names_known_functions(f, expected):
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    fit = fit_symbolic(x, f(x))
    assert fit.f == expected and fit.r2 > 0.999, fit
    torch.testing.assert_close(fit(x), f(x), rtol=0, atol=0.05)
    assert fit_symbolic(x, torch.randn(101, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).r2 < 0.5


@pytest.mark.parametrize('name', ['chebykan_vit_t16', 'kan_vit_t16', 'rbfkan_vit_t16', 'grkan_vit_t16'])
def test_keep_one_is_bit_identical_and_a_new_model(name, images):
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY).eval()
    pruned = prune(model, images, keep=1.0)
    assert pruned is not model and pruned.hidden_widths() == model.hidden_widths()
    with torch.no_grad():
        assert torch.equal(pruned(images), model(images))


@pytest.mark.parametrize('name,extra', [('chebykan_vit_t16', dict(kan_mid_norm=False)),
                                        ('kan_vit_t16', dict(kan_mid_norm=False)),
                                        ('grkan_vit_t16', dict(groups=4))])
def test_removing_units_without_outgoing_weight_changes_nothing(name, extra, images):
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY, **extra).eval()
    dead = torch.arange(0, 128, 2)  # half the units of every block (and of every rational group)
    with torch.no_grad():
        for block in model.blocks:
            second = block.mlp.kan2 if hasattr(block.mlp, 'kan2') else block.mlp.fc2
            for tensor in (getattr(second, 'coeffs', None), getattr(second, 'spline_weight', None),
                           getattr(second, 'weight', None), getattr(getattr(second, 'base', None), 'weight', None)):
                if tensor is not None:
                    tensor[:, dead] = 0
    pruned = prune(model, images, keep=0.5)
    assert pruned.hidden_widths() == [64, 64] and model.hidden_widths() == [128, 128]
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), model(images), rtol=0, atol=1e-5)


def test_pruned_model_round_trips_through_local_dir(tmp_path, images):
    torch.manual_seed(0)
    model = timm.create_model('chebykan_vit_t16', **TINY).eval()
    pruned = prune(model, images, keep=0.25)
    out = export_for_hub(pruned, tmp_path / 'pruned')
    assert json.loads((out / 'config.json').read_text())['model_args']['kan_hidden'] == [32, 32]
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), pruned(images))


def test_prune_and_explain_refuse_bad_input(images, tmp_path):
    vit = timm.create_model('vit_tiny_patch16_224', **TINY)
    kan = timm.create_model('chebykan_vit_t16', **TINY)
    with pytest.raises(ValueError, match='prune works on KAN-ViTs'):
        prune(vit, images, keep=0.5)
    for keep in (0.0, 1.5):
        with pytest.raises(ValueError, match=r'keep must be in \(0, 1\]'):
            prune(kan, images, keep=keep)
    with pytest.raises(ValueError, match='is a plain ViT: explain needs a KAN-ViT'):
        explain_model(vit, images, tmp_path / 'x', name='vit_tiny_patch16_224')
    with pytest.raises(ValueError, match=r'--block 5 is out of range: the model has blocks 0..1'):
        explain_model(kan, images, tmp_path / 'x', block=5)


@pytest.mark.parametrize('name', ['kan_vit_t16', 'grkan_vit_t16'])
def test_explain_model_writes_pictures_and_json(name, images, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY).eval()
    reference = record_blocks(timm.create_model('vit_tiny_patch16_224', **TINY).eval(), images)
    summary = explain_model(model, images, tmp_path, name=name, top_k=4, reference=reference)
    for picture in summary['pictures']:
        assert open(picture, 'rb').read(8) == PNG
    saved = json.loads((tmp_path / 'importance.json').read_text())
    assert [b['hidden'] for b in saved['blocks']] == [128, 128] and len(saved['reference']) == 2
    if name == 'kan_vit_t16':
        assert len(saved['top_edges']) == 4 and {'formula', 'r2', 'f'} <= set(saved['top_edges'][0]['fit'])
        assert saved['blocks'][0]['outside_grid_share'] is not None
    else:
        assert (tmp_path / 'rational_block1.png').is_file()
    assert '| block | hidden units |' in summary_table(saved)


def test_explain_command_with_pruning(tmp_path, capsys):
    torch.manual_seed(0)
    args = dict(TINY, num_classes=10)
    model = timm.create_model('chebykan_vit_t16', **args)
    ckpt = tmp_path / 'ckpt.pth.tar'
    torch.save(dict(state_dict=model.state_dict(), arch='chebykan_vit_t16', model_args=args), ckpt)
    out = tmp_path / 'explain'
    assert cli_main(['explain', str(ckpt), '--data', 'digits', '--out', str(out), '--images', '32', '--prune', '0.5',
                     '--eval-images', '50', '--finetune-epochs', '1', '--finetune-images', '64', '--top-k', '4']) == 0
    printed = capsys.readouterr().out
    assert '| block | hidden units |' in printed and 'pruned keep=0.5' in printed and '1 epoch fine-tune' in printed
    for picture in ('overview.png', 'edges_block1_layer1.png'):
        assert (out / picture).read_bytes()[:8] == PNG
    report = json.loads((out / 'prune.json').read_text())
    assert [r['units'] for r in report['rows']] == [256, 128, 128] and report['eval_images'] == 50
    assert report['rows'][1]['params'] < report['rows'][0]['params']
    assert (out / 'pruned' / 'model.safetensors').is_file()
    assert cli_main(['explain', str(ckpt), '--data', 'digits', '--out', str(out), '--block', '7']) == 2
    assert '--block 7 is out of range' in capsys.readouterr().err
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert cli_main(['explain', str(ckpt), '--data', str(empty), '--out', str(tmp_path / 'e')]) == 2
    assert 'no images in' in capsys.readouterr().err


def test_compare_writes_the_explain_pictures(tmp_path):
    out = tmp_path / 'run'
    assert cli_main(['compare', '--data', 'digits', '--max-items', '300', '--output', str(out), '--epochs', '1',
                     '--models', 'vit_tiny_patch16_224', 'chebykan_vit_t16', '--no-progress',
                     '--model-kwargs', 'img_size=16', 'patch_size=8', 'embed_dim=32', 'depth=1', 'num_heads=2']) == 0
    results = json.loads((out / 'results.json').read_text())['results']
    assert 'explain' not in results[0]
    assert results[1]['explain'] == ['chebykan_vit_t16/explain/overview.png',
                                     'chebykan_vit_t16/explain/edges_block0_layer1.png']
    assert (out / 'chebykan_vit_t16' / 'explain' / 'overview.png').read_bytes()[:8] == PNG
    saved = json.loads((out / 'chebykan_vit_t16' / 'explain' / 'importance.json').read_text())
    assert len(saved['reference']) == 1  # the MLP ViT of the same run
