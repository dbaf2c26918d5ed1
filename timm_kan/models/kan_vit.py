"""KAN Vision Transformers: timm's ViT with each block's MLP replaced by two KAN layers.

Papers:
    - ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929
    - KAN: Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv:2404.19756 (B-spline, ``kan_vit_*``)
    - Chebyshev KAN: SS. Sidharth, arXiv:2405.07200 (``chebykan_vit_*``)
    - FastKAN: Z. Li, arXiv:2405.06721, as Vision-KAN uses it (RBF bases, ``rbfkan_vit_*``)
    - KAT: Yang & Wang, "Kolmogorov-Arnold Transformer", arXiv:2409.10594 (group-rational, ``grkan_vit_*``)

Every timm ViT feature (``num_classes``, ``global_pool``, ``drop_path_rate``, ``img_size``,
``features_only``, ``forward_intermediates``, grad checkpointing) is inherited from
``timm.models.vision_transformer.VisionTransformer``. KAN options are ``create_model`` kwargs: each
family's own (``KAN_FAMILIES``), and the adapter's ``kan_init`` ('mlp' | 'random'), ``freeze``
('none' | 'head' | 'backbone') and ``pretrained_strict``.

The 56 entry points (4 families x 7 sizes, each under its full name and a short alias such as
``chebykan_vit_b16``) are generated from ``KAN_FAMILIES`` and ``_ARCHS``: a new family or size is one
table entry, and every entry point gets a docstring saying what it builds.
"""
import difflib
import inspect
import pickle
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _cfg

from ..layers import KAN_FAMILIES, POS_EMBEDS, KANFamily, KANMlp, family_of_type, sincos2d_pos_embed
from ..layers.pos_embed import check_sincos2d
from ..layers.base import check_range
from ._freeze import FREEZE_POLICIES, apply_freeze_policy
from .names import family_of_model
from ._pretrained import (
    KAN_INITS, CheckpointError, LoadReport, kan_checkpoint_filter_fn, load_npz_into_kan_vit, peek_checkpoint)

__all__ = ['KANVisionTransformer', 'architecture_kwargs', 'ARCHS']

