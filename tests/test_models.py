"""Registry, timm features, accounting and export round trips of the KAN-ViT models."""
import pytest
import timm
import torch
from timm.models import save_for_hf

import timm_kan
from timm_kan import count_flops, count_parameters

SIZES = {
    'tiny_patch16_224': ('t16', 192, 12, 3, 16), 'small_patch16_224': ('s16', 384, 12, 6, 16),
    'base_patch16_224': ('b16', 768, 12, 12, 16), 'base_patch32_224': ('b32', 768, 12, 12, 32),
    'large_patch16_224': ('l16', 1024, 24, 16, 16), 'large_patch32_224': ('l32', 1024, 24, 16, 32),
    'huge_patch14_224': ('h14', 1280, 32, 16, 14),
}
FAMILIES = ('kan_vit', 'chebykan_vit', 'rbfkan_vit', 'grkan_vit')
ALL_NAMES = [f'{f}_{n}' for f in FAMILIES for arch, spec in SIZES.items() for n in (arch, spec[0])]


def _small(name: str, **kwargs):
    arch = next(a for a, s in SIZES.items() if name.endswith(a) or name.endswith('_' + s[0]))
    patch = SIZES[arch][4]
    return timm.create_model(name, img_size=2 * patch, depth=1, num_classes=3, **kwargs)


def test_list_models_lists_every_variant():
    assert sorted(timm.list_models('kan_vit*')) == sorted(n for n in ALL_NAMES if n.startswith('kan_vit'))
    for family in FAMILIES[1:]:
        assert sorted(timm.list_models(f'{family}*')) == sorted(n for n in ALL_NAMES if n.startswith(family))
    pretrained = timm.list_models('chebykan_vit*', pretrained=True)
    assert 'chebykan_vit_base_patch16_224.augreg_in21k' in pretrained
    assert 'chebykan_vit_huge_patch14_224.orig_in21k' in pretrained
    assert len(pretrained) == 14


@pytest.mark.parametrize('name', [f'{f}_{arch}' for f in FAMILIES for arch in SIZES if not arch.startswith(('large',
                                                                                                           'huge'))])
def test_every_variant_builds_runs_and_trains(name):
    """Each architecture up to ViT-B at its full width (one block); its short alias is the same model (next test).
    ViT-L/H are the same layers at a larger width: they build on the meta device (``test_full_size_architecture_*``),
    where a full-width block would take 30 s of the suite to initialise."""
    torch.manual_seed(0)
    model = _small(name)
    x = torch.randn(2, 3, *model.patch_embed.img_size)
    y = model(x)
    assert y.shape == (2, 3)
    y.sum().backward()
    grads = [p.grad for p in model.blocks[0].mlp.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('family', FAMILIES)
def test_each_short_alias_builds_the_same_model_as_its_full_name(family):
    for arch, spec in SIZES.items():
        full, alias = (timm.create_model(f'{family}_{n}', device='meta', depth=1) for n in (arch, spec[0]))
        assert repr(alias) == repr(full), f'{family}_{spec[0]}'
        assert {k: v.shape for k, v in alias.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}


@pytest.mark.parametrize('arch', list(SIZES))
def test_full_size_architecture_is_the_standard_vit(arch):
    alias, dim, depth, heads, patch = SIZES[arch]
    for name in (f'chebykan_vit_{arch}', f'kan_vit_{alias}', f'rbfkan_vit_{arch}', f'grkan_vit_{alias}'):
        model = timm.create_model(name, device='meta')
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (dim, depth, heads)
        assert model.patch_embed.patch_size == (patch, patch)
        mlp = model.blocks[0].mlp
        hidden = mlp.fc1.out_features if name.startswith('grkan') else mlp.kan1.out_features
        assert hidden == 4 * dim


def _cheby_ffn_params(dim, hidden, degree, mid_norm=True):
    return dim * hidden * (degree + 1) + hidden * dim * (degree + 1) + (2 * hidden if mid_norm else 0)


def _bspline_ffn_params(dim, hidden, grid, order, mid_norm=True):
    per_edge = 1 + (grid + order) + 1  # base weight, spline coefficients, spline scaler
    return 2 * dim * hidden * per_edge + (2 * hidden if mid_norm else 0)


@pytest.mark.parametrize('arch', ['tiny_patch16_224', 'base_patch16_224'])
@pytest.mark.parametrize('degree', [3, 5])
def test_chebyshev_ffn_parameters_match_closed_form(arch, degree):
    _, dim, depth, _, _ = SIZES[arch]
    model = timm.create_model(f'chebykan_vit_{arch}', degree=degree, device='meta')
    assert count_parameters(model)['ffn'] == depth * _cheby_ffn_params(dim, 4 * dim, degree)
    vit = timm.create_model(f'vit_{arch}', num_classes=model.num_classes, device='meta')
    vit_counts = count_parameters(vit)
    assert count_parameters(model)['total'] == vit_counts['total'] - vit_counts['ffn'] + depth * _cheby_ffn_params(
        dim, 4 * dim, degree)


@pytest.mark.parametrize('arch', ['small_patch16_224', 'large_patch32_224'])
@pytest.mark.parametrize('grid,order', [(5, 3), (8, 2)])
def test_bspline_ffn_parameters_match_closed_form(arch, grid, order):
    _, dim, depth, _, _ = SIZES[arch]
    model = timm.create_model(f'kan_vit_{arch}', grid_size=grid, spline_order=order, kan_mid_norm=False,
                              device='meta')
    assert count_parameters(model)['ffn'] == depth * _bspline_ffn_params(dim, 4 * dim, grid, order, mid_norm=False)


def test_flops_count_the_kan_gemms():
    dim, depth, tokens, degree = 192, 2, 17, 3
    kwargs = dict(img_size=64, depth=depth, num_classes=10)
    vit = timm.create_model('vit_tiny_patch16_224', **kwargs)
    kan = timm.create_model('chebykan_vit_tiny_patch16_224', degree=degree, **kwargs)
    hidden = 4 * dim
    mlp_flops = 2 * tokens * (dim * hidden + hidden * dim)
    # T_0 = 1: its coefficients sum to a bias, so each layer's GEMM has K = in * degree
    kan_flops = 2 * tokens * (dim * degree * hidden + hidden * degree * dim)
    assert count_flops(kan) - count_flops(vit) == depth * (kan_flops - mlp_flops)


def test_unknown_option_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"unknown option 'degre'; did you mean degree"):
        timm.create_model('chebykan_vit_t16', degre=4)


