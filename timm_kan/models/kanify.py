"""``kanify``: any timm model with its MLP feed-forward modules replaced by a KAN family's block.

timm builds the feed-forward part of about 35 model families (Swin, ConvNeXt, BEiT, DeiT III, CaiT, EVA, MLP-Mixer,
MetaFormer, MaxViT, ...) from the same ``timm.layers.Mlp`` (fc1 -> act -> norm -> fc2), on tokens or channels-last
maps, or with 1x1 convolutions on NCHW maps (``use_conv=True``, wrapped here in ``ChannelsFirst``). ``kanify`` swaps
each for the family's block and maps its weights with the KAN-ViT adapter's code (``adapt_mlp_state``):
``kan_init='mlp'`` reproduces the MLP exactly for the KAN-layer families and within the GELU/SiLU fit for the
group-rational ones. A module no family block computes (gated or convolutional MLPs, an activation with
parameters) is an error naming it, or stays an MLP with a warning (``unsupported='warn'``).
"""
import copy
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.layers import ConvMlp, GatedMlp, GlobalResponseNormMlp, GluMlp, Mlp, SwiGLU
from timm.layers.activations import GELU, GELUTanh, QuickGELU

from ..layers import KANFamily, family_of_type
from ..layers.base import check_choice
from ._freeze import apply_freeze_policy
from ._pretrained import KAN_INITS, LoadReport, adapt_mlp_state, describe_keys, kan_ffn_prefixes
from .kan_vit import _kan_args, check_family_kwarg

__all__ = ['ChannelsFirst', 'KanifyReport', 'UNSUPPORTED', 'architecture_args', 'convert', 'kanify',
           'replace_mlps']

_logger = logging.getLogger(__name__)

UNSUPPORTED = ('error', 'warn')
# MLP classes of timm that no family block computes: gated (two fc1 halves) or normalised before the activation
_REFUSED = {GluMlp: 'a gated MLP (GLU)', SwiGLU: 'a gated MLP (SwiGLU)', GatedMlp: 'a gated MLP',
            ConvMlp: 'a convolutional MLP that normalises before its activation',
            GlobalResponseNormMlp: 'an MLP with global response normalisation'}
# the activations group-rational blocks start as a fit of (KAT's GELU and SiLU fits)
_RATIONAL_FITS = (nn.GELU, GELU, GELUTanh, QuickGELU, nn.SiLU)


class ChannelsFirst(nn.Module):
    """A feed-forward block on NCHW maps: timm's ``Mlp(use_conv=True)`` (1x1 convolutions) as the channels-last
    block ``ffn`` between two permutes."""

    def __init__(self, ffn: nn.Module) -> None:
        super().__init__()
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@dataclass
class KanifyReport:
    """What ``kanify`` did: the modules it replaced and left, and the parameters before and after."""
    model: str
    kan_type: str
    kan_init: str
    options: Dict[str, Any]
    converted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def preserved(self) -> str:
        """Whether the converted model computes the base's outputs: 'exact', 'fit' (the rational GELU/SiLU fit)
        or 'no' (fresh KAN layers)."""
        if self.kan_init != 'mlp':
            return 'no'
        return 'exact' if family_of_type(self.kan_type).layer is not None else 'fit'

    def summary(self) -> str:
        left = f', {len(self.skipped)} left as MLPs' if self.skipped else ''
        return (f'{self.model}: {len(self.converted)} MLPs -> {family_of_type(self.kan_type).display}{left}; '
                f'{self.params_before:,} -> {self.params_after:,} parameters; outputs preserved: {self.preserved}')


def _mlp_like(model: nn.Module) -> List[str]:
    """Class names of the modules that look like feed-forward blocks, for errors."""
    names = {type(m).__name__ for m in model.modules()}
    return sorted(n for n in names if any(w in n.lower() for w in ('mlp', 'glu', 'ffn', 'feedforward')))


def _why_not(mlp: nn.Module, family: KANFamily, kan_init: str) -> Optional[str]:
    """Why ``mlp`` cannot become ``family``'s block (function-preserving where ``kan_init='mlp'``); None if it can."""
    if type(mlp) in _REFUSED:
        return f'{type(mlp).__name__}: {_REFUSED[type(mlp)]}, which no KAN block computes'
    if (mlp.fc1.bias is None) != (mlp.fc2.bias is None):
        return 'Mlp with a bias on one of fc1/fc2 only'
    if any(True for _ in mlp.act.parameters()) or any(True for _ in mlp.act.buffers()):
        return f'Mlp whose activation {type(mlp.act).__name__} has its own tensors'
    if family.layer is not None and not isinstance(mlp.norm, nn.Identity):
        return f'Mlp with a norm after its activation ({type(mlp.norm).__name__}); KANMlp normalises before it'
    if kan_init == 'mlp' and family.layer is None and not isinstance(mlp.act, _RATIONAL_FITS):
        return f'Mlp with activation {type(mlp.act).__name__}; {family.display} starts as a GELU or SiLU fit'
    return None


