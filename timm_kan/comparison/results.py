"""What ``timm-kan compare`` writes: the markdown table, ``results.json``, ``results.csv`` and the plots
(loss, accuracy with the spread over seeds, accuracy against GFLOPs and against parameters).

Every file is replaced atomically after each epoch of each model, so an interrupted run keeps what it finished.
Runs of other models under the same configuration join a results file through :func:`merge_results`
(``timm-kan merge-results``).
"""
import csv
import math
import os
import statistics
import string
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io import markdown_table, write_atomic, write_json_atomic
from ..models import family_of_model

__all__ = ['TABLE_COLUMNS', 'CONTROL_COLUMN', 'format_table', 'write_results', 'describe_trained', 'group_runs',
           'control_differences', 'merge_results']

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
# each family's top-1 gain over the ViT beyond the control's (a family with ``control``), placed after top-1
CONTROL_COLUMN = 'Δ − Δcontrol'


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


def _top1(runs: List[Dict[str, Any]]) -> Tuple[float, Optional[float]]:
    values = [r['top1'] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def control_differences(results: Sequence[Dict[str, Any]]) -> Optional[Dict[str, str]]:
    """Per KAN model, how much of its top-1 gain over the MLP ViT is more than the control's: Δ family − Δ control,
    which is the family's mean top-1 minus the control's (the ViT's mean cancels), ± sqrt(s_f² + s_c²) from the two
    standard deviations over seeds when both have several. None unless the results hold a ViT, a control (the
    first one's rows are used) and a family to set against it."""
    groups = group_runs(results)
    families = [(runs, family_of_model(runs[0]['model'])) for runs in groups]
    controls = [runs for runs, family in families if family is not None and family.control]
    if not controls or all(family is not None for _, family in families):
        return None
    control_mean, control_std = _top1(controls[0])
    out = {}
    for runs, family in families:
        if family is not None and not family.control:
            mean, std = _top1(runs)
            spread = f' ± {math.hypot(std, control_std):.2f}' if std is not None and control_std is not None else ''
            out[runs[0]['model']] = f'{mean - control_mean:+.2f}{spread}'
    return out or None


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of the comparison, a row per model (parameters in millions; accuracy and loss as
    mean ± standard deviation over seeds when a model was trained with several). With a control family's rows
    and the ViT's, a column after top-1 gives each KAN family's gain beyond the control's
    (:func:`control_differences`)."""
    groups = group_runs(results)
    header = [c[0] for c in TABLE_COLUMNS]
    rows = [[_cell(runs, key, fmt) for _, key, fmt in TABLE_COLUMNS] for runs in groups]
    beyond = control_differences(results)
    if beyond is not None:
        at = header.index('top-1') + 1
        header.insert(at, CONTROL_COLUMN)
        for runs, row in zip(groups, rows):
            row.insert(at, beyond.get(runs[0]['model'], ''))
    return markdown_table(header, rows)


# what two compare runs must share for their rows to stand in one table: data, split, recipe, model options (the
# configuration but for its models), and what was recorded of each run
_SAME_RUN = ('data', 'recipe', 'recipe_args', 'model_kwargs', 'seed', 'world_size', 'classes')
_RUN_RECORD = ('command', 'date', 'device', 'processor', 'torch', 'timm')


def _differences(path: str, there: Any, here: Any) -> List[str]:
    """'path: a there, b here' for each value that differs, nested dictionaries compared key by key."""
    if isinstance(there, dict) and isinstance(here, dict):
        return [d for k in sorted(set(there) | set(here), key=str)
                for d in _differences(f'{path}.{k}' if path else str(k), there.get(k), here.get(k))]
    return [] if there == here else [f'{path}: {there!r} there, {here!r} here']


def _run_differences(run: Dict[str, Any], base: Dict[str, Any]) -> List[str]:
    """What ``run`` was made under that ``base`` was not (the data manifest only where both recorded one)."""
    def made_under(r: Dict[str, Any]) -> Dict[str, Any]:
        out = {k: r.get(k) for k in _SAME_RUN}
        out['config'] = {k: v for k, v in r.get('config', {}).items() if k != 'models'}
        if 'data_manifest' in run and 'data_manifest' in base:
            out['data_manifest'] = r['data_manifest']
        return out

    return _differences('', made_under(base), made_under(run))


def merge_results(runs: Sequence[Dict[str, Any]], names: Sequence[str]) -> Dict[str, Any]:
    """One results file from several ``compare`` runs' ``results.json`` contents (``names``: their files, for
    errors): the first's metadata, every run's results in order, the models added to ``config.models`` and, in
    ``merged``, how each other run was made (command, date, machine, versions).

    Refused with a ValueError naming the file and each difference unless every run was made under the first's
    data, split, recipe and model options, or when two runs hold the same model and seed."""
    base = runs[0]
    merged = dict(base, results=list(base['results']), config=dict(base.get('config', {})),
                  merged=list(base.get('merged', [])))
    merged['config']['models'] = list(merged['config'].get('models', []))
    owner = {(r['model'], r['seed']): names[0] for r in base['results']}
    for run, name in zip(runs[1:], names[1:]):
        differs = _run_differences(run, base)
        if differs:
            more = f' (+{len(differs) - 5} more)' if len(differs) > 5 else ''
            raise ValueError(f'{name} was run under another configuration than {names[0]} ({"; ".join(differs[:5])}'
                             f'{more}): its results cannot stand in one table with them')
        for r in run['results']:
            if (r['model'], r['seed']) in owner:
                raise ValueError(f'{name} and {owner[(r["model"], r["seed"])]} both hold {r["model"]} seed '
                                 f'{r["seed"]}: merge each model and seed once')
            owner[(r['model'], r['seed'])] = name
        merged['results'] += run['results']
        merged['config']['models'] += [m for m in run.get('config', {}).get('models', [])
                                       if m not in merged['config']['models']]
        merged['merged'].append({k: run.get(k) for k in _RUN_RECORD})
        if run.get('failed'):
            merged['failed'] = list(merged.get('failed', [])) + run['failed']
    return merged


def write_results(results: List[Dict[str, Any]], out_dir: Path, meta: Dict[str, Any], plots: bool = True) -> None:
    """results.json (run configuration and every model's result and history), results.csv (a row per model and
    epoch) and (``plots``) the plots; each file replaced atomically."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / 'results.json', dict(meta, results=results))

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for r in results:
            for h in r['history']:
                writer.writerow({k: h.get(k, r.get(k)) for k in _CSV_FIELDS})

    write_atomic(out_dir / 'results.csv', write_csv)
    if plots and results:  # a run whose first model failed has nothing to draw yet
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
