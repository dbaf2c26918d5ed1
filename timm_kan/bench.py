"""``timm-kan bench`` / ``python -m timm_kan.bench``: KAN feed-forward blocks against the MLP.

For one FFN shape (tokens x dim -> hidden -> dim) it times forward and forward+backward, measures the
peak memory above the inputs (CUDA only) and the ratio of each to the MLP in the same run, for:
the MLP; each KAN block on the PyTorch reference path and on the fused Triton path (where a kernel
exists and Triton runs); the published Chebyshev formula cos(k * acos(tanh x)) + einsum, written from
the math as a baseline; the peer package ``ikan`` (its Chebyshev and efficient-KAN layers) when it is
installed; whole-model training images/s for chosen models; and, for chosen KAN-ViTs, training images/s
on the fused path against the PyTorch reference path. Each of the project's GPU targets that the run
covers is checked in a last table. On a CPU it runs too, with small default shapes (timings there say
nothing about the GPU).
"""
import argparse
import datetime
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .io import processor_name
from .accounting import saved_bytes_per_row
from .bench_models import (
    bench_memory, bench_paths, bench_training, check_targets, device_and_dtype, release_memory, time_call,
    time_paired)
from .bench_variants import PublishedChebyshevKAN, ffn_variants, import_ikan
from .layers import KAN_FAMILIES

__all__ = ['PublishedChebyshevKAN', 'batch_fit', 'bench_ffn', 'bench_memory', 'bench_paths', 'bench_training',
           'check_targets', 'format_report', 'main']


def _gemm_flops(module: nn.Module, x: torch.Tensor) -> int:
    """Matrix-product FLOPs of one forward (the layer's GEMM floor), from ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def _steps(module: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype) -> Tuple[Callable[[], Any], Callable[[], Any]]:
    """The timed calls of one FFN: its forward (no grad) and its forward+backward, under the bench's autocast."""
    dev = x.device

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    def fwd():
        with torch.no_grad(), autocast():
            return module(x)

    def fwd_bwd():
        with autocast():
            y = module(x)
        y.float().sum().backward()

    return fwd, fwd_bwd


def _measure_variant(make: Callable[[], nn.Module], x: torch.Tensor, amp_dtype: torch.dtype, warmup: int,
                     reps: int, compiled: bool = False, reference: Optional[Tuple[Callable, Callable]] = None,
                     ) -> Tuple[Dict[str, Any], Tuple[Callable, Callable]]:
    """Forward and forward+backward milliseconds, GEMM FLOPs, the activations kept for backward per token and (CUDA)
    peak extra memory of one FFN, run eagerly or through ``torch.compile`` (its compilation happens in the warmup);
    and its timed calls. With the MLP's timed calls as ``reference``, each is timed in turns with the MLP's, and the
    row holds the median ratio of the pairs."""
    dev = x.device
    torch.manual_seed(0)
    module = make().to(dev)
    row: Dict[str, Any] = dict(gemm_flops=_gemm_flops(module, x[:8].detach()))
    if compiled:
        module = torch.compile(module)
    steps = _steps(module, x, amp_dtype)
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        # the slope over 128 -> 256 tokens: what a batch adds, not the per-layer constants
        row['saved_kib_per_token'] = saved_bytes_per_row(
            module, lambda n: torch.randn(n, x.shape[-1], device=dev, requires_grad=True), 128) / 2 ** 10
    for key, step, ref in zip(('forward', 'fwd_bwd'), steps, reference or (None, None)):
        if ref is None:
            row[f'{key}_ms'] = time_call(step, dev, warmup, reps)
        else:
            row[f'{key}_ms'], row[f'{key}_vs_mlp'] = time_paired(step, ref, dev, warmup, reps)
    if dev.type == 'cuda':
        module.zero_grad(set_to_none=True)
        x.grad = None
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        steps[1]()
        torch.cuda.synchronize(dev)
        row['peak_extra_mib'] = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
    return row, steps


def _add_ratios(rows: List[Dict[str, Any]]) -> None:
    """Each row's ratios to the MLP (compiled rows: to the 'mlp compiled' row) where it has no paired ones, and its
    GEMM floor."""
    mlps = {False: rows[0], True: next((r for r in rows if r['variant'] == 'mlp compiled'), None)}
    mlp_flops = rows[0].get('gemm_flops')

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a and b else None

    for r in rows:
        mlp = mlps[r['variant'].endswith(' compiled')]
        r.setdefault('fwd_bwd_vs_mlp', ratio(r['fwd_bwd_ms'], mlp['fwd_bwd_ms']))
        r.setdefault('forward_vs_mlp', ratio(r['forward_ms'], mlp['forward_ms']))
        r['gemm_floor'] = r.pop('gemm_flops', 0) / mlp_flops if mlp_flops else None
        r['saved_vs_mlp'] = ratio(r['saved_kib_per_token'], mlp['saved_kib_per_token'])
        r['memory_vs_mlp'] = ratio(r['peak_extra_mib'], mlp['peak_extra_mib'])


