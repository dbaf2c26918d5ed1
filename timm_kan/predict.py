"""Top-k prediction for image files with a timm or KAN-ViT model, using the model's own data config (for a model
trained by ``timm-kan compare``: exactly the evaluation transform of its run)."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm
from timm.data import create_transform

from .accounting import model_data_config
from .hub import agreeing_class_names, class_names, model_from_checkpoint
from .models import resolve_model_name

__all__ = ['load_for_inference', 'predict_images']


def load_for_inference(
        model: str,
        checkpoint: Optional[Union[str, Path]] = None,
        class_map: Optional[Union[str, Path]] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, List[str]]:
    """A model in eval mode and its class names (class map file > checkpoint > config label_names > indices)."""
    model = resolve_model_name(model)
    names: Optional[List[str]] = None
    if checkpoint:
        net, meta = model_from_checkpoint(model, checkpoint, model_kwargs=model_kwargs)
        if meta.get('class_map'):
            names = class_names(meta['class_map'], str(checkpoint))
    else:
        net = timm.create_model(model, pretrained=True, **(model_kwargs or {}))
        labels = net.pretrained_cfg.get('label_names')
        if labels:
            names = class_names(labels, f'{model} label_names')
    names = agreeing_class_names(names, class_map)
    if names is not None and len(names) != net.num_classes:
        raise ValueError(f'class map has {len(names)} names but the model head has {net.num_classes} classes')
    return net.eval(), names or [str(i) for i in range(net.num_classes)]


@torch.no_grad()
def predict_images(
        model: nn.Module,
        class_names: Sequence[str],
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
) -> List[Union[List[Tuple[str, float]], str]]:
    """Top-k (class name, probability) per image; for an image that cannot be read, a message saying why
    (the other images are still predicted)."""
    from .images import open_rgb

    transform = create_transform(**model_data_config(model))
    results: List[Union[List[Tuple[str, float]], str]] = []
    for path in images:
        path = Path(path)
        if not path.is_file():
            results.append(f'image not found: {path}')
            continue
        try:
            x = transform(open_rgb(path)).unsqueeze(0)
        except (OSError, ValueError) as e:  # unreadable, or a mode that has no faithful RGB form
            results.append(str(e))
            continue
        probs = model(x.to(next(model.parameters()).device)).softmax(-1)[0]
        p, idx = probs.topk(min(top_k, probs.numel()))
        results.append([(class_names[i], float(v)) for v, i in zip(p.tolist(), idx.tolist())])
    return results