def _block_error(mlp: Mlp, family: KANFamily, options: Dict[str, Any]) -> Optional[str]:
    """What the family's block says of ``mlp``'s widths under ``options`` (groups must divide them, say), built on the
    meta device; None when it builds."""
    if family.width_multiple_of is None:  # only a family with a width rule refuses a width
        return None
    hidden = options.get('kan_hidden')
    try:
        _family_block(mlp, family, {k: v for k, v in options.items() if k not in ('kan_type', 'kan_hidden')},
                      hidden if isinstance(hidden, int) else None, device='meta')
    except ValueError as e:
        return f'{type(mlp).__name__} {tuple(mlp.fc1.weight.shape[:2])}: {e}'
    return None


def _candidates(model: nn.Module, family: KANFamily, kan_init: str,
                options: Dict[str, Any]) -> Tuple[List[str], Dict[str, str]]:
    """(names of the Mlp modules to convert, {name: why not} of the MLP modules that cannot be)."""
    convert, refused = [], {}
    for name, m in model.named_modules():
        if type(m) is not Mlp and type(m) not in _REFUSED:
            continue
        why = _why_not(m, family, kan_init) or _block_error(m, family, options)
        if why is None:
            convert.append(name)
        else:
            refused[name] = why
    return convert, refused


def _act_layer(act: nn.Module) -> Callable[[], nn.Module]:
    """A constructor of ``act`` as it is: its class where a default instance is the same function (the rational
    blocks pick their fit by class), else a copy of it."""
    try:
        same = repr(type(act)()) == repr(act)
    except TypeError:  # a constructor with required arguments
        same = False
    return type(act) if same else partial(copy.deepcopy, act)


def _family_block(mlp: Mlp, family: KANFamily, options: Dict[str, Any], hidden: Optional[int],
                  device: Any = None) -> nn.Module:
    """``family``'s block with ``mlp``'s widths, activation, norm, bias and dropout, on ``mlp``'s device (or
    ``device``)."""
    weight = mlp.fc1.weight
    norm = mlp.norm

    def norm_layer(*_: Any, **__: Any) -> nn.Module:
        return copy.deepcopy(norm)

    block = family.block(
        weight.shape[1], weight.shape[0], mlp.fc2.weight.shape[0], act_layer=_act_layer(mlp.act),
        norm_layer=None if isinstance(norm, nn.Identity) else norm_layer, bias=mlp.fc1.bias is not None,
        drop=mlp.drop1.p, device=device or weight.device, dtype=weight.dtype, **dict(options, kan_hidden=hidden))
    return ChannelsFirst(block) if isinstance(mlp.fc1, nn.Conv2d) else block


