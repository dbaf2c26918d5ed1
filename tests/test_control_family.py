"""The learnable-activation MLP control (issue 26): ``ratmlp_vit_*``, its options, a ViT checkpoint kept up to the
GELU fit, ``local-dir:``, explain, and the Results column of each family's gain beyond the control's."""
import copy
import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from timm_kan import count_parameters
from timm_kan.cli import main as cli_main
from timm_kan.comparison.param_match import count_params, match_hidden
from timm_kan.comparison.results import CONTROL_COLUMN, format_table, merge_results
from timm_kan.hub import export_for_hub
from timm_kan.layers import GroupPReLU, GroupRational, LearnableActMlp
from timm_kan.models import design_name
from timm_kan.tables import results_section

from conftest import make_vit

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=3)


def _model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('ratmlp_vit_t16', **dict(TINY, **kwargs))


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize('control_act,act_type', [('rational', GroupRational), ('prelu', GroupPReLU)])
def test_forward_backward_keeps_fc1_and_fc2(control_act, act_type):
    model = _model(control_act=control_act)
    mlp = model.blocks[0].mlp
    assert isinstance(mlp, LearnableActMlp) and isinstance(mlp.act, act_type) and mlp.act.groups == 8
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (192, 768, 192)
    y = model(_images(2))
    assert y.shape == (2, 3)
    y.sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert design_name('ratmlp_vit_t16') == 'MLP + learnable activation'


def test_rational_is_kats_gelu_fit_per_group():
    act = _model().blocks[0].mlp.act
    assert act.init == 'gelu' and act.num_channels == 768
    x = torch.linspace(-3, 3, 768 * 2).reshape(2, 768)
    torch.testing.assert_close(act(x), GroupRational(768, 8, 'gelu')(x), rtol=0, atol=0)
    silu = _model(act_layer='silu').blocks[0].mlp.act
    assert silu.init == 'silu'


def test_prelu_has_one_slope_per_group():
    act = GroupPReLU(6, groups=3)
    assert torch.equal(act.weight.detach(), torch.full((3,), 0.25))
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.1, -0.5, 2.0]))
    x = torch.linspace(-2, 2, 6 * 5).reshape(5, 6)
    slope = torch.tensor([0.1, 0.1, -0.5, -0.5, 2.0, 2.0])
    torch.testing.assert_close(act(x), torch.clamp(x, min=0) + slope * torch.clamp(x, max=0), rtol=0, atol=0)
    u = torch.linspace(-1, 1, 9)
    torch.testing.assert_close(act.group_functions(u)[1], torch.where(u >= 0, u, -0.5 * u))
    single = _model(control_act='prelu', groups=1).blocks[0].mlp.act
    assert single.weight.shape == (1,)


@pytest.mark.parametrize('kwargs,per_group', [({}, 10), (dict(groups=4), 10), (dict(control_act='prelu'), 1),
                                              (dict(control_act='prelu', groups=1), 1)])
def test_parameters_are_the_vits_plus_the_activation_coefficients(kwargs, per_group):
    vit = timm.create_model('vit_tiny_patch16_224', **TINY)
    control = _model(**kwargs)
    groups = kwargs.get('groups', 8)
    assert count_parameters(control)['total'] - count_parameters(vit)['total'] == TINY['depth'] * groups * per_group
    assert count_parameters(control)['ffn'] - count_parameters(vit)['ffn'] == TINY['depth'] * groups * per_group


def test_full_size_parameters_are_the_vits_plus_the_rationals():
    base = timm.create_model('ratmlp_vit_base_patch16_224', num_classes=1000, device='meta')
    vit_base = timm.create_model('vit_base_patch16_224', num_classes=1000, device='meta')
    assert count_parameters(base)['total'] - count_parameters(vit_base)['total'] == 12 * 8 * 10


