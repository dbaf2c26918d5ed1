"""One timm entry per KAN family that builds any timm model (``base=``) with KAN feed-forward blocks (``kanify``).

``timm.create_model('chebykan', base='swin_tiny_patch4_window7_224', pretrained=True, num_classes=10)`` builds the
base through timm (its own pretrained weights with ``pretrained=True``), then replaces its ``Mlp`` modules by the
family's block, function-preserving (``kan_init='mlp'``, the default with pretrained weights) and with
``freeze='backbone'`` by default then, as the KAN-ViT adapter does. ``train.py --model chebykan --model-kwargs
base=convnext_tiny`` and ``local-dir:``/``hf-hub:`` exports (config.json records ``base`` and the KAN options) need
no other code. The entry names are the families' prefixes without ``_vit``: ``kan``, ``chebykan``, ``rbfkan``,
``grkan`` and the control ``ratmlp``.

Papers: the KAN families' (see ``kan_vit``: Liu et al. arXiv:2404.19756; Sidharth arXiv:2405.07200; Li
arXiv:2405.06721; Yang & Wang arXiv:2409.10594) in the feed-forward blocks of the bases' own architectures (e.g.
Swin, Liu et al. arXiv:2103.14030; ConvNeXt, Liu et al. arXiv:2201.03545; MLP-Mixer, Tolstikhin et al.
arXiv:2105.01601; MetaFormer, Yu et al. arXiv:2111.11418).
"""
from typing import Any, Callable, Dict, Optional, Tuple

import timm
from timm.models import load_pretrained, register_model
from torch import nn

from ..layers import KAN_FAMILIES, KANFamily
from ..layers.base import check_choice
from ._freeze import FREEZE_POLICIES, apply_freeze_policy
from ._pretrained import KAN_INITS, LoadReport
from .kan_vit import check_family_kwarg
from .kanify import UNSUPPORTED, convert
from .names import close_matches, family_of_model

__all__ = ['ANY_MODEL_KWARGS', 'register_any_model']

# the create_model options of the entries beyond the families' (and the model to convert)
ANY_MODEL_KWARGS = ('base', 'unsupported')
# the options the entry takes itself; every other one goes to the base model
_OWN = ('kan_init', 'freeze', 'pretrained_strict', 'unsupported')


def _check_base(variant: str, base: Optional[str]) -> str:
    if not base:
        raise ValueError(f"{variant}: give the timm model to convert as base=, e.g. base='convnext_tiny'")
    name = base.split('.')[0]
    if not timm.is_model(name):
        raise ValueError(f'{variant}: unknown base model {base!r}.{close_matches(name)}')
    if family_of_model(name) is not None:
        raise ValueError(f'{variant}: base {base!r} already has KAN layers; give an MLP model such as its ViT')
    return base


def _split(variant: str, family: KANFamily, kwargs: Dict[str, Any]) -> Tuple[Dict, Dict, Dict]:
    """(the entry's own options, the family's, the base model's) of the create_model kwargs."""
    own, options, rest = {}, {}, {}
    for key, value in kwargs.items():
        check_family_kwarg(variant, family, key)
        if key == 'pretrained_resample':
            raise ValueError(f'{variant}: pretrained_resample is a KAN-ViT option; the base model loads its own '
                             'weights through timm')
        (own if key in _OWN else options if key in family.options else rest)[key] = value
    for key, allowed in (('kan_init', KAN_INITS), ('freeze', FREEZE_POLICIES), ('unsupported', UNSUPPORTED)):
        if key in own:
            check_choice(key, own[key], allowed, variant)
    return own, options, rest


def _base_weights(pretrained: bool, cfg: Dict[str, Any]) -> str:
    if not pretrained:
        return 'none (random init)'
    return str(cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('architecture'))  # timm's order


def _create_any(family: KANFamily, pretrained: bool = False, base: Optional[str] = None,
                pretrained_cfg: Optional[Dict[str, Any]] = None, pretrained_cfg_overlay: Optional[Dict] = None,
                pretrained_model_args: Optional[Dict[str, Any]] = None, cache_dir: Any = None,
                **kwargs: Any) -> nn.Module:
    """Build ``base``, then convert it: from its own weights (``pretrained``), or fresh and then loaded with this
    package's export (``pretrained`` with the ``model_args`` of a ``local-dir:``/``hf-hub:`` config.json)."""
    variant = family.any_model
    base = _check_base(variant, base)
    own, options, base_kwargs = _split(variant, family, kwargs)
    exported = pretrained and pretrained_model_args is not None
    kan_init = own.get('kan_init') or ('mlp' if pretrained and not exported else 'random')
    if kan_init == 'mlp' and not pretrained:
        raise ValueError(f"{variant}: kan_init='mlp' copies the pretrained MLPs of {base} into the KAN layers; it "
                         "needs pretrained=True (the base's timm weights, or pretrained_cfg_overlay=dict(file=...))")
    from_base = pretrained and not exported
    if exported:  # config.json keeps the class count at its top level (timm puts it in the pretrained_cfg)
        base_kwargs.setdefault('num_classes', pretrained_cfg.get('num_classes'))
    model = timm.create_model(base, pretrained=from_base, pretrained_cfg_overlay=pretrained_cfg_overlay if from_base
                              else None, cache_dir=cache_dir, **base_kwargs)
    weights = _base_weights(from_base, model.pretrained_cfg)
    convert(model, family, 'random' if exported else kan_init, own.get('unsupported', 'error'), options,
            load=from_base, freeze=own.get('freeze') or ('backbone' if from_base else 'none'))
    if exported:  # the saved KAN model, strictly: a tensor missing or left over is an error
        load_pretrained(model, pretrained_cfg=pretrained_cfg, num_classes=model.num_classes,
                        strict=own.get('pretrained_strict', True), cache_dir=cache_dir)
        model.pretrained_cfg = model.default_cfg = dict(pretrained_cfg)
        model.pretrained_load = LoadReport('kan', frozenset(model.state_dict()))
        apply_freeze_policy(model, own.get('freeze') or 'none')
    else:
        model.pretrained_cfg['base_weights'] = weights
    return model


def _entry_point(family: KANFamily) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create_any(family, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = family.any_model
    create.__module__ = __name__
    create.__doc__ = (f'Any timm model (``base=``) with {family.describe()} feed-forward blocks in place of its '
                      'MLPs. ``pretrained=True`` loads the base\'s own timm weights, then converts them.')
    return create


def register_any_model(family: KANFamily) -> None:
    """Register ``family``'s ``any_model`` entry with timm (also a name of this module, as timm's entries are)."""
    globals()[family.any_model] = register_model(_entry_point(family))


for _family in KAN_FAMILIES.values():  # the built-in families
    register_any_model(_family)