def bench_ffn(
        tokens: int, dim: int, hidden: int, degree: int = 3, dtype: str = 'bfloat16', device: Optional[str] = None,
        warmup: int = 3, reps: int = 10, only: Optional[Sequence[str]] = None, compiled: bool = False,
) -> List[Dict[str, Any]]:
    """Rows of forward / forward+backward time, activations kept for backward per token (saved-tensor hooks, on
    every device) and peak extra memory (CUDA) per FFN variant, with ratios to the MLP (each variant timed in turns
    with it: the median ratio of the pairs), and each variant's GEMM floor: its matrix-product FLOPs as a multiple
    of the MLP's.

    ``only`` keeps these variants, in its order (the MLP always runs, first). ``compiled`` adds, after each
    variant's rows, a ``'<variant> compiled'`` row per variant run through ``torch.compile``, whose ratios are to
    the compiled MLP. A variant that runs out of memory gets a row with no figures and the note ``out of memory``.
    """
    from .kernels import triton_available

    dev, amp_dtype = device_and_dtype(device, dtype)
    fused_ok = dev.type == 'cuda' and triton_available()
    variants = ffn_variants(dim, hidden, degree, fused_ok)
    unknown = sorted(set(only or ()) - set(variants))
    if unknown:
        raise ValueError(f'unknown FFN variants {unknown}; available here: {sorted(variants)}')
    import time

    from .io import progress_line

    chosen = ['mlp', *dict.fromkeys(n for n in only if n != 'mlp')] if only else list(variants)
    started = time.perf_counter()
    # every eager row before the first compile: once inductor's kernels have run, their OpenMP threads keep
    # spinning and slow the eager ops that follow (measured: every eager KAN row 1.5-2x slower after them)
    runs = [(name, False) for name in chosen] + [(name, True) for name in chosen if compiled]
    rows = []
    references: Dict[bool, Tuple[Callable, Callable]] = {}  # the MLP's timed calls, eager and compiled
    for name, compile_it in runs:
        make = variants[name]
        row: Dict[str, Any] = dict(variant=f'{name} compiled' if compile_it else name, forward_ms=None,
                                   fwd_bwd_ms=None, saved_kib_per_token=None, peak_extra_mib=None, note='')
        x = torch.randn(tokens, dim, device=dev, requires_grad=True)
        try:
            measured, steps = _measure_variant(make, x, amp_dtype, warmup, reps, compile_it,
                                               references.get(compile_it))
            row.update(measured)
            if name == 'mlp':
                references[compile_it] = steps
        except torch.OutOfMemoryError:
            row.update(forward_ms=None, fwd_bwd_ms=None, note='out of memory')
        except Exception as e:  # a variant torch.compile cannot take (a peer's layer) must not stop the bench
            if not compile_it:
                raise
            row.update(forward_ms=None, fwd_bwd_ms=None, note=f'compile failed: {type(e).__name__}')
        x = None
        release_memory(dev)
        rows.append(row)
        progress_line(f'bench ffn {len(rows)}/{len(runs)} {row["variant"]}: ' + (
            row['note'] if row['note'] else
            f"forward {row['forward_ms']:.3f} ms, forward+backward {row['fwd_bwd_ms']:.3f} ms"), start=started)
    _add_ratios(rows)
    return rows


# widths of ViT-T/S/B and the tokens of one 224 px image at patch 16 (196 patches + the class token)
FIT_WIDTHS = {'vit-t': 192, 'vit-s': 384, 'vit-b': 768}
TOKENS_PER_IMAGE = 197


