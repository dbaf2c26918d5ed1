"""kanify and the any-model entries (``chebykan``, base=...) on real timm architectures at small sizes.

Every base is timm's own class, built small with random weights (perturbed, so that zero-initialised layer scales
and heads do not hide a wrong feed-forward block); nothing is downloaded.
"""
import copy
import json
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import GluMlp, Mlp
from timm.models.metaformer import MetaFormer
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from timm_kan import KAN_FAMILIES, count_parameters, kanify, model_summary
from timm_kan.accounting import hidden_widths
from timm_kan.hub import export_for_hub
from timm_kan.layers import ffn_modules
from timm_kan.models import ChannelsFirst
from timm_kan.models._pretrained import kan_ffn_prefixes

# name -> (timm model name or a class, its small-size arguments, image size); names are what the registry rebuilds
SWIN = ('swin_tiny_patch4_window7_224',
        dict(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)), 32)
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
BASES = {
    'swin': SWIN,
    'convnext': ('convnext_tiny', dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32)), 32),
    'deit3': ('deit3_small_patch16_224', VIT, 32),
    'beit': ('beit_base_patch16_224', VIT, 32),
    'cait': ('cait_xxs24_224', dict(VIT, depth_token_only=1), 32),
    'maxvit': ('maxvit_tiny_tf_224', dict(img_size=64, embed_dim=(32, 64), depths=(1, 1), stem_width=16), 64),
    'eva': ('eva_giant_patch14_224', dict(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2,
                                          mlp_ratio=4), 28),
    'deit': ('deit_tiny_patch16_224', VIT, 32),
    'dinov2': ('vit_small_patch14_dinov2', dict(VIT, img_size=28, patch_size=14), 28),
    'clip': ('vit_base_patch16_clip_quickgelu_224', VIT, 32),
    # timm's entries of these fix their sizes: the classes themselves, small
    'mixer': (MlpMixer, dict(img_size=32, patch_size=8, embed_dim=32, num_blocks=1), 32),
    'poolformer': (MetaFormer, dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), mlp_act=nn.GELU), 32),
}
REGISTERED = [k for k, (name, _, _) in BASES.items() if isinstance(name, str)]


