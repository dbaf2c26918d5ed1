"""``timm-kan compare``: train several models under one recipe on one data set and compare them.

Built from timm's parts: ``timm.data.create_dataset`` / ``create_loader``, ``timm.optim.create_optimizer_v2``,
``timm.scheduler.create_scheduler_v2``, ``timm.utils.ModelEmaV3``, AMP autocast with ``NativeScaler`` on GPU,
``timm.loss``. Runs under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU); only rank 0 writes.

Outputs in ``--output``: ``results.json``, ``results.csv`` (one row per model and epoch), ``loss.png``,
``accuracy.png``, ``accuracy_vs_gflops.png``, ``class_indices.json`` and ``<model>/checkpoint.pth.tar``.
"""
import contextlib
import csv
import difflib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

import timm
from timm.data import create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import get_model_args
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, accuracy, random_seed

from .accounting import count_flops, count_parameters, model_data_config
from .data import BUNDLED_DATASETS, prepare_data

__all__ = ['CompareConfig', 'RECIPES', 'run_compare', 'resolve_model_name', 'suggest_batch_size', 'format_table']

_logger = logging.getLogger(__name__)

# Recipes: 'seed' is the reference write-ups' fine-tuning recipe; 'small' trains small models from scratch.
RECIPES: Dict[str, Dict[str, Any]] = {
    'seed': dict(opt='sgd', lr=1e-3, weight_decay=5e-5, momentum=0.9, warmup_epochs=0, min_lr_ratio=0.01,
                 batch_size=8, epochs=10, hflip=0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_pct=0.875,
                 smoothing=0.0),
    'small': dict(opt='adamw', lr=2e-3, weight_decay=0.05, momentum=0.9, warmup_epochs=1, min_lr_ratio=0.01,
                  batch_size=64, epochs=12, hflip=0.0, scale=(0.8, 1.0), ratio=(0.9, 1.1), crop_pct=1.0,
                  smoothing=0.0),
}
DEFAULT_MODELS = ('vit_tiny_patch16_224', 'chebykan_vit_tiny_patch16_224', 'kan_vit_tiny_patch16_224')
# small ViT shapes for the bundled sets: patches sized to the images
BUNDLED_MODEL_KWARGS = {
    'mnist5k': dict(img_size=28, patch_size=7, embed_dim=96, depth=4, num_heads=3),
    'digits': dict(img_size=16, patch_size=4, embed_dim=96, depth=4, num_heads=3),
}
# digits has 1,437 training images: more, smaller steps (measured: 94% Chebyshev KAN-ViT, 97% ViT)
BUNDLED_RECIPE_OVERRIDES = {'digits': dict(epochs=30, batch_size=32)}


@dataclass
class CompareConfig:
    """Everything one comparison run needs; the CLI fills it from its flags."""
    models: Sequence[str] = DEFAULT_MODELS
    data: str = 'mnist5k'
    output: str = 'output/compare'
    recipe: str = 'small'
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    opt: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    freeze: Optional[str] = None
    kan_init: Optional[str] = None
    val_ratio: float = 0.2
    max_items: Optional[int] = None
    seed: int = 0
    workers: Optional[int] = None
    amp: bool = True
    amp_dtype: str = 'float16'
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    device: Optional[str] = None
    progress: Optional[bool] = None

    def resolved(self) -> Dict[str, Any]:
        if self.recipe not in RECIPES:
            raise ValueError(f'unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}')
        r = dict(RECIPES[self.recipe])
        if self.recipe == 'small':
            r.update(BUNDLED_RECIPE_OVERRIDES.get(self.data, {}))
        for key in ('epochs', 'batch_size', 'lr', 'weight_decay', 'opt'):
            if getattr(self, key) is not None:
                r[key] = getattr(self, key)
        return r


def resolve_model_name(name: str) -> str:
    """Check a model name against timm's registry; unknown names raise with the close matches."""
    if name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name):
        return name
    base = name.split('.')[0]
    if timm.is_model(base):
        return name
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f' Close matches: {", ".join(close)}.' if close else ''
    raise ValueError(f'unknown model {name!r} (did you import timm_kan?).{hint}')


