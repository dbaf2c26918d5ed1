"""train_configs/*.yaml stay true: real timm train.py options, models that build, each write-up's recipe.

timm's ``train.py`` is not in timm's wheel. Its argument names come from ``train_configs/timm_train_args.txt``
(``tests/train_args.py``'s output for the commit named in its header), or, with ``TIMM_TRAIN_PY`` set to a
timm checkout's ``train.py``, from that file: then each yaml is also parsed by train.py's own parser.
"""
import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest
import timm
import torch
import yaml

import timm_kan  # noqa: F401  registers the models
from timm_kan.models._freeze import FREEZE_POLICIES
from timm_kan.models._pretrained import KAN_INITS
from timm_kan.models.kan_vit import architecture_kwargs

from train_args import train_py_arguments

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'train_configs'
CONFIGS = sorted(CONFIG_DIR.glob('*.yaml'))
IDS = [p.name for p in CONFIGS]
TRAIN_PY = os.environ.get('TIMM_TRAIN_PY')

# train.py's defaults (commit in timm_train_args.txt) for the options its create_model call reads; checked
# against the real parser by test_train_py_defaults_are_the_ones_assumed when TIMM_TRAIN_PY is set
TRAIN_PY_DEFAULTS = dict(
    pretrained=False, pretrained_path=None, in_chans=None, input_size=None, num_classes=None, drop=0.0,
    drop_path=None, drop_block=None, gp=None, bn_momentum=None, bn_eps=None, torchscript=False,
    initial_checkpoint='', model_kwargs={}, opt='sgd', momentum=0.9, bce_loss=False, smoothing=0.1,
)
# keyword arguments train.py itself passes to create_model: a model_kwargs key among them is a TypeError there
TRAIN_PY_MODEL_ARGS = ('pretrained', 'in_chans', 'num_classes', 'drop_rate', 'drop_path_rate', 'drop_block_rate',
                       'global_pool', 'bn_momentum', 'bn_eps', 'scriptable', 'checkpoint_path')


def known_train_args() -> set:
    if TRAIN_PY:
        return train_py_arguments(Path(TRAIN_PY).read_text())
    lines = (CONFIG_DIR / 'timm_train_args.txt').read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith('#')}


