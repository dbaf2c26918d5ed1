"""Fixed 2-D sin-cos position embeddings (``pos_embed='sincos2d'``), as the JAX KAN-ViT write-up offers them.

The form is big_vision's ``posemb_sincos_2d`` (Chen, Xie and He, "An Empirical Study of Training Self-Supervised
Vision Transformers" (MoCo v3), arXiv:2104.02057; Beyer, Zhai and Kolesnikov, "Better plain ViT baselines for
ImageNet-1k", arXiv:2205.01580): for the patch in row y and column x, ``[sin(x w), cos(x w), sin(y w), cos(y w)]``
with ``w_k = temperature ** (-k / (dim / 4 - 1))``, k = 0..dim/4-1. It is added to the patch tokens only; the class
token carries none, as in big_vision's ViT.
"""
from typing import Optional

import torch

__all__ = ['POS_EMBEDS', 'sincos2d_pos_embed', 'check_sincos2d']

# the position embeddings a KAN-ViT takes: timm's learned one, none, or the fixed 2-D sin-cos one
POS_EMBEDS = ('learn', 'none', 'sincos2d')


def check_sincos2d(dim: int, img_size, patch_size) -> None:
    """One-line errors for a width or a patch grid that ``sincos2d`` cannot describe."""
    if dim % 4 or dim < 8:
        raise ValueError(f"pos_embed='sincos2d' needs an embed_dim divisible by 4 and >= 8, got {dim}")
    for size, patch in zip(img_size, patch_size):
        if size % patch:
            raise ValueError(f"pos_embed='sincos2d' needs img_size divisible by patch_size: img_size "
                             f"{tuple(img_size)} and patch_size {tuple(patch_size)} leave part of a patch")


def sincos2d_pos_embed(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.,
                       device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(grid_h * grid_w, dim)`` table, patches in row-major order (timm's patch order)."""
    y, x = torch.meshgrid(torch.arange(grid_h, device=device, dtype=torch.float64),
                          torch.arange(grid_w, device=device, dtype=torch.float64), indexing='ij')
    quarter = dim // 4
    omega = temperature ** -(torch.arange(quarter, device=device, dtype=torch.float64) / (quarter - 1))
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype)
