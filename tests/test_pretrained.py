"""Pretrained adapter: ViT checkpoints in every layout into KAN-ViT, freeze policies, convert, bad input."""
import logging

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_kan import CheckpointError, apply_freeze_policy, count_parameters
from timm_kan.cli import main as cli_main

from conftest import SMALL, vit_to_npz_arrays

FAMILIES = ('chebykan_vit_t16', 'kan_vit_t16')


def _load(name, path, num_classes=7, source_classes=7, **kwargs):
    overlay = dict(file=str(path), num_classes=source_classes, custom_load=str(path).endswith('.npz'))
    return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                             **dict(SMALL, **kwargs)).eval()


def test_npz_writer_uses_the_layout_timm_reads(vit_checkpoint):
    """Sanity check of the fixture: timm's own ViT reads our .npz back to the same tensors."""
    vit = _load('vit_tiny_patch16_224', vit_checkpoint['files']['npz'])
    for k, v in vit_checkpoint['state'].items():
        torch.testing.assert_close(vit.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('fmt', ['safetensors', 'pth', 'npz'])
def test_mlp_init_reproduces_the_pretrained_vit(vit_checkpoint, name, fmt):
    kan = _load(name, vit_checkpoint['files'][fmt])
    vit = vit_checkpoint['vit']
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (kan(x) - vit(x)).abs().max().item() < 1e-4
    ks, vs = kan.state_dict(), vit_checkpoint['state']
    exact = fmt != 'npz'  # the npz path goes through float32 numpy transposes, still bit-exact for copies
    for k, v in vs.items():
        if '.mlp.' in k:
            layer, kind = k.split('.mlp.fc')[1].split('.')
            target = k.split('.mlp.')[0] + f'.mlp.kan{layer}.' + ('base.weight' if kind == 'weight' else 'bias')
        else:
            target = k
        assert torch.equal(ks[target], v) if exact else torch.allclose(ks[target], v, rtol=0, atol=1e-6), k
    coeff = 'coeffs' if name.startswith('chebykan') else 'spline_weight'
    assert all(ks[k].abs().sum() == 0 for k in ks if k.endswith(coeff))
    assert kan.checkpoint_layout == 'vit'


def test_default_freeze_trains_kan_layers_and_head_only(vit_checkpoint):
    kan = _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], num_classes=5)
    counts = count_parameters(kan)
    head = kan.head.weight.numel() + kan.head.bias.numel()
    assert counts['trainable'] == counts['ffn'] + head
    frozen = {n for n, p in kan.named_parameters() if not p.requires_grad}
    assert 'blocks.0.attn.qkv.weight' in frozen and 'pos_embed' in frozen and 'blocks.1.norm2.weight' in frozen
    assert not any('.mlp.' in n or n.startswith('head') for n in frozen)


def test_freeze_policies_counts(vit_checkpoint):
    kan = _load('kan_vit_t16', vit_checkpoint['files']['safetensors'], freeze='none')
    total = count_parameters(kan)['total']
    assert count_parameters(kan)['trainable'] == total
    counts = apply_freeze_policy(kan, 'backbone')
    assert counts['trainable'] == counts['ffn'] + kan.head.weight.numel() + kan.head.bias.numel()
    assert counts['total'] == total


@pytest.mark.parametrize('kan_init', ['random', 'mlp'])
def test_head_policy_refuses_to_freeze_fresh_kan_layers(vit_checkpoint, kan_init):
    with pytest.raises(ValueError, match=r"freeze='head' would freeze .* freshly initialised"):
        _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], freeze='head', kan_init=kan_init)


def test_freeze_without_pretrained_weights_is_an_error():
    model = timm.create_model('chebykan_vit_t16', **SMALL)
    with pytest.raises(ValueError, match="none were loaded"):
        apply_freeze_policy(model, 'backbone')


def test_kan_checkpoint_loads_untouched_and_head_policy_works(vit_checkpoint, tmp_path):
    kan = _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], freeze='none')
    with torch.no_grad():
        for p in kan.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / 'kan.safetensors'
    save_file(kan.state_dict(), str(path))
    loaded = _load('chebykan_vit_t16', path)
    assert loaded.checkpoint_layout == 'kan'
    assert count_parameters(loaded)['trainable'] == count_parameters(loaded)['total']  # nothing frozen by default
    for k, v in kan.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    counts = apply_freeze_policy(loaded, 'head')
    assert counts['trainable'] == loaded.head.weight.numel() + loaded.head.bias.numel()


def test_kan_random_init_warns_about_unused_mlp(vit_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        kan = _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], kan_init='random')
    assert "kan_init='random' leaves the pretrained MLP weights unused" in caplog.text
    assert kan.blocks[0].mlp.kan1.coeffs.abs().sum() > 0
    assert torch.equal(kan.blocks[0].attn.qkv.weight, vit_checkpoint['state']['blocks.0.attn.qkv.weight'])