def _channels_last_state(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """A conv ``Mlp``'s tensors as the ``ChannelsFirst`` block's linear ones (``P.fc1.weight`` (o, i, 1, 1) ->
    ``P.ffn.fc1.weight`` (o, i)), so that the shared MLP mapping reads them."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            k = f'{prefix}ffn.{k[len(prefix):]}'
            v = v.flatten(1) if v.dim() == 4 else v
        out[k] = v
    return out


def _hidden_per_module(kan_hidden: Any, count: int) -> List[Optional[int]]:
    if not isinstance(kan_hidden, (list, tuple)):
        return [kan_hidden] * count
    if len(kan_hidden) != count:
        raise ValueError(f'kanify: kan_hidden has {len(kan_hidden)} widths for {count} converted MLPs: give one per '
                         'MLP or a single one')
    return list(kan_hidden)


def _check_input(model: nn.Module, name: str, kan_init: str, unsupported: str) -> None:
    check_choice('kan_init', kan_init, KAN_INITS, 'kanify')
    check_choice('unsupported', unsupported, UNSUPPORTED, 'kanify')
    done = kan_ffn_prefixes(model)
    if done:
        raise ValueError(f'kanify: {name} already has {len(done)} KAN feed-forward blocks ({describe_keys(done, 3)}); '
                         'kanify converts MLPs once: build the base model again to convert it to another family')


def _resolve(model: nn.Module, name: str, family: KANFamily, kan_init: str, unsupported: str,
             options: Dict[str, Any]) -> Tuple[List[str], Dict[str, str], Dict[str, Any]]:
    """(modules to convert, modules left with why, the family's resolved options); every error before any change."""
    for key in options:
        check_family_kwarg('kanify', family, key)
    kan_args, rest = _kan_args(family, kan_init, options)
    if rest:
        raise ValueError(f'kanify: unknown option(s) {", ".join(sorted(rest))}; {family.display} takes '
                         f'{", ".join(family.options)}')
    convert, refused = _candidates(model, family, kan_init, kan_args)
    if not convert:
        raise ValueError(f'kanify: {name} has no timm Mlp feed-forward module {family.display} can replace (MLP-like '
                         f'modules seen: {", ".join(_mlp_like(model)) or "none"})' + (
                             f'; {describe_keys(refused, 1)}: {next(iter(refused.values()))}' if refused else ''))
    if refused and unsupported == 'error':
        first, why = next(iter(refused.items()))
        raise ValueError(f'kanify: {len(refused)} MLP modules of {name} cannot become {family.display} blocks, e.g. '
                         f"{first} ({why}); pass unsupported='warn' to leave them as they are")
    return convert, refused, kan_args


def replace_mlps(model: nn.Module, family: KANFamily, kan_args: Dict[str, Any], names: Sequence[str]) -> None:
    """Swap the modules ``names`` for ``family``'s blocks (fresh), in place."""
    options = {k: v for k, v in kan_args.items() if k != 'kan_type'}
    widths = _hidden_per_module(options.pop('kan_hidden', None), len(names))
    for name, hidden in zip(names, widths):
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _family_block(getattr(parent, child), family, options, hidden))


def kanify(
        model: nn.Module,
        kan_type: str,
        kan_init: str = 'mlp',
        freeze: str = 'none',
        unsupported: str = 'error',
        **family_options: Any,
) -> KanifyReport:
    """Replace every timm ``Mlp`` feed-forward module of ``model`` by ``kan_type``'s block, in place.

    Args:
        model: Any timm model (its current weights are the MLPs that ``kan_init='mlp'`` maps).
        kan_type: A key of ``KAN_FAMILIES``.
        kan_init: 'mlp': the KAN blocks start as the MLPs (exactly; group-rational within its fit); 'random': fresh.
        freeze: A freeze policy (``FREEZE_POLICIES``): 'backbone' trains only the KAN blocks and the head.
        unsupported: 'error': a module that cannot be converted is an error naming it; 'warn': it stays an MLP.
        **family_options: The family's ``create_model`` options (``degree``, ``groups``, ``kan_hidden``, ...).

    Returns:
        The report, also kept as ``model.kanify_report``.
    """
    return convert(model, family_of_type(kan_type), kan_init, unsupported, family_options, load=True, freeze=freeze)


def convert(model: nn.Module, family: KANFamily, kan_init: str, unsupported: str, options: Dict[str, Any],
            load: bool, freeze: str = 'none') -> KanifyReport:
    """``kanify``; without ``load`` the KAN blocks stay fresh and nothing counts as loaded (a base built without
    weights, or one that a saved KAN model is loaded into next)."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    name = cfg.get('base_architecture') or cfg.get('architecture') or type(model).__name__
    _check_input(model, name, kan_init, unsupported)
    names, refused, kan_args = _resolve(model, name, family, kan_init, unsupported, options)
    for module, why in refused.items():
        _logger.warning(f'kanify: {name}: {module} stays an MLP: {why}')
    before = sum(p.numel() for p in model.parameters())
    state = model.state_dict() if load else {}
    replace_mlps(model, family, kan_args, names)
    model.pretrained_load = None
    if load:
        for prefix in (f'{n}.' for n in names if isinstance(model.get_submodule(n), ChannelsFirst)):
            state = _channels_last_state(state, prefix)
        state, loaded = adapt_mlp_state(state, model, kan_init, source=name)
        model.load_state_dict(state)
        model.pretrained_load = LoadReport('vit', loaded)
    report = KanifyReport(name, family.kan_type, kan_init, kan_args, names, refused, before,
                          sum(p.numel() for p in model.parameters()))
    _record(model, cfg, report, unsupported)
    apply_freeze_policy(model, freeze)
    return report


def _record(model: nn.Module, cfg: Dict[str, Any], report: KanifyReport, unsupported: str) -> None:
    """What rebuilds the model: its KAN options and, for a model timm built (its ``pretrained_cfg`` names it), its
    family's ``any_model`` entry with ``base=`` (``save_for_hf`` then writes a config.json that ``local-dir:`` and
    ``hf-hub:`` rebuild exactly)."""
    model.kan_args = dict(report.options)
    model.kanify_report = report
    model.kanify_args = {'unsupported': unsupported}
    if cfg.get('architecture'):
        model.kanify_args['base'] = cfg['architecture']
        model.pretrained_cfg = model.default_cfg = dict(
            cfg, architecture=family_of_type(report.kan_type).any_model, base_architecture=cfg['architecture'])


def architecture_args(model: nn.Module) -> Dict[str, Any]:
    """The options that rebuild ``model``'s KAN layers (a KAN-ViT's, or a kanified model's with its ``base``) as
    JSON-ready ``model_args``; {} for a model without KAN layers."""
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in getattr(model, 'kan_args', {}).items()
            if k != 'kan_type' and v is not None}
    return dict(args, **getattr(model, 'kanify_args', {}))
