"""timm_kan: Kolmogorov-Arnold Network Vision Transformers for timm.

``import timm_kan`` registers the ``kan_vit_*`` (B-spline), ``chebykan_vit_*`` (Chebyshev), ``rbfkan_vit_*``
(RBF) and ``grkan_vit_*`` (group-rational, KAT) models with timm, so ``timm.create_model``,
``timm.list_models`` and timm's ``train.py`` (``--device-modules timm_kan``) find them.
"""
from ._version import __version__
from .accounting import count_flops, count_parameters, model_summary
from .hub import export_for_hub, push_to_hub
from .layers import KAN_FAMILIES, BSplineKANLinear, ChebyshevKANLinear, GRKANMlp, KANFamily, KANMlp, RBFKANLinear
from .models import CheckpointError, KANVisionTransformer, apply_freeze_policy, register_family
