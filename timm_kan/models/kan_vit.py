"""KAN Vision Transformers: timm's ViT with each block's MLP replaced by two KAN layers.

Papers:
    - ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929
    - KAN: Liu et al., "KAN: Kolmogorov-Arnold Networks", arXiv:2404.19756 (B-spline, ``kan_vit_*``)
    - Chebyshev KAN: SS. Sidharth, arXiv:2405.07200 (``chebykan_vit_*``)
    - FastKAN: Z. Li, arXiv:2405.06721, as Vision-KAN uses it (RBF bases, ``rbfkan_vit_*``)
    - KAT: Yang & Wang, "Kolmogorov-Arnold Transformer", arXiv:2409.10594 (group-rational, ``grkan_vit_*``; its
      Table 8 ablation is the control ``ratmlp_vit_*``: the MLP with a learnable activation, PAU, Molina et al.,
      arXiv:1907.06732, or PReLU, He et al., arXiv:1502.01852)

Every timm ViT feature (``num_classes``, ``global_pool``, ``drop_path_rate``, ``img_size``,
``features_only``, ``forward_intermediates``, grad checkpointing) is inherited from
``timm.models.vision_transformer.VisionTransformer``. KAN options are ``create_model`` kwargs: each
family's own (``KAN_FAMILIES``), and the adapter's ``kan_init`` ('mlp' | 'random'), ``freeze``
('none' | 'head' | 'backbone') and ``pretrained_strict``.

The entry points (each family x each size, under its full name and a short alias such as
``chebykan_vit_b16``) are generated from ``KAN_FAMILIES`` and ``ARCHS`` (``models/archs.py``): a new family
(``register_family``) or size is one table entry, and every entry point gets a docstring saying what it builds.
"""
import contextvars
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

from ..layers import KAN_FAMILIES, POS_EMBEDS, KANFamily, add_family, family_of_type, sincos2d_pos_embed
from ..layers.pos_embed import check_sincos2d
from ..layers.base import check_choice, check_range
from ._freeze import FREEZE_POLICIES, apply_freeze_policy
from .archs import ARCHS
from .names import family_of_model
from ._pretrained import (
    KAN_INITS, CheckpointError, LoadReport, kan_checkpoint_filter_fn, load_npz_into_kan_vit, peek_checkpoint)

__all__ = ['KANVisionTransformer', 'architecture_kwargs', 'check_family_kwarg', 'register_family']

# keyword arguments create_model may legitimately pass through to the builder
_BUILDER_KWARGS = {
    'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'features_only',
    'out_indices', 'feature_cls', 'output_fmt', 'flatten_sequential', 'pruned', 'kwargs_filter',
}
# how a checkpoint is adapted and what trains: load-time options, not part of the architecture (option ->
# (its default, what it means), for the docs' option table)
ADAPTER_KWARGS: Dict[str, Tuple[str, str]] = {
    'kan_init': ('`mlp` when adapting a ViT, `random` for KAN checkpoints',
                 '`mlp`: start as the pretrained MLP; `random`: fresh KAN layers'),
    'freeze': ('`backbone` when adapting a ViT, else `none`', ', '.join(f'`{p}`' for p in FREEZE_POLICIES)),
    'pretrained_strict': ('`True`', 'refuse checkpoint tensors that have no place in the model'),
    'pretrained_resample': ('`True` when `img_size`/`patch_size` is given, else `False`',
                            "resample a checkpoint's patch / position embeddings made for another size"),
}
_RESERVED_VIT_KWARGS = {'mlp_layer', 'block_fn'}
# errors of reading a checkpoint that are reported as CheckpointError naming the file
_LOAD_ERRORS = (OSError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError)


# the Google .npz loader of the build in progress (timm hands .npz files to the model's load_pretrained, which
# takes no options): the builder's bound filter and resample flag, never stored on the model
_NPZ_LOADER: contextvars.ContextVar[Optional[Callable]] = contextvars.ContextVar('timm_kan_npz_loader', default=None)


class KANVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` whose blocks use the family's feed-forward block (``KANMlp``, or the family's own
    block such as ``GRKANMlp``).

    Args:
        kan_args: ``kan_type`` and the family's resolved options (``KAN_FAMILIES[kan_type].options``); a
            ``kan_hidden`` list gives each block its own width (a pruned model).
        pos_embed: timm's ``'learn'`` / ``'none'``, or ``'sincos2d'`` (fixed 2-D sin-cos table, patch tokens only).
        **kwargs: ``VisionTransformer`` arguments.
    """

    def __new__(cls, *args, pos_embed: str = 'learn', **kwargs) -> 'KANVisionTransformer':
        # sincos2d has its own class, so that this one keeps timm's _pos_embed: TorchScript cannot compile an
        # override that calls super()
        return super().__new__(_SincosKANVisionTransformer if pos_embed == 'sincos2d' else cls)

    def __init__(self, kan_args: Dict[str, Any], pos_embed: str = 'learn', **kwargs) -> None:
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f'pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}')
        self.kan_args = dict(kan_args)
        self.vit_args = dict(kwargs)  # a plain ViT of this shape reads Google .npz files (learned pos_embed)
        options = dict(kan_args)
        block = partial(family_of_type(options.pop('kan_type')).block, **options)
        widths = _block_widths(options.get('kan_hidden'), kwargs.get('depth', 12))
        weight_init = kwargs.pop('weight_init', '')
        timm_args: List[Tuple[tuple, dict]] = []

        def first_width_block(*args, **kw):  # timm passes every block's mlp_layer the same arguments: keep them
            timm_args[:] = [(args, kw)]
            return block(*args, **(dict(kw, kan_hidden=widths[0]) if widths else kw))

        super().__init__(mlp_layer=first_width_block, pos_embed='none' if pos_embed == 'sincos2d' else pos_embed,
                         weight_init='skip', **kwargs)
        for blk, width in zip(self.blocks, widths or ()):  # the other widths of a pruned model
            if width != widths[0]:
                args, kw = timm_args[0]
                blk.mlp = block(*args, **dict(kw, kan_hidden=width))
        self.weight_init_mode = 'reset' if weight_init == 'skip' else weight_init
        if weight_init != 'skip':  # timm's init, after every block has its width
            self.init_weights(needs_reset=False)
        self.pos_embed_type = pos_embed
        self.pretrained_load: Optional[LoadReport] = None

    @property
    def checkpoint_layout(self) -> Optional[str]:
        """'vit' or 'kan' after a pretrained load, else None."""
        return self.pretrained_load.layout if self.pretrained_load is not None else None

    def architecture_args(self) -> Dict[str, Any]:
        """The resolved KAN options as JSON-ready ``model_args`` (exports rebuild the same layers from them)."""
        from .kanify import architecture_args  # (kanify builds on this module)
        return architecture_args(self)

    def hidden_widths(self) -> List[int]:
        """The width between the two KAN layers of each block."""
        from ..accounting import hidden_widths
        return hidden_widths(self)

    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """Load Google's original ``.npz`` ViT checkpoints (timm's ``custom_load`` path), with the options of the
        ``create_model`` call in progress (outside one: a KAN-ViT or ViT checkpoint as it is, sizes checked)."""
        load = _NPZ_LOADER.get() or partial(load_npz_into_kan_vit, filter_fn=kan_checkpoint_filter_fn)
        load(self, checkpoint_path, prefix=prefix)


def _block_widths(kan_hidden: Any, depth: int) -> Optional[List[int]]:
    """One width per block from a ``kan_hidden`` list (a pruned model); None for a single width (every block)."""
    if not isinstance(kan_hidden, (list, tuple)):
        return None
    if len(kan_hidden) != depth:
        raise ValueError(f'kan_hidden has {len(kan_hidden)} widths for {depth} blocks: give one per block or a '
                         'single one')
    return list(kan_hidden)


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
    return _with_mlp_init_options(family, out) if family is not None and kwargs.get('kan_init') == 'mlp' else out


def _with_mlp_init_options(family: KANFamily, options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` with the block options ``kan_init='mlp'`` needs to reproduce the pretrained MLP exactly (the
    family's ``mlp_init_options``); another value given for one of them is an error."""
    for key, needed in family.mlp_init_options.items():
        if options.get(key, needed) != needed:
            raise ValueError(
                f"kan_init='mlp' reproduces the pretrained MLP exactly only with {key}={needed!r}, "
                f"got {key}={options[key]!r}; pass kan_init='random' to use {key}={options[key]!r}")
    return dict(options, **family.mlp_init_options)


def check_family_kwarg(variant: str, family: KANFamily, key: str) -> None:
    """An option of other KAN families given to ``family``'s model is an error naming the families that take it."""
    others = [f'{f.prefix}_*' for f in KAN_FAMILIES.values() if key in f.options and key not in family.options]
    if others:
        raise ValueError(
            f'{variant}: option {key!r} belongs to the {" / ".join(others)} famil'
            f'{"ies" if len(others) > 1 else "y"}; {family.prefix}_* takes {", ".join(family.options)}')


def _check_kwargs(variant: str, family: KANFamily, kwargs: Dict[str, Any]) -> None:
    """Every kwarg is a ViT argument, a builder argument or one of the family's options; else an error naming it."""
    allowed_vit = set(inspect.signature(VisionTransformer.__init__).parameters) - {'self'} - _RESERVED_VIT_KWARGS
    own = set(family.options) | set(ADAPTER_KWARGS)
    for key in kwargs:
        if key in own or key in allowed_vit or key in _BUILDER_KWARGS:
            continue
        check_family_kwarg(variant, family, key)
        if key in _RESERVED_VIT_KWARGS:
            raise ValueError(f'{variant}: {key!r} is set by timm_kan and cannot be overridden')
        close = difflib.get_close_matches(key, sorted(own | allowed_vit), n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'{variant}: unknown option {key!r}{hint}')


def _adapter_options(pretrained: bool, kwargs: Dict[str, Any],
                     family: KANFamily) -> Tuple[_AdapterOptions, Dict[str, Any]]:
    """The load-time options, ``kan_init``'s default chosen from what will be loaded, and the other kwargs.

    A rebuild from this package's export (``hf-hub:``/``local-dir:``) or a file that holds KAN layers loads
    KAN weights (``'random'`` structure, and a file's block structure unless the user gives it); a ViT checkpoint
    is adapted (``'mlp'``). Load-time options an export recorded describe how its source was adapted, not this
    load: they are dropped.
    """
    recorded = kwargs.get('pretrained_model_args') or {}
    asked = {k: kwargs[k] for k in ADAPTER_KWARGS if k in kwargs and not (k in recorded and kwargs[k] == recorded[k])}
    rest = {k: v for k, v in kwargs.items() if k not in ADAPTER_KWARGS}
    kan_init, freeze = asked.get('kan_init'), asked.get('freeze')
    # timm resamples embeddings to an img_size/patch_size the user asks for; a size that only comes from the
    # architecture's defaults is not a request, and a checkpoint of another size is then an error
    resample = asked.get('pretrained_resample')
    if resample is None:
        resample = 'img_size' in rest or 'patch_size' in rest
    for key, value, allowed in (('kan_init', kan_init, KAN_INITS), ('freeze', freeze, FREEZE_POLICIES)):
        if value is not None:
            check_choice(key, value, allowed)
    if kan_init == 'mlp' and not pretrained:
        raise ValueError("kan_init='mlp' copies a pretrained MLP into the KAN layers; it needs pretrained=True")
    if kan_init is None:
        structure = _kan_file_structure(rest, family) if pretrained and not recorded else None
        if structure is not None:  # the file loads exactly as it was saved unless the user says otherwise
            rest = dict(structure, **rest)
        kan_init = 'mlp' if pretrained and not (recorded or structure is not None) else 'random'
    return _AdapterOptions(kan_init, freeze, asked.get('pretrained_strict', True), resample), rest


def _kan_file_structure(kwargs: Dict[str, Any], family: KANFamily) -> Optional[Dict[str, Any]]:
    """None unless the file overlay holds KAN layers; then the block options its keys show (``kan_base``,
    ``kan_mid_norm``) that ``family``'s block takes: another family's blocks then fail the load, which names
    the tensors that have no place in the model."""
    path = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    peek = peek_checkpoint(path) if path else None
    if peek is None or peek.layout != 'kan':
        return None
    return {k: v for k, v in peek.structure.items() if k in family.block_options}


def _kan_args(family: KANFamily, kan_init: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the family's options resolved, the ViT's kwargs): the family's defaults overridden by the user's, and the
    structure ``kan_init='mlp'`` needs to reproduce the MLP exactly."""
    options = {k: v for k, v in kwargs.items() if k in family.options}
    if 'grid_range' in options:
        options['grid_range'] = check_range('grid_range', options['grid_range'])
    if kan_init == 'mlp':
        options = _with_mlp_init_options(family, options)
    vit_args = {k: v for k, v in kwargs.items() if k not in family.options}
    if 'act_layer' in vit_args:
        vit_args['act_layer'] = get_act_layer(vit_args['act_layer'])
    return dict(family.defaults(), kan_type=family.kan_type, **options), vit_args


def _with_file_head_classes(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A file overlay without ``num_classes`` takes its head's class count, so that timm keeps a head that fits."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay and overlay.get('file') and 'num_classes' not in overlay:
        head = peek_checkpoint(overlay['file']).head_classes
        if head:
            return dict(kwargs, pretrained_cfg_overlay=dict(overlay, num_classes=head))
    return kwargs


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

    vit_args = dict(vit_args)
    feature_cfg = dict(out_indices=vit_args.pop('out_indices', 3), feature_cls='getter')
    npz_loader = _NPZ_LOADER.set(partial(load_npz_into_kan_vit, filter_fn=filter_fn, resample=adapter.resample))
    try:
        model = build_model_with_cfg(
            construct, variant, pretrained, pretrained_filter_fn=filter_fn, pretrained_strict=adapter.strict,
            feature_cfg=feature_cfg, kan_args=kan_args, **vit_args)
    except CheckpointError:
        raise
    except _LOAD_ERRORS as e:
        if not (pretrained and constructed):
            raise
        overlay = vit_args.get('pretrained_cfg_overlay') or {}
        source = overlay.get('file') or overlay.get('hf_hub_id') or f'the pretrained weights of {variant}'
        reason = f'{type(e).__name__}: {e}' if str(e) else f'{type(e).__name__} (missing or unreadable file)'
        raise CheckpointError(f'cannot load {source} into {variant}: {reason}') from e
    finally:
        _NPZ_LOADER.reset(npz_loader)
    return model, report


def _create_kan_vit(variant: str, family: KANFamily, arch: str, pretrained: bool = False,
                    **kwargs) -> KANVisionTransformer:
    """Build a KAN-ViT variant: check the options, resolve the family's, build and load, then freeze."""
    _check_kwargs(variant, family, kwargs)
    adapter, kwargs = _adapter_options(pretrained, kwargs, family)
    kan_args, vit_args = _kan_args(family, adapter.kan_init, kwargs)
    if pretrained:
        vit_args = _with_file_head_classes(vit_args)
    model, report = _build(variant, pretrained, adapter, kan_args, dict(ARCHS[arch][0], **vit_args))
    vit = getattr(model, 'model', model)  # the ViT inside a features_only wrapper
    vit.pretrained_load = report if report.layout is not None else None
    freeze = adapter.freeze or ('backbone' if report.layout == 'vit' else 'none')
    apply_freeze_policy(vit, freeze)
    return model


def _kan_cfg(hf_hub_id: str, num_classes: int) -> Dict[str, Any]:
    return _cfg(hf_hub_id=f'timm/{hf_hub_id}', num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                crop_pct=0.9, custom_load=False)


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


# timm's register_model reads a model's pretrained tags from its module's default_cfgs
default_cfgs: Dict[str, Any] = {}


def _register_models(family: KANFamily) -> None:
    """Register ``family``'s models with timm: one entry point per ViT size under its full name and its short alias
    (``{prefix}_base_patch16_224``, ``{prefix}_b16``), each with the in21k ViT weights as its pretrained tag."""
    names = {arch: (f'{family.prefix}_{arch}', f'{family.prefix}_{alias}') for arch, (_, alias, _, _) in ARCHS.items()}
    default_cfgs.update(generate_default_cfgs({
        f'{name}.{hub_id.split(".", 1)[1]}': _kan_cfg(hub_id, classes)
        for arch, (_, _, hub_id, classes) in ARCHS.items() for name in names[arch]}))
    for arch, variants in names.items():
        for variant in variants:  # also a name of this module, as timm's entry points are of theirs
            globals()[variant] = register_model(_entry_point(variant, family, arch))


def register_family(family: KANFamily) -> KANFamily:
    """Add a KAN family (its layer or block and its table entry) to ``KAN_FAMILIES`` and register its models with
    timm. Everything else (create_model options, compare, bench, explain, pruning, the Hub, the README tables)
    reads the table."""
    from .kan_any import register_any_model  # (kan_any builds on this module)
    add_family(family)
    _register_models(family)
    register_any_model(family)
    return family


for _family in KAN_FAMILIES.values():  # the built-in families
    _register_models(_family)