def _train_py_parser() -> argparse.ArgumentParser:
    """A fresh ``parser`` of timm's train.py (its module is executed anew: set_defaults mutates it)."""
    spec = importlib.util.spec_from_file_location('_timm_train_py', TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser


def parse_config(path: Path) -> argparse.Namespace:
    """The arguments train.py gets from ``-c path``: its own parser when TIMM_TRAIN_PY is set (as its
    ``_parse_args`` does: ``set_defaults(**cfg)``, then parse), else the yaml over ``TRAIN_PY_DEFAULTS``."""
    cfg = yaml.safe_load(path.read_text())
    if TRAIN_PY:
        parser = _train_py_parser()
        parser.set_defaults(**cfg)
        return parser.parse_args([])
    return argparse.Namespace(**{**TRAIN_PY_DEFAULTS, **cfg})


def unknown_keys(path: Path) -> List[str]:
    return sorted(set(yaml.safe_load(path.read_text())) - known_train_args())


def train_py_model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """What train.py passes to create_model besides ``model_kwargs`` (None values are dropped by timm)."""
    return dict(pretrained=args.pretrained, in_chans=args.in_chans, num_classes=args.num_classes,
                drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
                scriptable=args.torchscript, checkpoint_path=args.initial_checkpoint)


def build(path: Path) -> torch.nn.Module:
    """The config's model as train.py builds it, on the meta device and without the pretrained load: the
    load-time options (kan_init, freeze, ...) are dropped keeping the architecture they imply."""
    args = parse_config(path)
    kwargs = dict(train_py_model_kwargs(args), pretrained=False, checkpoint_path=None)
    return timm.create_model(args.model, device='meta', **kwargs, **architecture_kwargs(args.model, args.model_kwargs))


def config(name: str) -> argparse.Namespace:
    path = CONFIG_DIR / name
    assert path.exists(), f'{name} is missing from train_configs/'
    return parse_config(path)


def _optimizer(args: argparse.Namespace) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(torch.nn.Linear(2, 2), opt=args.opt, lr=1e-3, momentum=args.momentum,
                               weight_decay=args.weight_decay, **getattr(args, 'opt_kwargs', {}))


def seed_recipe_problems(args: argparse.Namespace) -> List[str]:
    """Where a seed config departs from write-up 1's recipe (the PyTorch ViT rewrite + KAN, flowers)."""
    problems = []
    group = _optimizer(args).param_groups[0]
    if args.opt != 'momentum' or group.get('nesterov'):
        problems.append(f"opt {args.opt!r} is Nesterov SGD in timm; the write-up's SGD is plain momentum: "
                        "opt: momentum")
    expected = dict(momentum=0.9, epochs=10, batch_size=8, lr=0.001, min_lr=0.001 * 0.01, warmup_epochs=0,
                    weight_decay=5e-5, sched='cosine', img_size=224, num_classes=5, pretrained=True,
                    mean=[0.5] * 3, std=[0.5] * 3, smoothing=0.0)
    for key, value in expected.items():
        got = getattr(args, key, None)
        numeric = isinstance(value, (float, list)) or (isinstance(value, int) and not isinstance(value, bool))
        if (got != pytest.approx(value)) if numeric and got is not None else got != value:
            problems.append(f'{key}: {got!r}, the write-up: {value!r}')
    if getattr(args, 'sched_on_updates', False):
        problems.append('the write-up steps its cosine once per epoch (sched_on_updates must be off)')
    if (getattr(args, 'mixup', 0) or 0) > 0 or (getattr(args, 'cutmix', 0) or 0) > 0 or getattr(args, 'aa', None):
        problems.append('the write-up used no mixup, cutmix or auto-augment')
    if args.model_kwargs.get('freeze') != 'backbone':
        problems.append(f"freeze: {args.model_kwargs.get('freeze')!r}, the project's recipe: backbone")
    return problems


# ---- every config --------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_keys_are_train_py_options(path):
    unknown = unknown_keys(path)
    assert not unknown, f'{path.name}: not options of timm train.py: {", ".join(unknown)}'
    assert parse_config(path).device_modules == ['timm_kan']


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_builds_its_model(path):
    args = parse_config(path)
    clash = sorted(set(args.model_kwargs) & set(TRAIN_PY_MODEL_ARGS))
    assert not clash, f'{path.name}: model_kwargs {clash} are passed by train.py itself (use its own option)'
    kw = args.model_kwargs
    assert kw.get('kan_init', 'mlp') in KAN_INITS, f'{path.name}: kan_init {kw["kan_init"]!r}'
    assert kw.get('freeze', 'none') in FREEZE_POLICIES, f'{path.name}: freeze {kw["freeze"]!r}'
    if kw.get('kan_init') == 'mlp' or kw.get('freeze') not in (None, 'none'):
        assert args.pretrained or args.pretrained_path, f'{path.name}: {kw} need pretrained weights'
    model = build(path)
    assert model.num_classes == args.num_classes
    if args.gp:
        assert model.global_pool == args.gp


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_header_names_its_source_and_limits(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith('# '), f'{path.name}: starts with no header comment'
    header = '\n'.join(line for line in lines[:next(i for i, x in enumerate(lines) if not x.startswith('#'))])
    assert 'Not matched' in header, f"{path.name}: its header says nothing of what it does not reproduce"
    assert f'train_configs/{path.name}' in header, f'{path.name}: its header has no command line for it'


def test_an_unknown_key_is_reported_with_file_and_key(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text((CONFIG_DIR / 'seed_kan_vit_b16_finetune.yaml').read_text() + 'lr_warmup: 3\n')
    assert unknown_keys(bad) == ['lr_warmup']
    with pytest.raises(AssertionError, match=r'bad\.yaml: not options of timm train\.py: lr_warmup'):
        test_config_keys_are_train_py_options(bad)


def test_train_configs_cover_both_families_and_sizes():
    names = {p.stem for p in CONFIGS}
    for family in ('chebykan', 'kan'):
        assert f'seed_{family}_vit_b16_finetune' in names
        assert {f'in1k_{family}_vit_{s}' for s in ('t16', 's16', 'b16')} <= names
    assert {f'in1k_grkan_vit_{s}_kat' for s in ('t16', 's16', 'b16')} <= names
    # one config per write-up recipe
    assert {'jax_kanvit_chebykan_vit_s16_deit', 'jax_kanvit_chebykan_vit_s16_deit3',
            'visionkan_kan_vit_t16', 'visionkan_rbfkan_vit_t16'} <= names


# ---- write-up 1: the PyTorch ViT rewrite + KAN (flowers fine-tuning) -------------------------------------

@pytest.mark.parametrize('name', ['seed_chebykan_vit_b16_finetune.yaml', 'seed_kan_vit_b16_finetune.yaml'])
def test_seed_configs_are_the_write_ups_recipe(name):
    args = config(name)
    assert args.opt == 'momentum'
    assert args.momentum == 0.9
    assert seed_recipe_problems(args) == []
    group = _optimizer(args).param_groups[0]
    assert group['nesterov'] is False and group['momentum'] == 0.9
    assert args.opt_kwargs == {'filter_bias_and_bn': False}  # weight decay on every tensor, as torch SGD did
    assert args.model_kwargs == {'freeze': 'backbone', 'kan_init': 'mlp'}


def test_seed_check_rejects_nesterov_sgd(tmp_path):
    """Today's former ``opt: sgd`` is timm's Nesterov SGD: the recipe check fails on it."""
    old = tmp_path / 'seed_sgd.yaml'
    old.write_text((CONFIG_DIR / 'seed_chebykan_vit_b16_finetune.yaml').read_text()
                   .replace('opt: momentum', 'opt: sgd'))
    args = parse_config(old)
    assert _optimizer(args).param_groups[0]['nesterov'] is True
    problems = seed_recipe_problems(args)
    assert len(problems) == 1 and 'Nesterov' in problems[0]


# ---- write-up 2: the JAX KAN-ViT ----------------------------------------------------------------------

def test_jax_kanvit_deit3_config_is_its_lamb_bce_recipe():
    args = config('jax_kanvit_chebykan_vit_s16_deit3.yaml')
    assert args.opt == 'lamb'
    assert type(_optimizer(args)).__name__ == 'Lamb'
    assert args.bce_loss is True and args.bce_target_thresh == 0.0 and args.smoothing == 0.0
    assert args.model_kwargs['degree'] == 8
    assert args.model_kwargs['pos_embed'] == 'sincos2d'
    assert args.model_kwargs['init_values'] == 1e-4  # layerscale
    assert (args.aa, args.color_jitter, args.reprob, args.aug_repeats) == ('3a', 0.3, 0.0, 3)
    assert (args.mixup, args.cutmix, args.clip_grad, args.weight_decay) == (0.8, 1.0, 1.0, 0.02)
    assert args.lr_base * 8 * args.batch_size / args.lr_base_size == pytest.approx(4e-3)
    assert args.sched_on_updates is True and args.epochs == 400
    model = build(CONFIG_DIR / 'jax_kanvit_chebykan_vit_s16_deit3.yaml')
    assert 'pos_embed' not in dict(model.named_parameters())  # fixed sin-cos table, nothing learned
    assert isinstance(model.blocks[0].ls1, timm.layers.LayerScale)


def test_jax_kanvit_deit_config_is_its_published_kan_run():
    args = config('jax_kanvit_chebykan_vit_s16_deit.yaml')
    assert args.opt == 'adamw' and args.opt_betas == [0.9, 0.999] and args.opt_eps == 1e-8
    assert args.bce_loss is False and args.smoothing == 0.1
    assert args.model_kwargs['degree'] == 8 and 'pos_embed' not in args.model_kwargs  # learnable
    assert (args.aa, args.reprob, args.aug_repeats, args.mixup, args.cutmix) == \
        ('rand-m9-mstd0.5-inc1', 0.25, 3, 0.8, 1.0)
    assert args.lr_base * 8 * args.batch_size / args.lr_base_size == pytest.approx(1e-3)
    assert args.drop_path == 0.0 and args.crop_pct == 0.875 and args.epochs == 300
    assert 'pos_embed' in dict(build(CONFIG_DIR / 'jax_kanvit_chebykan_vit_s16_deit.yaml').named_parameters())


@pytest.mark.parametrize('name', ['jax_kanvit_chebykan_vit_s16_deit.yaml', 'jax_kanvit_chebykan_vit_s16_deit3.yaml'])
def test_jax_kanvit_models_match_its_ffn_size(name):
    """Its FFN is one Chebyshev D->D layer of degree 8; two layers through D/2 hold as many coefficients."""
    model = build(CONFIG_DIR / name)
    dim = model.embed_dim
    kan = model.blocks[0].mlp
    assert kan.kan1.degree == 8 and model.hidden_widths() == [dim // 2] * len(model.blocks)
    coeffs = sum(p.numel() for n, p in kan.named_parameters() if n.endswith('coeffs'))
    assert coeffs == dim * dim * (8 + 1)
    assert model.no_embed_class and model.global_pool == 'token'


# ---- write-up 3: Vision-KAN ---------------------------------------------------------------------------

@pytest.mark.parametrize('name, family', [('visionkan_kan_vit_t16.yaml', 'kan_vit'),
                                          ('visionkan_rbfkan_vit_t16.yaml', 'rbfkan_vit')])
def test_visionkan_configs_have_kan_hidden_192(name, family):
    args = config(name)
    assert args.model == f'{family}_tiny_patch16_224'
    assert args.model_kwargs['kan_hidden'] == 192
    assert args.model_kwargs['qkv_bias'] is False
    assert (args.opt, args.lr, args.batch_size, args.weight_decay, args.drop_path) == ('adamw', 5e-4, 144, 0.05, 0.05)
    assert (args.aa, args.smoothing, args.mixup, args.cutmix, args.model_ema_decay) == ('3a', 0.0, 0.8, 1.0, 0.99996)
    assert args.pretrained and args.model_kwargs['pretrained_cfg']['hf_hub_id'] == 'timm/deit_tiny_patch16_224.fb_in1k'
    model = build(CONFIG_DIR / name)
    assert model.hidden_widths() == [192] * 12
    assert model.blocks[0].attn.qkv.bias is None


def test_visionkan_rbf_config_is_fasterkan():
    kan = build(CONFIG_DIR / 'visionkan_rbfkan_vit_t16.yaml').blocks[0].mlp
    assert kan.kan1.basis == 'rswaf' and kan.kan1.grid_size == 8 and kan.kan1.base is None
    assert isinstance(kan.norm, torch.nn.Identity)


# ---- write-up 4: KAT ----------------------------------------------------------------------------------

@pytest.mark.parametrize('size, drop_path', [('t16', 0.1), ('s16', 0.1), ('b16', 0.4)])
def test_kat_configs_are_its_scripts(size, drop_path):
    args = config(f'in1k_grkan_vit_{size}_kat.yaml')
    assert args.model.startswith('grkan_vit_') and args.model_kwargs == {'kan_act_init': 'silu'}
    assert (args.opt, args.weight_decay, args.aa, args.reprob, args.drop_path) == \
        ('adamw', 0.05, 'rand-m9-mstd0.5', 0.25, drop_path)
    assert args.mean == [0.485, 0.456, 0.406] and args.amp and args.model_ema_decay == 0.9999


# ---- with a timm checkout -----------------------------------------------------------------------------

@pytest.mark.skipif(not TRAIN_PY, reason="set TIMM_TRAIN_PY to a timm checkout's train.py")
def test_train_py_defaults_are_the_ones_assumed():
    defaults = _train_py_parser().parse_args([])
    assert {k: getattr(defaults, k) for k in TRAIN_PY_DEFAULTS} == TRAIN_PY_DEFAULTS
    assert known_train_args() == {line.strip() for line in (CONFIG_DIR / 'timm_train_args.txt').read_text()
                                  .splitlines() if line.strip() and not line.startswith('#')}


@pytest.mark.skipif(not TRAIN_PY, reason="set TIMM_TRAIN_PY to a timm checkout's train.py")
def test_timm_train_py_runs_the_seed_config(tmp_path):
    """timm's own train.py with the seed config: device_modules imports timm_kan, a ViT file is adapted."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    rng = np.random.RandomState(0)
    for split, n in (('train', 8), ('val', 4)):
        for name, rgb in {'red': (220, 30, 30), 'blue': (40, 50, 230)}.items():
            d = tmp_path / 'data' / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb) + rng.randint(-25, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i}.png')
    save_file(timm.create_model('vit_tiny_patch16_224', img_size=32, depth=2, num_classes=0).state_dict(),
              str(tmp_path / 'vit.safetensors'))
    cfg = CONFIG_DIR / 'seed_chebykan_vit_b16_finetune.yaml'
    cmd = [sys.executable, TRAIN_PY, '-c', str(cfg),
           '--data-dir', str(tmp_path / 'data'), '--model', 'chebykan_vit_t16', '--pretrained-path',
           str(tmp_path / 'vit.safetensors'), '--model-kwargs', 'img_size=32', 'depth=2', 'freeze=backbone',
           'kan_init=mlp', '--num-classes', '2', '--img-size', '32', '--epochs', '1', '-b', '4',
           '--validation-batch-size', '4', '--workers', '0', '--device', 'cpu', '--output', str(tmp_path / 'out')]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / 'out').glob('*/last.pth.tar'))
