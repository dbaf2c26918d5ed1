"""``timm-kan compare``: train several models under one recipe on one data set and compare them.

Each model is trained by ``timm_kan.trainer`` from timm's parts; runs under ``torchrun`` (DDP; gloo on CPU,
NCCL on GPU, set up by timm's ``init_distributed_device_so``); only rank 0 writes.

Outputs in ``--output``: ``results.json``, ``results.csv`` (one row per model and epoch), ``loss.png``,
``accuracy.png``, ``accuracy_vs_gflops.png``, ``class_indices.json`` and ``<model>/checkpoint.pth.tar``, all
rewritten atomically after every epoch. A folder holding results of an earlier run is continued with
``--resume`` (finished models kept, a half-trained one continued from its last epoch, if the configuration
is the same) or started again with ``--overwrite``; anything else is an error, never a silent overwrite.
"""
import contextlib
import datetime
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

import timm
from timm.utils.distributed import init_distributed_device_so

from .data import (
    bundled_set, check_val_ratio, data_inputs, data_manifest, manifest_changes, prepare_data, split_listing)
from .io import check_output_dir, mark_output_dir, output_lock, processor_name
from .layers import KAN_FAMILIES
from .models import family_of_model, resolve_model_name
from .models.kan_vit import ADAPTER_KWARGS
from .param_match import count_params, match_hidden
from .results import write_results
from .trainer import NonFiniteLoss, RunContext, checkpoint_path, train_model

__all__ = ['CompareConfig', 'RECIPES', 'DEFAULT_MODELS', 'run_compare', 'kwargs_per_model']

_logger = logging.getLogger(__name__)

# Recipes: 'seed' is the reference write-ups' fine-tuning recipe; 'small' trains small models from scratch.
RECIPES: Dict[str, Dict[str, Any]] = {
    'seed': dict(opt='sgd', lr=1e-3, weight_decay=5e-5, momentum=0.9, warmup_epochs=0, min_lr_ratio=0.01,
                 batch_size=8, epochs=10, hflip=0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop_pct=0.875,
                 smoothing=0.0, kan_lr_scale=1.0, kan_weight_decay=None),
    'small': dict(opt='adamw', lr=2e-3, weight_decay=0.05, momentum=0.9, warmup_epochs=1, min_lr_ratio=0.01,
                  batch_size=64, epochs=12, hflip=0.0, scale=(0.8, 1.0), ratio=(0.9, 1.1), crop_pct=1.0,
                  smoothing=0.0, kan_lr_scale=1.0, kan_weight_decay=None),
}
DEFAULT_MODELS = ('vit_tiny_patch16_224', 'chebykan_vit_tiny_patch16_224', 'kan_vit_tiny_patch16_224')
# small ViT shapes for the bundled sets: patches sized to the images
BUNDLED_MODEL_KWARGS = {
    'mnist5k': dict(img_size=28, patch_size=7, embed_dim=96, depth=4, num_heads=3),
    'digits': dict(img_size=16, patch_size=4, embed_dim=96, depth=4, num_heads=3),
    'fashion-mnist': dict(img_size=28, patch_size=7, embed_dim=96, depth=4, num_heads=3),
}
# epochs per bundled set, so that the ViT's validation accuracy has flattened by the last epoch (docs/results.md):
# mnist5k (4,000 training images) 30 epochs; Fashion-MNIST 25 epochs of its 10,000-image subset (--max-items;
# at 15 epochs the ViT still gained 0.7 points over the last three);
# digits has 1,437 training images: more, smaller steps (measured: 94% Chebyshev KAN-ViT, 97% ViT)
BUNDLED_RECIPE_OVERRIDES = {'mnist5k': dict(epochs=30), 'fashion-mnist': dict(epochs=25),
                            'digits': dict(epochs=30, batch_size=32)}