def _build(key: str, num_classes: int = 5, seed: int = 0) -> nn.Module:
    name, kwargs, _ = BASES[key]
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes, **kwargs) if isinstance(name, str) \
        else name(num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _images(key: str, n: int = 2) -> torch.Tensor:
    size = BASES[key][2]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def bases():
    return {key: _build(key) for key in BASES}


def _trainable(model: nn.Module) -> set:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _kan_or_head(model: nn.Module) -> set:
    prefixes = tuple(kan_ffn_prefixes(model)) + ('head.',)
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize('key', list(BASES))
def test_mlp_init_reproduces_each_architecture(bases, key):
    base = bases[key]
    x = _images(key)
    with torch.no_grad():
        expected = base(x)
    mlps = [m for m in base.modules() if type(m) is Mlp]
    model = copy.deepcopy(base)
    report = kanify(model, 'chebyshev', freeze='backbone')
    assert len(report.converted) == len(mlps) and not report.skipped and report.preserved == 'exact'
    assert not any(type(m) is Mlp for m in model.modules())
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-5
    # parameters: the base's, less its MLPs, plus the KAN blocks; the KAN blocks are the 'ffn' part
    kan = sum(p.numel() for n, p in model.named_parameters() if n.startswith(tuple(kan_ffn_prefixes(model))))
    counts = count_parameters(model)
    assert counts['total'] == report.params_after == report.params_before - sum(
        p.numel() for m in mlps for p in m.parameters()) + kan
    assert counts['ffn'] == kan and counts['trainable'] == sum(p.numel() for n, p in model.named_parameters()
                                                               if n in _kan_or_head(model))
    assert _trainable(model) == _kan_or_head(model)
    model.train()
    model(x).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and '.kan' in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize('key', ['mixer', 'poolformer'])
def test_fresh_kan_blocks_change_the_outputs(bases, key):
    """The FFNs matter in these models: the reproduction above is not the identity of an unused branch."""
    model = copy.deepcopy(bases[key])
    kanify(model, 'chebyshev', kan_init='random')
    with torch.no_grad():
        assert (model(_images(key)) - bases[key](_images(key))).abs().max() > 1e-3


def test_channels_first_mlps_are_wrapped(bases):
    model = copy.deepcopy(bases['poolformer'])
    kanify(model, 'bspline')
    wrapped = [m for m in model.modules() if isinstance(m, ChannelsFirst)]
    assert len(wrapped) == 4 and len(ffn_modules(model)) == 4


@pytest.mark.parametrize('kan_type', list(KAN_FAMILIES))
def test_each_family_on_swin(bases, kan_type):
    base = bases['swin']
    x = _images('swin')
    model = copy.deepcopy(base)
    report = kanify(model, kan_type, freeze='backbone')
    with torch.no_grad():
        expected = base(x)
        error = float((model(x) - expected).abs().max())
    if KAN_FAMILIES[kan_type].layer is not None:
        assert error <= 1e-5 and report.preserved == 'exact'
    else:  # the rational GELU fit: close, not exact
        assert 1e-7 < error <= 1e-2 * float(expected.abs().max()) and report.preserved == 'fit'
    assert _trainable(model) == _kan_or_head(model)
    assert model.pretrained_cfg['architecture'] == KAN_FAMILIES[kan_type].any_model
    assert timm.is_model(KAN_FAMILIES[kan_type].any_model)


@pytest.mark.parametrize('key', REGISTERED)
def test_local_dir_round_trip_is_bit_exact(tmp_path, key):
    name, kwargs, _ = BASES[key]
    model = timm.create_model('chebykan', base=name, num_classes=3, degree=2, **kwargs).eval()
    out = export_for_hub(model, tmp_path / 'export')
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'chebykan' and config['model_args']['base'] == name
    assert config['model_args']['degree'] == 2 and 'num_classes' not in config['model_args']
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.num_classes == 3 and loaded.kan_args == model.kan_args
    with torch.no_grad():
        assert torch.equal(loaded(_images(key)), model(_images(key)))


@pytest.mark.parametrize('name, options', [('poolformer_s12', {}), ('mixer_s16_224', dict(unsupported='warn'))])
def test_full_size_round_trip_where_timm_fixes_the_size(tmp_path, name, options):
    """MLP-Mixer's and PoolFormer's timm entries take no size arguments: their round trip at full size, with the
    group-rational family (the base's parameters; MLP-Mixer's 196-token MLPs, which groups=8 does not divide, stay
    MLPs and are recorded as such)."""
    model = timm.create_model('grkan', base=name, num_classes=3, groups=8, **options).eval()
    out = export_for_hub(model, tmp_path / 'export')
    assert json.loads((out / 'config.json').read_text())['model_args']['unsupported'] == options.get(
        'unsupported', 'error')
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.kanify_report.converted == model.kanify_report.converted
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_registry_loads_the_base_weights_then_converts(tmp_path):
    name, kwargs, _ = SWIN
    base = _build('swin')
    save_file(base.state_dict(), str(tmp_path / 'swin.safetensors'))
    model = timm.create_model('grkan', base=name, pretrained=True, num_classes=5, groups=4,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'swin.safetensors'), num_classes=5),
                              **kwargs).eval()
    x = _images('swin')
    with torch.no_grad():
        assert (model(x) - base(x)).abs().max() <= 1e-2 * base(x).abs().max()
    assert _trainable(model) == _kan_or_head(model)  # freeze='backbone' by default after a pretrained load
    out = export_for_hub(model, tmp_path / 'export')
    card = (out / 'README.md').read_text()
    assert name in card and 'swin.safetensors' in card
    summary = model_summary(model)
    assert summary['params']['total'] == model.kanify_report.params_after and summary['gflops'] > 0
    assert _trainable(model) == _kan_or_head(model)  # counting FLOPs leaves what trains as it was


def test_unsupported_modules_error_or_stay_with_a_warning(caplog):
    model = _build('deit')
    model.blocks[0].mlp = GluMlp(32, 128)
    cait = _build('cait')
    cait.blocks_token_only[0].mlp = GluMlp(32, 128)
    with pytest.raises(ValueError, match=r"blocks_token_only.0.mlp \(GluMlp: a gated MLP.*unsupported='warn'"):
        kanify(copy.deepcopy(cait), 'rbf')
    with caplog.at_level(logging.WARNING):
        report = kanify(cait, 'rbf', unsupported='warn')
    assert report.skipped == {'blocks_token_only.0.mlp': report.skipped['blocks_token_only.0.mlp']}
    assert len(report.converted) == 1 and 'stays an MLP' in caplog.text
    assert isinstance(cait.blocks_token_only[0].mlp, GluMlp)
    with pytest.raises(ValueError, match=r'^kanify: deit_tiny_patch16_224 has no timm Mlp .*GluMlp'):
        kanify(model, 'chebyshev', unsupported='warn')


