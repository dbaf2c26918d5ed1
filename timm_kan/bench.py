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
import contextlib
import datetime
import io
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ['PublishedChebyshevKAN', 'bench_ffn', 'bench_paths', 'bench_training', 'check_targets',
           'format_report', 'main']


class PublishedChebyshevKAN(nn.Module):
    """Baseline only: the commonly published Chebyshev KAN layer, T_k(t) = cos(k * acos(tanh x)) + einsum.

    Its gradient is NaN once tanh rounds to +-1; timm_kan's layer uses the recurrence instead.
    """

    def __init__(self, in_features: int, out_features: int, degree: int = 3) -> None:
        super().__init__()
        self.coeffs = nn.Parameter(torch.randn(in_features, out_features, degree + 1) / (in_features * (degree + 1)))
        self.register_buffer('orders', torch.arange(degree + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x).unsqueeze(-1)
        basis = torch.cos(torch.acos(t) * self.orders)
        return torch.einsum('...id,iod->...o', basis, self.coeffs)


def import_ikan() -> Tuple[Optional[Any], str]:
    """The peer package ``ikan`` and its version, or None and why not.

    Importing it prints, and its GroupKAN module changes the working directory: both are undone here.
    """
    cwd = os.getcwd()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            import ikan
    except ImportError:
        return None, 'not installed'
    except Exception as e:  # a peer package's import failure must not stop the benchmark
        return None, f'import failed: {type(e).__name__}: {e}'
    finally:
        os.chdir(cwd)
    return ikan, getattr(ikan, '__version__', 'unknown')


def _ffn_variants(dim: int, hidden: int, degree: int, fused_ok: bool) -> Dict[str, Callable[[], nn.Module]]:
    from timm.layers import Mlp
    from .layers import GRKANMlp, KANMlp

    variants: Dict[str, Callable[[], nn.Module]] = {
        'mlp': lambda: Mlp(dim, hidden),
        'chebyshev published (acos+einsum)': lambda: nn.Sequential(
            PublishedChebyshevKAN(dim, hidden, degree), nn.LayerNorm(hidden),
            PublishedChebyshevKAN(hidden, dim, degree)),
        'chebyshev reference': lambda: KANMlp(dim, hidden, kan_type='chebyshev', degree=degree, kan_fused=False),
        'bspline reference': lambda: KANMlp(dim, hidden, kan_type='bspline', kan_fused=False),
        'rbf reference': lambda: KANMlp(dim, hidden, kan_type='rbf'),
        'group-rational reference': lambda: GRKANMlp(dim, hidden, kan_fused=False),
    }
    if fused_ok:
        variants['chebyshev fused'] = lambda: KANMlp(dim, hidden, kan_type='chebyshev', degree=degree, kan_fused=True)
        variants['bspline fused'] = lambda: KANMlp(dim, hidden, kan_type='bspline', kan_fused=True)
        variants['group-rational fused'] = lambda: GRKANMlp(dim, hidden, kan_fused=True)
    ikan, _ = import_ikan()
    if ikan is not None:
        # the peer's layers in the same two-layer block (LayerNorm between), with their own defaults
        variants['ikan chebyshev (peer)'] = lambda: nn.Sequential(
            ikan.ChebyKANLinear(dim, hidden, degree=degree), nn.LayerNorm(hidden),
            ikan.ChebyKANLinear(hidden, dim, degree=degree))
        variants['ikan efficient-KAN (peer)'] = lambda: nn.Sequential(
            ikan.KANLinear(dim, hidden), nn.LayerNorm(hidden), ikan.KANLinear(hidden, dim))
    return variants


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn`` (device events on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _device_and_dtype(device: Optional[str], dtype: str) -> Tuple[torch.device, torch.dtype]:
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu')), getattr(torch, dtype)


def _release(dev: torch.device) -> None:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def bench_ffn(
        tokens: int, dim: int, hidden: int, degree: int = 3, dtype: str = 'bfloat16', device: Optional[str] = None,
        warmup: int = 3, reps: int = 10, only: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Rows of forward / forward+backward time and peak extra memory per FFN variant, with ratios to the MLP.

    ``only`` keeps these variants (the MLP always runs). A variant that runs out of memory gets a row
    with no figures and the note ``out of memory``.
    """
    from .kernels import triton_available

    dev, amp_dtype = _device_and_dtype(device, dtype)
    use_amp = amp_dtype != torch.float32
    fused_ok = dev.type == 'cuda' and triton_available()
    variants = _ffn_variants(dim, hidden, degree, fused_ok)
    unknown = sorted(set(only or ()) - set(variants))
    if unknown:
        raise ValueError(f'unknown FFN variants {unknown}; available here: {sorted(variants)}')
    rows = []
    for name, make in variants.items():
        if only and name not in only and name != 'mlp':
            continue
        row: Dict[str, Any] = dict(variant=name, forward_ms=None, fwd_bwd_ms=None, peak_extra_mib=None, note='')
        try:
            torch.manual_seed(0)
            module = make().to(dev)
            x = torch.randn(tokens, dim, device=dev, requires_grad=True)

            def fwd():
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    return module(x)

            def fwd_bwd():
                fwd().float().sum().backward()

            with torch.no_grad():
                row['forward_ms'] = _time(fwd, dev, warmup, reps)
            row['fwd_bwd_ms'] = _time(fwd_bwd, dev, warmup, reps)
            if dev.type == 'cuda':
                module.zero_grad(set_to_none=True)
                x.grad = None
                torch.cuda.synchronize(dev)
                base = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                fwd_bwd()
                torch.cuda.synchronize(dev)
                row['peak_extra_mib'] = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
        except torch.OutOfMemoryError:
            row.update(forward_ms=None, fwd_bwd_ms=None, note='out of memory')
        module = x = None
        _release(dev)
        rows.append(row)
    mlp = rows[0]
    for r in rows:
        r['fwd_bwd_vs_mlp'] = r['fwd_bwd_ms'] / mlp['fwd_bwd_ms'] if r['fwd_bwd_ms'] else None
        r['memory_vs_mlp'] = (r['peak_extra_mib'] / mlp['peak_extra_mib']
                              if r['peak_extra_mib'] and mlp['peak_extra_mib'] else None)
    return rows


def _training_rate(
        name: str, batch_size: int, img_size: Optional[int], amp_dtype: torch.dtype, dev: torch.device,
        steps: int, warmup: int, kwargs: Dict[str, Any],
) -> Optional[float]:
    """Images/s of AdamW training steps under autocast, or None when the model does not fit."""
    import timm

    kwargs = dict(kwargs)
    if img_size:
        kwargs['img_size'] = img_size
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000, **kwargs).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch_size, 3, *model.patch_embed.img_size, device=dev)
        y = torch.randint(0, 1000, (batch_size,), device=dev)

        def step():
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return batch_size / _time(step, dev, warmup, steps) * 1e3
    except torch.OutOfMemoryError:
        return None
    finally:
        model = opt = x = y = None  # free this model's memory before the next one is built
        _release(dev)


def bench_training(
        models: Sequence[str], batch_size: int, img_size: Optional[int] = None, dtype: str = 'bfloat16',
        device: Optional[str] = None, steps: int = 10, warmup: int = 3, model_kwargs: Optional[Dict] = None,
) -> List[Dict[str, Any]]:
    """Training images/s (AdamW, autocast) for each model, and the ratio to the first plain ViT in the list.
    A model that runs out of memory gets no figures and the note ``out of memory``."""
    dev, amp_dtype = _device_and_dtype(device, dtype)
    rows = []
    for name in models:
        rate = _training_rate(name, batch_size, img_size, amp_dtype, dev, steps, warmup, model_kwargs or {})
        rows.append(dict(model=name, batch_size=batch_size, images_per_second=rate,
                         note='' if rate else 'out of memory'))
    from .layers import family_of_model
    base = next((r for r in rows if family_of_model(r['model']) is None and r['images_per_second']), None)
    for r in rows:
        r['vs_vit'] = r['images_per_second'] / base['images_per_second'] if base and r['images_per_second'] else None
    return rows


def bench_paths(
        models: Sequence[str], batch_size: int, img_size: Optional[int] = None, dtype: str = 'bfloat16',
        device: Optional[str] = None, steps: int = 10, warmup: int = 3, model_kwargs: Optional[Dict] = None,
) -> List[Dict[str, Any]]:
    """Training images/s of each KAN-ViT with its fused kernels (``kan_fused=True``) and with the PyTorch
    reference (``kan_fused=False``), and their ratio (> 1: the kernels are faster)."""
    dev, amp_dtype = _device_and_dtype(device, dtype)
    rows = []
    for name in models:
        rates = {path: _training_rate(name, batch_size, img_size, amp_dtype, dev, steps, warmup,
                                      dict(model_kwargs or {}, kan_fused=fused))
                 for path, fused in (('reference', False), ('fused', True))}
        ratio = rates['fused'] / rates['reference'] if rates['fused'] and rates['reference'] else None
        rows.append(dict(model=name, batch_size=batch_size, reference_images_per_second=rates['reference'],
                         fused_images_per_second=rates['fused'], fused_vs_reference=ratio))
    return rows


# (what, table, row key, row value, column, goal: 'max' or 'min', bound); from the GPU issue's targets
TARGETS = (
    ('Chebyshev FFN fwd+bwd time vs MLP', 'ffn', 'variant', 'chebyshev fused', 'fwd_bwd_vs_mlp', 'max', 1.6),
    ('Chebyshev FFN extra memory vs MLP', 'ffn', 'variant', 'chebyshev fused', 'memory_vs_mlp', 'max', 1.2),
    ('B-spline FFN fwd+bwd time vs MLP', 'ffn', 'variant', 'bspline fused', 'fwd_bwd_vs_mlp', 'max', 8.0),
    ('B-spline FFN extra memory vs MLP', 'ffn', 'variant', 'bspline fused', 'memory_vs_mlp', 'max', 2.0),
    ('chebykan_vit_base_patch16_224 training images/s vs ViT-B', 'training', 'model',
     'chebykan_vit_base_patch16_224', 'vs_vit', 'min', 0.30),
    ('kan_vit_base_patch16_224 training images/s vs ViT-B (fits at batch 64)', 'training', 'model',
     'kan_vit_base_patch16_224', 'vs_vit', 'min', 0.12),
    ('grkan_vit_base_patch16_224 training images/s vs ViT-B', 'training', 'model',
     'grkan_vit_base_patch16_224', 'vs_vit', 'min', 0.85),
)
# every model of the path table: the fused path never slower than the reference
PATH_TARGET = 1.0


def check_targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The targets this result covers, each with its measured value and whether it is met (a run out of
    memory counts as measured and missed)."""
    rows = []
    for what, table, key, value, column, goal, bound in TARGETS:
        row = next((r for r in result.get(table) or () if r[key] == value), None)
        if row is None:
            continue
        measured = row[column]
        met = measured is not None and (measured <= bound if goal == 'max' else measured >= bound)
        rows.append(dict(target=what, goal=f"{'<=' if goal == 'max' else '>='} {bound:g}", measured=measured, met=met))
    for row in result.get('paths') or ():
        measured = row['fused_vs_reference']
        rows.append(dict(target=f"{row['model']} fused vs reference path images/s", goal=f'>= {PATH_TARGET:g}',
                         measured=measured, met=measured is not None and measured >= PATH_TARGET))
    return rows


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
        f"timm {result['timm']}, ikan {result['ikan']}; command: `{result['command']}`",
        f"FFN {shape['dim']}->{shape['hidden']}->{shape['dim']} on {shape['tokens']} tokens, {result['dtype']}, "
        f"forward and forward+backward, median of {result['reps']} (peak memory above the inputs on CUDA only):",
        _table(result['ffn']),
    ]
    if result.get('training'):
        precision = 'fp32' if result['dtype'] == 'float32' else f"{result['dtype']} autocast"
        parts += [f'Training step (AdamW, {precision}), images/s:', _table(result['training'])]
    if result.get('paths'):
        parts += ['Training images/s with the fused kernels against the PyTorch reference path:',
                  _table(result['paths'])]
    targets = check_targets(result)
    if targets:
        parts += ['Targets:', _table(targets)]
    return '\n\n'.join(parts)


def _parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog='timm-kan bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true',
                   help="run every fused kernel x dtype once against the reference and print the table (no timing)")
    p.add_argument('--tokens', type=int, default=12608 if cuda else 512, help='rows (batch x tokens)')
    p.add_argument('--dim', type=int, default=768 if cuda else 64)
    p.add_argument('--hidden', type=int, default=3072 if cuda else 256)
    p.add_argument('--degree', type=int, default=3)
    p.add_argument('--dtype', default='bfloat16' if cuda else 'float32', choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--device', default=None)
    p.add_argument('--reps', type=int, default=20 if cuda else 3)
    p.add_argument('--warmup', type=int, default=5 if cuda else 1)
    p.add_argument('--variants', nargs='*', default=None, help='FFN variants to run (default: all; MLP always)')
    p.add_argument('--models', nargs='*', default=[
        'vit_base_patch16_224', 'chebykan_vit_base_patch16_224', 'kan_vit_base_patch16_224',
        'grkan_vit_base_patch16_224', 'rbfkan_vit_base_patch16_224'] if cuda else [],
        help='models for the training images/s table')
    p.add_argument('--path-models', nargs='*', default=[
        f'{family}_vit_{size}_patch16_224' for size in ('tiny', 'small') for family in ('chebykan', 'kan', 'grkan')]
        if cuda else [], help='KAN-ViTs to train on the fused and on the reference path')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='create_model kwargs for both training tables, key=value')
    p.add_argument('--steps', type=int, default=10 if cuda else 2, help='timed training steps per model')
    p.add_argument('--json', default=None, help='also write all numbers to this file')
    return p


def _self_check_table(device: Optional[str]) -> str:
    from .kernels import self_test

    rows = self_test(device)
    return _table([dict(kernel=r.kernel, dtype=r.dtype, device=r.device, ok=r.ok, max_error=r.max_error,
                        reason=r.reason) for r in rows]).replace('| max_error |', '| max error |', 1)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    import timm

    args = _parser().parse_args(argv)
    if args.check:
        table = _self_check_table(args.device)
        print(table)
        return dict(check=table)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    result: Dict[str, Any] = dict(
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if cuda and not args.device else (args.device or 'cpu'),
        torch=torch.__version__, triton=triton_version, timm=timm.__version__, ikan=import_ikan()[1],
        command=' '.join(['timm-kan bench', *(sys.argv[1:] if argv is None else argv)]),
        shape=dict(tokens=args.tokens, dim=args.dim, hidden=args.hidden), dtype=args.dtype, reps=args.reps)
    result['ffn'] = bench_ffn(args.tokens, args.dim, args.hidden, args.degree, args.dtype, args.device,
                              args.warmup, args.reps, args.variants)
    common = dict(img_size=args.img_size, dtype=args.dtype, device=args.device, steps=args.steps,
                  warmup=min(args.warmup, 3), model_kwargs=args.model_kwargs)
    if args.models:
        result['training'] = bench_training(args.models, args.batch_size, **common)
    if args.path_models:
        result['paths'] = bench_paths(args.path_models, args.batch_size, **common)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
