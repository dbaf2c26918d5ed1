"""Fused GPU kernels (Triton) for the KAN layers; each sits beside its PyTorch reference in ``layers``.

``fused=None`` on a layer uses the kernel for CUDA tensors when Triton imports and the reference
otherwise; ``fused=True`` forces the kernel (CPU tensors run under ``TRITON_INTERPRET=1``),
``fused=False`` forces the reference.
"""
import functools
import importlib.util
import os
from typing import Optional

import torch

__all__ = ['triton_available', 'use_fused']


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    # asked on every CUDA forward: look the package up once
    return importlib.util.find_spec('triton') is not None


def use_fused(x: torch.Tensor, fused: Optional[bool]) -> bool:
    """Whether a layer with option ``fused`` runs its Triton kernel on ``x``."""
    if fused is None:
        return x.is_cuda and triton_available()
    if fused and not triton_available():
        raise RuntimeError('fused=True needs Triton (pip install triton); use fused=None to fall back to PyTorch')
    if fused and not x.is_cuda and os.environ.get('TRITON_INTERPRET') != '1':
        raise RuntimeError(f'fused=True on a {x.device.type} tensor: the Triton kernels run on CUDA, or on CPU '
                           'under TRITON_INTERPRET=1 set before triton is imported; use fused=None or False')
    return bool(fused)
