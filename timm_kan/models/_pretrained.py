"""Pretrained adapter: ViT checkpoints into KAN-ViT, KAN-ViT checkpoints back, and freeze policies.

Accepted sources (all through timm's pretrained machinery, so ``hf-hub:``, ``local-dir:``, a file overlay
and the registry tags share this code):
    - timm ViT state dicts (safetensors, .pth/.bin with ``weights_only=True``), incl. the older in21k
      releases that carry a ``pre_logits.fc`` representation layer;
    - Google's ``.npz`` ViT checkpoints (augreg and the older ``ViT-B_16.npz`` in21k files), read by
      timm's own npz loader into a plain ViT first;
    - this package's KAN-ViT checkpoints, loaded untouched.

``kan_init='mlp'`` maps ``mlp.fc1``/``mlp.fc2`` onto the base branches of ``kan1``/``kan2`` (identity and
the MLP activation) and zeroes the KAN coefficients, so the KAN-ViT computes the pretrained ViT exactly
and its KAN coefficients learn corrections. ``kan_init='random'`` keeps the fresh KAN initialisation.
"""
import logging
import re
from typing import Dict, Iterable, List, Optional, Set

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from ..layers import GRKANMlp, KANMlp

__all__ = [
    'CheckpointError', 'FREEZE_POLICIES', 'KAN_INITS', 'freeze', 'kan_checkpoint_filter_fn',
    'load_npz_into_kan_vit', 'kan_ffn_prefixes', 'loaded_keys',
]

_logger = logging.getLogger(__name__)

