"""What ``timm-kan compare`` writes: the markdown table, ``results.json``, ``results.csv`` and the plots
(loss, accuracy with the spread over seeds, accuracy against GFLOPs and against parameters).

Every file is replaced atomically after each epoch of each model, so an interrupted run keeps what it finished.
"""
import csv
import os
import statistics
import string
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..io import markdown_table, write_atomic, write_json_atomic
from ..models import family_of_model

__all__ = ['TABLE_COLUMNS', 'format_table', 'write_results', 'describe_trained', 'group_runs']

TABLE_COLUMNS = (
    ('model', 'model', '{}'), ('design', 'design', '{}'), ('trained', 'trained', '{}'), ('seeds', 'seeds', '{}'),
    ('params (M)', 'params', '{:.2f}'),
    ('trainable (M)', 'trainable_params', '{:.2f}'), ('GFLOPs', 'gflops', '{:.3f}'),
    ('train min', 'train_minutes', '{:.2f}'), ('img/s', 'images_per_second', '{:.0f}'),
    ('peak MiB', 'peak_memory_mib', '{:.0f}'), ('val loss', 'val_loss', '{:.4f}'),
    ('top-1', 'top1', '{:.2f}'), ('top-5', 'top5', '{:.2f}'),
)
_CSV_FIELDS = ['model', 'seed', 'design', 'params', 'trainable_params', 'gflops', 'epoch', 'train_loss', 'val_loss',
               'top1', 'top5', 'epoch_seconds', 'images_per_second', 'lr', 'peak_memory_mib']


# columns reported as mean +- std over seeds; the others are equal across seeds (sizes) or averaged (speed)
_SPREAD = ('val_loss', 'top1', 'top5')


def describe_trained(result: Dict[str, Any]) -> str:
    """What was trained: patch, width, depth, hidden width and the family's options (e.g. 'p7 w96 d4 h384')."""
    args = result.get('model_args') or {}
    parts = [f'{k[0]}{args[n]}' for k, n in (('p', 'patch_size'), ('w', 'embed_dim'), ('d', 'depth')) if n in args]
    # results files written before 'hidden' was recorded: the width the arguments imply
    hidden = result.get('hidden') or args.get('kan_hidden') or (
        int(args['embed_dim'] * args.get('mlp_ratio', 4)) if 'embed_dim' in args else None)
    if hidden:
        parts.append(f'h{hidden}')
    family = family_of_model(result['model'])
    text = ' '.join(parts)
    if not family:
        return text
    # the summary's options, then every other family option set to a non-default value (kan_fused changes speed,
    # not the model)
    shown = {f for _, f, _, _ in string.Formatter().parse(family.summary) if f} | {'kan_hidden', 'kan_fused'}
    defaults = family.defaults()
    extra = [f'{k}={args[k]}' for k in family.options if k in args and k not in shown
             and _plain(args[k]) != _plain(defaults.get(k))]
    return ', '.join([text, family.describe(args).split(', ', 1)[-1], *extra])


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # results.json keeps tuples as lists


def group_runs(results: Sequence[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """The runs of each model (one per seed), in the order the models first appear."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r['model'], []).append(r)
    return list(groups.values())


def _cell(runs: List[Dict[str, Any]], key: str, fmt: str) -> str:
    if key == 'trained':
        return describe_trained(runs[0])
    if key == 'seeds':
        return str(len(runs))
    values = [r[key] / 1e6 if key in ('params', 'trainable_params') else r[key] for r in runs]
    if isinstance(values[0], str):
        return values[0]
    if key in _SPREAD and len(values) > 1:
        return f'{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}'
    return fmt.format(statistics.mean(values))


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of the comparison, a row per model (parameters in millions; accuracy and loss as
    mean ± standard deviation over seeds when a model was trained with several)."""
    rows = [[_cell(runs, key, fmt) for _, key, fmt in TABLE_COLUMNS] for runs in group_runs(results)]
    return markdown_table([c[0] for c in TABLE_COLUMNS], rows)


def write_results(results: List[Dict[str, Any]], out_dir: Path, meta: Dict[str, Any]) -> None:
    """results.json (run configuration and every model's result and history), results.csv (a row per model and
    epoch) and the plots; each file replaced atomically."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / 'results.json', dict(meta, results=results))

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for r in results:
            for h in r['history']:
                writer.writerow({k: h.get(k, r.get(k)) for k in _CSV_FIELDS})

    write_atomic(out_dir / 'results.csv', write_csv)
    if results:  # a run whose first model failed has nothing to draw yet
        _plot(results, out_dir)


def _savefig(fig, path: Path) -> None:
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp.png')
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _history(runs: List[Dict[str, Any]], metric: str):
    """Epochs and, per epoch, the mean, min and max of ``metric`` over a model's runs (epochs all runs reached)."""
    epochs = min(len(r['history']) for r in runs)
    values = [[r['history'][e][metric] for r in runs] for e in range(epochs)]
    return (list(range(1, epochs + 1)), [statistics.mean(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def _plot(results: List[Dict[str, Any]], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = group_runs(results)
    for metric, fname, ylabel in (
            (('train_loss', 'val_loss'), 'loss.png', 'loss'), (('top1', 'top5'), 'accuracy.png', 'accuracy (%)')):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for runs in groups:
            for m, style in zip(metric, ('-', '--')):
                epochs, mean, low, high = _history(runs, m)
                seeds = f' (mean of {len(runs)} seeds)' if len(runs) > 1 else ''
                line, = ax.plot(epochs, mean, style, marker='o', ms=3, label=f'{runs[0]["model"]} {m}{seeds}')
                if len(runs) > 1:  # the spread over seeds
                    ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        _savefig(fig, out_dir / fname)
        plt.close(fig)
    for key, fname, xlabel in (('gflops', 'accuracy_vs_gflops.png', 'GFLOPs per image (forward)'),
                               ('params', 'accuracy_vs_params.png', 'parameters (M)')):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for runs in groups:
            x = runs[0][key] / (1e6 if key == 'params' else 1)
            top1 = [r['top1'] for r in runs]
            ax.errorbar(x, statistics.mean(top1), yerr=statistics.stdev(top1) if len(top1) > 1 else None,
                        fmt='o', capsize=3)
            ax.annotate(f'{runs[0]["model"]} ({describe_trained(runs[0])})', (x, statistics.mean(top1)), fontsize=6,
                        xytext=(4, 4), textcoords='offset points')
        ax.set_xlabel(xlabel)
        ax.set_ylabel('validation top-1 (%), mean ± std over seeds')
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _savefig(fig, out_dir / fname)
        plt.close(fig)