def test_equal_parameter_matching_keeps_the_vits_width():
    kwargs = dict(img_size=28, patch_size=7, embed_dim=96, depth=4, num_heads=3, num_classes=10)
    budget = count_params('vit_tiny_patch16_224', kwargs)
    assert match_hidden('ratmlp_vit_tiny_patch16_224', kwargs, budget) == 384
    assert match_hidden('ratmlp_vit_tiny_patch16_224', dict(kwargs, groups=6), budget) % 6 == 0


def _vit_file(tmp_path):
    vit = make_vit(num_classes=3, patch_size=8)
    path = tmp_path / 'vit.safetensors'
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return vit, dict(file=str(path))


def test_vit_checkpoint_is_kept_up_to_the_gelu_fit(tmp_path):
    vit, overlay = _vit_file(tmp_path)
    model = timm.create_model('ratmlp_vit_t16', pretrained=True, pretrained_cfg_overlay=overlay, **TINY).eval()
    assert model.checkpoint_layout == 'vit' and model.kan_args['control_act'] == 'rational'
    for key in ('blocks.1.mlp.fc1.weight', 'blocks.1.mlp.fc2.bias'):
        assert torch.equal(model.state_dict()[key], vit.state_dict()[key])
    # the ViT with its GELU replaced by the rational fit is the adapted model exactly: the fit is all that differs
    fitted = copy.deepcopy(vit)
    for block in fitted.blocks:
        block.mlp.act = GroupRational(768, 8, 'gelu')
    x = _images(8)
    # the fit's error, measured: within 0.0041 on [-8, 8] (0.0040 at its worst)
    u = torch.linspace(-8, 8, 16001)
    fit_error = (GroupRational(1, 1, 'gelu')(u[:, None])[:, 0] - F.gelu(u)).abs().max().item()
    assert 0.003 < fit_error < 0.0041
    with torch.no_grad():
        assert torch.equal(model(x), fitted(x))
        # each block's MLP, on the tokens the ViT gives it, is off by at most |fc2| times the fit error
        tokens = vit.patch_embed(x)
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        for block, adapted in zip(vit.blocks, model.blocks):
            z = block.norm2(tokens + block.ls1(block.attn(block.norm1(tokens))))
            h = block.mlp.fc1(z)
            assert h.abs().max() < 8  # inside the fitted range
            diff = (adapted.mlp(z) - block.mlp(z)).abs()
            bound = (F.gelu(h) - adapted.mlp.act(h)).abs() @ block.mlp.fc2.weight.abs().T
            assert (diff <= bound + 1e-6).all() and diff.max() > 0
            assert bound.max() <= fit_error * block.mlp.fc2.weight.abs().sum(1).max()
            tokens = block(tokens)
        # and the logits (up to 0.3 here) move by about the fit error
        assert 0 < (model(x) - vit(x)).abs().max() < 2 * fit_error


def test_kan_init_mlp_refuses_prelu(tmp_path):
    _, overlay = _vit_file(tmp_path)
    with pytest.raises(ValueError, match=r"only with control_act='rational', got control_act='prelu'; pass "
                                         r"kan_init='random'"):
        timm.create_model('ratmlp_vit_t16', pretrained=True, pretrained_cfg_overlay=overlay, kan_init='mlp',
                          control_act='prelu', **TINY)