KAN_INITS = ('mlp', 'random')
FREEZE_POLICIES = ('none', 'head', 'backbone')
_HEAD_PREFIXES = ('head.', 'pre_logits.')
_MLP_KEY = re.compile(r'^(blocks\.\d+\.mlp)\.fc([12])\.(weight|bias)$')
# KAN coefficient tensors that kan_init='mlp' sets to zero (Chebyshev, B-spline, RBF)
_KAN_COEFFS = ('.coeffs', '.spline_weight', '.spline.weight')
# KAT's released checkpoints: one numerator shared by all groups, a denominator per group
_KAT_RATIONAL = re.compile(r'^(blocks\.\d+\.mlp\.act[12])\.weight_(numerator|denominator)$')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the requested model, with what was expected and found."""


def _source_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('architecture') or 'checkpoint')


def _model_name(model: nn.Module) -> str:
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)


def kan_ffn_prefixes(model: nn.Module) -> List[str]:
    """State-dict prefixes ('blocks.3.mlp.') of the KAN feed-forward blocks."""
    return [f'{name}.' for name, m in model.named_modules() if isinstance(m, (KANMlp, GRKANMlp))]


def loaded_keys(model: nn.Module) -> Set[str]:
    """Keys whose values came from a checkpoint in the last pretrained load (empty if none)."""
    return set(getattr(model, '_loaded_keys', ()))


def _describe(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def kan_checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        strict: Optional[bool] = None,
        source: Optional[str] = None,
        source_classes: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Turn a ViT or KAN-ViT state dict into a complete, validated state dict for ``model``.

    ``strict`` defaults to the model's ``strict_load``; ``source`` names the checkpoint in errors and
    ``source_classes`` is the class count its head was trained for (both default to the model's
    pretrained_cfg). Records the keys taken from the checkpoint on ``model._loaded_keys`` and its layout
    ('vit' or 'kan') on ``model.checkpoint_layout`` for the freeze policies.

    Raises:
        CheckpointError: wrong family, size or options, missing tensors, or (with ``strict``)
            tensors the model has no place for.
    """
    source = source or _source_name(model)
    strict = getattr(model, 'strict_load', True) if strict is None else strict
    state_dict = state_dict.get('model', state_dict)
    state_dict = state_dict.get('state_dict', state_dict)
    if not any(k.startswith('blocks.') for k in state_dict):
        sample = _describe(state_dict.keys(), 5) or 'no tensors'
        raise CheckpointError(
            f'{source} is not a ViT or KAN-ViT checkpoint: expected keys like blocks.0.attn.qkv.weight and '
            f'blocks.0.mlp.fc1.weight, found {sample}')
    state_dict = _from_kat_layout(state_dict, model)
    is_kan = any('.mlp.kan1.' in k or '.mlp.act1.' in k for k in state_dict)
    layout = 'kan' if is_kan else 'vit'
    # timm's filter drops the representation layer silently; keep it to report what is discarded
    pre_logits = {k: v for k, v in state_dict.items() if k.startswith('pre_logits.')}
    sd = checkpoint_filter_fn(state_dict, model)
    sd.update(pre_logits)
    expected = model.state_dict()

    # the classifier: replaced when the class count differs (timm discards it then too)
    head_rows = sd['head.weight'].shape[0] if 'head.weight' in sd else None
    if source_classes is None:
        source_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes', model.num_classes)
    if head_rows is not None and (head_rows != model.num_classes or source_classes != model.num_classes):
        dropped = [k for k in sd if k.startswith(_HEAD_PREFIXES)]
        _logger.warning(
            f'{source}: classifier of {head_rows} classes replaced by a new head of {model.num_classes}; '
            f'not loaded: {_describe(dropped)}')
        for k in dropped:
            del sd[k]

    loaded: Set[str] = set()
    out: Dict[str, torch.Tensor] = {}
    unused_mlp: List[str] = []
    for k, v in sd.items():
        m = _MLP_KEY.match(k)
        if not is_kan and m is not None and (k not in expected or model.kan_init != 'mlp'):
            if model.kan_init != 'mlp':
                unused_mlp.append(k)
                continue
            prefix, layer, kind = m.groups()
            # KAN-layer blocks carry fc1/fc2 in their base branches; group-rational ones keep the names
            k = f'{prefix}.kan{layer}.' + ('base.weight' if kind == 'weight' else 'bias')
        out[k] = v
        loaded.add(k)
    if unused_mlp:
        _logger.warning(
            f"{source}: kan_init='random' leaves the pretrained MLP weights unused: {_describe(unused_mlp)}")

    unexpected = sorted(set(out) - set(expected))
    if unexpected:
        if strict:
            raise CheckpointError(
                f'{source} does not fit {_model_name(model)}: {len(unexpected)} tensors have no place in the model: '
                f'{_describe(unexpected)}. Pass pretrained_strict=False to load the rest and skip these.')
        _logger.warning(f'{source}: skipped tensors with no place in the model: {_describe(unexpected)}')
        for k in unexpected:
            del out[k]
            loaded.discard(k)

    # in the model's order, so that the first mismatch named is the earliest layer
    mismatched = [
        f'{k}: expected {tuple(v.shape)}, found {tuple(out[k].shape)}'
        for k, v in expected.items() if k in out and tuple(out[k].shape) != tuple(v.shape)]
    if mismatched:
        raise CheckpointError(
            f'{source} does not fit {_model_name(model)} (another model size or other KAN options?): '
            + '; '.join(mismatched[:5]) + (f' (+{len(mismatched) - 5} more)' if len(mismatched) > 5 else ''))

    # tensors the checkpoint does not carry: fresh KAN layers / head are expected, anything else is not
    fresh_prefixes = tuple(kan_ffn_prefixes(model)) if not is_kan else ()
    missing = []
    for k, v in expected.items():
        if k in out:
            continue
        if k.startswith(fresh_prefixes) or k.startswith(_HEAD_PREFIXES):
            zero = model.kan_init == 'mlp' and k.endswith(_KAN_COEFFS)
            out[k] = torch.zeros_like(v) if zero else v.detach().clone()
        else:
            missing.append(k)
    if missing:
        if strict:
            raise CheckpointError(
                f'{source} is incomplete for {_model_name(model)}: {len(missing)} tensors missing: '
                f'{_describe(missing)} (truncated file or another model family?)')
        _logger.warning(
            f'{source}: tensors missing from the checkpoint keep their initialisation: {_describe(missing)}')
        for k in missing:
            out[k] = expected[k].detach().clone()

    model._loaded_keys = frozenset(loaded)
    model.checkpoint_layout = layout
    return out


