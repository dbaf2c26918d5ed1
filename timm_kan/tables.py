"""Tables for README.md and docs/*.md generated from the registry, the accounting function and measured runs
(never typed by hand)."""
import functools
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm

from .accounting import count_flops, count_parameters
from .io import markdown_table
from .layers import KAN_FAMILIES
from .models import ARCHS
from .models.kan_vit import ADAPTER_KWARGS

__all__ = ['block_files', 'kanify_table', 'mission_table', 'options_table', 'performance_section',
           'cpu_performance_section', 'registry_table', 'replace_block', 'results_section', 'update_readme']

_MLP_DESIGN = 'MLP (timm ViT)'


def _default_text(value) -> str:
    return f'`{tuple(value) if isinstance(value, list) else value}`'


def options_table() -> str:
    """Markdown table of every ``create_model`` option: the families that take it, its default and its meaning, from
    the family table and the layers' and blocks' ``argument_help``; then the load-time options."""
    rows: Dict[Tuple[str, str], list] = {}
    for family in KAN_FAMILIES.values():
        helps, defaults = family.option_help(), family.defaults()
        for option in family.options:
            rows.setdefault((option, helps[option]), []).append((family, defaults[option]))
    table = []
    for (option, meaning), takers in rows.items():
        names = 'all' if len(takers) == len(KAN_FAMILIES) else ', '.join(f'`{f.prefix}_*`' for f, _ in takers)
        if len({repr(v) for _, v in takers}) == 1:
            default = _default_text(takers[0][1])
        else:
            default = '; '.join(f'{_default_text(v)} ({f.display})' for f, v in takers)
        table.append([f'`{option}`', names, default, meaning])
    table += [[f'`{option}`', 'all', default, meaning] for option, (default, meaning) in ADAPTER_KWARGS.items()]
    return markdown_table(('option', 'family', 'default', 'meaning'), table)


def registry_table() -> str:
    """Markdown table of every KAN-ViT size next to timm's ViT: parameters and forward GFLOPs at 224 px.

    Models are built on the meta device (no memory, no weights); FLOPs come from FlopCounterMode.
    """
    return _registry_table(tuple(KAN_FAMILIES), tuple(ARCHS))


def counts_at_depth(name: str, depth: int) -> Tuple[Dict[str, int], int]:
    """(``count_parameters``, forward FLOPs at 224 px) of the registered model ``name`` at ``depth``, from builds of
    depth 1 and 2: its blocks are alike, so every count is affine in the depth (exact; a full build of ViT-B takes
    ten times as long)."""
    shallow = [timm.create_model(name, num_classes=1000, device='meta', depth=d) for d in (1, 2)]
    (p1, f1), (p2, f2) = [(count_parameters(m), count_flops(m)) for m in shallow]
    return {k: p1[k] + (depth - 1) * (p2[k] - p1[k]) for k in p1}, f1 + (depth - 1) * (f2 - f1)


@functools.lru_cache(maxsize=4)
def _registry_table(families: Tuple[str, ...], archs: Tuple[str, ...]) -> str:
    """``registry_table`` for the families and sizes registered now."""
    rows: List[List[str]] = []
    for arch, (vit, alias, hub_id, _) in ARCHS.items():
        for family in (None, *KAN_FAMILIES.values()):
            name = f'{family.prefix}_{arch}' if family else f'vit_{arch}'
            counts, flops = counts_at_depth(name, vit['depth'])
            rows.append([
                f'`{name}`', f'`{family.prefix}_{alias}`' if family else '',
                family.describe() if family else _MLP_DESIGN, f'{counts["total"] / 1e6:.1f}',
                f'{counts["ffn"] / 1e6:.1f}', f'{flops / 1e9:.1f}',
                f'`.{hub_id.split(".", 1)[1]}`' if family else ''])
    return markdown_table(
        ('model', 'alias', 'FFN', 'params (M)', 'FFN params (M)', 'GFLOPs', 'pretrained tag'), rows)


# the bases of the kanify table: one per architecture the tests convert (the ViTs of DeiT and CLIP take the same path
# as DeiT III and DINOv2; vit_small_patch16_rope_224 is timm's EVA class)
KANIFY_BASES = ('swin_tiny_patch4_window7_224', 'convnext_tiny', 'deit3_small_patch16_224', 'beit_base_patch16_224',
                'cait_xxs24_224', 'mixer_s16_224', 'poolformer_s12', 'maxvit_tiny_tf_224', 'vit_small_patch16_rope_224',
                'vit_small_patch14_dinov2')


