"""Freeze policies for adapted models: what trains after a pretrained load.

A tensor that was not loaded from a checkpoint is never frozen (it would never train): the loaded keys are the
``LoadReport`` the builder keeps on the model as ``pretrained_load``.
"""
import logging
from typing import Dict, FrozenSet

from torch import nn

from ._pretrained import HEAD_PREFIXES, describe_keys, kan_ffn_prefixes

__all__ = ['FREEZE_POLICIES', 'apply_freeze_policy']

_logger = logging.getLogger(__name__)

FREEZE_POLICIES = ('none', 'head', 'backbone')


def apply_freeze_policy(model: nn.Module, policy: str) -> Dict[str, int]:
    """Set ``requires_grad`` by policy and return the parameter counts.

    Policies:
        'none': everything trains.
        'head': only ``head`` (and ``pre_logits``) train — the reference write-ups' behaviour.
        'backbone': every tensor loaded from the checkpoint is frozen except the KAN layers and the head.

    A tensor that was not loaded from a checkpoint is never frozen: a policy that would freeze one
    raises ``ValueError`` naming it. What was loaded is the model's ``pretrained_load`` report.
    """
    from ..accounting import count_parameters

    if policy not in FREEZE_POLICIES:
        raise ValueError(f'freeze policy must be one of {FREEZE_POLICIES}, got {policy!r}')
    report = getattr(model, 'pretrained_load', None)
    loaded = report.loaded_keys if report is not None else frozenset()
    if policy != 'none' and not loaded:
        raise ValueError(
            f"freeze='{policy}' freezes pretrained tensors, but none were loaded (pretrained=False?); "
            "use freeze='none'")
    to_freeze = _policy_targets(model, policy, loaded)
    fresh = sorted(to_freeze - loaded)
    if fresh:
        raise ValueError(
            f"freeze='{policy}' would freeze {len(fresh)} tensors that were freshly initialised, not loaded "
            f'({describe_keys(fresh, 4)}); they would never train and the model would learn on random features. '
            "Load them from a checkpoint (e.g. a trained KAN-ViT), or use freeze='backbone'.")
    for name, param in model.named_parameters():
        param.requires_grad_(name not in to_freeze)
    counts = count_parameters(model)
    _logger.info(f"freeze='{policy}': {counts['trainable']:,} of {counts['total']:,} parameters train")
    return counts


def _policy_targets(model: nn.Module, policy: str, loaded: FrozenSet[str]) -> set:
    if policy == 'none':
        return set()
    if policy == 'head':
        return {n for n, _ in model.named_parameters() if not n.startswith(HEAD_PREFIXES)}
    kan_prefixes = tuple(kan_ffn_prefixes(model))
    return {n for n, _ in model.named_parameters()
            if n in loaded and not n.startswith(kan_prefixes) and not n.startswith(HEAD_PREFIXES)}
