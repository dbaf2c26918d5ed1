"""KAN-ViT model definitions, registered with timm on import."""
from ._freeze import FREEZE_POLICIES, apply_freeze_policy
from ._pretrained import KAN_INITS, CheckpointError, LoadReport, kan_checkpoint_filter_fn
from .archs import ARCHS
from .kan_vit import KANVisionTransformer, architecture_kwargs, register_family
from .names import design_name, family_of_model, resolve_model_name
