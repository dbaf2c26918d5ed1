"""One model's training run for ``timm-kan compare``, built from timm's parts.

``timm.data.create_dataset`` / ``create_loader``, ``timm.optim.create_optimizer_v2``,
``timm.scheduler.create_scheduler_v2``, ``timm.utils.ModelEmaV3``, AMP autocast with ``NativeScaler`` on GPU,
``timm.loss``. After every epoch the run's full state (weights, optimizer, scheduler, EMA, history, random
number generators) is saved atomically, so an interrupted run continues exactly where it stopped.
"""
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import timm
from timm.data import create_dataset, create_loader
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, accuracy, decay_batch_step, random_seed

from ..accounting import count_flops, count_parameters, eval_data_config, hidden_widths
from ..data.split import split_class_map
from ..images import rgb_transform
from ..io import DataError, progress_line, write_atomic
from ..layers import coefficient_parameters
from ..models import design_name
from .config import CompareConfig
from .peak_memory import PeakMemory

__all__ = ['RunContext', 'suggest_batch_size', 'train_model', 'checkpoint_path', 'NonFiniteLoss']


class NonFiniteLoss(RuntimeError):
    """A model's training loss became NaN or inf: its run stops, its last good epoch's checkpoint is kept."""


@dataclass
class RunContext:
    """What every model of a comparison shares: data, recipe, device, process group, output folder, and the run's
    options (``config``: workers, AMP, EMA, progress bar)."""
    data_root: Path
    classes: List[str]
    recipe: Dict[str, Any]
    device: torch.device
    out_dir: Path
    seed: int = 0  # this run's training seed (config.seed drew the split)
    run_tag: str = ''  # sub-folder of the model's folder for this run (several seeds: 'seed1', ...)
    distributed: bool = False
    rank: int = 0
    config: CompareConfig = field(default_factory=CompareConfig)
    on_epoch: Callable[[Dict[str, Any]], None] = field(default=lambda result: None)
    on_trained: Callable[[str, nn.Module, Dict[str, Any]], None] = field(default=lambda name, model, result: None)
    split_files: Optional[Dict[str, List[str]]] = None  # the split's files when the run began (split_listing)


def suggest_batch_size(step: Callable[[int], None], batch_size: int) -> int:
    """Largest batch size below ``batch_size`` (halving, timm's ``decay_batch_step``) for which ``step(b)`` runs
    without running out of GPU memory (0 if none)."""
    b = decay_batch_step(batch_size, num_intra_steps=1)
    while b >= 1:
        try:
            step(b)
            return b
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            b = decay_batch_step(b, num_intra_steps=1)
    return 0


