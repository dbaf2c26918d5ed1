"""Pretrained adapter: ViT checkpoints into KAN-ViT, KAN-ViT checkpoints back, and freeze policies.

Accepted sources (all through timm's pretrained machinery, so ``hf-hub:``, ``local-dir:``, a file overlay
and the registry tags share this code):
    - timm ViT state dicts (safetensors, .pth/.bin with ``weights_only=True``), incl. the older in21k
      releases that carry a ``pre_logits.fc`` representation layer;
    - Google's ``.npz`` ViT checkpoints (augreg and the older ``ViT-B_16.npz`` in21k files), read by
      timm's own npz loader into a plain ViT first;
    - this package's KAN-ViT checkpoints (and KAT's), loaded exactly.

``kan_init='mlp'`` maps ``mlp.fc1``/``mlp.fc2`` onto the base branches of ``kan1``/``kan2`` (identity and
the MLP activation) and zeroes the KAN coefficients, so the KAN-ViT computes the pretrained ViT exactly
and its KAN coefficients learn corrections. ``kan_init='random'`` keeps the fresh KAN initialisation.

The filter is a function of (state_dict, model) whose options are bound with ``functools.partial`` by the
builder, as timm binds its filters; what it loaded is returned through the ``LoadReport`` the builder passes.
"""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, FrozenSet, Iterable, List, Optional, Tuple

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from ..layers import block_classes

__all__ = [
    'CheckpointError', 'KAN_INITS', 'LoadReport',
    'kan_checkpoint_filter_fn', 'load_npz_into_kan_vit', 'kan_ffn_prefixes', 'peek_checkpoint', 'CheckpointPeek',
    'adapt_mlp_state',
]

_logger = logging.getLogger(__name__)

KAN_INITS = ('mlp', 'random')
HEAD_PREFIXES = ('head.', 'pre_logits.')
# an MLP's fc1/fc2 under any module path; mapped only where that path is a KAN block of the model
_MLP_KEY = re.compile(r'^(.+)\.fc([12])\.(weight|bias)$')
_FIRST_BLOCK = 'blocks.0.mlp.'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the requested model, with what was expected and found."""


@dataclass
class LoadReport:
    """What a pretrained load took from its checkpoint: its layout ('vit' or 'kan') and the model keys it filled."""
    layout: Optional[str] = None
    loaded_keys: FrozenSet[str] = field(default_factory=frozenset)


def _source_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('architecture') or 'checkpoint')


def _model_name(model: nn.Module) -> str:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)


def kan_ffn_prefixes(model: nn.Module) -> List[str]:
    """State-dict prefixes ('blocks.3.mlp.') of the KAN feed-forward blocks."""
    blocks = block_classes()
    return [f'{name}.' for name, m in model.named_modules() if isinstance(m, blocks)]


def _expansion_keys(model: nn.Module) -> FrozenSet[str]:
    """The state-dict keys ``kan_init='mlp'`` zeroes: each KAN layer's ``expansion_names``."""
    return frozenset(f'{name}.{p}' for name, m in model.named_modules() for p in getattr(m, 'expansion_names', ()))


def describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _kan_structure(keys: Collection[str]) -> Optional[Dict[str, Any]]:
    """The block options the first block's keys show (each block class reads its own layout); None when the keys
    hold no KAN block."""
    for cls in block_classes():
        structure = cls.structure_from_keys(keys, _FIRST_BLOCK)
        if structure is not None:
            return structure
    return None