def test_in21k_npz_with_pre_logits_replaces_head_and_says_so(vit_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        kan = _load('chebykan_vit_t16', vit_checkpoint['files']['npz_pre_logits'], num_classes=5)
    assert 'pre_logits.fc.weight' in caplog.text and 'head.weight' in caplog.text
    assert kan.head.weight.shape == (5, 192)
    torch.testing.assert_close(kan.blocks[1].attn.proj.weight, vit_checkpoint['state']['blocks.1.attn.proj.weight'],
                               rtol=0, atol=1e-6)


def test_pre_logits_with_kept_head_is_an_error_unless_not_strict(vit_checkpoint, caplog):
    path = vit_checkpoint['files']['npz_pre_logits']
    with pytest.raises(CheckpointError, match=r'pre_logits\.fc\.weight.*pretrained_strict=False'):
        _load('chebykan_vit_t16', path)
    with caplog.at_level(logging.WARNING):
        kan = _load('chebykan_vit_t16', path, pretrained_strict=False)
    assert 'skipped tensors with no place in the model: pre_logits.fc.bias, pre_logits.fc.weight' in caplog.text
    assert kan.head.weight.shape == (7, 192)


def test_older_timm_in21k_release_with_pre_logits_layer(vit_checkpoint, tmp_path, caplog):
    state = dict(vit_checkpoint['state'])
    state['pre_logits.fc.weight'] = torch.randn(192, 192)
    state['pre_logits.fc.bias'] = torch.randn(192)
    path = tmp_path / 'jx_vit_tiny_in21k.pth'
    torch.save(state, path)
    with caplog.at_level(logging.WARNING):
        kan = _load('kan_vit_t16', path, num_classes=5)
    assert 'pre_logits.fc.weight' in caplog.text
    assert torch.equal(kan.patch_embed.proj.weight, state['patch_embed.proj.weight'])


def test_pos_embed_is_resampled_by_timm_for_another_image_size(vit_checkpoint):
    kan = _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], img_size=48)
    assert kan.pos_embed.shape == (1, 1 + 9, 192)
    assert torch.equal(kan.cls_token, vit_checkpoint['state']['cls_token'])


# ---- bad input ----

class _Opaque:
    """An arbitrary pickled object: ``weights_only=True`` refuses to import it."""


def test_checkpoint_of_another_size(tmp_path):
    base = timm.create_model('vit_base_patch16_224', num_classes=7, **SMALL)
    path = tmp_path / 'vit_base.safetensors'
    save_file(base.state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r'vit_base\.safetensors does not fit chebykan_vit_t16.*'
                                              r'expected \(192, 3, 16, 16\), found \(768, 3, 16, 16\)'):
        _load('chebykan_vit_t16', path)


def test_checkpoint_of_another_family(tmp_path):
    path = tmp_path / 'resnet.safetensors'
    save_file(timm.create_model('resnet18', num_classes=7).state_dict(), str(path))
    with pytest.raises(CheckpointError,
                       match=r'resnet\.safetensors is not a ViT or KAN-ViT checkpoint.*found bn1\.bias'):
        _load('chebykan_vit_t16', path)


def test_truncated_missing_and_unsafe_files(vit_checkpoint, tmp_path):
    good = vit_checkpoint['files']['safetensors'].read_bytes()
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r'cannot load .*truncated\.safetensors into chebykan_vit_t16'):
        _load('chebykan_vit_t16', truncated)
    with pytest.raises(CheckpointError, match=r'cannot load .*nowhere\.pth into kan_vit_t16'):
        _load('kan_vit_t16', tmp_path / 'nowhere.pth')
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': vit_checkpoint['state'], 'extra': _Opaque()}, unsafe)
    with pytest.raises(CheckpointError, match=r'cannot load .*unsafe\.pth .*weights_only=True blocked'):
        _load('chebykan_vit_t16', unsafe)
    npz = tmp_path / 'truncated.npz'
    npz.write_bytes(vit_checkpoint['files']['npz'].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r'truncated\.npz'):
        _load('chebykan_vit_t16', npz)


def test_npz_of_fewer_blocks(vit_checkpoint, tmp_path):
    arrays = vit_to_npz_arrays(vit_checkpoint['state'], depth=1)
    path = tmp_path / 'one_block.npz'
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r'one_block\.npz is incomplete .*encoderblock_1'):
        _load('chebykan_vit_t16', path)


def test_missing_block_and_unexpected_tensors(vit_checkpoint, tmp_path, caplog):
    state = {k: v for k, v in vit_checkpoint['state'].items() if not k.startswith('blocks.1.attn')}
    path = tmp_path / 'partial.safetensors'
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r'partial\.safetensors is incomplete .*4 tensors missing: '
                                              r'blocks\.1\.attn\.proj\.bias'):
        _load('chebykan_vit_t16', path)
    extra = dict(vit_checkpoint['state'], **{'blocks.0.extra.weight': torch.ones(3)})
    path = tmp_path / 'extra.safetensors'
    save_file(extra, str(path))
    with pytest.raises(CheckpointError, match=r'1 tensors have no place in the model: blocks\.0\.extra\.weight'):
        _load('chebykan_vit_t16', path)
    with caplog.at_level(logging.WARNING):
        kan = _load('chebykan_vit_t16', path, pretrained_strict=False)
    assert 'skipped tensors with no place in the model: blocks.0.extra.weight' in caplog.text
    assert torch.equal(kan.blocks[0].attn.qkv.weight, extra['blocks.0.attn.qkv.weight'])