# options a KAN-ViT takes and a plain ViT does not: given only to the models whose family takes them
_KAN_OPTIONS = {o for f in KAN_FAMILIES.values() for o in f.options} | set(ADAPTER_KWARGS)
_OUTPUT_FILES = ('results.json', 'results.csv', 'loss.png', 'accuracy.png', 'accuracy_vs_gflops.png',
                 'accuracy_vs_params.png')


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
    kan_lr_scale: Optional[float] = None
    kan_weight_decay: Optional[float] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    freeze: Optional[str] = None
    kan_init: Optional[str] = None
    val_ratio: float = 0.2
    max_items: Optional[int] = None
    seed: int = 0
    seeds: Optional[Sequence[int]] = None
    match_params: bool = False
    param_budget: Optional[float] = None
    workers: Optional[int] = None
    amp: bool = True
    amp_dtype: str = 'float16'
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    device: Optional[str] = None
    progress: Optional[bool] = None
    resume: bool = False
    overwrite: bool = False
    explain: bool = True

    def resolved(self) -> Dict[str, Any]:
        """The recipe with the bundled set's overrides and the user's values; bad values name the option."""
        if self.recipe not in RECIPES:
            raise ValueError(f'unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}')
        r = dict(RECIPES[self.recipe])
        if self.recipe == 'small':
            r.update(BUNDLED_RECIPE_OVERRIDES.get(bundled_set(self.data), {}))
        for key in ('epochs', 'batch_size', 'lr', 'weight_decay', 'opt', 'kan_lr_scale', 'kan_weight_decay'):
            if getattr(self, key) is not None:
                r[key] = getattr(self, key)
        for key in ('epochs', 'batch_size'):
            if isinstance(r[key], bool) or not isinstance(r[key], int) or r[key] < 1:
                raise ValueError(f'--{key.replace("_", "-")} must be an integer >= 1, got {r[key]!r}')
        _check_number('--lr', r['lr'], above=0)
        _check_number('--kan-lr-scale', r['kan_lr_scale'], above=0)
        for key in ('weight_decay', 'kan_weight_decay'):
            if r[key] is not None:
                _check_number(f'--{key.replace("_", "-")}', r[key], at_least=0)
        check_val_ratio(self.val_ratio)
        _check_number('--model-ema-decay', self.model_ema_decay, above=0, below=1)
        for key in ('max_items', 'workers'):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if key == 'max_items' else 0)):
                raise ValueError(f'--{key.replace("_", "-")} must be an integer >= {1 if key == "max_items" else 0}, '
                                 f'got {value!r}')
        seeds = self.run_seeds()
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ValueError(f'seeds must be integers >= 0, got {list(seeds)}')
        if len(set(seeds)) != len(seeds):
            raise ValueError(f'seeds must differ, got {list(seeds)}')
        if self.param_budget is not None:
            _check_number('--param-budget', self.param_budget, above=0)
        if self.resume and self.overwrite:
            raise ValueError('--resume continues an earlier run and --overwrite discards it: pass one of them')
        return r

    def run_seeds(self) -> List[int]:
        """The training seeds: ``seeds``, else ``seed`` alone (``seed`` also draws the split)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


def _check_number(option: str, value: Any, above: Optional[float] = None, at_least: Optional[float] = None,
                  below: Optional[float] = None) -> None:
    """A finite number within its bounds, else one line naming the option, the bounds and the value."""
    bounds = ' and '.join(b for b in (f'> {above}' if above is not None else '',
                                      f'>= {at_least}' if at_least is not None else '',
                                      f'< {below}' if below is not None else '') if b)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'{option} must be a finite number {bounds}, got {value!r}')
    if (above is not None and value <= above) or (at_least is not None and value < at_least) or \
            (below is not None and value >= below):
        raise ValueError(f'{option} must be {bounds}, got {value!r}')


def kwargs_per_model(models: Sequence[str], model_kwargs: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``model_kwargs`` for each model: ViT options to all, a KAN option only to the models whose family takes
    it (said in a warning). An option that no model takes is an error naming it and the models."""
    per_model = {}
    for name in models:
        family = family_of_model(name)
        if family is None and model_kwargs.get('pos_embed') not in (None, 'learn', 'none'):
            # timm's ViT would build a learned embedding for any other value without a word
            raise ValueError(f'--model-kwargs pos_embed={model_kwargs["pos_embed"]}: {name} is not a KAN-ViT and '
                             "takes only pos_embed='learn' or 'none'")
        takes = set(family.options) | set(ADAPTER_KWARGS) if family else set()
        per_model[name] = {k: v for k, v in model_kwargs.items() if k not in _KAN_OPTIONS or k in takes}
    for key in sorted(set(model_kwargs) & _KAN_OPTIONS):
        users = [m for m in models if key in per_model[m]]
        if not users:
            families = ', '.join(f.prefix + '_*' for f in KAN_FAMILIES.values() if key in f.options) or 'none'
            raise ValueError(f'--model-kwargs {key}: none of the models takes it ({", ".join(models)}); '
                             f'families that do: {families}')
        if len(users) < len(models):
            _logger.warning(f'--model-kwargs {key}={model_kwargs[key]!r} applies only to {", ".join(users)}')
    return per_model


def _device(cfg: CompareConfig) -> str:
    if not cfg.device:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    kind = cfg.device.split(':')[0]
    if kind == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {cfg.device}: no CUDA device is available on this machine; use --device cpu')
    return cfg.device