@pytest.mark.parametrize('kwargs', [dict(groups=4), dict(control_act='prelu', groups=2, kan_hidden=64)])
def test_local_dir_round_trip_is_bit_exact(tmp_path, kwargs):
    model = _model(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking values, so that a wrong load shows
            p.add_(0.01 * torch.randn_like(p))
    out = export_for_hub(model, tmp_path / 'export')
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.kan_args == model.kan_args
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x = _images(3)
    assert torch.equal(loaded(x), model(x))
    assert '**KAN type:** MLP + learnable activation' in (out / 'README.md').read_text()


@pytest.mark.parametrize('control_act', ['rational', 'prelu'])
def test_explain_draws_the_learned_activation_per_group(tmp_path, control_act):
    from timm_kan.explain import explain_model

    model = _model(control_act=control_act).eval()
    summary = explain_model(model, _images(8), tmp_path, name='ratmlp_vit_t16')
    picture = tmp_path / f'{control_act}_block1.png'
    assert str(picture) in summary['pictures'] and picture.stat().st_size > 1000
    assert summary['design'] == 'MLP + learnable activation'
    assert [b['kind'] for b in summary['blocks']] == [control_act] * 2 and summary['blocks'][0]['hidden'] == 768


@pytest.mark.parametrize('kwargs,message', [
    (dict(degree=3), r"option 'degree' belongs to the chebykan_vit_\* family; ratmlp_vit_\* takes groups"),
    (dict(kan_act_init='gelu'), r"option 'kan_act_init' belongs to the grkan_vit_\* family"),
    (dict(kan_base='mlp'), r"option 'kan_base' belongs to the kan_vit_\* / chebykan_vit_\* / rbfkan_vit_\*"),
    (dict(gruops=4), r"unknown option 'gruops'; did you mean groups"),
    (dict(groups=5), r'groups must divide the hidden width 768, got groups=5'),
    (dict(groups=0), r'groups must be an integer >= 1, got 0'),
    (dict(control_act='relu'), r"control_act must be one of \('rational', 'prelu'\), got 'relu'"),
    (dict(control_act='prelu', kan_fused=True), r"kan_fused=True: control_act='prelu' has no fused kernel"),
])
def test_bad_options_are_one_line_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        _model(**kwargs)
    assert '\n' not in str(error.value)


def _runs(model: str, top1, **extra):
    """A compare result per seed, as results.json holds them."""
    return [dict(model=model, seed=seed, design=design_name(model), params=464458, trainable_params=464458,
                 gflops=0.015, train_minutes=1.0, images_per_second=100.0, peak_memory_mib=900.0, val_loss=0.1,
                 top1=value, top5=99.0, hidden=384, model_args=dict(patch_size=7, embed_dim=96, depth=4),
                 history=[dict(epoch=1, train_loss=0.5, val_loss=0.1, top1=value, top5=99.0, lr=1e-3)], **extra)
            for seed, value in enumerate(top1)]


VIT = _runs('vit_tiny_patch16_224', [96.7, 96.8, 96.9])
GRKAN = _runs('grkan_vit_tiny_patch16_224', [97.0, 97.2, 97.4])
CONTROL = _runs('ratmlp_vit_tiny_patch16_224', [96.8, 96.9, 97.0])


def _cells(table: str, model: str):
    header = table.splitlines()[0].split(' | ')
    row = next(line for line in table.splitlines() if line.startswith(f'| {model} |')).split(' | ')
    return dict(zip(header, row))


def test_the_control_column_is_each_familys_gain_beyond_the_controls():
    table = format_table(VIT + GRKAN + CONTROL)
    header = table.splitlines()[0]
    assert f'| top-1 | {CONTROL_COLUMN} | top-5 |' in header
    # (97.2 - 96.8) - (96.9 - 96.8) = 0.30, spread sqrt(0.2^2 + 0.1^2) = 0.224
    assert _cells(table, 'grkan_vit_tiny_patch16_224')[CONTROL_COLUMN] == '+0.30 ± 0.22'
    assert _cells(table, 'vit_tiny_patch16_224')[CONTROL_COLUMN] == ''
    assert _cells(table, 'ratmlp_vit_tiny_patch16_224')[CONTROL_COLUMN] == ''
    assert _cells(format_table(VIT + GRKAN + CONTROL[:1]), 'grkan_vit_tiny_patch16_224')[CONTROL_COLUMN] == '+0.40'
    for without in (VIT + GRKAN, GRKAN + CONTROL, VIT + CONTROL):  # no control, no ViT, no family to set against
        assert CONTROL_COLUMN not in format_table(without)


def _results_file(path, results, **meta):
    run = dict(data='mnist5k', recipe='small', recipe_args=dict(lr=0.002, epochs=30), model_kwargs=dict(depth=4),
               seed=0, world_size=1, device='cpu', torch='2.14.1', timm='1.0.31', classes=['0', '1'],
               config=dict(data='mnist5k', models=sorted({r['model'] for r in results}), seeds=[0, 1, 2]),
               date='2026-11-26', processor='cpu', command='timm-kan compare --models A', results=results)
    path.write_text(json.dumps(dict(run, **meta)))
    return path


def test_merged_runs_give_the_column_and_say_how_they_were_made(tmp_path, capsys):
    base = _results_file(tmp_path / 'base.json', VIT + GRKAN)
    control = _results_file(tmp_path / 'control.json', CONTROL, date='2026-12-01',
                            command='timm-kan compare --models B')
    assert CONTROL_COLUMN not in results_section(base)
    assert cli_main(['merge-results', str(base), str(control), '--out', str(tmp_path / 'merged')]) == 0
    merged = json.loads((tmp_path / 'merged' / 'results.json').read_text())
    assert [r['model'] for r in merged['results']] == [r['model'] for r in VIT + GRKAN + CONTROL]
    assert merged['config']['models'][-1] == 'ratmlp_vit_tiny_patch16_224'
    assert (tmp_path / 'merged' / 'accuracy_vs_params.png').is_file()
    section = results_section(tmp_path / 'merged' / 'results.json')
    assert section.startswith('Measured 2026-11-26 ') and '`timm-kan compare --models A`' in section
    assert 'Merged with runs measured 2026-12-01 on cpu' in section and '`timm-kan compare --models B`' in section
    assert _cells(section.split('\n\n')[-1], 'grkan_vit_tiny_patch16_224')[CONTROL_COLUMN] == '+0.30 ± 0.22'


@pytest.mark.parametrize('meta,message', [
    (dict(recipe_args=dict(lr=0.002, epochs=12)), r'\(recipe_args.epochs: 30 there, 12 here\)'),
    (dict(model_kwargs=dict(depth=2, drop_rate=0.1)),
     r'\(model_kwargs.depth: 4 there, 2 here; model_kwargs.drop_rate: None there, 0.1 here\)'),
    (dict(data='fashion-mnist'), r"data: 'mnist5k' there, 'fashion-mnist' here"),
    (dict(config=dict(data='mnist5k', models=['x'], seeds=[0])), r'\(config.seeds: \[0, 1, 2\] there, \[0\] here\)'),
])
def test_merging_runs_of_another_configuration_is_refused(tmp_path, meta, message):
    base = _results_file(tmp_path / 'base.json', VIT + GRKAN)
    other = _results_file(tmp_path / 'other.json', CONTROL, **meta)
    runs = [json.loads(p.read_text()) for p in (base, other)]
    with pytest.raises(ValueError, match=message) as error:
        merge_results(runs, [str(base), str(other)])
    assert '\n' not in str(error.value) and str(other) in str(error.value)


def test_merge_refuses_a_model_and_seed_twice_and_writes_nothing(tmp_path, capsys):
    base = _results_file(tmp_path / 'base.json', VIT + GRKAN)
    again = _results_file(tmp_path / 'again.json', GRKAN[2:] + CONTROL)
    assert cli_main(['merge-results', str(base), str(again), '--out', str(tmp_path / 'merged')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'both hold grkan_vit_tiny_patch16_224 seed 2' in err
    assert not (tmp_path / 'merged').exists()
    assert cli_main(['merge-results', str(base), '--out', str(tmp_path / 'merged')]) == 2
    assert 'two or more results.json files' in capsys.readouterr().err
    (tmp_path / 'broken.json').write_text('{"results": ')
    assert cli_main(['merge-results', str(base), str(tmp_path / 'broken.json'), '--out', str(tmp_path / 'm')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'broken.json is not a results.json of timm-kan compare' in err