# architecture name -> (ViT arguments, short alias, in21k weights in timm's hub org, classes of that head)
ARCHS = {
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
# how a checkpoint is adapted and what trains: load-time options, not part of the architecture
ADAPTER_KWARGS = ('kan_init', 'freeze', 'pretrained_strict', 'pretrained_resample')
_RESERVED_VIT_KWARGS = {'mlp_layer', 'block_fn'}
_ALL_KAN_OPTIONS = sorted({o for f in KAN_FAMILIES.values() for o in f.options})
# errors of reading a checkpoint that are reported as CheckpointError naming the file
_LOAD_ERRORS = (OSError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError)


class KANVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` whose blocks use ``KANMlp`` (or ``GRKANMlp`` for group-rational KAN).

    Args:
        kan_args: ``kan_type`` and the family's resolved options (``KAN_FAMILIES[kan_type].options``).
        npz_filter: The bound checkpoint filter used by ``load_pretrained`` for Google ``.npz`` files
            (timm hands those to the model itself).
        **kwargs: ``VisionTransformer`` arguments.
    """

    def __new__(cls, *args, pos_embed: str = 'learn', **kwargs) -> 'KANVisionTransformer':
        # sincos2d has its own class, so that this one keeps timm's _pos_embed: TorchScript cannot compile an
        # override that calls super()
        return super().__new__(_SincosKANVisionTransformer if pos_embed == 'sincos2d' else cls)

    def __init__(self, kan_args: Dict[str, Any], npz_filter: Optional[Callable] = None, pos_embed: str = 'learn',
                 **kwargs) -> None:
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f'pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}')
        self.kan_args = dict(kan_args)
        self.vit_args = dict(kwargs)  # a plain ViT of this shape reads Google .npz files (learned pos_embed)
        options = dict(kan_args)
        block = family_of_type(options.pop('kan_type')).block
        super().__init__(mlp_layer=_per_block_widths(partial(block, **options), kwargs.get('depth', 12)),
                         pos_embed='none' if pos_embed == 'sincos2d' else pos_embed, **kwargs)
        self.pos_embed_type = pos_embed
        self.npz_filter = npz_filter or kan_checkpoint_filter_fn
        self.pretrained_load: Optional[LoadReport] = None

    @property
    def checkpoint_layout(self) -> Optional[str]:
        """'vit' or 'kan' after a pretrained load, else None."""
        return self.pretrained_load.layout if self.pretrained_load is not None else None

    def architecture_args(self) -> Dict[str, Any]:
        """The resolved KAN options as JSON-ready ``model_args`` (exports rebuild the same layers from them)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.kan_args.items()
                if k != 'kan_type' and v is not None}

    def hidden_widths(self) -> List[int]:
        """The width between the two KAN layers of each block."""
        from ..accounting import hidden_widths
        return hidden_widths(self)

    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """Load Google's original ``.npz`` ViT checkpoints (timm's ``custom_load`` path)."""
        load_npz_into_kan_vit(self, checkpoint_path, self.npz_filter, prefix)


class _SincosKANVisionTransformer(KANVisionTransformer):
    """A KAN-ViT with ``pos_embed='sincos2d'``: the fixed 2-D sin-cos table added to the patch tokens (the class
    token carries none), kept as a buffer outside the state dict."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_sincos2d(self.embed_dim, self.patch_embed.img_size, self.patch_embed.patch_size)
        # fixed, so not trained and not in the state dict: a checkpoint never has to carry it
        self.register_buffer('sincos_pos_embed', self._sincos_table(), persistent=False)

    def _sincos_table(self) -> torch.Tensor:
        return sincos2d_pos_embed(*self.patch_embed.grid_size, self.embed_dim,
                                  device=self.patch_embed.proj.weight.device)[None]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            batch, height, width, dim = x.shape
            table = sincos2d_pos_embed(height, width, dim, device=x.device)[None]
            x = x.view(batch, -1, dim)
        else:
            table = self.sincos_pos_embed
        tokens = [x + table.to(x.dtype)]
        for prefix in (self.reg_token, self.cls_token):  # timm's order: class token, registers, patches
            if prefix is not None:
                tokens.insert(0, prefix.expand(x.shape[0], -1, -1))
        return self.pos_drop(torch.cat(tokens, dim=1))

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        check_sincos2d(self.embed_dim, self.patch_embed.img_size, self.patch_embed.patch_size)
        self.sincos_pos_embed = self._sincos_table()


def _per_block_widths(block: Callable, depth: int) -> Callable:
    """timm's ViT builds its blocks in order, each calling ``mlp_layer`` once: a ``kan_hidden`` list gives block
    i the i-th width (a pruned model), a single value every block the same."""
    widths = block.keywords.get('kan_hidden')
    if not isinstance(widths, (list, tuple)):
        return block
    if len(widths) != depth:
        raise ValueError(f'kan_hidden has {len(widths)} widths for {depth} blocks: give one per block or a single one')
    remaining = iter(widths)

    def make(*args, **kwargs):
        return block(*args, **dict(kwargs, kan_hidden=next(remaining)))

    return make


@dataclass
class _AdapterOptions:
    kan_init: str
    freeze: Optional[str]
    strict: bool
    resample: bool = False


def architecture_kwargs(model_name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``create_model`` kwargs without the load-time options, keeping the architecture they imply.

    Rebuilding a trained model (e.g. from timm ``train.py``'s recorded ``model_kwargs``) needs the same
    layers but no pretrained load: for the KAN-layer families ``kan_init='mlp'`` implies
    ``kan_base='mlp'`` and ``kan_mid_norm=False``. Names that are not KAN-ViTs only lose the load options.
    """
    out = {k: v for k, v in kwargs.items() if k not in ADAPTER_KWARGS}
    family = family_of_model(model_name)
    if family is not None and kwargs.get('kan_init') == 'mlp' and 'kan_base' in family.options:
        out.setdefault('kan_base', 'mlp')
        out.setdefault('kan_mid_norm', False)
    return out


def _check_kwargs(variant: str, family: KANFamily, kwargs: Dict[str, Any]) -> None:
    """Every kwarg is a ViT argument, a builder argument or one of the family's options; else an error naming it."""
    allowed_vit = set(inspect.signature(VisionTransformer.__init__).parameters) - {'self'} - _RESERVED_VIT_KWARGS
    own = set(family.options) | set(ADAPTER_KWARGS)
    for key in kwargs:
        if key in own or key in allowed_vit or key in _BUILDER_KWARGS:
            continue
        if key in _ALL_KAN_OPTIONS:
            others = [f'{f.prefix}_*' for f in KAN_FAMILIES.values() if key in f.options]
            raise ValueError(
                f'{variant}: option {key!r} belongs to the {" / ".join(others)} famil'
                f'{"ies" if len(others) > 1 else "y"}; {family.prefix}_* takes {", ".join(family.options)}')
        if key in _RESERVED_VIT_KWARGS:
            raise ValueError(f'{variant}: {key!r} is set by timm_kan and cannot be overridden')
        close = difflib.get_close_matches(key, sorted(own | allowed_vit), n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'{variant}: unknown option {key!r}{hint}')


def _file_overlay(kwargs: Dict[str, Any]) -> Optional[str]:
    return (kwargs.get('pretrained_cfg_overlay') or {}).get('file')


def _adapter_options(pretrained: bool, kwargs: Dict[str, Any]) -> _AdapterOptions:
    """Pop the load-time options and choose ``kan_init``'s default from what will be loaded.

    A rebuild from this package's export (``hf-hub:``/``local-dir:``) or a file that holds KAN layers loads
    KAN weights (``'random'`` structure); a ViT checkpoint is adapted (``'mlp'``). Load-time options an
    export recorded describe how its source was adapted, not this load: they are dropped.
    """
    recorded = kwargs.get('pretrained_model_args') or {}
    for key in ADAPTER_KWARGS:
        if key in recorded and kwargs.get(key) == recorded[key]:
            kwargs.pop(key)
    kan_init, freeze = kwargs.pop('kan_init', None), kwargs.pop('freeze', None)
    strict = kwargs.pop('pretrained_strict', True)
    # timm resamples embeddings to an img_size/patch_size the user asks for; a size that only comes from the
    # architecture's defaults is not a request, and a checkpoint of another size is then an error
    resample = kwargs.pop('pretrained_resample', None)
    if resample is None:
        resample = 'img_size' in kwargs or 'patch_size' in kwargs
    if kan_init is not None and kan_init not in KAN_INITS:
        raise ValueError(f'kan_init must be one of {KAN_INITS}, got {kan_init!r}')
    if freeze is not None and freeze not in FREEZE_POLICIES:
        raise ValueError(f'freeze must be one of {FREEZE_POLICIES}, got {freeze!r}')
    if kan_init == 'mlp' and not pretrained:
        raise ValueError("kan_init='mlp' copies a pretrained MLP into the KAN layers; it needs pretrained=True")
    if kan_init is None:
        structure = _kan_file_structure(kwargs) if pretrained and not recorded else None
        if structure is not None:  # the file loads exactly as it was saved unless the user says otherwise
            for key, value in structure.items():
                kwargs.setdefault(key, value)
        from_kan = bool(recorded) or structure is not None
        kan_init = 'mlp' if pretrained and not from_kan else 'random'
    return _AdapterOptions(kan_init, freeze, strict, resample)


def _kan_file_structure(kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """None unless the file overlay holds KAN layers; then the block structure its keys show (``kan_base``,
    ``kan_mid_norm``; empty for group-rational blocks, which have no such options)."""
    path = _file_overlay(kwargs)
    peek = peek_checkpoint(path) if path else None
    if peek is None or peek.layout != 'kan':
        return None
    return dict(kan_base=peek.kan_base, kan_mid_norm=peek.kan_mid_norm) if peek.kan_base is not None else {}


def _kan_args(family: KANFamily, kan_init: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the family's options from ``kwargs`` and resolve them: the defaults of ``family.module``, and the
    structure ``kan_init='mlp'`` needs to reproduce the MLP exactly (identity/activation bases, no mid norm)."""
    options = {k: kwargs.pop(k) for k in family.options if k in kwargs}
    if 'grid_range' in options:
        options['grid_range'] = check_range('grid_range', options['grid_range'])
    if 'kan_base' in family.options:  # a KANMlp block: the base branch is what kan_init='mlp' copies into
        if kan_init == 'mlp':
            for key, needed in (('kan_base', 'mlp'), ('kan_mid_norm', False)):
                if options.get(key, needed) != needed:
                    raise ValueError(
                        f"kan_init='mlp' reproduces the pretrained MLP exactly only with {key}={needed!r}, "
                        f"got {key}={options[key]!r}; pass kan_init='random' to use {key}={options[key]!r}")
                options[key] = needed
        options.setdefault('kan_base', family.default_base)
        options.setdefault('kan_mid_norm', inspect.signature(KANMlp).parameters['kan_mid_norm'].default)
    return dict(family.defaults(), kan_type=family.kan_type, **options)


def _head_classes_from_file(kwargs: Dict[str, Any]) -> None:
    """A file overlay without ``num_classes`` takes its head's class count, so that timm keeps a head that fits."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay and overlay.get('file') and 'num_classes' not in overlay:
        head = peek_checkpoint(overlay['file']).head_classes
        if head:
            kwargs['pretrained_cfg_overlay'] = dict(overlay, num_classes=head)


def _build(variant: str, pretrained: bool, adapter: _AdapterOptions, kan_args: Dict[str, Any],
           vit_args: Dict[str, Any]) -> Tuple[Any, LoadReport]:
    """``build_model_with_cfg`` with the bound filter; errors while loading (not while constructing) become a
    ``CheckpointError`` naming the checkpoint."""
    report = LoadReport()
    filter_fn = partial(kan_checkpoint_filter_fn, kan_init=adapter.kan_init, strict=adapter.strict, report=report,
                        resample=adapter.resample)
    constructed = []

    def construct(**kw) -> KANVisionTransformer:
        constructed.append(KANVisionTransformer(**kw))
        return constructed[-1]

    try:
        model = build_model_with_cfg(
            construct, variant, pretrained, pretrained_filter_fn=filter_fn, pretrained_strict=adapter.strict,
            feature_cfg=dict(out_indices=vit_args.pop('out_indices', 3), feature_cls='getter'),
            kan_args=kan_args, npz_filter=filter_fn, **vit_args)
    except CheckpointError:
        raise
    except _LOAD_ERRORS as e:
        if not (pretrained and constructed):
            raise
        overlay = vit_args.get('pretrained_cfg_overlay') or {}
        source = overlay.get('file') or overlay.get('hf_hub_id') or f'the pretrained weights of {variant}'
        reason = f'{type(e).__name__}: {e}' if str(e) else f'{type(e).__name__} (missing or unreadable file)'
        raise CheckpointError(f'cannot load {source} into {variant}: {reason}') from e
    return model, report


def _create_kan_vit(variant: str, family: KANFamily, arch: str, pretrained: bool = False,
                    **kwargs) -> KANVisionTransformer:
    """Build a KAN-ViT variant: check the options, resolve the family's, build and load, then freeze."""
    _check_kwargs(variant, family, kwargs)
    adapter = _adapter_options(pretrained, kwargs)
    kan_args = _kan_args(family, adapter.kan_init, kwargs)
    if 'act_layer' in kwargs:
        kwargs['act_layer'] = get_act_layer(kwargs['act_layer'])
    if pretrained:
        _head_classes_from_file(kwargs)
    model, report = _build(variant, pretrained, adapter, kan_args, dict(ARCHS[arch][0], **kwargs))
    vit = getattr(model, 'model', model)  # the ViT inside a features_only wrapper
    vit.pretrained_load = report if report.layout is not None else None
    freeze = adapter.freeze or ('backbone' if report.layout == 'vit' else 'none')
    apply_freeze_policy(vit, freeze)
    return model


def _kan_cfg(hf_hub_id: str, num_classes: int) -> Dict[str, Any]:
    return _cfg(hf_hub_id=f'timm/{hf_hub_id}', num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                crop_pct=0.9, custom_load=False)


default_cfgs = generate_default_cfgs({
    f'{family.prefix}_{name}.{hub_id.split(".", 1)[1]}': _kan_cfg(hub_id, classes)
    for family in KAN_FAMILIES.values()
    for arch, (_, alias, hub_id, classes) in ARCHS.items()
    for name in (arch, alias)
})


def _entry_point(variant: str, family: KANFamily, arch: str) -> Callable[..., KANVisionTransformer]:
    vit, _, hub_id, _ = ARCHS[arch]

    def create(pretrained: bool = False, **kwargs) -> KANVisionTransformer:
        return _create_kan_vit(variant, family, arch, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = variant
    create.__module__ = __name__
    create.__doc__ = (
        f'ViT {arch} with {family.describe()} feed-forward layers: patch {vit["patch_size"]}, width '
        f'{vit["embed_dim"]}, depth {vit["depth"]}, {vit["num_heads"]} heads. ``pretrained=True`` adapts '
        f'timm/{hub_id}.')
    return create


for _family in KAN_FAMILIES.values():
    for _arch, (_, _alias, _, _) in ARCHS.items():
        for _variant in (f'{_family.prefix}_{_arch}', f'{_family.prefix}_{_alias}'):
            globals()[_variant] = register_model(_entry_point(_variant, _family, _arch))
