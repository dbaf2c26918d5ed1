"""Pruning the hidden units of KAN-ViT blocks by their importance, giving each block its own width.

The returned model is new (the caller's is never changed): built by ``timm.create_model`` with ``kan_hidden``
as a list of per-block widths, which ``save_for_hf`` writes into config.json, so ``local-dir:`` / ``hf-hub:``
rebuild it exactly. A unit's score is the smaller of its largest incoming and largest outgoing edge scores
(the KAN paper's pruning rule). Group-rational blocks keep the same number of units in every coefficient group
(the groups are contiguous channel ranges). A mid LayerNorm (``kan_mid_norm``) normalises over the hidden
units, so removing units changes the statistics the others are normalised with: pruning is then approximate
(a short fine-tune recovers it); without one, removing units whose outgoing coefficients are zero is exact.
"""
import math
from typing import List, Optional, Sequence

import torch
from torch import nn

import timm
from timm.models import get_model_args

from ..layers import KAN_FAMILIES, family_of_type, ffn_modules
from ..models import KANVisionTransformer, architecture_args
from ..models.kan_vit import ADAPTER_KWARGS
from .records import BlockRecord, record_blocks

__all__ = ['prune', 'units_to_keep']


def units_to_keep(record: BlockRecord, keep: Optional[float] = None, threshold: Optional[float] = None,
                  groups: int = 1) -> torch.Tensor:
    """Sorted indices of the hidden units kept in one block: the ``keep`` share with the highest scores (at least
    one per group), or those scoring at least ``threshold``; with ``groups``, the same count in every group."""
    scores = record.unit_score
    hidden = scores.numel()
    per_group = hidden // groups
    by_group = scores.reshape(groups, per_group)
    if threshold is not None:
        count = max(1, int((by_group >= threshold).sum(1).max()))
    else:
        count = max(1, math.ceil(keep * per_group))
    top = by_group.topk(count, dim=1).indices + torch.arange(groups)[:, None] * per_group
    return top.flatten().sort().values


def _slice_like(old: torch.Tensor, new_shape: Sequence[int], index: torch.Tensor) -> torch.Tensor:
    """``old`` cut down to ``new_shape``: every dimension that shrank is the hidden one, indexed by ``index``."""
    out = old
    for dim, (a, b) in enumerate(zip(old.shape, new_shape)):
        if a != b:
            out = out.index_select(dim, index.to(old.device))
    return out


def _check(model: nn.Module, keep: Optional[float], threshold: Optional[float]) -> None:
    if not isinstance(model, KANVisionTransformer) and not hasattr(model, 'kanify_report'):
        families = ', '.join(f'{f.prefix}_*' for f in KAN_FAMILIES.values())
        raise ValueError(f'prune works on KAN-ViTs ({families}) and kanified models, not on {type(model).__name__}')
    if (keep is None) == (threshold is None):
        raise ValueError('prune needs exactly one of keep (a share of units) and threshold (a unit score)')
    if keep is not None and not 0 < keep <= 1:
        raise ValueError(f'keep must be in (0, 1], got {keep}')


@torch.no_grad()
def prune(model: nn.Module, images: Optional[torch.Tensor] = None, keep: Optional[float] = None,
          threshold: Optional[float] = None, records: Optional[List[BlockRecord]] = None) -> KANVisionTransformer:
    """A new KAN-ViT (or kanified model) keeping, in every block, the most important hidden units of ``model``.

    Args:
        model: A KAN-ViT, or a model of a family's ``any_model`` entry (``chebykan``, base=...).
        images: Real images (N, 3, H, W) the importance is measured on (or pass ``records``).
        keep: Share of each block's units to keep, in (0, 1]; 1.0 gives the same outputs bit for bit.
        threshold: Or keep the units whose score (min of largest incoming and outgoing edge score) reaches it.
        records: ``record_blocks(model, images)`` already computed.
    """
    _check(model, keep, threshold)
    if records is None:
        if images is None:
            raise ValueError('prune needs images to measure the units on (or records from record_blocks)')
        records = record_blocks(model, images)
    groups = family_of_type(model.kan_args['kan_type']).width_multiple(model.kan_args)
    kept = [units_to_keep(r, keep, threshold, groups) for r in records]
    args = {k: v for k, v in get_model_args(model).items() if k not in ADAPTER_KWARGS}
    args.update(architecture_args(model), kan_hidden=[len(k) for k in kept])
    pruned = timm.create_model(model.pretrained_cfg['architecture'], **args)
    pruned.to(next(model.parameters()).device)
    new_state = pruned.state_dict()
    blocks = tuple(f'{name}.' for name, _ in ffn_modules(model))  # in the records' order
    state = {}
    for key, value in model.state_dict().items():
        block = next((b for b, prefix in enumerate(blocks) if key.startswith(prefix)), None)
        state[key] = value if block is None else _slice_like(value, new_state[key].shape, kept[block])
    pruned.load_state_dict(state)
    pruned.pretrained_cfg = dict(model.pretrained_cfg)
    return pruned.train(model.training)