def _all_sum(values: List[float], ctx: RunContext) -> List[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def checkpoint_path(out_dir: Path, name: str, run_tag: str = '') -> Path:
    folder = Path(out_dir) / timm.models.safe_model_name(name)
    return (folder / run_tag if run_tag else folder) / 'checkpoint.pth.tar'


def _model_args(name: str, create_kwargs: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Arguments that rebuild the trained architecture (no pretrained load): ``predict`` and ``push`` use them."""
    from ..models import architecture_args, architecture_kwargs

    kwargs = {k: v for k, v in create_kwargs.items() if k not in ('pretrained', 'pretrained_cfg_overlay')}
    args = architecture_kwargs(name, kwargs)
    args.update(architecture_args(model))
    return args


def _dataset(ctx: RunContext, split: str, is_training: bool = False):
    """A split of the run as timm's dataset, images left in their own mode (``rgb_transform`` converts them)."""
    dataset = create_dataset('', root=str(ctx.data_root), split=split, is_training=is_training,
                             class_map=split_class_map(ctx.classes), input_img_mode=None)
    if ctx.split_files is not None:
        root = Path(ctx.data_root) / split
        files = sorted(str(Path(path).relative_to(root)) for path, _ in dataset.reader.samples)
        if files != ctx.split_files[split]:
            raise DataError(f'{root} changed during the run ({len(ctx.split_files[split])} images when it began, '
                            f'{len(files)} now): every model must see the same {split} images')
    return dataset


def _loaders(ctx: RunContext, data_config: Dict[str, Any]):
    recipe = ctx.recipe
    train_set, val_set = _dataset(ctx, 'train', is_training=True), _dataset(ctx, 'val')
    workers = ctx.config.workers if ctx.config.workers is not None else (4 if ctx.device.type == 'cuda' else 0)
    common = dict(
        input_size=data_config['input_size'], interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=workers, distributed=ctx.distributed, use_prefetcher=False,
        pin_memory=ctx.device.type == 'cuda', persistent_workers=workers > 0)
    train = create_loader(train_set, batch_size=recipe['batch_size'], is_training=True, scale=recipe['scale'],
                          ratio=recipe['ratio'], hflip=recipe['hflip'], color_jitter=0.0, **common)
    val = create_loader(val_set, batch_size=recipe['batch_size'], is_training=False,
                        crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'], **common)
    for loader in (train, val):  # create_loader sets the transform: meaningful RGB conversion goes first
        loader.dataset.transform = rgb_transform(loader.dataset.transform)
    return train, val


@dataclass
class _Run:
    """A model in training and everything a resumed run needs back."""
    name: str
    model: nn.Module
    train_model: nn.Module
    optimizer: Any
    scheduler: Any
    epochs: int
    ema: Optional[ModelEmaV3]
    scaler: Optional[NativeScaler]
    autocast: Callable
    summary: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0


def optimizer_param_groups(
        model: nn.Module, weight_decay: float, kan_lr_scale: float = 1.0, kan_weight_decay: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """timm's weight-decay groups (no decay on 1-d tensors and ``no_weight_decay()`` names), with the KAN
    coefficients (``coefficient_parameters``) moved to a group of their own: learning rate times ``kan_lr_scale``
    (timm's schedulers apply ``lr_scale``) and weight decay ``kan_weight_decay`` (default: ``weight_decay``)."""
    no_decay = getattr(model, 'no_weight_decay', lambda: set())()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)
    kan = {id(p): p for p in coefficient_parameters(model) if p.requires_grad}
    for group in groups:
        group['params'] = [p for p in group['params'] if id(p) not in kan]
    groups.append(dict(params=list(kan.values()), lr_scale=kan_lr_scale,
                       weight_decay=weight_decay if kan_weight_decay is None else kan_weight_decay))
    return [g for g in groups if g['params']]


def _start(name: str, create_kwargs: Dict[str, Any], ctx: RunContext) -> _Run:
    random_seed(ctx.seed, ctx.rank)
    model = timm.create_model(name, **create_kwargs)
    params = count_parameters(model)
    data_config = eval_data_config(model, ctx.recipe['crop_pct'])
    input_size = data_config['input_size']
    summary = dict(data_config=data_config,
        model=name, design=design_name(name), params=params['total'], trainable_params=params['trainable'],
        params_by_part={k: params[k] for k in ('attention', 'ffn', 'other')},
        gflops=count_flops(model, input_size) / 1e9, input_size=list(input_size), seed=ctx.seed,
        hidden=(hidden_widths(model) or [None])[0], model_args=_model_args(name, create_kwargs, model))
    model.to(ctx.device)
    recipe = ctx.recipe
    optimizer = create_optimizer_v2(
        model, opt=recipe['opt'], lr=recipe['lr'], weight_decay=recipe['weight_decay'], momentum=recipe['momentum'],
        param_group_fn=partial(optimizer_param_groups, weight_decay=recipe['weight_decay'],
                               kan_lr_scale=recipe['kan_lr_scale'], kan_weight_decay=recipe['kan_weight_decay']))
    scheduler, epochs = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=recipe['epochs'], min_lr=recipe['lr'] * recipe['min_lr_ratio'],
        warmup_epochs=recipe['warmup_epochs'], warmup_lr=recipe['lr'] * 0.01)
    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None)
    if ctx.config.compile:  # compiles at the first step (caught there: _compile_failure)
        train_model = torch.compile(train_model)
    use_amp = ctx.config.amp and ctx.device.type == 'cuda'
    amp_dtype = torch.bfloat16 if ctx.config.amp_dtype == 'bfloat16' else torch.float16
    autocast = (lambda: torch.autocast('cuda', dtype=amp_dtype)) if use_amp else contextlib.nullcontext
    return _Run(name, model, train_model, optimizer, scheduler, epochs,
                ModelEmaV3(model, decay=ctx.config.model_ema_decay) if ctx.config.model_ema else None,
                NativeScaler() if use_amp and amp_dtype == torch.float16 else None, autocast, summary)


def _save(run: _Run, ctx: RunContext) -> None:
    """The run's complete state after an epoch, written to a temporary file and renamed."""
    if ctx.rank != 0:
        return
    path = checkpoint_path(ctx.out_dir, run.name, ctx.run_tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    np_state = np.random.get_state()
    state = dict(
        state_dict=run.model.state_dict(), arch=run.name, model_args=run.summary['model_args'],
        data_config=run.summary['data_config'],
        class_map={str(i): c for i, c in enumerate(ctx.classes)}, epoch=len(run.history),
        train_state=dict(
            optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), history=run.history,
            train_seconds=run.train_seconds, images_seen=run.images_seen, torch_rng=torch.get_rng_state(),
            python_rng=random.getstate(), numpy_rng=[np_state[0], np_state[1].tolist(), *np_state[2:]],
            scaler=run.scaler.state_dict() if run.scaler is not None else None))
    if run.ema is not None:
        state['state_dict_ema'] = run.ema.module.state_dict()
    write_atomic(path, lambda f: torch.save(state, f), binary=True)


def _restore(run: _Run, path: Path) -> None:
    """Continue ``run`` from the state ``_save`` wrote after its last finished epoch."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        train_state = state['train_state']
        run.model.load_state_dict(state['state_dict'])
    except Exception as e:  # a file of another kind or model: one line, the run left as it is
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f'--resume: {path} is not a checkpoint timm-kan compare wrote for {run.name} ({reason}); '
                           'use --overwrite or another --output') from None
    if run.ema is not None:
        run.ema.module.load_state_dict(state['state_dict_ema'])
    run.optimizer.load_state_dict(train_state['optimizer'])
    run.scheduler.load_state_dict(train_state['scheduler'])
    if run.scaler is not None and train_state['scaler'] is not None:
        run.scaler.load_state_dict(train_state['scaler'])
    run.history, run.train_seconds = list(train_state['history']), train_state['train_seconds']
    run.images_seen = train_state['images_seen']
    torch.set_rng_state(train_state['torch_rng'])
    random.setstate(train_state['python_rng'])
    kind, keys, *rest = train_state['numpy_rng']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _train_epoch(run: _Run, loader, loss_fn, ctx: RunContext, epoch: int) -> Dict[str, float]:
    from tqdm import tqdm

    run.train_model.train()
    loss_sum, count = 0.0, 0
    start = time.perf_counter()
    progress = ctx.config.progress
    hide_bar = True if ctx.rank != 0 else (None if progress is None else not progress)
    bar = tqdm(loader, desc=f'{run.name} epoch {epoch + 1}/{run.epochs}', leave=False, disable=hide_bar)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        try:
            loss = _train_step(run, loss_fn, x, y, ctx)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f'{run.name} (seed {ctx.seed}): training loss is {e} at epoch {epoch + 1}, step '
                                f'{step + 1}; this model stopped, its checkpoint of epoch {epoch} is kept') from None
        except torch.cuda.OutOfMemoryError as e:
            run.optimizer.zero_grad(set_to_none=True)
            fits = suggest_batch_size(lambda b: _train_step(run, loss_fn, x[:b], y[:b], ctx), x.shape[0])
            raise RuntimeError(
                f'{run.name}: out of GPU memory at batch size {x.shape[0]}; '
                + (f'batch size {fits} fits: pass --batch-size {fits}' if fits else 'even batch size 1 fails')) from e
        except Exception as e:
            if not ctx.config.compile or not _compile_failure(e):
                raise
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise RuntimeError(f'{run.name}: --compile failed ({type(e).__name__}: {reason[:200]}); run without '
                               '--compile (the results so far are kept: --resume continues them)') from None
        loss_sum += loss * x.shape[0]
        count += x.shape[0]
        bar.set_postfix(loss=f'{loss:.3f}')
    if ctx.device.type == 'cuda':
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start
    loss_sum, count = _all_sum([loss_sum, count], ctx)
    return dict(train_loss=loss_sum / max(count, 1), seconds=seconds, count=count)


def _compile_failure(e: BaseException) -> bool:
    """Whether ``e`` is torch.compile failing to build (no C++ compiler, a backend error), not the model."""
    import torch._dynamo.exc

    return isinstance(e, torch._dynamo.exc.TorchDynamoException) or type(e).__module__.startswith('torch._inductor')


def _train_step(run: _Run, loss_fn, x: torch.Tensor, y: torch.Tensor, ctx: RunContext) -> float:
    with run.autocast():
        loss = loss_fn(run.train_model(x), y)
    value = loss.item()  # the one host sync of a step: checked here, returned for the epoch's mean
    checked = value
    if ctx.distributed:  # every process stops at the same step
        checked = _all_sum([value], ctx)[0]
    if not math.isfinite(checked):
        raise NonFiniteLoss(value if not math.isfinite(value) else checked)  # before backward: weights stay good
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler(loss, run.optimizer, parameters=run.model.parameters())
    else:
        loss.backward()
        run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return value


@torch.no_grad()
def evaluate(model: nn.Module, loader, topk: Sequence[int], ctx: RunContext, autocast=contextlib.nullcontext):
    """Validation loss, top-1 and top-k (%) over the whole split (summed over processes under DDP)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    for x, y in loader:
        x, y = x.to(ctx.device), y.to(ctx.device)
        with autocast():
            out = model(x)
        out = out.float()
        loss_sum += loss_fn(out, y).item() * x.shape[0]
        a1, a5 = accuracy(out, y, topk=topk)
        c1 += a1.item() * x.shape[0] / 100
        c5 += a5.item() * x.shape[0] / 100
        n += x.shape[0]
    loss_sum, c1, c5, n = _all_sum([loss_sum, c1, c5, n], ctx)
    return dict(loss=loss_sum / n, top1=100 * c1 / n, top5=100 * c5 / n)


def _result(run: _Run, peak_mib: float) -> Dict[str, Any]:
    final = run.history[-1]
    return dict(
        run.summary, train_minutes=run.train_seconds / 60,
        images_per_second=run.images_seen / max(run.train_seconds, 1e-9), peak_memory_mib=peak_mib,
        val_loss=final['val_loss'], top1=final['top1'], top5=final['top5'], epochs=run.epochs,
        complete=len(run.history) == run.epochs, history=run.history)


def train_model(name: str, create_kwargs: Dict[str, Any], ctx: RunContext, resume: bool = False) -> Dict[str, Any]:
    """Train one model under the shared recipe; with ``resume`` continue from its last saved epoch.

    ``ctx.on_epoch`` receives the model's result so far after every epoch (for atomic results files),
    ``ctx.on_trained`` the trained model (EMA weights when kept) and its result.
    """
    started = time.perf_counter()
    run = _start(name, create_kwargs, ctx)
    data_config = run.summary['data_config']
    train_loader, val_loader = _loaders(ctx, data_config)
    path = checkpoint_path(ctx.out_dir, name, ctx.run_tag)
    if resume and path.is_file():
        _restore(run, path)  # last: the random generators continue from the saved epoch's end
    loss_fn = LabelSmoothingCrossEntropy(ctx.recipe['smoothing']) if ctx.recipe['smoothing'] else nn.CrossEntropyLoss()
    topk = (1, min(5, len(ctx.classes)))
    memory = PeakMemory(ctx.device)
    memory.reset()
    for epoch in range(len(run.history), run.epochs):
        if ctx.distributed and hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        stats = _train_epoch(run, train_loader, loss_fn, ctx, epoch)
        run.train_seconds += stats['seconds']
        run.images_seen += stats['count']
        run.scheduler.step(epoch + 1)
        val = evaluate(run.ema.module if run.ema is not None else run.model, val_loader, topk, ctx, run.autocast)
        run.history.append(dict(
            epoch=epoch + 1, train_loss=stats['train_loss'], val_loss=val['loss'], top1=val['top1'],
            top5=val['top5'], epoch_seconds=stats['seconds'], images_per_second=stats['count'] / stats['seconds'],
            lr=run.optimizer.param_groups[0]['lr']))
        _save(run, ctx)
        if ctx.rank == 0:  # one line per epoch on stderr, also when the bar is hidden (a log file, --no-progress)
            last = run.history[-1]
            progress_line(f"{name} seed {ctx.seed} epoch {epoch + 1}/{run.epochs}: "
                          f"train loss {last['train_loss']:.3f}, val loss {last['val_loss']:.3f}, "
                          f"top-1 {last['top1']:.2f}, {stats['seconds']:.1f} s", start=started)
        ctx.on_epoch(_result(run, memory.peak_mib()))
    result = _result(run, memory.peak_mib())
    ctx.on_trained(name, run.ema.module if run.ema is not None else run.model, result)
    return result