@functools.lru_cache(maxsize=1)
def kanify_table() -> str:
    """Markdown table of ``kanify`` with ``kan_init='mlp'`` on timm models (the KAN-layer families and the
    group-rational one): per family the parameters against the base and whether the outputs are the base's
    (``exact``, or ``fit``: within the rational GELU fit), and the MLPs it cannot convert. Built on the meta
    device."""
    import copy

    from .models.kanify import convert

    families = [f for f in KAN_FAMILIES.values() if not f.control]
    rows = []
    for name in KANIFY_BASES:
        base = timm.create_model(name, device='meta')
        params = count_parameters(base)['total']
        cells = []
        for family in families:
            report = convert(copy.deepcopy(base), family, 'mlp', 'warn', {}, load=False)
            left = f' ({len(report.skipped)} left)' if report.skipped else ''
            cells.append(f'{report.params_after / params:.2f}x, {report.preserved}{left}')
        rows.append([f'`{name}`', f'{sum(type(m).__name__ == "Mlp" for m in base.modules())}', f'{params / 1e6:.1f}',
                     *cells])
    return markdown_table(('base', 'MLPs', 'params (M)', *(f'`{f.any_model}`' for f in families)), rows)


@functools.lru_cache(maxsize=4)
def _size_ratios(arch: str, families: Tuple[str, ...]) -> List[Tuple[float, float]]:
    """(parameters, FLOPs) of each family's model at ``arch`` relative to timm's ViT, built on the meta device."""
    depth = ARCHS[arch][0]['depth']
    vit_params, vit_flops = counts_at_depth(f'vit_{arch}', depth)
    ratios = []
    for kan_type in families:
        params, flops = counts_at_depth(f'{KAN_FAMILIES[kan_type].prefix}_{arch}', depth)
        ratios.append((params['total'] / vit_params['total'], flops / vit_flops))
    return ratios


def mission_table(arch: str = 'base_patch16_224', bench_results: Optional[Union[str, Path]] = None) -> str:
    """Each KAN family next to the MLP at one ViT size: parameters and FLOPs relative to the MLP, and its
    FFN speed relative to the MLP from a ``timm-kan bench --json`` file measured on a GPU (else not measured)."""
    speed = {}
    if bench_results:
        rows = json.loads(Path(bench_results).read_text())['ffn']
        speed = {r['variant']: r['fwd_bwd_vs_mlp'] for r in rows}
    rows = []
    for family, (params, flops) in zip(KAN_FAMILIES.values(), _size_ratios(arch, tuple(KAN_FAMILIES))):
        ratio = speed.get(family.bench_variant(fused=True))  # the GPU row: the kernels where the family has them
        rows.append([f'`{family.prefix}_*`', family.describe(), f'{params:.2f}x', f'{flops:.2f}x',
                     f'{ratio:.2f}x' if ratio else 'not measured yet'])
    return markdown_table(
        ('family', 'FFN', 'params vs MLP', 'GFLOPs vs MLP', 'FFN fwd+bwd time vs MLP (GPU)'), rows)


def performance_section(bench_results: Optional[Union[str, Path]] = None) -> str:
    """The full report of a ``timm-kan bench --json`` file (device, versions, date, command, every table and
    the targets), or how to make one."""
    from .bench import format_report

    if bench_results:
        return format_report(json.loads(Path(bench_results).read_text()))
    return ('Not measured yet: no GPU has been available to this project so far. On a CUDA machine,\n'
            '`timm-kan bench --json bench.json` and then\n'
            '`timm-kan models --update-readme README.md --bench-results bench.json` put its report here.')


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what stands between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    pattern = re.compile(rf'(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)', re.S)
    if not pattern.search(text):
        raise ValueError(f'no <!-- {name}:start --> ... <!-- {name}:end --> block found')
    return pattern.sub(lambda m: m.group(1) + content.rstrip('\n') + '\n' + m.group(2), text)


def cpu_performance_section(bench_results: Union[str, Path]) -> str:
    """The report of a CPU ``timm-kan bench --json`` file (README.md keeps one in ``docs/bench/``)."""
    from .bench import format_report

    return format_report(json.loads(Path(bench_results).read_text()))


def _measured(run: Dict[str, Any]) -> str:
    return (f"{run.get('date', 'n/a')} on {run['device']} ({run.get('processor', 'n/a')}) with torch {run['torch']}, "
            f"timm {run['timm']}; command: `{run.get('command', 'n/a')}`")


