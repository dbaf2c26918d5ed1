"""timm_kan: Kolmogorov-Arnold Network Vision Transformers for timm.

``import timm_kan`` registers the ``kan_vit_*`` (B-spline), ``chebykan_vit_*`` (Chebyshev), ``rbfkan_vit_*``
(RBF) and ``grkan_vit_*`` (group-rational, KAT) models with timm, and one entry per family that converts any
timm model's MLPs (``chebykan``, ``base='swin_tiny_patch4_window7_224'``; ``kanify`` does it to a built model), so
``timm.create_model``, ``timm.list_models`` and timm's ``train.py`` (``--device-modules timm_kan``) find them.
"""
from ._version import __version__
from .accounting import count_flops, count_parameters, model_summary
from .hub import export_for_hub, push_to_hub
from .layers import KAN_FAMILIES, BSplineKANLinear, ChebyshevKANLinear, GRKANMlp, KANFamily, KANMlp, RBFKANLinear
from .models import (
    CheckpointError, KANVisionTransformer, KanifyReport, apply_freeze_policy, kanify, register_family)