def _unwrap_checkpoint(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The tensors of a training checkpoint (``model`` / ``state_dict`` nesting removed)."""
    for key in ('model', 'state_dict'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return state_dict


@dataclass
class CheckpointPeek:
    """What a checkpoint file's key names and shapes say, read without loading its tensors.

    ``layout`` is 'vit' or 'kan' (None: unreadable this way, the load itself then reports what is wrong);
    for a KAN checkpoint ``structure`` holds the block options its keys show (``kan_base``, ``kan_mid_norm``).
    """
    layout: Optional[str] = None
    head_classes: Optional[int] = None
    structure: Dict[str, Any] = field(default_factory=dict)


def _read_key_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        with safe_open(str(path), 'pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sd = _unwrap_checkpoint(torch.load(path, map_location='meta', weights_only=True))
    return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def peek_checkpoint(path: str) -> CheckpointPeek:
    """Layout, head size and KAN block structure of a checkpoint file (see ``CheckpointPeek``)."""
    path = Path(path)
    if path.suffix == '.npz':
        return CheckpointPeek('vit')  # Google's ViT releases; read in full by load_npz_into_kan_vit
    try:
        shapes = _read_key_shapes(path)
    except Exception:  # any unreadable file: the real load raises the CheckpointError that names it
        return CheckpointPeek()
    head = shapes['head.weight'][0] if 'head.weight' in shapes else None
    structure = _kan_structure(shapes)
    return CheckpointPeek('vit', head) if structure is None else CheckpointPeek('kan', head, structure)


def kan_checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        kan_init: str = 'random',
        strict: bool = True,
        report: Optional[LoadReport] = None,
        source: Optional[str] = None,
        resample: bool = False,
) -> Dict[str, torch.Tensor]:
    """Turn a ViT or KAN-ViT state dict into a complete, validated state dict for ``model``.

    Args:
        state_dict: The checkpoint's tensors.
        model: The KAN-ViT being loaded (read only).
        kan_init: 'mlp' maps a ViT's MLP into the KAN layers; 'random' leaves fresh KAN layers.
        strict: Refuse checkpoint tensors that have no place in the model (else skip and list them).
        report: Filled with the checkpoint's layout and the keys taken from it.
        source: Name of the checkpoint in errors (default: from the model's pretrained_cfg).
        resample: Resample patch and position embeddings made for another patch or image size (else an error).

    Raises:
        CheckpointError: wrong family, size or options, missing tensors, or (with ``strict``)
            tensors the model has no place for.
    """
    source = source or _source_name(model)
    state_dict = _unwrap_checkpoint(state_dict)
    if not any(k.startswith('blocks.') for k in state_dict):
        raise CheckpointError(
            f'{source} is not a ViT or KAN-ViT checkpoint: expected keys like blocks.0.attn.qkv.weight and '
            f'blocks.0.mlp.fc1.weight, found {describe_keys(state_dict.keys(), 5) or "no tensors"}')
    for cls in block_classes():  # other code bases' checkpoints (KAT's) in the blocks' own layouts
        state_dict = cls.adapt_checkpoint(state_dict)
    if getattr(model, 'pos_embed_type', 'learn') == 'sincos2d' and 'pos_embed' in state_dict:
        _logger.warning(f'{source}: its learned pos_embed {tuple(state_dict["pos_embed"].shape)} is not loaded: '
                        f'{_model_name(model)} uses fixed sincos2d position embeddings')
        state_dict = {k: v for k, v in state_dict.items() if k != 'pos_embed'}
    layout = 'vit' if _kan_structure(state_dict) is None else 'kan'
    if layout == 'kan' and kan_init == 'mlp':
        raise CheckpointError(
            f"{source} already holds KAN layers; kan_init='mlp' adapts a ViT's MLP. Load it with "
            "kan_init='random' (the default for KAN-ViT checkpoints) and the options it was trained with")
    if not resample:
        check_embedding_sizes({k: tuple(v.shape) for k, v in state_dict.items()}, model, source)
    sd = _timm_vit_filter(state_dict, model)
    _drop_replaced_head(sd, model, source)
    sd, loaded = adapt_mlp_state(sd, model, kan_init, layout, strict, source)
    if report is not None:
        report.layout, report.loaded_keys = layout, loaded
    return sd


def adapt_mlp_state(
        sd: Dict[str, torch.Tensor], model: nn.Module, kan_init: str, layout: str = 'vit', strict: bool = True,
        source: str = 'checkpoint',
) -> Tuple[Dict[str, torch.Tensor], FrozenSet[str]]:
    """(a complete state dict for ``model``, the keys taken from ``sd``): an MLP model's tensors (layout 'vit', any
    timm model whose MLPs became KAN blocks) mapped into the KAN blocks by ``kan_init``, or a KAN model's as they are
    (layout 'kan'); the KAN-ViT adapter and ``kanify`` share it."""
    sd = _map_mlp_weights(sd, model, kan_init if layout == 'vit' else None, source)
    expected = model.state_dict()
    _drop_or_refuse_unexpected(sd, expected, strict, source, model)
    _check_shapes(sd, expected, source, model)
    loaded = frozenset(sd)
    _complete(sd, expected, model, kan_init, layout, strict, source)
    return sd, loaded


def check_embedding_sizes(shapes: Dict[str, Tuple[int, ...]], model: nn.Module, source: str) -> None:
    """A patch or position embedding made for another patch or image size is an error (timm would resample it
    without a word) unless resampling was asked for: an explicit ``img_size``/``patch_size``, or
    ``pretrained_resample=True`` (``convert --resample``)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, what in (('patch_embed.proj.weight', 'patch size'), ('pos_embed', 'image or patch size')):
        found, want = shapes.get(key), expected.get(key)
        if found is not None and want is not None and len(found) == len(want) and found != want:
            raise CheckpointError(
                f'{source}: {key} is {found} but {_model_name(model)} has {want}: the checkpoint was made for '
                f'another {what}. Pass the checkpoint\'s img_size/patch_size, or pass img_size/patch_size or '
                'pretrained_resample=True (timm-kan convert --resample) to resample it to the model\'s')


def _timm_vit_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's ViT filter (position-embedding and patch-embedding layouts), keeping the representation layer
    that it drops silently, so that its removal is reported with the replaced head."""
    pre_logits = {k: v for k, v in state_dict.items() if k.startswith('pre_logits.')}
    sd = checkpoint_filter_fn(state_dict, model)
    sd.update(pre_logits)
    return sd


def _drop_replaced_head(sd: Dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """A classifier of another class count is replaced (timm does the same); one that fits is kept."""
    head_rows = sd['head.weight'].shape[0] if 'head.weight' in sd else None
    if head_rows is None or head_rows == model.num_classes:
        return
    dropped = [k for k in sd if k.startswith(HEAD_PREFIXES)]
    _logger.warning(
        f'{source}: classifier of {head_rows} classes replaced by a new head of {model.num_classes}; '
        f'not loaded: {describe_keys(dropped)}')
    for k in dropped:
        del sd[k]


def _map_mlp_weights(
        sd: Dict[str, torch.Tensor], model: nn.Module, kan_init: Optional[str], source: str,
) -> Dict[str, torch.Tensor]:
    """An MLP's fc1/fc2 into the KAN block at its path: the base branches of kan1/kan2 with ``kan_init='mlp'``
    (group-rational blocks keep the names), unused with ``'random'``. ``kan_init`` is None for a KAN checkpoint:
    keys stay."""
    if kan_init is None:
        return sd
    expected = set(model.state_dict())
    blocks = set(kan_ffn_prefixes(model))
    out, unused = {}, []
    for k, v in sd.items():
        m = _MLP_KEY.match(k)
        if m is not None and m.group(1) + '.' in blocks and (k not in expected or kan_init != 'mlp'):
            if kan_init != 'mlp':
                unused.append(k)
                continue
            prefix, layer, kind = m.groups()
            k = f'{prefix}.kan{layer}.' + ('base.weight' if kind == 'weight' else 'bias')
        out[k] = v
    if unused:
        _logger.warning(
            f"{source}: kan_init='random' leaves the pretrained MLP weights unused: {describe_keys(unused)}")
    return out


def _drop_or_refuse_unexpected(
        sd: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], strict: bool, source: str, model: nn.Module,
) -> None:
    unexpected = sorted(set(sd) - set(expected))
    if not unexpected:
        return
    if strict:
        raise CheckpointError(
            f'{source} does not fit {_model_name(model)}: {len(unexpected)} tensors have no place in the model: '
            f'{describe_keys(unexpected)}. Pass pretrained_strict=False to load the rest and skip these.')
    _logger.warning(f'{source}: skipped tensors with no place in the model: {describe_keys(unexpected)}')
    for k in unexpected:
        del sd[k]


def _check_shapes(
        sd: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], source: str, model: nn.Module) -> None:
    # in the model's order, so that the first mismatch named is the earliest layer
    mismatched = [
        f'{k}: expected {tuple(v.shape)}, found {tuple(sd[k].shape)}'
        for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if mismatched:
        raise CheckpointError(
            f'{source} does not fit {_model_name(model)} (another model size or other KAN options?): '
            + '; '.join(mismatched[:5]) + (f' (+{len(mismatched) - 5} more)' if len(mismatched) > 5 else ''))


def _complete(
        sd: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], model: nn.Module, kan_init: str,
        layout: str, strict: bool, source: str,
) -> None:
    """Fill what the checkpoint does not carry: fresh KAN layers and head are expected, anything else is not."""
    fresh_prefixes = tuple(kan_ffn_prefixes(model)) if layout == 'vit' else ()
    zeroed = _expansion_keys(model) if kan_init == 'mlp' else frozenset()
    missing = []
    for k, v in expected.items():
        if k in sd:
            continue
        if k.startswith(fresh_prefixes) or k.startswith(HEAD_PREFIXES):
            sd[k] = torch.zeros_like(v) if k in zeroed else v.detach().clone()
        else:
            missing.append(k)
    if not missing:
        return
    if strict:
        raise CheckpointError(
            f'{source} is incomplete for {_model_name(model)}: {len(missing)} tensors missing: '
            f'{describe_keys(missing)} (truncated file or another model family?)')
    _logger.warning(
        f'{source}: tensors missing from the checkpoint keep their initialisation: {describe_keys(missing)}')
    for k in missing:
        sd[k] = expected[k].detach().clone()


def _read_npz(path: str, prefix: str) -> Tuple[int, Dict[str, torch.Tensor], Dict[str, Tuple[int, ...]]]:
    """(head classes, pre_logits tensors, embedding shapes in timm's layout) of a Google ViT .npz."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            head_classes = npz[f'{prefix}head/bias'].shape[-1] if f'{prefix}head/bias' in keys else 0
            pre_logits = {
                'pre_logits.fc.weight': torch.from_numpy(npz[f'{prefix}pre_logits/kernel'].T.copy()),
                'pre_logits.fc.bias': torch.from_numpy(npz[f'{prefix}pre_logits/bias'].copy()),
            } if f'{prefix}pre_logits/kernel' in keys else {}
            shapes = {}
            if f'{prefix}embedding/kernel' in keys:
                kh, kw, cin, cout = npz[f'{prefix}embedding/kernel'].shape
                shapes['patch_embed.proj.weight'] = (cout, cin, kh, kw)
            if f'{prefix}Transformer/posembed_input/pos_embedding' in keys:
                shapes['pos_embed'] = tuple(npz[f'{prefix}Transformer/posembed_input/pos_embedding'].shape)
    except FileNotFoundError as e:
        raise CheckpointError(f'checkpoint not found: {path}') from e
    except Exception as e:
        raise CheckpointError(
            f'{path} is not a NumPy .npz ViT checkpoint (a zip of arrays such as embedding/kernel): '
            f'{type(e).__name__}') from e
    return head_classes, pre_logits, shapes


def load_npz_into_kan_vit(model: nn.Module, checkpoint_path: str, filter_fn, resample: bool = False,
                          prefix: str = '') -> None:
    """Load a Google ``.npz`` ViT checkpoint: timm's npz reader fills a plain ViT, then ``filter_fn`` (the
    builder's bound ``kan_checkpoint_filter_fn``) maps it. timm's reader resamples position embeddings itself,
    so sizes are checked on the file's own arrays first (unless ``resample``)."""
    path = str(checkpoint_path)
    head_classes, pre_logits, shapes = _read_npz(path, prefix)
    if not resample:
        check_embedding_sizes(shapes, model, path)
    vit_args = {k: v for k, v in model.vit_args.items() if k not in ('device', 'dtype')}
    vit = VisionTransformer(weight_init='skip', **dict(vit_args, num_classes=head_classes))
    try:
        _load_weights(vit, path, prefix)
    except KeyError as e:
        raise CheckpointError(
            f'{path} is incomplete for {_model_name(model)}: tensor {e} missing '
            f'(truncated file, or a checkpoint of fewer blocks than depth={len(model.blocks)}?)') from e
    except RuntimeError as e:
        raise CheckpointError(f'{path} does not fit {_model_name(model)}: {e}') from e
    state_dict = vit.state_dict()
    if not head_classes:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
    state_dict.update(pre_logits)
    model.load_state_dict(filter_fn(state_dict, model, source=path))
