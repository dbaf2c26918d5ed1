"""The feed-forward variants ``timm-kan bench`` times: timm's MLP, the published Chebyshev formula as a baseline,
each family's block (reference and fused) and the peer package ``ikan``'s layers when it is installed."""
import contextlib
import io
import os
import warnings
from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from .layers import KAN_FAMILIES

__all__ = ['PublishedChebyshevKAN', 'ffn_variants', 'import_ikan']


class PublishedChebyshevKAN(nn.Module):
    """Baseline only: the commonly published Chebyshev KAN layer, T_k(t) = cos(k * acos(tanh x)) + einsum.

    Its gradient is NaN once tanh rounds to +-1; timm_kan's layer uses the recurrence instead.
    """

    def __init__(self, in_features: int, out_features: int, degree: int = 3) -> None:
        super().__init__()
        self.coeffs = nn.Parameter(torch.randn(in_features, out_features, degree + 1) / (in_features * (degree + 1)))
        self.register_buffer('orders', torch.arange(degree + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x).unsqueeze(-1)
        basis = torch.cos(torch.acos(t) * self.orders)
        return torch.einsum('...id,iod->...o', basis, self.coeffs)


def import_ikan() -> Tuple[Optional[Any], str]:
    """The peer package ``ikan`` and its version, or None and why not.

    Importing it prints, and its GroupKAN module changes the working directory: both are undone here.
    """
    cwd = os.getcwd()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            import ikan
    except ImportError:
        return None, 'not installed'
    except Exception as e:  # a peer package's import failure must not stop the benchmark
        return None, f'import failed: {type(e).__name__}: {e}'
    finally:
        os.chdir(cwd)
    return ikan, getattr(ikan, '__version__', 'unknown')


def ffn_variants(dim: int, hidden: int, degree: int, fused_ok: bool) -> Dict[str, Callable[[], nn.Module]]:
    from timm.layers import Mlp

    variants: Dict[str, Callable[[], nn.Module]] = {
        'mlp': lambda: Mlp(dim, hidden),
        'chebyshev published (acos+einsum)': lambda: nn.Sequential(
            PublishedChebyshevKAN(dim, hidden, degree), nn.LayerNorm(hidden),
            PublishedChebyshevKAN(hidden, dim, degree)),
    }
    for family in KAN_FAMILIES.values():  # each family's block, by its table entry (--degree where it has one)
        options = {'degree': degree} if 'degree' in family.layer_options else {}
        for fused in (False, True) if family.has_kernel else (False,):
            if fused and not fused_ok:
                continue
            kernel = {'kan_fused': fused} if family.has_kernel else {}
            variants[family.bench_variant(fused)] = partial(family.block, dim, hidden, **options, **kernel)
        if 'kan_recompute' in family.layer_options:  # the time/memory trade-off: the reference keeping its bases
            variants[f'{family.bench_variant(False)}, bases kept'] = partial(
                family.block, dim, hidden, **options, kan_fused=False, kan_recompute=False)
    ikan, _ = import_ikan()
    if ikan is not None:
        # the peer's layers in the same two-layer block (LayerNorm between), with their own defaults
        variants['ikan chebyshev (peer)'] = lambda: nn.Sequential(
            ikan.ChebyKANLinear(dim, hidden, degree=degree), nn.LayerNorm(hidden),
            ikan.ChebyKANLinear(hidden, dim, degree=degree))
        variants['ikan efficient-KAN (peer)'] = lambda: nn.Sequential(
            ikan.KANLinear(dim, hidden), nn.LayerNorm(hidden), ikan.KANLinear(hidden, dim))
    return variants
