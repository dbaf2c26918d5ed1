"""``timm-kan bench`` / ``python -m timm_kan.bench``: KAN feed-forward blocks against the MLP.

For one FFN shape (tokens x dim -> hidden -> dim) it times forward and forward+backward, measures the
peak memory above the inputs (CUDA only) and the ratio of each to the MLP in the same run, for:
the MLP; each KAN block on the PyTorch reference path and on the fused Triton path (where a kernel
exists and Triton runs); the published Chebyshev formula cos(k * acos(tanh x)) + einsum, written from
the math as a baseline; and whole-model training images/s for chosen models. On a CPU it runs too,
with small default shapes (timings there say nothing about the GPU).
"""
import argparse
import json
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = ['PublishedChebyshevKAN', 'bench_ffn', 'bench_training', 'main']


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


def _ffn_variants(dim: int, hidden: int, degree: int, fused_ok: bool) -> Dict[str, Callable[[], nn.Module]]:
    from timm.layers import Mlp
    from .layers import GRKANMlp, KANMlp

    variants: Dict[str, Callable[[], nn.Module]] = {
        'mlp': lambda: Mlp(dim, hidden),
        'chebyshev published (acos+einsum)': lambda: nn.Sequential(
            PublishedChebyshevKAN(dim, hidden, degree), nn.LayerNorm(hidden), PublishedChebyshevKAN(hidden, dim, degree)),
        'chebyshev reference': lambda: KANMlp(dim, hidden, kan_type='chebyshev', degree=degree, kan_fused=False),
        'bspline reference': lambda: KANMlp(dim, hidden, kan_type='bspline', kan_fused=False),
        'rbf reference': lambda: KANMlp(dim, hidden, kan_type='rbf'),
        'group-rational reference': lambda: GRKANMlp(dim, hidden, kan_fused=False),
    }
    if fused_ok:
        variants['chebyshev fused'] = lambda: KANMlp(dim, hidden, kan_type='chebyshev', degree=degree, kan_fused=True)
        variants['bspline fused'] = lambda: KANMlp(dim, hidden, kan_type='bspline', kan_fused=True)
        variants['group-rational fused'] = lambda: GRKANMlp(dim, hidden, kan_fused=True)
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


def bench_ffn(
        tokens: int, dim: int, hidden: int, degree: int = 3, dtype: str = 'bfloat16', device: Optional[str] = None,
        warmup: int = 3, reps: int = 10, only: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Rows of forward / forward+backward time and peak extra memory per FFN variant, with ratios to the MLP."""
    from .kernels import triton_available

    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    amp_dtype = getattr(torch, dtype)
    use_amp = amp_dtype != torch.float32
    fused_ok = dev.type == 'cuda' and triton_available()
    rows = []
    for name, make in _ffn_variants(dim, hidden, degree, fused_ok).items():
        if only and name not in only and name != 'mlp':
            continue
        torch.manual_seed(0)
        module = make().to(dev)
        x = torch.randn(tokens, dim, device=dev, requires_grad=True)

        def fwd():
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                return module(x)

        def fwd_bwd():
            y = fwd()
            y.float().sum().backward()

        with torch.no_grad():
            t_fwd = _time(fwd, dev, warmup, reps)
        t_fb = _time(fwd_bwd, dev, warmup, reps)
        mem = None
        if dev.type == 'cuda':
            module.zero_grad(set_to_none=True)
            x.grad = None
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            fwd_bwd()
            torch.cuda.synchronize(dev)
            mem = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
        rows.append(dict(variant=name, forward_ms=t_fwd, fwd_bwd_ms=t_fb, peak_extra_mib=mem))
    mlp = rows[0]
    for r in rows:
        r['fwd_bwd_vs_mlp'] = r['fwd_bwd_ms'] / mlp['fwd_bwd_ms']
        r['memory_vs_mlp'] = r['peak_extra_mib'] / mlp['peak_extra_mib'] if mlp['peak_extra_mib'] else None
    return rows


def bench_training(
        models: Sequence[str], batch_size: int, img_size: Optional[int] = None, dtype: str = 'bfloat16',
        device: Optional[str] = None, steps: int = 10, warmup: int = 3, model_kwargs: Optional[Dict] = None,
) -> List[Dict[str, Any]]:
    """Training images/s (AdamW, autocast) for each model."""
    import timm

    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    amp_dtype = getattr(torch, dtype)
    rows = []
    for name in models:
        kwargs = dict(model_kwargs or {})
        if img_size:
            kwargs['img_size'] = img_size
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000, **kwargs).to(dev).train()
        size = model.patch_embed.img_size
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch_size, 3, *size, device=dev)
        y = torch.randint(0, 1000, (batch_size,), device=dev)

        def step():
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ms = _time(step, dev, warmup, steps)
        rows.append(dict(model=name, batch_size=batch_size, step_ms=ms, images_per_second=batch_size / ms * 1e3))
    base = next((r for r in rows if not r['model'].startswith(('kan_', 'chebykan_', 'rbfkan_', 'grkan_'))), None)
    for r in rows:
        r['vs_first_mlp_model'] = r['images_per_second'] / base['images_per_second'] if base else None
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return 'n/a'
    return f'{v:.3f}' if isinstance(v, float) else str(v)


def _table(rows: List[Dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '|'.join('---' for _ in keys) + '|']
    lines += ['| ' + ' | '.join(_fmt(r[k]) for k in keys) + ' |' for r in rows]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog='timm-kan bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--tokens', type=int, default=12608 if cuda else 512, help='rows (batch x tokens)')
    p.add_argument('--dim', type=int, default=768 if cuda else 64)
    p.add_argument('--hidden', type=int, default=3072 if cuda else 256)
    p.add_argument('--degree', type=int, default=3)
    p.add_argument('--dtype', default='bfloat16' if cuda else 'float32', choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--device', default=None)
    p.add_argument('--reps', type=int, default=20 if cuda else 3)
    p.add_argument('--warmup', type=int, default=5 if cuda else 1)
    p.add_argument('--models', nargs='*', default=['vit_base_patch16_224', 'chebykan_vit_base_patch16_224']
                   if cuda else [], help='models for the training images/s table')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--json', default=None, help='also write all numbers to this file')
    args = p.parse_args(argv)
    info = dict(device=torch.cuda.get_device_name() if cuda and not args.device else (args.device or 'cpu'),
                torch=torch.__version__, shape=dict(tokens=args.tokens, dim=args.dim, hidden=args.hidden),
                dtype=args.dtype)
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = None
    ffn = bench_ffn(args.tokens, args.dim, args.hidden, args.degree, args.dtype, args.device, args.warmup, args.reps)
    print(f"FFN {args.dim}->{args.hidden}->{args.dim} on {args.tokens} tokens, {args.dtype}, {info['device']}, "
          f"torch {info['torch']}, triton {info['triton']}")
    print(_table(ffn))
    result = dict(info, ffn=ffn)
    if args.models:
        train = bench_training(args.models, args.batch_size, args.img_size, args.dtype, args.device)
        print(_table(train))
        result['training'] = train
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