def _from_kat_layout(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """KAT's ``actN.weight_numerator`` (1, 6) / ``actN.weight_denominator`` (groups, 4) to this package's
    per-group ``actN.numerator`` (groups, 6) / ``actN.denominator``; same rational form (KAT's GPU kernel)."""
    if not any(_KAT_RATIONAL.match(k) for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        m = _KAT_RATIONAL.match(k)
        if m is None:
            out[k] = v
        elif m.group(2) == 'numerator':
            groups = state_dict[f'{m.group(1)}.weight_denominator'].shape[0]
            out[f'{m.group(1)}.numerator'] = v.reshape(-1, v.shape[-1]).expand(groups, -1).clone()
        else:
            out[f'{m.group(1)}.denominator'] = v
    return out


def load_npz_into_kan_vit(model: nn.Module, checkpoint_path: str, prefix: str = '') -> None:
    """Load a Google ``.npz`` ViT checkpoint: timm's npz reader fills a plain ViT, then the KAN filter maps it."""
    import numpy as np

    path = str(checkpoint_path)
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            head_classes = npz[f'{prefix}head/bias'].shape[-1] if f'{prefix}head/bias' in keys else 0
            pre_logits = {
                'pre_logits.fc.weight': torch.from_numpy(npz[f'{prefix}pre_logits/kernel'].T.copy()),
                'pre_logits.fc.bias': torch.from_numpy(npz[f'{prefix}pre_logits/bias'].copy()),
            } if f'{prefix}pre_logits/kernel' in keys else {}
    except FileNotFoundError as e:
        raise CheckpointError(f'checkpoint not found: {path}') from e
    except Exception as e:
        raise CheckpointError(f'cannot read {path} as a NumPy .npz checkpoint: {e}') from e
    vit_args = dict(model.vit_args, num_classes=head_classes)
    vit_args.pop('device', None)
    vit_args.pop('dtype', None)
    vit = VisionTransformer(weight_init='skip', **vit_args)
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
    # the npz has no pretrained_cfg of its own: judge the head by its class count alone
    classes = head_classes or model.num_classes
    model.load_state_dict(kan_checkpoint_filter_fn(state_dict, model, source=path, source_classes=classes))


def freeze(model: nn.Module, policy: str) -> Dict[str, int]:
    """Set ``requires_grad`` by policy and return the parameter counts.

    Policies:
        'none': everything trains.
        'head': only ``head`` (and ``pre_logits``) train — the reference write-ups' behaviour.
        'backbone': every tensor loaded from the checkpoint is frozen except the KAN layers and the head.

    A tensor that was not loaded from a checkpoint is never frozen: a policy that would freeze one
    raises ``ValueError`` naming it.
    """
    from ..accounting import count_parameters

    if policy not in FREEZE_POLICIES:
        raise ValueError(f'freeze policy must be one of {FREEZE_POLICIES}, got {policy!r}')
    loaded = loaded_keys(model)
    kan_prefixes = tuple(kan_ffn_prefixes(model))
    if policy == 'none':
        to_freeze = set()
    elif policy == 'head':
        to_freeze = {n for n, _ in model.named_parameters() if not n.startswith(_HEAD_PREFIXES)}
    else:
        to_freeze = {
            n for n, _ in model.named_parameters()
            if n in loaded and not n.startswith(kan_prefixes) and not n.startswith(_HEAD_PREFIXES)}
    if policy != 'none' and not loaded:
        raise ValueError(
            f"freeze='{policy}' freezes pretrained tensors, but none were loaded (pretrained=False?); "
            "use freeze='none'")
    fresh = sorted(to_freeze - loaded)
    if fresh:
        raise ValueError(
            f"freeze='{policy}' would freeze {len(fresh)} tensors that were freshly initialised, not loaded "
            f'({_describe(fresh, 4)}); they would never train and the model would learn on random features. '
            "Load them from a checkpoint (e.g. a trained KAN-ViT), or use freeze='backbone'.")
    for name, param in model.named_parameters():
        param.requires_grad_(name not in to_freeze)
    counts = count_parameters(model)
    _logger.info(f"freeze='{policy}': {counts['trainable']:,} of {counts['total']:,} parameters train")
    return counts
