"""KAN-ViT model definitions and the KAN entries for any timm model (``kanify``), registered with timm on import."""
from ._freeze import FREEZE_POLICIES, apply_freeze_policy
from ._pretrained import KAN_INITS, CheckpointError, LoadReport, kan_checkpoint_filter_fn
from .archs import ARCHS
from .kan_vit import ADAPTER_KWARGS, KANVisionTransformer, architecture_kwargs, register_family
from .names import design_name, family_of_model, resolve_model_name
from .kanify import ChannelsFirst, KanifyReport, architecture_args, kanify
from .kan_any import register_any_model