def suggest_batch_size(step: Callable[[int], None], batch_size: int) -> int:
    """Largest of batch_size/2, /4, ... for which ``step(b)`` runs without running out of GPU memory (0 if none)."""
    b = batch_size // 2
    while b >= 1:
        try:
            step(b)
            return b
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            b //= 2
    return 0


class _PeakMemory:
    """Peak memory of one model's run: CUDA allocator peak, or process peak RSS on CPU (reset where Linux allows)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path('/proc/self/clear_refs').write_text('5')

    def peak_mib(self) -> float:
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        with contextlib.suppress(OSError):
            for line in Path('/proc/self/status').read_text().splitlines():
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dist_info() -> Tuple[bool, int, int]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return world > 1, int(os.environ.get('RANK', '0')), world


def _all_sum(values: List[float], device: torch.device, distributed: bool) -> List[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _design(name: str) -> str:
    base = name.split(':')[-1]
    if base.startswith('chebykan_'):
        return 'Chebyshev KAN'
    if base.startswith('grkan_'):
        return 'group-rational KAN'
    if base.startswith('rbfkan_'):
        return 'RBF KAN'
    if base.startswith('kan_'):
        return 'B-spline KAN'
    return 'MLP'


def _train_one(
        name: str,
        cfg: CompareConfig,
        recipe: Dict[str, Any],
        data_root: Path,
        num_classes: int,
        device: torch.device,
        distributed: bool,
        rank: int,
        out_dir: Path,
        class_names: List[str],
) -> Dict[str, Any]:
    from tqdm import tqdm

    random_seed(cfg.seed, rank)
    model_kwargs = dict(cfg.model_kwargs, num_classes=num_classes)
    create_kwargs: Dict[str, Any] = dict(model_kwargs)
    if cfg.pretrained:
        create_kwargs['pretrained'] = True
        if cfg.pretrained_file:
            create_kwargs['pretrained_cfg_overlay'] = dict(
                file=cfg.pretrained_file, custom_load=cfg.pretrained_file.endswith('.npz'))
    is_kan = _design(name) != 'MLP'
    if is_kan:
        for key in ('freeze', 'kan_init'):
            if getattr(cfg, key) is not None:
                create_kwargs[key] = getattr(cfg, key)
    model = timm.create_model(name, **create_kwargs)
    model_args = get_model_args(model)
    params = count_parameters(model)
    data_config = model_data_config(model)
    input_size = data_config['input_size']
    gflops = count_flops(model, input_size) / 1e9
    model.to(device)

    train_set = create_dataset('', root=str(data_root), split='train', is_training=True)
    val_set = create_dataset('', root=str(data_root), split='val')
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == 'cuda' else 0)
    loader_common = dict(
        input_size=input_size, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=workers, distributed=distributed, use_prefetcher=False,
        pin_memory=device.type == 'cuda', persistent_workers=workers > 0)
    train_loader = create_loader(
        train_set, batch_size=recipe['batch_size'], is_training=True, scale=recipe['scale'],
        ratio=recipe['ratio'], hflip=recipe['hflip'], color_jitter=0.0, **loader_common)
    val_loader = create_loader(
        val_set, batch_size=recipe['batch_size'], is_training=False, crop_pct=recipe['crop_pct'], **loader_common)

    optimizer = create_optimizer_v2(
        model, opt=recipe['opt'], lr=recipe['lr'], weight_decay=recipe['weight_decay'], momentum=recipe['momentum'])
    scheduler, epochs = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=recipe['epochs'], min_lr=recipe['lr'] * recipe['min_lr_ratio'],
        warmup_epochs=recipe['warmup_epochs'], warmup_lr=recipe['lr'] * 0.01)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)

    use_amp = cfg.amp and device.type == 'cuda'
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == 'bfloat16' else torch.float16
    autocast = (lambda: torch.autocast('cuda', dtype=amp_dtype)) if use_amp else contextlib.nullcontext
    scaler = NativeScaler() if use_amp and amp_dtype == torch.float16 else None
    train_loss_fn = LabelSmoothingCrossEntropy(recipe['smoothing']) if recipe['smoothing'] else nn.CrossEntropyLoss()
    val_loss_fn = nn.CrossEntropyLoss()
    topk = (1, min(5, num_classes))
    # tqdm's None disables the bar when stderr is not a terminal
    hide_bar = True if rank != 0 else (None if cfg.progress is None else not cfg.progress)
    memory = _PeakMemory(device)
    memory.reset()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast():
            loss = train_loss_fn(train_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler(loss, optimizer, parameters=model.parameters())
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model)
        return loss.item()

    history = []
    train_seconds = 0.0
    images_seen = 0
    for epoch in range(epochs):
        if distributed and hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        train_model.train()
        loss_sum, count = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f'{name} epoch {epoch + 1}/{epochs}', leave=False, disable=hide_bar)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            try:
                loss = train_step(x, y)
            except torch.cuda.OutOfMemoryError as e:
                optimizer.zero_grad(set_to_none=True)
                fits = suggest_batch_size(lambda b: train_step(x[:b], y[:b]), x.shape[0])
                raise RuntimeError(
                    f'{name}: out of GPU memory at batch size {x.shape[0]}; '
                    + (f'batch size {fits} fits: pass --batch-size {fits}' if fits
                       else 'even batch size 1 fails')) from e
            loss_sum += loss * x.shape[0]
            count += x.shape[0]
            bar.set_postfix(loss=f'{loss:.3f}')
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - start
        loss_sum, count = _all_sum([loss_sum, count], device, distributed)
        train_seconds += epoch_seconds
        images_seen += count
        scheduler.step(epoch + 1)
        val = _evaluate(ema.module if ema is not None else model, val_loader, val_loss_fn, topk, device,
                        autocast, distributed)
        row = dict(epoch=epoch + 1, train_loss=loss_sum / max(count, 1), val_loss=val['loss'], top1=val['top1'],
                   top5=val['top5'], epoch_seconds=epoch_seconds, images_per_second=count / epoch_seconds,
                   lr=optimizer.param_groups[0]['lr'])
        history.append(row)
        if rank == 0:
            _logger.info(f'{name} epoch {epoch + 1}/{epochs}: train loss {row["train_loss"]:.4f} '
                         f'val loss {val["loss"]:.4f} top-1 {val["top1"]:.2f}')

    if rank == 0:
        ckpt_dir = out_dir / timm.models.safe_model_name(name)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = dict(state_dict=model.state_dict(), arch=name, model_args=model_args,
                     class_map={str(i): c for i, c in enumerate(class_names)}, epoch=epochs)
        if ema is not None:
            state['state_dict_ema'] = ema.module.state_dict()
        torch.save(state, ckpt_dir / 'checkpoint.pth.tar')
    final = history[-1]
    return dict(
        model=name, design=_design(name), params=params['total'], trainable_params=params['trainable'],
        params_by_part={k: params[k] for k in ('attention', 'ffn', 'other')}, gflops=gflops,
        input_size=list(input_size), train_minutes=train_seconds / 60, images_per_second=images_seen / train_seconds,
        peak_memory_mib=memory.peak_mib(), val_loss=final['val_loss'], top1=final['top1'], top5=final['top5'],
        history=history, model_args=model_args)


@torch.no_grad()
def _evaluate(model, loader, loss_fn, topk, device, autocast, distributed) -> Dict[str, float]:
    model.eval()
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        out = out.float()
        loss_sum += loss_fn(out, y).item() * x.shape[0]
        a1, a5 = accuracy(out, y, topk=topk)
        c1 += a1.item() * x.shape[0] / 100
        c5 += a5.item() * x.shape[0] / 100
        n += x.shape[0]
    loss_sum, c1, c5, n = _all_sum([loss_sum, c1, c5, n], device, distributed)
    return dict(loss=loss_sum / n, top1=100 * c1 / n, top5=100 * c5 / n)


TABLE_COLUMNS = (
    ('model', 'model', '{}'), ('design', 'design', '{}'), ('params (M)', 'params', '{:.2f}'),
    ('trainable (M)', 'trainable_params', '{:.2f}'), ('GFLOPs', 'gflops', '{:.3f}'),
    ('train min', 'train_minutes', '{:.2f}'), ('img/s', 'images_per_second', '{:.0f}'),
    ('peak MiB', 'peak_memory_mib', '{:.0f}'), ('val loss', 'val_loss', '{:.4f}'),
    ('top-1', 'top1', '{:.2f}'), ('top-5', 'top5', '{:.2f}'),
)


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of the comparison (parameters in millions)."""
    rows = []
    for r in results:
        cells = []
        for _, key, fmt in TABLE_COLUMNS:
            v = r[key] / 1e6 if key in ('params', 'trainable_params') else r[key]
            cells.append(fmt.format(v))
        rows.append(cells)
    head = [c[0] for c in TABLE_COLUMNS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join('---' for _ in head) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines)


