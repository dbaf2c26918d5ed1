"""Shared fixtures: small ViT checkpoints written in the real layouts (the Hub is unreachable in tests)."""
import os
import shutil

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; it must be switched
# on before triton is first imported.
if shutil.which('nvidia-smi') is None:
    os.environ.setdefault('TRITON_INTERPRET', '1')

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_kan  # noqa: F401  registers the models

# a ViT-Tiny of 2 blocks at 32 px: the tiny KAN-ViT variants load it with depth=2, img_size=32
SMALL = dict(img_size=32, depth=2)


def make_vit(num_classes: int = 7, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=num_classes, **dict(SMALL, **kwargs)).eval()
    with torch.no_grad():  # non-trivial biases and norms so that a wrong mapping shows
        for name, p in vit.named_parameters():
            if name.endswith('bias') or 'norm' in name:
                p.normal_(0, 0.1).add_(1.0 if name.endswith('weight') else 0.0)
    return vit


def image_folder(root: Path, classes=('cat', 'dog'), count=6, size=20, seed=0) -> Path:
    """One folder per class of ``count`` noisy RGB images, each class a little brighter than the one before."""
    rng = np.random.RandomState(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = np.clip(rng.randint(0, 255, size=(size, size, 3)) * 0.3 + 60 * k, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f'{i:02d}.png')
    return root


def vit_to_npz_arrays(state: Dict[str, torch.Tensor], depth: int, pre_logits: bool = False) -> Dict[str, np.ndarray]:
    """Google's original ViT .npz key names and layouts (Flax kernels are (in, out), heads split)."""
    def n(t):
        return t.detach().numpy().copy()

    dim = state['cls_token'].shape[-1]
    heads = 3
    hd = dim // heads
    w = {
        'embedding/kernel': n(state['patch_embed.proj.weight'].permute(2, 3, 1, 0)),
        'embedding/bias': n(state['patch_embed.proj.bias']),
        'cls': n(state['cls_token']),
        'Transformer/posembed_input/pos_embedding': n(state['pos_embed']),
        'Transformer/encoder_norm/scale': n(state['norm.weight']),
        'Transformer/encoder_norm/bias': n(state['norm.bias']),
    }
    if 'head.weight' in state:
        w['head/kernel'] = n(state['head.weight'].T)
        w['head/bias'] = n(state['head.bias'])
    if pre_logits:
        g = torch.Generator().manual_seed(1)
        w['pre_logits/kernel'] = torch.randn(dim, dim, generator=g).numpy()
        w['pre_logits/bias'] = torch.randn(dim, generator=g).numpy()
    for i in range(depth):
        b = f'Transformer/encoderblock_{i}/'
        s = f'blocks.{i}.'
        w[b + 'LayerNorm_0/scale'] = n(state[s + 'norm1.weight'])
        w[b + 'LayerNorm_0/bias'] = n(state[s + 'norm1.bias'])
        w[b + 'LayerNorm_2/scale'] = n(state[s + 'norm2.weight'])
        w[b + 'LayerNorm_2/bias'] = n(state[s + 'norm2.bias'])
        qkv_w = state[s + 'attn.qkv.weight'].reshape(3, dim, dim)
        qkv_b = state[s + 'attn.qkv.bias'].reshape(3, dim)
        for j, name in enumerate(('query', 'key', 'value')):
            w[b + f'MultiHeadDotProductAttention_1/{name}/kernel'] = n(qkv_w[j].T.reshape(dim, heads, hd))
            w[b + f'MultiHeadDotProductAttention_1/{name}/bias'] = n(qkv_b[j].reshape(heads, hd))
        w[b + 'MultiHeadDotProductAttention_1/out/kernel'] = n(state[s + 'attn.proj.weight'].T.reshape(heads, hd, dim))
        w[b + 'MultiHeadDotProductAttention_1/out/bias'] = n(state[s + 'attn.proj.bias'])
        for r in range(2):
            w[b + f'MlpBlock_3/Dense_{r}/kernel'] = n(state[s + f'mlp.fc{r + 1}.weight'].T)
            w[b + f'MlpBlock_3/Dense_{r}/bias'] = n(state[s + f'mlp.fc{r + 1}.bias'])
    return w


@pytest.fixture
def vit_checkpoint(tmp_path) -> Dict[str, object]:
    """A 7-class ViT in timm safetensors, .pth, augreg-style .npz and pre_logits in21k-style .npz."""
    from safetensors.torch import save_file

    vit = make_vit()
    state = vit.state_dict()
    files = {'safetensors': tmp_path / 'vit.safetensors', 'pth': tmp_path / 'vit.pth',
             'npz': tmp_path / 'vit_augreg.npz', 'npz_pre_logits': tmp_path / 'ViT-Ti_16.npz'}
    save_file(state, str(files['safetensors']))
    torch.save(state, files['pth'])
    np.savez(files['npz'], **vit_to_npz_arrays(state, SMALL['depth']))
    np.savez(files['npz_pre_logits'], **vit_to_npz_arrays(state, SMALL['depth'], pre_logits=True))
    return dict(vit=vit, state=state, files={k: Path(v) for k, v in files.items()})


COLORS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (40, 50, 230)}


@pytest.fixture(scope='module')
def color_folder(tmp_path_factory) -> Path:
    """Three classes of noisy solid-colour 20x20 images, one folder per class, and one broken file."""
    root = tmp_path_factory.mktemp('colors')
    rng = np.random.RandomState(0)
    for name, rgb in COLORS.items():
        (root / name).mkdir()
        for i in range(15):
            img = np.clip(np.array(rgb) + rng.randint(-25, 25, size=(20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f'{i:02d}.png')
    (root / 'red' / 'broken.png').write_bytes(b'not an image')
    return root
