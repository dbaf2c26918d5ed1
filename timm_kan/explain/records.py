"""What the feed-forward layers of a (KAN-)ViT see and how much each edge matters, measured on real images.

Forward hooks record a row sample of each layer's inputs over a batch of images (the edge inputs: for RBF
layers the LayerNorm'd input their radial bases see). From them:

- KAN layers: edge (o, i) scores mean |phi_oi(x_i)| over the data (the KAN paper's attribution score), computed
  from each edge's exact contribution to the output;
- timm's MLP and the linear layers of group-rational blocks: the analogue |W_oi| std(x_i);
- per hidden unit: its largest incoming and outgoing edge score (the KAN paper keeps a unit when both are
  large; the unit score is the smaller of the two) and its outgoing mass sum_o score(o, unit).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from ..layers.base import KANLinearBase

__all__ = ['LayerRecord', 'BlockRecord', 'record_blocks', 'edge_importance']


@dataclass
class LayerRecord:
    """One linear map of a block's feed-forward part (a KAN layer, an MLP's fc1/fc2)."""
    name: str
    module: nn.Module
    inputs: torch.Tensor  # (rows, in): a sample of the edge inputs
    importance: torch.Tensor  # (out, in)
    outside_grid: Optional[torch.Tensor] = None  # (in,) share of the inputs outside the grid (B-spline, RBF)


@dataclass
class BlockRecord:
    """A block's two maps around its hidden units, and the hidden units' scores."""
    block: int
    kind: str  # what the block's explain_parts says ('kan', 'rational'), or 'mlp' for timm's MLP
    layers: List[LayerRecord]
    unit_score: torch.Tensor = field(init=False)  # (hidden,) min(max incoming, max outgoing)
    unit_mass: torch.Tensor = field(init=False)  # (hidden,) sum of outgoing scores
    activations: Dict[str, nn.Module] = field(default_factory=dict)  # group-rational: act1, act2
    activation_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # their sampled inputs

    def __post_init__(self) -> None:
        first, second = self.layers[0].importance, self.layers[1].importance
        self.unit_score = torch.minimum(first.max(1).values, second.max(0).values)
        self.unit_mass = second.sum(0)

    def units_for_mass(self, share: float = 0.9) -> int:
        """How many hidden units (the largest first) hold ``share`` of the outgoing mass."""
        mass = self.unit_mass.sort(descending=True).values
        total = mass.sum()
        if total <= 0:
            return 0
        return int((mass.cumsum(0) < share * total).sum().item()) + 1


def _maps(mlp: nn.Module):
    """(kind, the two maps, the activations) of a block's feed-forward module: a family's block says (its
    ``explain_parts``), timm's MLP is fc1 and fc2."""
    if hasattr(mlp, 'explain_parts'):
        return mlp.explain_parts()
    if hasattr(mlp, 'fc1') and hasattr(mlp, 'fc2'):
        return 'mlp', (mlp.fc1, mlp.fc2), {}
    raise ValueError(f'{type(mlp).__name__} is neither a KAN family\'s feed-forward block (explain_parts) nor an '
                     'MLP (fc1, fc2)')


class _InputSampler:
    """Forward pre-hook keeping a random sample of at most ``max_rows`` input rows (tokens) of a module."""

    def __init__(self, max_rows: int, seed: int) -> None:
        self.max_rows = max_rows
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: List[torch.Tensor] = []

    def __call__(self, module: nn.Module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        keep = torch.randperm(x.shape[0], generator=self.generator)[:self.max_rows].to(x.device)
        self.rows.append(x[keep].cpu())

    def sample(self) -> torch.Tensor:
        rows = torch.cat(self.rows)
        return rows[torch.randperm(rows.shape[0], generator=self.generator)[:self.max_rows]]


@torch.no_grad()
def edge_importance(layer: nn.Module, inputs: torch.Tensor, raw_inputs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(out, in) edge scores of one map: mean |phi_oi(x_i)| for a KAN layer, |W_oi| std(x_i) for a linear one.

    ``inputs`` are the edge inputs; an RBF layer also needs ``raw_inputs`` (its base branch sees those).
    """
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().float().abs().cpu() * inputs.std(0)[None]
    if not isinstance(layer, KANLinearBase):
        raise ValueError(f'{type(layer).__name__} is not a KAN layer or nn.Linear')
    device = next(layer.parameters()).device
    total = torch.zeros(layer.out_features, layer.in_features)
    chunk = max(1, 2 ** 24 // (layer.out_features * layer.in_features))  # rows per step: bounded memory
    for start in range(0, inputs.shape[0], chunk):
        u = inputs[start:start + chunk].to(device)
        phi = layer.edge_functions(u, base=not layer.base_on_raw_input)
        if layer.base_on_raw_input and layer.base is not None:
            phi += layer.base_terms(raw_inputs[start:start + chunk].to(device))
        total += phi.abs().sum(0).cpu()
    return total / inputs.shape[0]


def _outside(layer: nn.Module, inputs: torch.Tensor) -> Optional[torch.Tensor]:
    bounds = layer.basis_range() if isinstance(layer, KANLinearBase) else None
    if bounds is None:
        return None
    lo, hi = bounds
    return ((inputs < lo) | (inputs > hi)).float().mean(0)


@torch.no_grad()
def record_blocks(model: nn.Module, images: torch.Tensor, max_rows: int = 1024, seed: int = 0,
                  batch_size: int = 64) -> List[BlockRecord]:
    """Run ``images`` through ``model`` (eval mode) and return every block's ``BlockRecord``."""
    from ..layers import ffn_modules

    blocks = ffn_modules(model)  # a ViT's blocks.N.mlp; any kanified model's feed-forward blocks, in module order
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no feed-forward blocks to explain')
    samplers, hooks = {}, []
    for b, (_, mlp) in enumerate(blocks):
        _, maps, acts = _maps(mlp)
        for n, (key, module) in enumerate(list(enumerate(maps)) + list(acts.items())):
            samplers[(b, key)] = _InputSampler(max_rows, seed + 4 * b + n)
            hooks.append(module.register_forward_pre_hook(samplers[(b, key)]))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    records = []
    for b, (prefix, mlp) in enumerate(blocks):
        kind, maps, acts = _maps(mlp)
        names = {id(m): n for n, m in mlp.named_modules()}
        layers = []
        for j, layer in enumerate(maps):
            raw_inputs = samplers[(b, j)].sample()
            # edge inputs are row-wise functions of the layer's input (an RBF layer's LayerNorm), so the sampled
            # rows give them exactly
            inputs = layer.edge_inputs(raw_inputs.to(device)).cpu() if isinstance(layer, KANLinearBase) \
                else raw_inputs
            layers.append(LayerRecord(f'{prefix}.{names[id(layer)]}', layer, inputs,
                                      edge_importance(layer, inputs, raw_inputs), _outside(layer, inputs)))
        records.append(BlockRecord(b, kind, layers, acts, {k: samplers[(b, k)].sample() for k in acts}))
    return records