def _write_outputs(results: List[Dict[str, Any]], out_dir: Path, meta: Dict[str, Any]) -> None:
    (out_dir / 'results.json').write_text(json.dumps(dict(meta, results=results), indent=2))
    fields = ['model', 'design', 'params', 'trainable_params', 'gflops', 'epoch', 'train_loss', 'val_loss', 'top1',
              'top5', 'epoch_seconds', 'images_per_second', 'lr', 'peak_memory_mib']
    with (out_dir / 'results.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            for h in r['history']:
                writer.writerow({k: (h.get(k, r.get(k))) for k in fields})
    _plot(results, out_dir)


def _plot(results: List[Dict[str, Any]], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    for metric, fname, ylabel in (
            (('train_loss', 'val_loss'), 'loss.png', 'loss'), (('top1', 'top5'), 'accuracy.png', 'accuracy (%)')):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in results:
            epochs = [h['epoch'] for h in r['history']]
            for m, style in zip(metric, ('-', '--')):
                ax.plot(epochs, [h[m] for h in r['history']], style, marker='o', ms=3, label=f'{r["model"]} {m}')
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        ax.scatter(r['gflops'], r['top1'], s=40)
        ax.annotate(r['model'], (r['gflops'], r['top1']), fontsize=7, xytext=(4, 4), textcoords='offset points')
    ax.set_xlabel('GFLOPs per image (forward)')
    ax.set_ylabel('validation top-1 (%)')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / 'accuracy_vs_gflops.png', dpi=110)
    plt.close(fig)


def run_compare(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """Train every model of ``cfg.models`` under one recipe and write the comparison outputs."""
    models = [resolve_model_name(m) for m in cfg.models]
    recipe = cfg.resolved()
    distributed, rank, world = _dist_info()
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() \
            else torch.device('cpu')
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if cfg.data in BUNDLED_DATASETS:
        cfg.model_kwargs = dict(BUNDLED_MODEL_KWARGS[cfg.data], **cfg.model_kwargs)
    out_dir = Path(cfg.output)
    if rank == 0:
        data_root, classes = prepare_data(cfg.data, out_dir, cfg.val_ratio, cfg.seed, cfg.max_items)
    if distributed:
        dist.barrier()
        if rank != 0:
            data_root, classes = prepare_data(cfg.data, out_dir, cfg.val_ratio, cfg.seed, cfg.max_items)
    results = []
    for name in models:
        results.append(_train_one(name, cfg, recipe, data_root, len(classes), device, distributed, rank, out_dir,
                                  classes))
    if rank == 0:
        meta = dict(data=cfg.data, recipe=cfg.recipe, recipe_args={k: (list(v) if isinstance(v, tuple) else v)
                                                                    for k, v in recipe.items()},
                    model_kwargs=cfg.model_kwargs, seed=cfg.seed, world_size=world, device=str(device),
                    torch=torch.__version__, timm=timm.__version__, classes=classes)
        _write_outputs(results, out_dir, meta)
    if distributed:
        dist.barrier()
    return results
