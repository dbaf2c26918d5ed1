"""KAN-ViT model definitions, registered with timm on import."""
from ._pretrained import CheckpointError, freeze, kan_checkpoint_filter_fn
from .kan_vit import KAN_FAMILIES, KANVisionTransformer, architecture_kwargs
