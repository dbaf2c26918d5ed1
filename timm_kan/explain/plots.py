"""Pictures of what the feed-forward layers learned (PNG, matplotlib).

- ``plot_overview``: per block, how the hidden units share the outgoing importance (cumulative curves; the
  number of units holding 90% of it), next to a reference model (the MLP ViT) when given.
- ``plot_top_edges``: the top-k edges of one layer, each curve over its input's data range (1st to 99th
  percentile) with the input histogram shaded behind, the grid knots (B-spline) or centres (RBF) marked, the
  share of inputs outside the grid, and the best symbolic fit dashed, named in the title.
- ``plot_group_activations``: each group's learned activation of a block (group-rational: phi1 / phi2) against
  the function it started from (identity, GELU or SiLU).
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .records import BlockRecord, LayerRecord
from .symbolic import fit_symbolic

__all__ = ['plot_overview', 'plot_top_edges', 'plot_group_activations', 'top_edges', 'edge_curve']


def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _cumulative(mass: torch.Tensor):
    share = mass.sort(descending=True).values.cumsum(0)
    share = share / share[-1].clamp_min(1e-12)
    return torch.linspace(0, 1, len(share) + 1)[1:], share


def plot_overview(records: List[BlockRecord], path: Path, title: str,
                  reference: Optional[List[BlockRecord]] = None, reference_name: str = 'MLP ViT') -> Path:
    """Cumulative share of each block's outgoing importance held by its largest units, and per block how many
    units hold 90% of it (the model's bars next to the reference's)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap('viridis')
    for r in records:
        frac, share = _cumulative(r.unit_mass)
        left.plot(frac, share, color=cmap(r.block / max(len(records) - 1, 1)), label=f'block {r.block}')
    for r in reference or ():
        frac, share = _cumulative(r.unit_mass)
        left.plot(frac, share, color='0.6', ls='--', lw=1, label=reference_name if r.block == 0 else None)
    left.set(xlabel='fraction of hidden units (largest first)', ylabel='share of outgoing importance',
             title='how the hidden units share the importance')
    left.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    blocks = [r.block for r in records]
    width = 0.4 if reference else 0.8
    right.bar([b - (width / 2 if reference else 0) for b in blocks],
              [100 * r.units_for_mass(0.9) / r.unit_mass.numel() for r in records], width, label=title)
    if reference:
        right.bar([r.block + width / 2 for r in reference],
                  [100 * r.units_for_mass(0.9) / r.unit_mass.numel() for r in reference], width,
                  color='0.6', label=reference_name)
    right.set(xlabel='block', ylabel='% of units holding 90% of it', title='fewer = more prunable')
    right.set_xticks(blocks)
    right.legend(fontsize=8, loc='lower right')
    right.grid(alpha=0.3, axis='y')
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def top_edges(layer: LayerRecord, k: int) -> List[Dict[str, float]]:
    """The k highest-scoring edges of a layer: [{'out', 'in', 'score'}], best first."""
    scores = layer.importance
    values, flat = scores.flatten().topk(min(k, scores.numel()))
    return [dict(out=int(i) // scores.shape[1], **{'in': int(i) % scores.shape[1]}, score=float(v))
            for v, i in zip(values, flat)]


def edge_curve(layer: LayerRecord, out: int, inp: int, points: int = 101):
    """(u, phi_out,in(u)) over the 1st..99th percentile of the edge's recorded input, widened by 10%."""
    u_data = layer.inputs[:, inp]
    lo, hi = torch.quantile(u_data, 0.01).item(), torch.quantile(u_data, 0.99).item()
    pad = 0.1 * max(hi - lo, 1e-3)
    u = torch.linspace(lo - pad, hi + pad, points)
    sweep = torch.zeros(points, layer.module.in_features)
    sweep[:, inp] = u
    device = next(layer.module.parameters()).device
    phi = layer.module.edge_functions(sweep.to(device), base=not layer.module.base_on_raw_input)
    return u, phi[:, out, inp].cpu()


def plot_top_edges(layer: LayerRecord, path: Path, k: int = 12, title: str = '') -> List[Dict[str, object]]:
    """The k top edges of a KAN layer in a grid; returns their descriptions with the symbolic fits."""
    plt = _plt()
    edges = top_edges(layer, k)
    cols = min(4, len(edges))
    rows = math.ceil(len(edges) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    module = layer.module
    for ax, edge in zip(axes.flat, edges):
        u, phi = edge_curve(layer, edge['out'], edge['in'])
        fit = fit_symbolic(u, phi)
        edge['fit'] = fit.as_dict()
        hist = ax.twinx()
        hist.hist(layer.inputs[:, edge['in']].numpy(), bins=40, range=(u[0].item(), u[-1].item()), color='0.85')
        hist.set_yticks([])
        ax.set_zorder(hist.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(u, phi, lw=2, label='learned')
        ax.plot(u, fit(u.double()).float(), 'k--', lw=1, label='fit')
        knots = module.knots(edge['in'])
        for t in knots[(knots >= u[0]) & (knots <= u[-1])]:
            ax.axvline(t.item(), color='tab:red', lw=0.5, alpha=0.6)
        outside = '' if layer.outside_grid is None else f', {100 * layer.outside_grid[edge["in"]]:.0f}% off grid'
        ax.set_title(f'{edge["in"]}→{edge["out"]}  score {edge["score"]:.3g}{outside}\n'
                     f'{fit.f}: R²={fit.r2:.3f}', fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(edges):]:
        ax.axis('off')
    fig.suptitle(title or f'{layer.name}: top {len(edges)} edges (input→output)', fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return edges


def plot_group_activations(acts: Dict[str, nn.Module], inputs: Dict[str, torch.Tensor], path: Path,
                           title: str = '') -> Path:
    """Each group's learned activation of one block (group-rational: phi1, phi2) against its initial function.

    An activation module has ``groups``, ``init`` (the name of its start) and ``group_functions(u)`` /
    ``initial_functions(u)``: (n,) values -> (groups, n)."""
    plt = _plt()
    names: Sequence[str] = sorted(acts)
    groups = acts[names[0]].groups
    fig, axes = plt.subplots(len(names), groups, figsize=(2.4 * groups, 2.4 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        act = acts[name]
        data = inputs[name]
        lo, hi = torch.quantile(data, 0.01).item(), torch.quantile(data, 0.99).item()
        u = torch.linspace(lo, hi, 101)
        phi = act.group_functions(u.to(next(act.parameters()).device)).cpu()
        start = act.initial_functions(u)
        for g in range(groups):
            ax = axes[row, g]
            ax.plot(u, start[g], color='0.6', ls='--', lw=1, label=act.init)
            ax.plot(u, phi[g], lw=2, label='learned')
            ax.set_title(f'{name} group {g}', fontsize=8)
            ax.tick_params(labelsize=6)
        axes[row, 0].legend(fontsize=6)
    fig.suptitle(title or 'learned activations against their start', fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
