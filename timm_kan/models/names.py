"""Model names: which KAN family a registered name, a pretrained tag or an ``hf-hub:``/``local-dir:`` source is."""
import difflib
from typing import Optional

import timm

from ..layers import KAN_FAMILIES, KANFamily

__all__ = ['family_of_model', 'design_name', 'resolve_model_name', 'close_matches']


def family_of_model(name: str) -> Optional[KANFamily]:
    """The family of a model name (a KAN-ViT or a family's ``any_model`` entry; ``hf-hub:``/``local-dir:`` and
    pretrained tags allowed), None for others."""
    base = name.split(':')[-1].split('/')[-1].split('.')[0]
    # longest prefix first: 'kan_vit' is a suffix of the others, never a prefix of them
    for family in sorted(KAN_FAMILIES.values(), key=lambda f: -len(f.prefix)):
        if base.startswith(family.prefix + '_') or base == family.any_model:
            return family
    return None


def design_name(name: str) -> str:
    """'Chebyshev KAN', ... or 'MLP' for a model that is not a KAN-ViT."""
    family = family_of_model(name)
    return family.display if family else 'MLP'


def resolve_model_name(name: str) -> str:
    """Check a model name against timm's registry; unknown names raise with the close matches."""
    if name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name):
        return name
    base = name.split('.')[0]
    if timm.is_model(base):
        return name
    raise ValueError(f'unknown model {name!r} (did you import timm_kan?).{close_matches(base)}')


def close_matches(name: str) -> str:
    """' Close matches: a, b.' for the registered models whose names are near ``name`` ('' for none)."""
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    return f' Close matches: {", ".join(close)}.' if close else ''