def _one_line_error(call, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as info:
        call()
    assert '\n' not in str(info.value)


def test_bad_input_is_one_line_each():
    eva02 = timm.create_model('eva02_tiny_patch14_224', img_size=28, embed_dim=32, depth=1, num_heads=2)
    _one_line_error(lambda: kanify(eva02, 'chebyshev'),
                    r'eva02_tiny_patch14_224 has no timm Mlp .*seen: GluMlp')
    _one_line_error(lambda: timm.create_model('chebykan', base='swin_tny_patch4_window7_224'),
                    r"chebykan: unknown base model 'swin_tny_patch4_window7_224'. Close matches: "
                    r'swin_tiny_patch4_window7_224')
    _one_line_error(lambda: timm.create_model('kan', base=SWIN[0], kan_init='mlp', **SWIN[1]),
                    r"kan: kan_init='mlp' copies the pretrained MLPs .* needs pretrained=True")
    _one_line_error(lambda: timm.create_model('chebykan', base=SWIN[0], groups=4, **SWIN[1]),
                    r"chebykan: option 'groups' belongs to the grkan_vit_\* / ratmlp_vit_\* families")
    _one_line_error(lambda: kanify(_build('swin'), 'rational', degree=3),
                    r"kanify: option 'degree' belongs to the chebykan_vit_\* family")
    model = _build('swin')
    kanify(model, 'chebyshev')
    _one_line_error(lambda: kanify(model, 'rbf'), r'kanify: swin_tiny_patch4_window7_224 already has 2 KAN '
                                                  r'feed-forward blocks \(layers.0.blocks.0.mlp.')


def test_explain_prune_predict_and_compare_accept_kanified_models(tmp_path):
    from PIL import Image

    from timm_kan.comparison.run import kwargs_per_model
    from timm_kan.explain.prune import prune
    from timm_kan.explain.records import record_blocks
    from timm_kan.predict import load_for_inference, predict_images

    name, kwargs, _ = SWIN
    model = timm.create_model('chebykan', base=name, num_classes=3, kan_mid_norm=False, **kwargs).eval()
    x = _images('swin', 4)
    records = record_blocks(model, x)
    assert [r.layers[0].name for r in records] == ['layers.0.blocks.0.mlp.kan1', 'layers.1.blocks.0.mlp.kan1']
    assert hidden_widths(model) == [64, 128] and records[1].layers[1].importance.shape == (32, 128)
    same = prune(model, keep=1.0, records=records).eval()
    half = prune(model, keep=0.5, records=records).eval()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    assert half.kan_args['kan_hidden'] == [32, 64]
    assert count_parameters(half)['total'] < count_parameters(model)['total']
    out = export_for_hub(half, tmp_path / 'pruned', label_names=['a', 'b', 'c'])
    net, labels = load_for_inference(f'local-dir:{out}')
    with torch.no_grad():
        assert torch.equal(net(x), half(x)) and labels == ['a', 'b', 'c']
    Image.new('RGB', (40, 40), (200, 30, 30)).save(tmp_path / 'red.png')
    assert predict_images(net, labels, [tmp_path / 'red.png'], top_k=2)[0][0][0] in labels
    per_model = kwargs_per_model([name, 'chebykan'], dict(base=name, degree=2, img_size=32))
    assert per_model == {name: dict(img_size=32), 'chebykan': dict(base=name, degree=2, img_size=32)}


def test_readme_kanify_table_is_the_generated_one():
    import re
    from pathlib import Path

    from timm_kan.tables import kanify_table

    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text(encoding='utf-8')
    block = re.search(r'<!-- kanify-table:start -->\n(.*?)<!-- kanify-table:end -->', readme, re.S).group(1)
    table = kanify_table()
    assert block == table.rstrip('\n') + '\n'
    assert '| `swin_tiny_patch4_window7_224` | 12 | 28.3 | 6.49x, exact | 3.44x, exact |' in table