def batch_fit(dtype: str = 'float32', device: Optional[str] = None) -> List[Dict[str, Any]]:
    """How big a batch fits: the activations one FFN block keeps per 224 px image (MiB), the MLP's and each
    family's reference block, at ViT-T/S/B width (hidden 4x), eager."""
    dev, amp_dtype = device_and_dtype(device, dtype)
    rows: Dict[str, Dict[str, Any]] = {}
    for size, dim in FIT_WIDTHS.items():
        variants = ffn_variants(dim, 4 * dim, 3, fused_ok=False)
        for name in ['mlp', *(f.bench_variant(False) for f in KAN_FAMILIES.values())]:
            torch.manual_seed(0)
            block = variants[name]().to(dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                per_token = saved_bytes_per_row(
                    block, lambda n: torch.randn(n, dim, device=dev, requires_grad=True), 128)
            rows.setdefault(name, dict(variant=name))[f'{size} MiB/image'] = per_token * TOKENS_PER_IMAGE / 2 ** 20
            block = None
            release_memory(dev)
    return list(rows.values())


def _fmt(v: Any) -> str:
    if v is None:
        return 'n/a'
    if isinstance(v, bool):
        return 'yes' if v else 'no'
    return f'{v:.3f}' if isinstance(v, float) else str(v)


def _table(rows: List[Dict[str, Any]]) -> str:
    from .io import markdown_table
    return markdown_table(list(rows[0]), [[_fmt(r[k]) for k in rows[0]] for r in rows])


def format_report(result: Dict[str, Any]) -> str:
    """Markdown of a bench result (as ``--json`` writes it): where and how it was measured, then its tables."""
    shape = result['shape']
    parts = [
        f"Measured {result['date']} on {result['device']} with torch {result['torch']}, Triton {result['triton']}, "
        f"timm {result['timm']}, ikan {result['ikan']}"
        + (f"; processor: {result['processor']}" if result.get('processor') else '')
        + f"; command: `{result['command']}`",
        f"FFN {shape['dim']}->{shape['hidden']}->{shape['dim']} on {shape['tokens']} tokens, {result['dtype']}, "
        f"forward and forward+backward, median of {result['reps']} (ratios to the MLP: the median of pairs timed "
        "in turns with it); saved_kib_per_token: the activations kept for "
        "backward per token (slope from 128 to 256 tokens); peak memory above the inputs on CUDA only; gemm_floor: "
        "the variant's matrix-product FLOPs as a multiple of the MLP's; compiled rows: ratios to the compiled MLP:",
        _table(result['ffn']),
    ]
    if result.get('training'):
        precision = 'fp32' if result['dtype'] == 'float32' else f"{result['dtype']} autocast"
        parts += [f'Training step (AdamW, {precision}), images/s:', _table(result['training'])]
    if result.get('paths'):
        parts += ['Training images/s with the fused kernels against the PyTorch reference path:',
                  _table(result['paths'])]
    if result.get('memory'):
        parts += ['Training memory per model: activations kept per image (saved-tensor hooks, slope from 1 to 2 '
                  f"images, {result['dtype']}) and the fixed weights + gradients + AdamW moments; peak is about fixed "
                  '+ batch x per image:', _table(result['memory'])]
    if result.get('batch_fit'):
        parts += ['How big a batch fits: activations one FFN block keeps per 224 px image (197 tokens), MiB; '
                  'multiply by depth and batch:', _table(result['batch_fit'])]
    targets = check_targets(result)
    if targets:
        parts += ['Targets:', _table(targets)]
    return '\n\n'.join(parts)


# (dim, hidden, tokens) of the FFNs of whole models: ViT-T/S/B at 224 px (ViT-T/S: 22 images of 197 tokens,
# ViT-B: 64), and README's compare run (width 96, 16 patches + class token, batch 64)
SHAPES = {'vit-t': (192, 768, 4352), 'vit-s': (384, 1536, 4352), 'vit-b': (768, 3072, 12608),
          'compare': (96, 384, 1088)}


def _parser() -> argparse.ArgumentParser:
    from .arguments import KwargsAction, OneLineParser, bounded

    cuda = torch.cuda.is_available()
    count = bounded(int, low=1)
    p = OneLineParser(prog='timm-kan bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true',
                   help="run every fused kernel x dtype once against the reference and print the table (no timing)")
    p.add_argument('--shape', choices=sorted(SHAPES), default=None,
                   help='FFN shape of a model: ' + '; '.join(f'{k}: {v[0]}->{v[1]}->{v[0]} on {v[2]} tokens'
                                                             for k, v in SHAPES.items()))
    p.add_argument('--tokens', type=count, default=None,
                   help='rows (batch x tokens); default 12608 on CUDA, 512 on CPU')
    p.add_argument('--dim', type=count, default=None, help='default 768 on CUDA, 64 on CPU')
    p.add_argument('--hidden', type=count, default=None, help='default 3072 on CUDA, 256 on CPU')
    p.add_argument('--degree', type=count, default=3)
    p.add_argument('--dtype', default='bfloat16' if cuda else 'float32', choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--device', default=None)
    p.add_argument('--reps', type=count, default=20 if cuda else 3)
    p.add_argument('--warmup', type=bounded(int, low=0), default=5 if cuda else 1)
    p.add_argument('--variants', nargs='*', default=None, help='FFN variants to run (default: all; MLP always)')
    p.add_argument('--compile', action='store_true', help="also run each FFN variant through torch.compile")
    p.add_argument('--models', nargs='*', default=[
        'vit_base_patch16_224', *(f'{f.prefix}_base_patch16_224' for f in KAN_FAMILIES.values())] if cuda else [],
        help='models for the training images/s table')
    p.add_argument('--path-models', nargs='*', default=[
        f'{f.prefix}_{size}_patch16_224' for size in ('tiny', 'small') for f in KAN_FAMILIES.values() if f.has_kernel]
        if cuda else [], help='KAN-ViTs (of the families with kernels) to train on the fused and on the reference path')
    p.add_argument('--memory-models', nargs='*', default=None, help='models for the training-memory table (default '
                   'with --shape: the ViT and each family at T and S size; else none); --shape adds the batch-fit '
                   'table too')
    p.add_argument('--batch-size', type=count, default=64)
    p.add_argument('--img-size', type=count, default=None)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=KwargsAction,
                   help='create_model kwargs for both training tables, key=value')
    p.add_argument('--steps', type=count, default=10 if cuda else 2, help='timed training steps per model')
    p.add_argument('--json', default=None, help='also write all numbers to this file')
    return p


def _self_check_table(device: Optional[str]) -> str:
    from .kernels import self_test

    rows = self_test(device)
    return _table([dict(kernel=r.kernel, dtype=r.dtype, device=r.device, ok=r.ok, max_error=r.max_error,
                        reason=r.reason) for r in rows]).replace('| max_error |', '| max error |', 1)


def _memory_tables(result: Dict[str, Any], args: argparse.Namespace, common: Dict[str, Any], started: float) -> None:
    """The training memory per model (``--memory-models``; with ``--shape``, by default the ViT and each family at
    T and S size) and, with ``--shape``, the batch-fit table."""
    from .io import progress_line

    memory_models = args.memory_models if args.memory_models is not None else [
        f'{prefix}_{size}_patch16_224' for size in ('tiny', 'small')
        for prefix in ('vit', *(f.prefix for f in KAN_FAMILIES.values()))] if args.shape else []
    if memory_models:
        result['memory'] = bench_memory(memory_models, **common)
        progress_line(f'bench memory: {len(memory_models)} models', start=started)
    if args.shape:
        result['batch_fit'] = batch_fit(args.dtype, args.device)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    import time

    import timm

    from .io import progress_line

    started = time.perf_counter()
    args = _parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    preset = SHAPES[args.shape] if args.shape else ((768, 3072, 12608) if cuda else (64, 256, 512))
    for key, value in zip(('dim', 'hidden', 'tokens'), preset):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.check:
        table = _self_check_table(args.device)
        print(table)
        return dict(check=table)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result: Dict[str, Any] = dict(
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if cuda and not args.device else (args.device or 'cpu'),
        processor=processor_name(),
        torch=torch.__version__, triton=triton_version, timm=timm.__version__, ikan=import_ikan()[1],
        command=' '.join(['timm-kan bench', *(sys.argv[1:] if argv is None else argv)]),
        shape=dict(tokens=args.tokens, dim=args.dim, hidden=args.hidden), preset=args.shape, dtype=args.dtype,
        reps=args.reps)
    result['ffn'] = bench_ffn(args.tokens, args.dim, args.hidden, args.degree, args.dtype, args.device,
                              args.warmup, args.reps, args.variants, args.compile)
    common = dict(img_size=args.img_size, dtype=args.dtype, device=args.device, steps=args.steps,
                  warmup=min(args.warmup, 3), model_kwargs=args.model_kwargs)

    def rate(v: Optional[float], unit: str = '') -> str:
        return 'out of memory' if v is None else f'{v:.1f}{unit}'

    if args.models:  # one line per table as it finishes: a whole-model table can take minutes
        result['training'] = bench_training(args.models, args.batch_size, **common)
        progress_line('bench training: ' + ', '.join(f"{r['model']} {rate(r['images_per_second'], ' images/s')}"
                                                      for r in result['training']), start=started)
    if args.path_models:
        result['paths'] = bench_paths(args.path_models, args.batch_size, **common)
        progress_line('bench paths: ' + ', '.join(
            f"{r['model']} fused {rate(r['fused_images_per_second'])} / reference "
            f"{rate(r['reference_images_per_second'])}" for r in result['paths']) + ' images/s', start=started)
    _memory_tables(result, args, common, started)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