def _create_kwargs(name: str, cfg: CompareConfig, model_kwargs: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = dict(model_kwargs, num_classes=num_classes)
    if cfg.pretrained:
        kwargs['pretrained'] = True
        if cfg.pretrained_file:
            kwargs['pretrained_cfg_overlay'] = dict(
                file=cfg.pretrained_file, custom_load=cfg.pretrained_file.endswith('.npz'))
    if family_of_model(name) is not None:
        kwargs.update({k: getattr(cfg, k) for k in ('freeze', 'kan_init') if getattr(cfg, k) is not None})
    return kwargs


def _run_config(cfg: CompareConfig, models: List[str], recipe: Dict[str, Any], model_kwargs: Dict[str, Any],
                world: int) -> Dict[str, Any]:
    """What must be equal for ``--resume`` to continue a run (JSON-normalised: tuples as lists)."""
    keep = ('data', 'val_ratio', 'max_items', 'seed', 'pretrained', 'pretrained_file', 'freeze', 'kan_init', 'amp',
            'amp_dtype', 'model_ema', 'model_ema_decay', 'match_params', 'param_budget')
    config = dict({k: v for k, v in asdict(cfg).items() if k in keep}, models=models, recipe=recipe,
                  seeds=cfg.run_seeds(),
                  model_kwargs=model_kwargs, world_size=world)
    return json.loads(json.dumps(config))


def _remove_own_outputs(out_dir: Path, models: List[str], seeds: List[int]) -> None:
    """``--overwrite``: the files an earlier run of these models wrote (results, plots, checkpoints), nothing else."""
    for name in _OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in models:
        for tag in ['', *(f'seed{s}' for s in seeds)]:
            checkpoint_path(out_dir, name, tag).unlink(missing_ok=True)


def _previous_results(out_dir: Path, cfg: CompareConfig, config: Dict[str, Any], manifest: Dict[str, Any],
                      models: List[str]) -> Dict:
    """Finished results to keep: the earlier run's with ``--resume``, none with ``--overwrite`` (its files are
    removed); an earlier run without either flag, with another configuration or other data, is an error."""
    results_file = out_dir / 'results.json'
    if not results_file.is_file():
        return {}
    if cfg.overwrite:
        _remove_own_outputs(out_dir, models, cfg.run_seeds())
        return {}
    if not cfg.resume:
        raise ValueError(f'{out_dir} holds the results of an earlier run (results.json): pass --resume to continue '
                         'it, --overwrite to start again, or another --output')
    try:
        previous = json.loads(results_file.read_text())
        before, results = previous.get('config', {}), previous['results']
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f'--resume: {results_file} is not a results file of timm-kan compare ({e!r})') from None
    changes = manifest_changes(previous.get('data_manifest', {}), manifest)
    if changes:
        raise ValueError(f'--resume: --data {cfg.data} changed since {out_dir} was run ({"; ".join(changes[:5])}); '
                         'nothing was written: use --overwrite or another --output')
    differs = sorted(k for k in set(config) | set(before) if config.get(k) != before.get(k))
    if differs:
        changes = '; '.join(f'{k}: {before.get(k)!r} then, {config.get(k)!r} now' for k in differs)
        raise ValueError(f'--resume: {out_dir} was run with another configuration ({changes}); '
                         'use --overwrite or another --output')
    return {(r['model'], r['seed']): r for r in results if r.get('complete')}


class _Explainer:
    """After each model: its blocks recorded on validation images; a KAN model's overview (next to the MLP ViT
    of the run, when there is one) and top-edge grid written to ``OUTPUT/<model>/explain``."""

    def __init__(self, out_dir: Path, data_root: Path, classes: List[str], seed: int) -> None:
        self.out_dir, self.data_root, self.classes, self.seed = out_dir, data_root, classes, seed
        self.reference = None

    def __call__(self, name: str, model: torch.nn.Module, result: Dict[str, Any]) -> None:
        from .explain import explain_model, load_images, record_blocks

        if not hasattr(model, 'blocks'):
            return
        images, _ = load_images(self.data_root, self.classes, model, count=256, seed=self.seed)
        records = record_blocks(model, images)
        if records[0].kind == 'mlp':
            self.reference = self.reference or records
            return
        folder = checkpoint_path(self.out_dir, name).parent / 'explain'
        summary = explain_model(model, images, folder, name=name, reference=self.reference, records=records)
        result['explain'] = [str(Path(p).relative_to(self.out_dir)) for p in summary['pictures']]


def _match_params(models: List[str], create: Dict[str, Dict[str, Any]], budget_m: Optional[float]) -> None:
    """Give every KAN model the ``kan_hidden`` that brings it within 2% of the budget: ``budget_m`` million
    parameters, or the first model's count."""
    budget = round(budget_m * 1e6) if budget_m is not None else count_params(models[0], create[models[0]])
    for name in models:
        hidden = match_hidden(name, create[name], budget)
        if hidden is not None:
            create[name]['kan_hidden'] = hidden
            _logger.warning(f'--match-params: {name} with kan_hidden={hidden} '
                            f'({count_params(name, create[name]) / 1e6:.3f}M parameters, budget {budget / 1e6:.3f}M)')


