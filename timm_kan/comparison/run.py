"""``timm-kan compare``: train several models under one recipe on one data set and compare them.

Each model is trained by :mod:`timm_kan.comparison.trainer` from timm's parts; runs under ``torchrun`` (DDP;
gloo on CPU, NCCL on GPU, set up by timm's ``init_distributed_device_so``); only rank 0 writes.

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
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

import torch
import torch.distributed as dist

import timm
from timm.utils.distributed import init_distributed_device_so

from ..data.sources import data_inputs, data_manifest, prepare_data
from ..data.split import manifest_changes, split_listing
from ..io import check_output_dir, mark_output_dir, output_lock, processor_name
from ..layers import KAN_FAMILIES
from ..models import family_of_model, resolve_model_name
from ..models.kan_any import ANY_MODEL_KWARGS
from ..models.kan_vit import ADAPTER_KWARGS
from .config import CompareConfig
from .param_match import count_params, match_hidden
from .results import write_results
from .trainer import NonFiniteLoss, RunContext, checkpoint_path, train_model

__all__ = ['run_compare', 'kwargs_per_model']

_logger = logging.getLogger(__name__)

_OUTPUT_FILES = ('results.json', 'results.csv', 'loss.png', 'accuracy.png', 'accuracy_vs_gflops.png',
                 'accuracy_vs_params.png')


def _kan_options() -> Set[str]:
    """Options a KAN model takes and a plain one does not (``base=`` of a family's ``any_model`` entry too): given
    only to the models whose family takes them (read when needed: a family may be registered after import)."""
    return {o for f in KAN_FAMILIES.values() for o in f.options} | set(ADAPTER_KWARGS) | set(ANY_MODEL_KWARGS)


def kwargs_per_model(models: Sequence[str], model_kwargs: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``model_kwargs`` for each model: ViT options to all, a KAN option only to the models whose family takes
    it (said in a warning). An option that no model takes is an error naming it and the models."""
    per_model, kan_options = {}, _kan_options()
    for name in models:
        family = family_of_model(name)
        if family is None and model_kwargs.get('pos_embed') not in (None, 'learn', 'none'):
            # timm's ViT would build a learned embedding for any other value without a word
            raise ValueError(f'--model-kwargs pos_embed={model_kwargs["pos_embed"]}: {name} is not a KAN-ViT and '
                             "takes only pos_embed='learn' or 'none'")
        takes = set(family.options) | set(ADAPTER_KWARGS) | set(ANY_MODEL_KWARGS) if family else set()
        per_model[name] = {k: v for k, v in model_kwargs.items() if k not in kan_options or k in takes}
    for key in sorted(set(model_kwargs) & kan_options):
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
    """What must be equal for ``--resume`` to continue a run: the options marked so, then what the run made of
    the others (JSON-normalised: tuples as lists)."""
    config = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata['resume']}
    config.update(data=str(cfg.data), models=models, recipe=recipe, seeds=cfg.run_seeds(), model_kwargs=model_kwargs,
                  world_size=world)
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
        from ..explain import explain_model, load_images, record_blocks

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
    cfg = cfg.with_defaults()
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
    model_kwargs = dict(cfg.data.source.model_kwargs, **cfg.model_kwargs)
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
    meta = dict(data=str(cfg.data), recipe=cfg.recipe, recipe_args=config['recipe'], model_kwargs=model_kwargs,
                seed=cfg.seed, world_size=world, device=str(info['device']), torch=torch.__version__,
                timm=timm.__version__, classes=classes, config=config, compile=cfg.compile, data_manifest=manifest,
                failed=[],
                date=datetime.date.today().isoformat(), processor=processor_name(),
                command=' '.join(['timm-kan', *sys.argv[1:]]))
    results: List[Dict[str, Any]] = []

    def write(current: Optional[Dict[str, Any]] = None) -> None:
        # after every epoch the results files (an interrupted run keeps them); the plots once per finished run
        if rank == 0:
            write_results(results + ([current] if current else []), out_dir, meta, plots=current is None)

    ctx = RunContext(
        data_root=data_root, classes=classes, recipe=recipe, device=torch.device(info['device']), out_dir=out_dir,
        seed=cfg.seed, distributed=distributed, rank=rank, config=cfg, on_epoch=write,
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