def test_option_of_the_other_family_is_named():
    with pytest.raises(ValueError, match=r"'grid_size' belongs to the kan_vit_\* / rbfkan_vit_\* families"):
        timm.create_model('chebykan_vit_t16', grid_size=8)
    with pytest.raises(ValueError, match=r"'degree' belongs to the chebykan_vit_\* family"):
        timm.create_model('kan_vit_t16', degree=4)


@pytest.mark.parametrize('name,option', [('chebykan_vit_t16', 'degree'), ('kan_vit_t16', 'grid_size'),
                                         ('kan_vit_t16', 'spline_order')])
def test_invalid_option_values(name, option):
    with pytest.raises(ValueError, match=rf'{option} must be an integer >= 1, got 0'):
        timm.create_model(name, **{option: 0})


def test_wrong_image_size_names_expected_and_actual():
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=1)
    with pytest.raises(AssertionError, match=r'Input height \(48\) doesn\'t match model \(32\)'):
        model(torch.randn(1, 3, 48, 32))


def test_timm_vit_features_keep_working():
    torch.manual_seed(0)
    model = timm.create_model('kan_vit_t16', img_size=32, depth=3, num_classes=4, drop_path_rate=0.1,
                              global_pool='avg', grid_size=3)
    assert model.num_classes == 4 and model.global_pool == 'avg'
    assert model.blocks[2].drop_path1.drop_prob == pytest.approx(0.1)
    model.reset_classifier(7)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 3 and inter[0].shape == (2, 192, 2, 2)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['crop_pct'] == 0.9


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=2, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)


def test_features_only():
    model = timm.create_model('chebykan_vit_s16', img_size=32, depth=4, features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape for f in feats] == [torch.Size([1, 384, 2, 2])] * 2


def test_timm_init_reaches_the_kan_layers():
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=1, degree=3)
    coeffs = model.blocks[0].mlp.kan1.coeffs
    with torch.no_grad():
        coeffs.zero_()
    model.init_weights()
    assert coeffs.std().item() == pytest.approx(1 / (192 * 4), rel=0.05)


@pytest.mark.parametrize('name,options', [
    ('chebykan_vit_t16', dict(degree=5, kan_mid_norm=False)),
    ('kan_vit_tiny_patch16_224', dict(grid_size=7, spline_order=2, grid_range=(-2.0, 2.0), kan_hidden=64)),
])
def test_save_for_hf_round_trip_rebuilds_the_same_model(tmp_path, name, options):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, depth=2, num_classes=5, **options).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert loaded.kan_args == model.kan_args
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_model_summary_reports_parts_and_gflops():
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=1, num_classes=3)
    summary = timm_kan.model_summary(model)
    p = summary['params']
    assert p['total'] == p['attention'] + p['ffn'] + p['other'] == sum(x.numel() for x in model.parameters())
    assert summary['input_size'] == [3, 32, 32] and summary['gflops'] > 0


def test_per_block_widths_are_built_with_timms_initialisation():
    torch.manual_seed(0)
    model = timm.create_model('grkan_vit_t16', kan_hidden=[64, 128], img_size=32, depth=2, num_classes=3)
    assert model.hidden_widths() == [64, 128]
    # timm's ViT init (truncated normal, std 0.02) reached every block, also the one rebuilt at its own width;
    # PyTorch's default nn.Linear init has std 0.042 at width 192
    assert [round(float(b.mlp.fc1.weight.detach().std()), 2) for b in model.blocks] == [0.02, 0.02]
