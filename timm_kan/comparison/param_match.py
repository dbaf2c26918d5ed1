"""Equal-parameter comparisons: the KAN hidden width that gives a model a parameter budget.

A KAN-ViT's parameter count is affine in ``kan_hidden`` (the first layer's outputs, the mid norm and the second
layer's inputs all scale with it), so two counts on the meta device give the width; it is rounded (to a
multiple of the coefficient groups for group-rational KAN) and checked against the 2% tolerance.
"""
from typing import Any, Dict, Optional

import timm

from ..accounting import count_parameters
from ..models import family_of_model

__all__ = ['count_params', 'match_hidden', 'TOLERANCE']

TOLERANCE = 0.02


def count_params(name: str, kwargs: Dict[str, Any]) -> int:
    """Parameters of ``name`` built with ``kwargs`` on the meta device (no memory, no pretrained load)."""
    from ..models import architecture_kwargs

    args = {k: v for k, v in architecture_kwargs(name, kwargs).items()
            if k not in ('pretrained', 'pretrained_cfg_overlay')}
    return count_parameters(timm.create_model(name, device='meta', **args))['total']


def match_hidden(name: str, kwargs: Dict[str, Any], budget: int) -> Optional[int]:
    """The ``kan_hidden`` that brings ``name`` within 2% of ``budget`` parameters (None for a model that is not a
    KAN-ViT: its width is left alone). Raises ValueError naming the closest count when no width reaches it."""
    family = family_of_model(name)
    if family is None:
        return None
    step = family.width_multiple(kwargs)
    lo_h, hi_h = 8 * step, 16 * step
    lo, hi = count_params(name, dict(kwargs, kan_hidden=lo_h)), count_params(name, dict(kwargs, kan_hidden=hi_h))
    per_unit = (hi - lo) / (hi_h - lo_h)
    base = lo - per_unit * lo_h
    hidden = max(step, round((budget - base) / per_unit / step) * step)
    got = count_params(name, dict(kwargs, kan_hidden=hidden))
    if abs(got - budget) > TOLERANCE * budget:
        raise ValueError(
            f'--match-params: no hidden width brings {name} within {100 * TOLERANCE:.0f}% of {budget / 1e6:.3f}M '
            f'parameters; the closest is kan_hidden={hidden} with {got / 1e6:.3f}M (everything but its feed-forward '
            f'layers already has {base / 1e6:.3f}M)')
    return hidden