def speed_memory_section(bench_results: Union[str, Path]) -> str:
    """README's short view of a CPU ``timm-kan bench --shape vit-t --compile --json`` file: each FFN's fwd+bwd
    time against the MLP, eager and compiled, with what compiling buys, then how big a batch fits."""
    from .io import markdown_table

    result = json.loads(Path(bench_results).read_text())
    rows = {r['variant']: r for r in result['ffn']}

    def fmt(v: Optional[float], unit: str = 'x') -> str:
        return 'n/a' if v is None else f'{v:.2f}{unit}'

    speed = []
    for name, row in rows.items():
        if name.endswith(' compiled') or f'{name} compiled' not in rows:
            continue
        compiled = rows[f'{name} compiled']
        gain = compiled['fwd_bwd_ms'] / row['fwd_bwd_ms'] if compiled['fwd_bwd_ms'] and row['fwd_bwd_ms'] else None
        speed.append([name, fmt(row['fwd_bwd_vs_mlp']), fmt(compiled['fwd_bwd_vs_mlp']), fmt(gain),
                      fmt(row['saved_vs_mlp']), fmt(compiled['saved_vs_mlp'])])
    shape = result['shape']
    parts = [f"Measured {result['date']} on {result['device']} ({result.get('processor') or 'n/a'}); command: "
             f"`{result['command']}`. FFN {shape['dim']}->{shape['hidden']}->{shape['dim']} on {shape['tokens']} "
             f"tokens, {result['dtype']}; compiled rows against the compiled MLP:",
             markdown_table(['FFN', 'fwd+bwd vs MLP', 'compiled vs compiled MLP', 'compiled / eager',
                             'saved per token vs MLP', 'compiled'], speed)]
    if result.get('batch_fit'):
        sizes = [k for k in result['batch_fit'][0] if k != 'variant']
        parts += ['How big a batch fits: the activations one FFN block keeps for backward per 224 px image '
                  '(197 tokens), MiB; multiply by the depth (12 for ViT-T/S/B) and the batch:',
                  markdown_table(['FFN', *(k.replace(' MiB/image', '').upper().replace('VIT', 'ViT') for k in sizes)],
                                 [[r['variant'], *(f'{r[k]:.1f}' for k in sizes)] for r in result['batch_fit']])]
    return '\n\n'.join(parts)


def results_section(results_json: Union[str, Path]) -> str:
    """A ``timm-kan compare`` run for README.md: where and how it ran (and each run merged into it by
    ``timm-kan merge-results``), then its table."""
    from .comparison.results import format_table

    run = json.loads(Path(results_json).read_text())
    merged = ''.join(f'\n\nMerged with runs measured {_measured(other)}' for other in run.get('merged', ()))
    return f'Measured {_measured(run)}{merged}\n\n' + format_table(run['results'])


def block_files(readme: Union[str, Path]) -> List[Path]:
    """The files whose generated blocks :func:`update_readme` rewrites: README.md and the ``docs/*.md`` pages
    next to it."""
    readme = Path(readme)
    return [readme, *sorted((readme.parent / 'docs').glob('*.md'))]


def update_readme(
        readme: Union[str, Path],
        compare_results: Optional[Union[str, Path]] = None,
        bench_results: Optional[Union[str, Path]] = None,
        cpu_bench_results: Optional[Union[str, Path]] = None,
        results: Optional[Dict[str, Union[str, Path]]] = None,
) -> None:
    """Regenerate the model and family tables and the performance sections (GPU figures from a
    ``timm-kan bench --json`` file, CPU figures from another), the Results tables and the comparison table
    from ``timm-kan compare`` ``results.json`` files.

    Each block ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` is rewritten wherever it stands: in ``readme``
    or in the ``docs/*.md`` pages next to it (every file holding it). A block that none of them holds is an
    error, and then nothing is written.
    """
    from .comparison.results import format_table

    blocks = [('models-table', registry_table()), ('options-table', options_table()), ('kanify-table', kanify_table()),
              ('mission-table', mission_table(bench_results=bench_results)),
              ('performance', performance_section(bench_results))]
    if cpu_bench_results:
        blocks.append(('cpu-performance', cpu_performance_section(cpu_bench_results)))
        blocks.append(('speed-memory', speed_memory_section(cpu_bench_results)))
    for name, path in (results or {}).items():  # the Results tables: block results-NAME
        blocks.append((f'results-{name}', results_section(path)))
    if compare_results:
        blocks.append(('compare-table', format_table(json.loads(Path(compare_results).read_text())['results'])))

    files = block_files(readme)
    before = {path: path.read_text(encoding='utf-8') for path in files}
    after = dict(before)
    for name, content in blocks:
        holders = [path for path, text in after.items() if f'<!-- {name}:start -->' in text]
        if not holders:
            raise ValueError(f'no <!-- {name}:start --> ... <!-- {name}:end --> block found in {files[0]} or '
                             f'{files[0].parent / "docs"}/*.md')
        for path in holders:
            after[path] = replace_block(after[path], name, content)
    for path in files:
        if after[path] != before[path]:
            path.write_text(after[path], encoding='utf-8')
