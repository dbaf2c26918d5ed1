"""timm_kan: Kolmogorov-Arnold Network Vision Transformers for timm.

``import timm_kan`` registers the ``kan_vit_*`` (B-spline KAN) and ``chebykan_vit_*`` (Chebyshev KAN)
models with timm, so ``timm.create_model``, ``timm.list_models`` and timm's ``train.py``
(``--device-modules timm_kan``) find them.
"""
from .accounting import count_flops, count_parameters, model_summary
from .hub import export_for_hub, push_to_hub
from .layers import BSplineKANLinear, ChebyshevKANLinear, KANMlp
from .models import CheckpointError, KANVisionTransformer, freeze

__version__ = '0.1.0'
