"""What a comparison run is given: :class:`CompareConfig`, each option declared once, and the recipes.

Every field carries its ``compare`` flag in its metadata (``add_compare_options`` builds the sub-command from
them, ``config_from_args`` reads them back), so the CLI, the Python API (``run_compare(CompareConfig(...))``) and
the trainer see one set of options with the same defaults: an option left to the data (``recipe``,
``match_params``) is decided by its source in :data:`timm_kan.data.sources.DATA_SOURCES` either way.
"""
import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..arguments import MODEL_KWARGS
from ..data.sources import DATA_SOURCES, FOLDER, DataSource, DataSpec, data_help
from ..data.split import check_max_items, check_val_ratio
from ..models import FREEZE_POLICIES, KAN_INITS
from .param_match import TOLERANCE

__all__ = ['CompareConfig', 'RECIPES', 'DEFAULT_MODELS', 'AMP_DTYPES', 'add_compare_options', 'config_from_args',
           'cli_flag']

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
AMP_DTYPES = ('float16', 'bfloat16')
_RECIPE_OPTIONS = ('epochs', 'batch_size', 'lr', 'weight_decay', 'opt', 'kan_lr_scale', 'kan_weight_decay')


def _option(default: Any = None, *, flag: Optional[str] = None, resume: bool = False, **cli: Any) -> Any:
    """A field with its ``compare`` flag: ``flag`` (default ``--field-name``) and these ``add_argument`` keywords.
    ``resume``: the value must be the run's for ``--resume`` to continue it. A dict default is a fresh copy."""
    metadata = dict(cli=dict(cli, flag=flag), resume=resume)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _sources_where(rule: Callable[[DataSource], bool]) -> str:
    """The data sources ``rule`` holds for, in words (help texts)."""
    return ', '.join('image folders' if name == FOLDER else name for name, s in DATA_SOURCES.items() if rule(s))


def _recipe_help() -> str:
    """``--recipe``'s help: each recipe and the data it is the default for."""
    parts = []
    for name in RECIPES:
        users = _sources_where(lambda s: s.recipe == name)
        parts.append(f"'{name}'" + (f' (default for {users})' if users else ''))
    return ' or '.join(parts)