def run_compare(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """Train every model of ``cfg.models`` under one recipe and write the comparison outputs.

    Everything is checked before anything is written: the options, the output folder (not the data, not a folder
    another command or a user made, unless ``overwrite``) and, with ``resume``, that the data and configuration
    are the run's. One process at a time owns the output folder (a lock file holding its pid).
    """
    models = [resolve_model_name(m) for m in cfg.models]
    recipe = cfg.resolved()
    out_dir = Path(cfg.output)
    inputs = data_inputs(cfg.data) + ([cfg.pretrained_file] if cfg.pretrained_file else [])
    check_output_dir(out_dir, 'compare', '--output', inputs, cfg.overwrite)
    manifest = data_manifest(cfg.data)
    device = _device(cfg)
    if dist.is_initialized():
        info = dict(device=device, global_rank=dist.get_rank(), world_size=dist.get_world_size(), distributed=True)
    else:
        info = init_distributed_device_so(device=device)
    # rank 0 owns the folder; the other ranks of the same run only read it
    with output_lock(out_dir) if info['global_rank'] == 0 else contextlib.nullcontext():
        return _run(cfg, models, recipe, manifest, info)


def _run(cfg: CompareConfig, models: List[str], recipe: Dict[str, Any], manifest: Dict[str, Any],
         info: Dict[str, Any]) -> List[Dict[str, Any]]:
    rank, world, distributed = info['global_rank'], info['world_size'], info['distributed']
    out_dir = Path(cfg.output)
    model_kwargs = dict(BUNDLED_MODEL_KWARGS.get(bundled_set(cfg.data), {}), **cfg.model_kwargs)
    per_model = kwargs_per_model(models, model_kwargs)
    config = _run_config(cfg, models, recipe, model_kwargs, world)
    done = _previous_results(out_dir, cfg, config, manifest, models)
    if rank == 0:
        mark_output_dir(out_dir, 'compare')
        data_root, classes = prepare_data(cfg.data, out_dir, cfg.val_ratio, cfg.seed, cfg.max_items)
    if distributed:
        dist.barrier()
        if rank != 0:
            data_root, classes = prepare_data(cfg.data, out_dir, cfg.val_ratio, cfg.seed, cfg.max_items)
    meta = dict(data=cfg.data, recipe=cfg.recipe, recipe_args=config['recipe'], model_kwargs=model_kwargs,
                seed=cfg.seed, world_size=world, device=str(info['device']), torch=torch.__version__,
                timm=timm.__version__, classes=classes, config=config, data_manifest=manifest, failed=[],
                date=datetime.date.today().isoformat(), processor=processor_name(),
                command=' '.join(['timm-kan', *sys.argv[1:]]))
    results: List[Dict[str, Any]] = []

    def write(current: Optional[Dict[str, Any]] = None) -> None:
        if rank == 0:
            write_results(results + ([current] if current else []), out_dir, meta)

    ctx = RunContext(
        data_root=data_root, classes=classes, recipe=recipe, device=torch.device(info['device']), out_dir=out_dir,
        seed=cfg.seed, distributed=distributed, rank=rank, workers=cfg.workers, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
        model_ema_decay=cfg.model_ema_decay if cfg.model_ema else None, progress=cfg.progress, on_epoch=write,
        on_trained=_Explainer(out_dir, data_root, classes, cfg.seed) if cfg.explain and rank == 0
        else (lambda name, model, result: None), split_files=split_listing(data_root))
    create = {name: _create_kwargs(name, cfg, per_model[name], len(classes)) for name in models}
    if cfg.match_params or cfg.param_budget is not None:
        _match_params(models, create, cfg.param_budget)
    seeds = cfg.run_seeds()
    for name in models:
        for seed in seeds:
            if (name, seed) in done:
                results.append(done[(name, seed)])
                continue
            run_ctx = replace(ctx, seed=seed, run_tag=f'seed{seed}' if len(seeds) > 1 else '',
                              on_trained=ctx.on_trained if seed == seeds[0] else (lambda *args: None))
            try:
                results.append(train_model(name, create[name], run_ctx, resume=cfg.resume))
            except NonFiniteLoss as e:  # this model diverged: say so, keep its last good epoch, train the others
                _logger.error(str(e))
                meta['failed'].append(dict(model=name, seed=seed, error=str(e)))
            write()
    if distributed:
        dist.barrier()
    return results
