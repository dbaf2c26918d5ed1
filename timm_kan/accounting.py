"""Honest parameter and FLOP accounting for ViT and KAN-ViT models.

Parameters: every ``nn.Parameter`` (KAN coefficient tensors, spline scalers and base weights included;
tools that only see ``.weight``/``.bias`` miss most of a KAN layer). FLOPs: ``torch.utils.flop_counter``
on a real forward pass, counting a multiply-add as 2 FLOPs (matrix products, convolutions, attention);
elementwise basis evaluation is not counted by it. Activation memory: the bytes autograd keeps for backward, per
token or image (``saved_bytes_per_row``).
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_parameters', 'count_flops', 'model_summary', 'model_data_config', 'hidden_widths',
           'eval_data_config', 'saved_bytes', 'saved_bytes_per_row']


def _part(name: str, ffn_prefixes: Tuple[str, ...]) -> str:
    if name.startswith(ffn_prefixes) or '.mlp.' in name:
        return 'ffn'
    if '.attn.' in name:
        return 'attention'
    return 'other'


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """Total and trainable parameters, and the total per part: attention, ffn (every MLP or KAN FFN, wherever the
    model keeps it: ``mlp_tokens`` of MLP-Mixer too), other."""
    from .layers import ffn_modules

    ffn_prefixes = tuple(f'{n}.' for n, _ in ffn_modules(model))
    counts = {'total': 0, 'trainable': 0, 'attention': 0, 'ffn': 0, 'other': 0}
    for name, p in model.named_parameters():
        n = p.numel()
        counts['total'] += n
        counts['trainable'] += n if p.requires_grad else 0
        counts[_part(name, ffn_prefixes)] += n
    return counts


def model_data_config(model: nn.Module) -> Dict[str, Any]:
    """timm data config at the model's actual input size (``img_size=`` overrides included).

    timm's ``resolve_model_data_config`` reads the pretrained config only (224 px for an ``img_size=28`` model);
    ``resolve_input_data_config`` (timm 1.0.31, the floor) reads the built model.
    """
    from timm.data.model_config import resolve_input_data_config
    return resolve_input_data_config(model)


def eval_data_config(model: nn.Module, crop_pct: float) -> Dict[str, Any]:
    """The evaluation transform's settings of a run, recorded in the model's ``pretrained_cfg`` (so ``config.json``
    of an export carries them) and in its checkpoint: predict, explain and export preprocess exactly as validation
    did."""
    model.pretrained_cfg = dict(model.pretrained_cfg, crop_pct=crop_pct, crop_mode='center')
    config = model_data_config(model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> Sequence[int]:
    if input_size is not None:
        return tuple(input_size)
    return tuple(model_data_config(model)['input_size'])


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Optional[Sequence[int]] = None, batch_size: int = 1) -> int:
    """Forward FLOPs for one batch at ``input_size`` (C, H, W; default: the model's data config)."""
    c, h, w = _input_size(model, input_size)
    p = next(model.parameters())
    x = torch.zeros(batch_size, c, h, w, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    # no tensor requiring grad: FlopCounterMode hooks every module input that does, and fails on a view of a
    # parameter without a grad_fn (CaiT's expanded class token, made under no_grad or not)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    return int(counter.get_total_flops())


def model_summary(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Parameters (total, trainable, per part) and forward GFLOPs of one image."""
    size = _input_size(model, input_size)
    params = count_parameters(model)
    return {
        'params': params,
        'params_m': params['total'] / 1e6,
        'trainable_m': params['trainable'] / 1e6,
        'input_size': list(size),
        'gflops': count_flops(model, size) / 1e9,
    }


def hidden_widths(model: nn.Module) -> List[int]:
    """Each feed-forward block's width, in module order: the outputs of its first map (a KAN family's block names
    its maps in ``explain_parts``; timm's MLP has fc1); empty for a model without one."""
    from .layers import ffn_modules

    widths = []
    for _, mlp in ffn_modules(model):
        first = mlp.explain_parts()[1][0] if hasattr(mlp, 'explain_parts') else mlp.fc1
        widths.append(first.weight.shape[0] if isinstance(first, nn.Conv2d) else first.out_features)
    return widths


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the storages autograd keeps for backward during ``module(x)`` (saved-tensor hooks), each storage
    once, the module's parameters and buffers and the input left out: the activations a training step holds."""
    skip = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers(), x)}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def saved_bytes_per_row(module: nn.Module, make_input: Callable[[int], torch.Tensor], rows: int) -> float:
    """Saved bytes per input row (token, image): the slope between ``rows`` and ``2 * rows`` rows, so that what a
    layer keeps once whatever the batch (a reshaped copy of its weights, say) does not count."""
    small, large = (saved_bytes(module, make_input(n)) for n in (rows, 2 * rows))
    return (large - small) / rows