@dataclass
class CompareConfig:
    """Everything one comparison run needs; the CLI fills it from its flags (each field's metadata).

    ``data`` is parsed into a :class:`~timm_kan.data.sources.DataSpec` here, once. ``recipe`` None is the data
    source's recipe and ``match_params`` None its rule (see :meth:`with_defaults`).
    """
    models: Sequence[str] = _option(DEFAULT_MODELS, nargs='+', help='timm / timm_kan model names')
    data: Union[str, DataSpec] = _option('mnist5k', help=data_help(), resume=True)
    output: str = _option('output/compare')
    recipe: Optional[str] = _option(help=_recipe_help())
    epochs: Optional[int] = _option(type=int)
    batch_size: Optional[int] = _option(type=int)
    lr: Optional[float] = _option(type=float)
    weight_decay: Optional[float] = _option(type=float)
    opt: Optional[str] = _option()
    kan_lr_scale: Optional[float] = _option(
        type=float, help='learning rate of the KAN coefficients (spline, Chebyshev, RBF, rational) relative to --lr')
    kan_weight_decay: Optional[float] = _option(
        type=float, help='weight decay of the KAN coefficients (default: --weight-decay)')
    model_kwargs: Dict[str, Any] = _option({}, **MODEL_KWARGS)
    pretrained: bool = _option(False, action='store_true', help='start from the registry pretrained weights',
                               resume=True)
    pretrained_file: Optional[str] = _option(help='start from this ViT checkpoint file', resume=True)
    freeze: Optional[str] = _option(choices=FREEZE_POLICIES, resume=True)
    kan_init: Optional[str] = _option(choices=KAN_INITS, resume=True)
    val_ratio: float = _option(0.2, type=float, resume=True)
    max_items: Optional[int] = _option(type=int, help='use only this many items of a bundled set', resume=True)
    # the CLI's --seed takes several: the first is this field, all of them are ``seeds`` (config_from_args)
    seed: int = _option(0, type=int, nargs='+', resume=True,
                        help='training seed(s); several: every model trained once per seed, mean ± std reported. '
                             'The first also draws the validation split')
    # the CLI's --seeds is a count: --seed, --seed + 1, ...
    seeds: Optional[Sequence[int]] = _option(type=int, metavar='N', help='N seeds: --seed, --seed + 1, ...')
    match_params: Optional[bool] = _option(
        action=argparse.BooleanOptionalAction, resume=True,
        help=f"give each KAN model the kan_hidden that brings it within {100 * TOLERANCE:.0f}%% of the first "
             f"model's parameters (default: on for {_sources_where(lambda s: s.match_params)} trained from "
             "scratch, off otherwise)")
    param_budget: Optional[float] = _option(type=float, metavar='M', resume=True,
                                            help='match every KAN model to M million parameters instead')
    workers: Optional[int] = _option(type=int)
    amp: bool = _option(True, flag='--no-amp', action='store_false', resume=True)
    amp_dtype: str = _option('float16', choices=AMP_DTYPES, resume=True)
    model_ema: bool = _option(False, action='store_true', resume=True)
    model_ema_decay: float = _option(0.9998, type=float, resume=True)
    device: Optional[str] = _option()
    compile: bool = _option(False, action='store_true',
                            help='train every model through torch.compile (inductor); compile time counts in its '
                                 'train min')
    # tqdm bar: None on a TTY only, False never; epoch lines print regardless
    progress: Optional[bool] = _option(flag='--no-progress', action='store_const', const=False)
    resume: bool = _option(False, action='store_true', help='continue the run in --output (same configuration)')
    overwrite: bool = _option(False, action='store_true', help='discard the results already in --output')
    explain: bool = _option(True, flag='--no-explain', action='store_false',
                            help='skip the explain pictures (overview, top edges) written for each KAN model')

    def __post_init__(self) -> None:
        self.data = DataSpec.of(self.data)

    def with_defaults(self) -> 'CompareConfig':
        """This configuration with what it leaves to the data decided: ``recipe`` (None: the source's),
        ``pretrained`` (also on with a ``pretrained_file``) and ``match_params`` (None: on for a source that
        matches by default, trained from scratch: the equal-parameter comparison is the one the main job answers;
        a pretrained MLP only initialises a KAN of its own hidden width)."""
        source = self.data.source
        pretrained = self.pretrained or bool(self.pretrained_file)
        match = self.match_params if self.match_params is not None else source.match_params and not pretrained
        return replace(self, recipe=self.recipe or source.recipe, pretrained=pretrained, match_params=match)

    def resolved(self) -> Dict[str, Any]:
        """The recipe with the data source's values for it and the user's; bad values name the option."""
        recipe = self.with_defaults().recipe
        if recipe not in RECIPES:
            raise ValueError(f'unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}')
        r = dict(RECIPES[recipe], **self.data.source.recipe_overrides.get(recipe, {}))
        r.update({key: getattr(self, key) for key in _RECIPE_OPTIONS if getattr(self, key) is not None})
        for key in ('epochs', 'batch_size'):
            _check_int(f'--{key.replace("_", "-")}', r[key], 1)
        _check_number('--lr', r['lr'], above=0)
        _check_number('--kan-lr-scale', r['kan_lr_scale'], above=0)
        for key in ('weight_decay', 'kan_weight_decay'):
            if r[key] is not None:
                _check_number(f'--{key.replace("_", "-")}', r[key], at_least=0)
        self._check_run_options()
        return r

    def _check_run_options(self) -> None:
        check_val_ratio(self.val_ratio)
        _check_number('--model-ema-decay', self.model_ema_decay, above=0, below=1)
        check_max_items(self.max_items)
        if self.workers is not None:
            _check_int('--workers', self.workers, 0)
        seeds = self.run_seeds()
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ValueError(f'seeds must be integers >= 0, got {list(seeds)}')
        if len(set(seeds)) != len(seeds):
            raise ValueError(f'seeds must differ, got {list(seeds)}')
        if self.param_budget is not None:
            _check_number('--param-budget', self.param_budget, above=0)
        if self.resume and self.overwrite:
            raise ValueError('--resume continues an earlier run and --overwrite discards it: pass one of them')

    def run_seeds(self) -> List[int]:
        """The training seeds: ``seeds``, else ``seed`` alone (``seed`` also draws the split)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


def _check_int(option: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f'{option} must be an integer >= {low}, got {value!r}')


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


def cli_flag(f: Any) -> str:
    """The ``compare`` flag of a :class:`CompareConfig` field."""
    return f.metadata['cli']['flag'] or '--' + f.name.replace('_', '-')


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    """``compare``'s flags, one per :class:`CompareConfig` field; a flag not given leaves the field's default."""
    for f in fields(CompareConfig):
        cli = {k: v for k, v in f.metadata['cli'].items() if k != 'flag'}
        parser.add_argument(cli_flag(f), dest=f.name, default=argparse.SUPPRESS, **cli)


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The configuration ``compare``'s flags give (``--seed A [B ...]`` and ``--seeds N`` as the seeds they name)."""
    given = {f.name: getattr(args, f.name) for f in fields(CompareConfig) if hasattr(args, f.name)}
    listed, count = given.pop('seed', None), given.pop('seeds', None)
    first = listed[0] if listed else CompareConfig.seed
    if count is not None:
        if listed is not None and len(listed) > 1:
            raise ValueError('--seeds N counts up from one --seed; give either --seeds or several --seed values')
        if count < 1:
            raise ValueError(f'--seeds must be >= 1, got {count}')
        given['seeds'] = list(range(first, first + count))
    elif listed is not None and len(listed) > 1:
        given['seeds'] = list(listed)
    return CompareConfig(**given, seed=first)