def test_mlp_init_option_conflicts(vit_checkpoint):
    with pytest.raises(ValueError, match=r"kan_init='mlp' reproduces the pretrained MLP exactly only with "
                                         r"kan_mid_norm=False, got kan_mid_norm=True"):
        _load('chebykan_vit_t16', vit_checkpoint['files']['safetensors'], kan_mid_norm=True)
    with pytest.raises(ValueError, match="kan_init='mlp' .* needs pretrained=True"):
        timm.create_model('chebykan_vit_t16', kan_init='mlp')
    with pytest.raises(ValueError, match="freeze must be one of"):
        timm.create_model('chebykan_vit_t16', freeze='all')


def test_registry_tags_point_at_timm_in21k_weights():
    cfg = timm.models.get_pretrained_cfg('chebykan_vit_base_patch16_224.augreg_in21k')
    assert cfg.hf_hub_id == 'timm/vit_base_patch16_224.augreg_in21k' and cfg.num_classes == 21843
    cfg = timm.models.get_pretrained_cfg('kan_vit_h14.orig_in21k')
    assert cfg.hf_hub_id == 'timm/vit_huge_patch14_224.orig_in21k' and cfg.num_classes == 0


@pytest.mark.parametrize('fmt', ['safetensors', 'npz'])
def test_convert_cli_round_trip_through_local_dir(vit_checkpoint, tmp_path, fmt):
    out = tmp_path / 'converted'
    rc = cli_main(['convert', '--model', 'kan_vit_t16', '--checkpoint', str(vit_checkpoint['files'][fmt]),
                   '--out', str(out), '--num-classes', '7', '--source-num-classes', '7',
                   '--model-kwargs', 'img_size=32', 'depth=2'])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    from safetensors.torch import load_file
    saved = load_file(str(out / 'model.safetensors'))
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.kan_args['kan_base'] == 'mlp' and not loaded.kan_args['kan_mid_norm']
    assert set(saved) == set(loaded.state_dict())
    for k, v in saved.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(saved['blocks.1.mlp.kan2.base.weight'], vit_checkpoint['state']['blocks.1.mlp.fc2.weight']) \
        or fmt == 'npz'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (loaded(x) - vit_checkpoint['vit'](x)).abs().max().item() < 1e-4


def test_convert_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    assert cli_main(['convert', '--model', 'kan_vit_t16', '--checkpoint', str(tmp_path / 'no.pth'), '--out',
                     str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err == f'error: --checkpoint: checkpoint not found: {tmp_path / "no.pth"}\n'
    assert not (tmp_path / 'o').exists()


# ---- other ViT layouts through architecture kwargs ----

@pytest.mark.parametrize('family', ['chebykan_vit', 'kan_vit', 'rbfkan_vit'])
def test_dinov2_layout_with_layer_scale_and_patch_14_is_reproduced(tmp_path, family):
    """A checkpoint in DINOv2's layout (layer scale ls1/ls2.gamma, patch 14, no head) adapts through the
    architecture kwargs patch_size / init_values / img_size, and the KAN-ViT computes the same features."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model('vit_small_patch14_dinov2', depth=2, img_size=56, num_classes=0).eval()
    with torch.no_grad():
        for name, p in source.named_parameters():
            if name.endswith('.gamma') or name.endswith('bias'):
                p.normal_(0, 0.2)
    assert {'blocks.0.ls1.gamma', 'blocks.1.ls2.gamma'} <= set(source.state_dict())
    path = tmp_path / 'dinov2_small.safetensors'
    save_file(source.state_dict(), str(path))
    kan = timm.create_model(f'{family}_small_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                            patch_size=14, init_values=1e-5, img_size=56, depth=2, num_classes=0).eval()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        assert (kan(x) - source(x)).abs().max().item() < 1e-5
    assert torch.equal(kan.blocks[1].ls2.gamma, source.blocks[1].ls2.gamma)


@pytest.mark.parametrize('source, target', [('chebykan_vit_t16', 'grkan_vit_t16'), ('grkan_vit_t16', 'kan_vit_t16')])
def test_another_familys_checkpoint_names_the_tensors_that_do_not_fit(tmp_path, source, target):
    """A KAN checkpoint of another family fails as a checkpoint error naming its blocks' tensors, whichever block
    class the file and the model use (not a TypeError about the file's block options)."""
    path = tmp_path / 'other.safetensors'
    save_file(timm.create_model(source, num_classes=7, **SMALL).state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r'other\.safetensors does not fit .*have no place in the model: '
                                              r'blocks\.0\.mlp\.'):
        _load(target, path)
