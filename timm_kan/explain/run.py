"""``timm-kan explain``: the pictures, ``importance.json`` and a short table for one trained (KAN-)ViT.

Outputs in ``--out``: ``overview.png`` (every block's hidden units, next to a reference MLP ViT when one is
given), ``edges_block{N}_layer{L}.png`` (the top-k edge functions of one layer with their symbolic fits; KAN
layers), ``{kind}_block{N}.png`` (a block's learned activations: ``rational_block{N}.png`` for group-rational),
``importance.json`` (per block: hidden width, units holding 90% of the importance, unit scores, the top edges
with their fits) and, with ``--prune``, ``pruned/`` (a ``local-dir:`` folder) and the before/after figures.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..io import markdown_table, write_json_atomic
from ..models import design_name
from ..layers.base import KANLinearBase
from .records import BlockRecord, record_blocks
from .plots import plot_group_activations, plot_overview, plot_top_edges

__all__ = ['explain_model', 'summary_table', 'load_images', 'top1', 'finetune']


def _check_block(records: List[BlockRecord], block: Optional[int], layer: int) -> int:
    if block is None:
        block = len(records) - 1
    if not 0 <= block < len(records):
        raise ValueError(f'--block {block} is out of range: the model has blocks 0..{len(records) - 1}')
    if layer not in (1, 2):
        raise ValueError(f'--layer must be 1 or 2, got {layer}')
    return block


def explain_model(model: nn.Module, images: torch.Tensor, out_dir: Path, name: str = '', block: Optional[int] = None,
                  layer: int = 1, top_k: int = 12, reference: Optional[List[BlockRecord]] = None,
                  records: Optional[List[BlockRecord]] = None) -> Dict[str, Any]:
    """Record ``model`` on ``images`` and write the explain outputs into ``out_dir``; returns importance.json's
    content. ``block`` defaults to the last block; ``reference`` is an MLP ViT's ``record_blocks``."""
    records = records if records is not None else record_blocks(model, images)
    if records[0].kind == 'mlp':
        raise ValueError(f'{name or type(model).__name__} is a plain ViT: explain needs a KAN-ViT '
                         '(its MLP blocks can be the reference of one)')
    block = _check_block(records, block, layer)
    out_dir = Path(out_dir)
    title = f'{name} ({design_name(name)})' if name else design_name(type(model).__name__)
    pictures = [str(plot_overview(records, out_dir / 'overview.png', title, reference))]
    chosen = records[block]
    edges = []
    if isinstance(chosen.layers[layer - 1].module, KANLinearBase):
        path = out_dir / f'edges_block{block}_layer{layer}.png'
        edges = plot_top_edges(chosen.layers[layer - 1], path, top_k,
                               f'{name} block {block} layer {layer}: top {top_k} edges (input→output)')
        pictures.append(str(path))
    if chosen.activations:
        path = out_dir / f'{chosen.kind}_block{block}.png'
        plot_group_activations(chosen.activations, chosen.activation_inputs, path, f'{name} block {block}')
        pictures.append(str(path))
    summary = dict(model=name, design=design_name(name), pictures=pictures, block=block, layer=layer,
                   top_edges=edges, blocks=[_block_summary(r) for r in records])
    if reference is not None:
        summary['reference'] = [_block_summary(r) for r in reference]
    write_json_atomic(out_dir / 'importance.json', summary)
    return summary


def _block_summary(r: BlockRecord) -> Dict[str, Any]:
    outside = [x.outside_grid.mean().item() for x in r.layers if x.outside_grid is not None]
    return dict(block=r.block, kind=r.kind, hidden=r.unit_score.numel(), units_for_90pct=r.units_for_mass(0.9),
                top_edge_score=[x.importance.max().item() for x in r.layers],
                outside_grid_share=outside or None, unit_score=r.unit_score.tolist())


def summary_table(summary: Dict[str, Any]) -> str:
    """The short table ``timm-kan explain`` prints: one row per block."""
    rows = []
    for b in summary['blocks']:
        outside = '' if not b['outside_grid_share'] else ' / '.join(f'{100 * v:.0f}%' for v in b['outside_grid_share'])
        held = f'{b["units_for_90pct"]} ({100 * b["units_for_90pct"] / b["hidden"]:.0f}%)'
        rows.append([b['block'], b['hidden'], held, ' / '.join(f'{v:.3g}' for v in b['top_edge_score']),
                     outside or 'n/a'])
    table = markdown_table(('block', 'hidden units', 'units for 90% of importance', 'top edge score (layer 1 / 2)',
                            'inputs off grid (layer 1 / 2)'), rows)
    fits = [f'  {e["in"]}→{e["out"]} score {e["score"]:.3g}: {e["fit"]["formula"]} (R² {e["fit"]["r2"]:.3f})'
            for e in summary['top_edges'][:5]]
    if fits:
        table += f'\n\nblock {summary["block"]} layer {summary["layer"]}, top edges and their symbolic fits:\n'
        table += '\n'.join(fits)
    return table


def load_images(root: Path, classes: List[str], model: nn.Module, count: int = 256, split: str = 'val',
                seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` images (and their labels) of a prepared split (``prepare_data``), transformed with the
    model's data config (evaluation transform)."""
    from timm.data import create_dataset, create_transform

    from ..accounting import model_data_config
    from ..data.split import split_class_map
    from ..images import rgb_transform

    dataset = create_dataset('', root=str(root), split=split, class_map=split_class_map(classes), input_img_mode=None,
                             transform=rgb_transform(create_transform(**model_data_config(model))))
    if len(dataset) == 0:
        raise ValueError(f'{root}: the {split} split holds no images')
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    pairs = [dataset[int(i)] for i in pick]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy (%) of ``model`` on the images (eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum((model(images[i:i + batch_size].to(device)).argmax(-1).cpu() == labels[i:i + batch_size]).sum()
                  for i in range(0, len(images), batch_size))
    model.train(was_training)
    return 100.0 * float(correct) / len(images)


def finetune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float = 5e-4,
             batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A short AdamW fine-tune (no augmentation) of ``model`` in place; returns it. After each epoch one line on
    stderr: ``fine-tune epoch 2/5: train loss 0.412, 3.1 s (elapsed 6 s)`` (the epoch's mean loss per image)."""
    import time

    from ..io import progress_line

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    device = next(model.parameters()).device
    model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float() * len(idx)  # no host sync per step
        mean_loss = loss_sum.item() / max(len(images), 1)
        progress_line(f'fine-tune epoch {epoch + 1}/{epochs}: train loss {mean_loss:.3f}, '
                      f'{time.perf_counter() - epoch_start:.1f} s', start=started)
    return model.eval()
