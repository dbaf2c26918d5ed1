"""Whole-model rows of ``timm-kan bench``: training images/s per model, the fused against the reference path,
training memory per image, and the project's targets checked against a result."""
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ['bench_training', 'bench_paths', 'bench_memory', 'check_targets', 'device_and_dtype', 'release_memory',
           'time_call', 'time_paired', 'TARGETS', 'CPU_TARGETS']


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
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



def time_paired(fn: Callable[[], Any], reference: Callable[[], Any], device: torch.device, warmup: int,
                reps: int) -> Tuple[float, float]:
    """(median milliseconds of ``fn``, median ratio of its time to ``reference``'s), the two timed in turns: a load
    that comes and goes on a shared machine slows both of a pair alike, so the ratio holds where times do not."""
    for _ in range(warmup):
        fn()
        reference()
    times, ratios = [], []
    for _ in range(reps):
        ms = time_call(fn, device, 0, 1)
        times.append(ms)
        ratios.append(ms / time_call(reference, device, 0, 1))
    return statistics.median(times), statistics.median(ratios)


def device_and_dtype(device: Optional[str], dtype: str) -> Tuple[torch.device, torch.dtype]:
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu')), getattr(torch, dtype)



def release_memory(dev: torch.device) -> None:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()



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

        return batch_size / time_call(step, dev, warmup, steps) * 1e3
    except torch.OutOfMemoryError:
        return None
    finally:
        model = opt = x = y = None  # free this model's memory before the next one is built
        release_memory(dev)


def bench_training(
        models: Sequence[str], batch_size: int, img_size: Optional[int] = None, dtype: str = 'bfloat16',
        device: Optional[str] = None, steps: int = 10, warmup: int = 3, model_kwargs: Optional[Dict] = None,
) -> List[Dict[str, Any]]:
    """Training images/s (AdamW, autocast) for each model, and the ratio to the first plain ViT in the list.
    A model that runs out of memory gets no figures and the note ``out of memory``."""
    dev, amp_dtype = device_and_dtype(device, dtype)
    rows = []
    for name in models:
        rate = _training_rate(name, batch_size, img_size, amp_dtype, dev, steps, warmup, model_kwargs or {})
        rows.append(dict(model=name, batch_size=batch_size, images_per_second=rate,
                         note='' if rate else 'out of memory'))
    from .models import family_of_model
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
    dev, amp_dtype = device_and_dtype(device, dtype)
    rows = []
    for name in models:
        rates = {path: _training_rate(name, batch_size, img_size, amp_dtype, dev, steps, warmup,
                                      dict(model_kwargs or {}, kan_fused=fused))
                 for path, fused in (('reference', False), ('fused', True))}
        ratio = rates['fused'] / rates['reference'] if rates['fused'] and rates['reference'] else None
        rows.append(dict(model=name, batch_size=batch_size, reference_images_per_second=rates['reference'],
                         fused_images_per_second=rates['fused'], fused_vs_reference=ratio))
    return rows


def bench_memory(
        models: Sequence[str], img_size: Optional[int] = None, dtype: str = 'float32', device: Optional[str] = None,
        model_kwargs: Optional[Dict] = None, **_: Any,
) -> List[Dict[str, Any]]:
    """Training memory per model: the activations a training step keeps per image (saved-tensor hooks, the slope
    from 1 to 2 images, under the bench's autocast dtype) and the fixed part, weights + gradients + AdamW's two
    moments (4x the parameters' bytes). Peak training memory is about ``fixed + batch x per image`` (plus the
    backward's transient buffers), so a batch can be sized from it on any device."""
    from .accounting import saved_bytes_per_row
    import timm

    dev, amp_dtype = device_and_dtype(device, dtype)
    rows = []
    for name in models:
        kwargs = dict(model_kwargs or {}, **({'img_size': img_size} if img_size else {}))
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000, **kwargs).to(dev).train()
        size = model.patch_embed.img_size
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            per_image = saved_bytes_per_row(model, lambda n: torch.randn(n, 3, *size, device=dev), 1) / 2 ** 20
        fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
        rows.append(dict(model=name, activations_mib_per_image=per_image, fixed_mib=fixed,
                         images_in_80_gib=int((80 * 1024 - fixed) // per_image)))
        model = None
        release_memory(dev)
    return rows


# on CPU at the ViT-T FFN shape (bench --shape vit-t): (what, variant, column, bound), each a maximum; the compiled
# rows' ratios are to the compiled MLP
CPU_TARGETS = (
    ('B-spline FFN eager fwd+bwd vs MLP (CPU)', 'bspline reference', 'fwd_bwd_vs_mlp', 11.0),
    ('Chebyshev FFN compiled fwd+bwd vs compiled MLP (CPU)', 'chebyshev reference compiled', 'fwd_bwd_vs_mlp', 3.0),
    ('B-spline FFN compiled fwd+bwd vs compiled MLP (CPU)', 'bspline reference compiled', 'fwd_bwd_vs_mlp', 9.0),
    ('RBF FFN compiled fwd+bwd vs compiled MLP (CPU)', 'rbf reference compiled', 'fwd_bwd_vs_mlp', 9.0),
    ('group-rational FFN compiled fwd+bwd vs compiled MLP (CPU)', 'group-rational reference compiled',
     'fwd_bwd_vs_mlp', 1.3),
)


def _bounded_rows(result: Dict[str, Any]) -> List[Tuple[str, str, str, str, float]]:
    """(what, variant, column, goal, bound) of the per-variant targets this result's device and shape take."""
    out = [(what, variant, column, 'max', bound) for what, variant, column, bound in CPU_TARGETS
           if str(result.get('device', '')).startswith('cpu') and result.get('preset') == 'vit-t']
    from .layers import KAN_FAMILIES

    for family in KAN_FAMILIES.values():  # every device and shape: each family's saved_target, eager and compiled
        if family.saved_target is None:
            continue
        for suffix in ('', ' compiled'):
            out.append((f'{family.display} FFN saved activations per token vs MLP{suffix}',
                        family.bench_variant(False) + suffix, 'saved_vs_mlp', 'max', family.saved_target))
    return out


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
    bounded = [(what, 'ffn', 'variant', variant, column, goal, bound)
               for what, variant, column, goal, bound in _bounded_rows(result)]
    for what, table, key, value, column, goal, bound in (*TARGETS, *bounded):
        row = next((r for r in result.get(table) or () if r[key] == value), None)
        if row is None:
            continue
        measured = row.get(column)
        met = measured is not None and (measured <= bound if goal == 'max' else measured >= bound)
        rows.append(dict(target=what, goal=f"{'<=' if goal == 'max' else '>='} {bound:g}", measured=measured, met=met))
    for row in result.get('paths') or ():
        measured = row['fused_vs_reference']
        rows.append(dict(target=f"{row['model']} fused vs reference path images/s", goal=f'>= {PATH_TARGET:g}',
                         measured=measured, met=measured is not None and measured >= PATH_TARGET))
    return rows
