"""pos_embed='sincos2d': the JAX KAN-ViT write-up's fixed 2-D sin-cos position embeddings on every KAN-ViT."""
import json
import logging
import math

import pytest
import timm
import torch

from timm_kan.hub import export_for_hub
from timm_kan.layers import KAN_FAMILIES, sincos2d_pos_embed

from conftest import SMALL


def _direct(grid_h, grid_w, dim, temperature=10000.):
    """big_vision's posemb_sincos_2d written out entry by entry."""
    quarter = dim // 4
    omega = [temperature ** -(k / (quarter - 1)) for k in range(quarter)]
    rows = []
    for y in range(grid_h):
        for x in range(grid_w):
            rows.append([math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega]
                        + [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega])
    return torch.tensor(rows)


def test_values_match_a_direct_computation():
    assert torch.allclose(sincos2d_pos_embed(3, 5, 16), _direct(3, 5, 16).float(), atol=1e-6)
    assert sincos2d_pos_embed(2, 2, 8).dtype == torch.float32


@pytest.mark.parametrize('prefix', [f.prefix for f in KAN_FAMILIES.values()])
def test_fixed_table_on_patches_only_and_never_trained(prefix):
    model = timm.create_model(f'{prefix}_tiny_patch16_224', pos_embed='sincos2d', num_classes=3, **SMALL)
    assert model.pos_embed is None and not model.sincos_pos_embed.requires_grad
    assert 'sincos_pos_embed' not in model.state_dict()
    assert not any('pos_embed' in name for name, _ in model.named_parameters())
    patches = torch.randn(2, 4, 192)
    tokens = model._pos_embed(patches.view(2, 2, 2, 192).flatten(1, 2))
    assert torch.equal(tokens[:, 0], model.cls_token.expand(2, -1, -1)[:, 0])  # the class token carries none
    assert torch.allclose(tokens[:, 1:], patches + _direct(2, 2, 192).float(), atol=1e-6)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.sincos_pos_embed.grad is None


def test_follows_img_size_and_dynamic_img_size():
    model = timm.create_model('chebykan_vit_t16', pos_embed='sincos2d', img_size=48, depth=1)
    assert torch.allclose(model.sincos_pos_embed[0], _direct(3, 3, 192).float(), atol=1e-6)
    dynamic = timm.create_model('chebykan_vit_t16', pos_embed='sincos2d', img_size=32, depth=1,
                                dynamic_img_size=True).eval()
    x = torch.randn(1, 3, 48, 32)
    seen = []
    dynamic.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    dynamic(x)
    patches = dynamic.patch_embed(x).flatten(1, 2)
    assert torch.allclose(seen[0][:, 1:], patches + _direct(3, 2, 192).float(), atol=1e-5)


def test_local_dir_round_trip_keeps_sincos2d(tmp_path):
    model = timm.create_model('rbfkan_vit_t16', pos_embed='sincos2d', num_classes=3, **SMALL).eval()
    out = export_for_hub(model, tmp_path / 'export')
    assert json.loads((out / 'config.json').read_text())['model_args']['pos_embed'] == 'sincos2d'
    again = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert again.pos_embed_type == 'sincos2d'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_a_learned_pos_embed_in_a_checkpoint_is_dropped_with_a_warning(vit_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        kan = timm.create_model('chebykan_vit_t16', pretrained=True, num_classes=7, pos_embed='sincos2d',
                                pretrained_cfg_overlay=dict(file=str(vit_checkpoint['files']['safetensors'])),
                                **SMALL)
    assert 'learned pos_embed (1, 5, 192) is not loaded' in caplog.text and 'sincos2d' in caplog.text
    assert torch.equal(kan.blocks[1].attn.qkv.weight, vit_checkpoint['state']['blocks.1.attn.qkv.weight'])


@pytest.mark.parametrize('kwargs,message', [
    (dict(pos_embed='rope'), "pos_embed must be one of ('learn', 'none', 'sincos2d'), got 'rope'"),
    (dict(pos_embed='sincos2d', img_size=40), 'needs img_size divisible by patch_size'),
    (dict(pos_embed='sincos2d', embed_dim=198, num_heads=3), 'embed_dim divisible by 4 and >= 8, got 198'),
])
def test_bad_pos_embed_is_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        timm.create_model('chebykan_vit_t16', depth=1, **kwargs)


def test_compare_refuses_sincos2d_for_a_plain_vit():
    from timm_kan.comparison.run import kwargs_per_model

    with pytest.raises(ValueError, match='vit_tiny_patch16_224 is not a KAN-ViT'):
        kwargs_per_model(['vit_tiny_patch16_224', 'chebykan_vit_t16'], dict(pos_embed='sincos2d'))
    assert kwargs_per_model(['chebykan_vit_t16'], dict(pos_embed='sincos2d')) == {
        'chebykan_vit_t16': dict(pos_embed='sincos2d')}
