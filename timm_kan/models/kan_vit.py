"""KAN Vision Transformers: timm's ViT with each block's MLP replaced by two KAN layers.

Papers:
    - ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929
    - KAN: Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv:2404.19756 (B-spline, ``kan_vit_*``)
    - Chebyshev KAN: SS. Sidharth, arXiv:2405.07200 (``chebykan_vit_*``)
    - FastKAN: Z. Li, arXiv:2405.06721, as Vision-KAN uses it (RBF bases, ``rbfkan_vit_*``)
    - KAT: Yang & Wang, "Kolmogorov-Arnold Transformer", arXiv:2409.10594 (group-rational, ``grkan_vit_*``)

Every timm ViT feature (``num_classes``, ``global_pool``, ``drop_path_rate``, ``img_size``,
``features_only``, ``forward_intermediates``, grad checkpointing) is inherited from
``timm.models.vision_transformer.VisionTransformer``. KAN options are ``create_model`` kwargs:

    degree, kan_fused (Chebyshev), grid_size / spline_order / grid_range (B-spline), grid_size / rbf_basis /
    grid_range (RBF), groups / kan_act_init (group-rational), kan_base, kan_mid_norm, kan_hidden (or timm's
    mlp_ratio), kan_init ('mlp' | 'random'), freeze ('none' | 'head' | 'backbone'), pretrained_strict.
"""
import difflib
import inspect
import pickle
from functools import partial
from typing import Any, Dict

from safetensors import SafetensorError
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _cfg

from ..layers import GRKANMlp, KANMlp, default_kan_base
from ._pretrained import (
    FREEZE_POLICIES, KAN_INITS, CheckpointError, freeze, kan_checkpoint_filter_fn, load_npz_into_kan_vit)

__all__ = ['KANVisionTransformer', 'KAN_FAMILIES', 'architecture_kwargs']

# family prefix -> KAN layer type and the create_model options that belong to it
_KAN_BLOCK_OPTIONS = ('kan_base', 'kan_mid_norm', 'kan_hidden')
KAN_FAMILIES = {
    'kan_vit': dict(kan_type='bspline',
                    options=('grid_size', 'spline_order', 'grid_range', 'kan_fused') + _KAN_BLOCK_OPTIONS),
    'chebykan_vit': dict(kan_type='chebyshev', options=('degree', 'kan_fused') + _KAN_BLOCK_OPTIONS),
    'rbfkan_vit': dict(kan_type='rbf', options=('grid_size', 'rbf_basis', 'grid_range') + _KAN_BLOCK_OPTIONS),
    'grkan_vit': dict(kan_type='rational', options=('groups', 'kan_act_init', 'kan_hidden', 'kan_fused')),
}
_ALL_KAN_OPTIONS = sorted({o for f in KAN_FAMILIES.values() for o in f['options']})

# architecture name -> (ViT arguments, short alias, in21k weights in timm's hub org, classes of that head)
_ARCHS = {
    'tiny_patch16_224': (dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), 't16',
                         'vit_tiny_patch16_224.augreg_in21k', 21843),
    'small_patch16_224': (dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), 's16',
                          'vit_small_patch16_224.augreg_in21k', 21843),
    'base_patch16_224': (dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), 'b16',
                         'vit_base_patch16_224.augreg_in21k', 21843),
    'base_patch32_224': (dict(patch_size=32, embed_dim=768, depth=12, num_heads=12), 'b32',
                         'vit_base_patch32_224.augreg_in21k', 21843),
    'large_patch16_224': (dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), 'l16',
                          'vit_large_patch16_224.augreg_in21k', 21843),
    'large_patch32_224': (dict(patch_size=32, embed_dim=1024, depth=24, num_heads=16), 'l32',
                          'vit_large_patch32_224.orig_in21k', 0),
    'huge_patch14_224': (dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16), 'h14',
                         'vit_huge_patch14_224.orig_in21k', 0),
}

# keyword arguments create_model may legitimately pass through to the builder
_BUILDER_KWARGS = {
    'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'features_only',
    'out_indices', 'feature_cls', 'output_fmt', 'flatten_sequential', 'pruned', 'kwargs_filter',
}
_ADAPTER_KWARGS = {'kan_init', 'freeze', 'pretrained_strict'}
_RESERVED_VIT_KWARGS = {'mlp_layer', 'block_fn'}


class KANVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` whose blocks use ``KANMlp``.

    Args:
        kan_args: Arguments of ``KANMlp`` (kan_type, degree, grid sizes, base, mid norm, hidden width).
        kan_init: How the KAN layers are initialised when pretrained ViT weights are loaded.
        strict_load: Pretrained loads refuse checkpoint tensors that have no place in the model.
        **kwargs: ``VisionTransformer`` arguments.
    """

    def __init__(self, kan_args: Dict[str, Any], kan_init: str = 'random', strict_load: bool = True, **kwargs) -> None:
        self.kan_args = dict(kan_args)
        self.kan_init = kan_init
        self.strict_load = strict_load
        self.vit_args = dict(kwargs)
        block_args = dict(kan_args)
        if block_args.pop('kan_type') == 'rational':
            mlp_layer = partial(GRKANMlp, **block_args)
        else:
            mlp_layer = partial(KANMlp, kan_type=kan_args['kan_type'], **block_args)
        super().__init__(mlp_layer=mlp_layer, **kwargs)

    @property
    def _model_args(self) -> Dict[str, Any]:
        return self.__dict__.get('_kan_model_args', {})

    @_model_args.setter
    def _model_args(self, args: Dict[str, Any]) -> None:
        # timm's factory records create_model kwargs here for exports; load-time options
        # (how to adapt a checkpoint, what to freeze) do not describe the architecture
        self.__dict__['_kan_model_args'] = {k: v for k, v in args.items() if k not in _ADAPTER_KWARGS}

    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """Load Google's original ``.npz`` ViT checkpoints (timm's ``custom_load`` path)."""
        load_npz_into_kan_vit(self, checkpoint_path, prefix)


def architecture_kwargs(model_name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``create_model`` kwargs without the load-time options, keeping the architecture they imply.

    Rebuilding a trained model (e.g. from timm ``train.py``'s recorded ``model_kwargs``) needs the same
    layers but no pretrained load: for the KAN-layer families ``kan_init='mlp'`` implies
    ``kan_base='mlp'`` and ``kan_mid_norm=False``. Names that are not KAN-ViTs only lose the load options.
    """
    out = {k: v for k, v in kwargs.items() if k not in _ADAPTER_KWARGS}
    try:
        family, _ = _resolve_variant(model_name.split('.')[0])
    except ValueError:
        return out
    if kwargs.get('kan_init') == 'mlp' and KAN_FAMILIES[family]['kan_type'] != 'rational':
        out.setdefault('kan_base', 'mlp')
        out.setdefault('kan_mid_norm', False)
    return out


def _check_kwargs(variant: str, family: str, kwargs: Dict[str, Any]) -> None:
    allowed_vit = set(inspect.signature(VisionTransformer.__init__).parameters) - {'self'} - _RESERVED_VIT_KWARGS
    own = set(KAN_FAMILIES[family]['options']) | _ADAPTER_KWARGS
    for key in kwargs:
        if key in own or key in allowed_vit or key in _BUILDER_KWARGS:
            continue
        if key in _ALL_KAN_OPTIONS:
            others = [f'{f}_*' for f, spec in KAN_FAMILIES.items() if key in spec['options']]
            raise ValueError(
                f'{variant}: option {key!r} belongs to the {" / ".join(others)} famil'
                f'{"ies" if len(others) > 1 else "y"}; {family}_* takes {", ".join(KAN_FAMILIES[family]["options"])}')
        if key in _RESERVED_VIT_KWARGS:
            raise ValueError(f'{variant}: {key!r} is set by timm_kan and cannot be overridden')
        close = difflib.get_close_matches(key, sorted(own | allowed_vit), n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'{variant}: unknown option {key!r}{hint}')


def _create_kan_vit(variant: str, pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    """Build a KAN-ViT variant on ``build_model_with_cfg``; pops the KAN options before the ViT sees them."""
    family, arch = _resolve_variant(variant)
    _check_kwargs(variant, family, kwargs)
    vit_args = dict(_ARCHS[arch][0])

    kan_init = kwargs.pop('kan_init', None)
    freeze_policy = kwargs.pop('freeze', None)
    user_strict = kwargs.pop('pretrained_strict', True)
    if kan_init is not None and kan_init not in KAN_INITS:
        raise ValueError(f'kan_init must be one of {KAN_INITS}, got {kan_init!r}')
    if freeze_policy is not None and freeze_policy not in FREEZE_POLICIES:
        raise ValueError(f'freeze must be one of {FREEZE_POLICIES}, got {freeze_policy!r}')
    # a model rebuilt from its own export (hf-hub:/local-dir:) loads KAN weights, not a ViT to adapt
    from_kan_export = bool(kwargs.get('pretrained_model_args'))
    if kan_init is None:
        kan_init = 'mlp' if pretrained and not from_kan_export else 'random'
    if kan_init == 'mlp' and not pretrained:
        raise ValueError("kan_init='mlp' copies a pretrained MLP into the KAN layers; it needs pretrained=True")

    kan_type = KAN_FAMILIES[family]['kan_type']
    kan_args = dict(kan_type=kan_type)
    for key in KAN_FAMILIES[family]['options']:
        if key in kwargs:
            kan_args[key] = kwargs.pop(key)
    if 'grid_range' in kan_args:
        kan_args['grid_range'] = tuple(kan_args['grid_range'])
    # group-rational blocks keep fc1/fc2, so they need no special structure to start from the MLP
    if kan_init == 'mlp' and kan_type != 'rational':
        for key, needed in (('kan_base', 'mlp'), ('kan_mid_norm', False)):
            if kan_args.get(key, needed) != needed:
                raise ValueError(
                    f"kan_init='mlp' reproduces the pretrained MLP exactly only with {key}={needed!r}, "
                    f'got {key}={kan_args[key]!r}; pass kan_init=\'random\' to use {key}={kan_args[key]!r}')
            kan_args[key] = needed
    if kan_type == 'rational':
        kan_args.setdefault('groups', 8)
    else:
        kan_args.setdefault('kan_base', default_kan_base(kan_type))
        kan_args.setdefault('kan_mid_norm', True)
    if 'act_layer' in kwargs:
        kwargs['act_layer'] = get_act_layer(kwargs['act_layer'])

    try:
        model = build_model_with_cfg(
            KANVisionTransformer,
            variant,
            pretrained,
            pretrained_filter_fn=kan_checkpoint_filter_fn,
            pretrained_strict=user_strict,
            strict_load=user_strict,
            feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3), feature_cls='getter'),
            kan_args=kan_args,
            kan_init=kan_init,
            **dict(vit_args, **kwargs),
        )
    except CheckpointError:
        raise
    except (OSError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        if not pretrained:
            raise
        overlay = kwargs.get('pretrained_cfg_overlay') or {}
        source = overlay.get('file') or overlay.get('hf_hub_id') or f'the pretrained weights of {variant}'
        reason = f'{type(e).__name__}: {e}' if str(e) else f'{type(e).__name__} (missing or unreadable file)'
        raise CheckpointError(f'cannot load {source} into {variant}: {reason}') from e
    # record the resolved KAN options so that exports rebuild the same layers
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kan_args.items() if k != 'kan_type'}
    model._model_args = dict(getattr(model, '_model_args', {}), **options)

    loaded_from_vit = getattr(_unwrap(model), 'checkpoint_layout', None) == 'vit'
    if freeze_policy is None:
        freeze_policy = 'backbone' if loaded_from_vit else 'none'
    freeze(_unwrap(model), freeze_policy)
    return model


def _unwrap(model):
    """The ViT inside a ``features_only`` wrapper."""
    return getattr(model, 'model', model)


def _resolve_variant(variant: str):
    for family in KAN_FAMILIES:
        if variant.startswith(family + '_'):
            arch = variant[len(family) + 1:]
            for name, (_, alias, _, _) in _ARCHS.items():
                if arch in (name, alias):
                    return family, name
    raise ValueError(f'unknown KAN-ViT variant {variant!r}')


def _kan_cfg(hf_hub_id: str, num_classes: int) -> Dict[str, Any]:
    return _cfg(hf_hub_id=f'timm/{hf_hub_id}', num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                crop_pct=0.9, custom_load=False)


def _pretrained_tag(hub_id: str) -> str:
    return hub_id.split('.', 1)[1]


default_cfgs = generate_default_cfgs({
    f'{family}_{name}.{_pretrained_tag(hub_id)}': _kan_cfg(hub_id, classes)
    for family in KAN_FAMILIES
    for arch, (_, alias, hub_id, classes) in _ARCHS.items()
    for name in (arch, alias)
})




@register_model
def kan_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_tiny_patch16_224', pretrained, **kwargs)


@register_model
def kan_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_small_patch16_224', pretrained, **kwargs)


@register_model
def kan_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_base_patch16_224', pretrained, **kwargs)


@register_model
def kan_vit_base_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_base_patch32_224', pretrained, **kwargs)


@register_model
def kan_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_large_patch16_224', pretrained, **kwargs)


@register_model
def kan_vit_large_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_large_patch32_224', pretrained, **kwargs)


@register_model
def kan_vit_huge_patch14_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_huge_patch14_224', pretrained, **kwargs)


@register_model
def chebykan_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_tiny_patch16_224', pretrained, **kwargs)


@register_model
def chebykan_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_small_patch16_224', pretrained, **kwargs)


@register_model
def chebykan_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_base_patch16_224', pretrained, **kwargs)


@register_model
def chebykan_vit_base_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_base_patch32_224', pretrained, **kwargs)


@register_model
def chebykan_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_large_patch16_224', pretrained, **kwargs)


@register_model
def chebykan_vit_large_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_large_patch32_224', pretrained, **kwargs)


@register_model
def chebykan_vit_huge_patch14_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_huge_patch14_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_tiny_patch16_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_small_patch16_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_base_patch16_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_base_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_base_patch32_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_large_patch16_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_large_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_large_patch32_224', pretrained, **kwargs)


@register_model
def rbfkan_vit_huge_patch14_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_huge_patch14_224', pretrained, **kwargs)


@register_model
def grkan_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_tiny_patch16_224', pretrained, **kwargs)


@register_model
def grkan_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_small_patch16_224', pretrained, **kwargs)


@register_model
def grkan_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_base_patch16_224', pretrained, **kwargs)


@register_model
def grkan_vit_base_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_base_patch32_224', pretrained, **kwargs)


@register_model
def grkan_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_large_patch16_224', pretrained, **kwargs)


@register_model
def grkan_vit_large_patch32_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_large_patch32_224', pretrained, **kwargs)


@register_model
def grkan_vit_huge_patch14_224(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_huge_patch14_224', pretrained, **kwargs)


@register_model
def kan_vit_t16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_t16', pretrained, **kwargs)


@register_model
def kan_vit_s16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_s16', pretrained, **kwargs)


@register_model
def kan_vit_b16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_b16', pretrained, **kwargs)


@register_model
def kan_vit_b32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_b32', pretrained, **kwargs)


@register_model
def kan_vit_l16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_l16', pretrained, **kwargs)


@register_model
def kan_vit_l32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_l32', pretrained, **kwargs)


@register_model
def kan_vit_h14(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('kan_vit_h14', pretrained, **kwargs)


@register_model
def chebykan_vit_t16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_t16', pretrained, **kwargs)


@register_model
def chebykan_vit_s16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_s16', pretrained, **kwargs)


@register_model
def chebykan_vit_b16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_b16', pretrained, **kwargs)


@register_model
def chebykan_vit_b32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_b32', pretrained, **kwargs)


@register_model
def chebykan_vit_l16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_l16', pretrained, **kwargs)


@register_model
def chebykan_vit_l32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_l32', pretrained, **kwargs)


@register_model
def chebykan_vit_h14(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('chebykan_vit_h14', pretrained, **kwargs)


@register_model
def rbfkan_vit_t16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_t16', pretrained, **kwargs)


@register_model
def rbfkan_vit_s16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_s16', pretrained, **kwargs)


@register_model
def rbfkan_vit_b16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_b16', pretrained, **kwargs)


@register_model
def rbfkan_vit_b32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_b32', pretrained, **kwargs)


@register_model
def rbfkan_vit_l16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_l16', pretrained, **kwargs)


@register_model
def rbfkan_vit_l32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_l32', pretrained, **kwargs)


@register_model
def rbfkan_vit_h14(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('rbfkan_vit_h14', pretrained, **kwargs)


@register_model
def grkan_vit_t16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_t16', pretrained, **kwargs)


@register_model
def grkan_vit_s16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_s16', pretrained, **kwargs)


@register_model
def grkan_vit_b16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_b16', pretrained, **kwargs)


@register_model
def grkan_vit_b32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_b32', pretrained, **kwargs)


@register_model
def grkan_vit_l16(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_l16', pretrained, **kwargs)


@register_model
def grkan_vit_l32(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_l32', pretrained, **kwargs)


@register_model
def grkan_vit_h14(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
    return _create_kan_vit('grkan_vit_h14', pretrained, **kwargs)
