"""The KAN families, one table entry each: what every other module (blocks, models, CLI, tables, bench,
model cards) knows about a family comes from here.

Adding a family means writing its layer file and one ``KANFamily`` entry in ``KAN_FAMILIES``; the model
registry, ``create_model`` options, README tables and display names follow from the entry.
"""
import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .bspline import BSplineKANLinear
from .chebyshev import ChebyshevKANLinear
from .rational import GRKANMlp
from .rbf import RBFKANLinear

__all__ = ['KANFamily', 'KAN_FAMILIES', 'KAN_TYPES', 'family_of_type']

# options of the block around the two KAN layers (KANMlp), shared by the KAN-layer families
KAN_BLOCK_OPTIONS = ('kan_base', 'kan_mid_norm', 'kan_hidden')


@dataclass(frozen=True)
class KANFamily:
    """One KAN family.

    Args:
        kan_type: Short type name (``KANMlp(kan_type=...)``, model cards).
        prefix: Model-name prefix registered with timm (``chebykan_vit`` -> ``chebykan_vit_base_patch16_224``).
        display: Human name used in tables, logs and model cards.
        module: The module the family's options configure (its KAN layer; for group-rational, the block);
            its signature holds the options' defaults.
        layer_options: ``create_model`` option -> argument of ``module``.
        block_options: Options of the surrounding block (``KAN_BLOCK_OPTIONS`` for KAN-layer families).
        summary: Format string of the family's main options, e.g. ``'Chebyshev KAN, degree {degree}'``.
        default_base: Base branch of the published form (``kan_base`` default); None for group-rational.
        notes: Extra words for an option the family refuses (why it has no such option).
        width_multiple_of: The option whose value every hidden width must be a multiple of (group-rational:
            ``groups``, its coefficient groups), for parameter matching and pruning; None: any width.
        bench_name: The family's name in ``timm-kan bench`` rows (``'<bench_name> reference'`` / ``fused``).
    """
    kan_type: str
    prefix: str
    display: str
    module: Callable
    layer_options: Mapping[str, str]
    block_options: Tuple[str, ...]
    summary: str
    default_base: Optional[str] = None
    notes: Mapping[str, str] = field(default_factory=dict)
    width_multiple_of: Optional[str] = None
    bench_name: str = ''

    @property
    def has_kernel(self) -> bool:
        """Whether the family has fused kernels (its ``kan_fused`` option)."""
        return 'kan_fused' in self.layer_options

    def bench_variant(self, fused: bool) -> str:
        """The bench row of the family's block: fused where it has kernels and ``fused``, else the reference."""
        return f'{self.bench_name} {"fused" if fused and self.has_kernel else "reference"}'

    @property
    def block(self) -> Callable:
        """The feed-forward block a ViT block builds (``mlp_layer``): ``KANMlp`` around the family's layer, or the
        family's own block."""
        from .kan_mlp import KANMlp  # the block module reads this table

        return partial(KANMlp, kan_type=self.kan_type) if 'kan_base' in self.block_options else self.module

    def width_multiple(self, options: Mapping[str, Any]) -> int:
        """What every hidden width must be a multiple of, under ``options`` (1: any width)."""
        if self.width_multiple_of is None:
            return 1
        return int(options.get(self.width_multiple_of, self.defaults()[self.width_multiple_of]))

    @property
    def options(self) -> Tuple[str, ...]:
        """Every ``create_model`` option of the family."""
        return tuple(self.layer_options) + self.block_options

    def defaults(self) -> Dict[str, Any]:
        """Default of each layer option, read from the signature that applies it (one source of truth)."""
        params = inspect.signature(self.module).parameters
        return {opt: params[arg].default for opt, arg in self.layer_options.items()}

    def layer_kwargs(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """Layer options renamed to the layer's own arguments (``kan_fused`` -> ``fused``)."""
        return {self.layer_options[k]: v for k, v in options.items()}

    def describe(self, options: Optional[Mapping[str, Any]] = None) -> str:
        """``summary`` filled with the defaults overridden by ``options``."""
        return self.summary.format(**dict(self.defaults(), **(options or {})))


KAN_FAMILIES: Dict[str, KANFamily] = {f.kan_type: f for f in (
    KANFamily('bspline', 'kan_vit', 'B-spline KAN', BSplineKANLinear,
              dict(grid_size='grid_size', spline_order='spline_order', grid_range='grid_range',
                   kan_coeff_init='coeff_init', kan_fused='fused'),
              KAN_BLOCK_OPTIONS, 'B-spline KAN, grid {grid_size}, order {spline_order}', default_base='silu',
              bench_name='bspline'),
    KANFamily('chebyshev', 'chebykan_vit', 'Chebyshev KAN', ChebyshevKANLinear,
              dict(degree='degree', kan_coeff_init='coeff_init', kan_fused='fused'),
              KAN_BLOCK_OPTIONS, 'Chebyshev KAN, degree {degree}', default_base='none', bench_name='chebyshev'),
    KANFamily('rbf', 'rbfkan_vit', 'RBF KAN', RBFKANLinear,
              dict(grid_size='grid_size', rbf_basis='basis', grid_range='grid_range', kan_coeff_init='coeff_init'),
              KAN_BLOCK_OPTIONS, 'RBF KAN, {grid_size} {rbf_basis} bases', default_base='silu',
              notes=dict(kan_fused='there is no fused kernel for rbf KAN yet'), bench_name='rbf'),
    KANFamily('rational', 'grkan_vit', 'group-rational KAN', GRKANMlp,
              dict(groups='groups', kan_act_init='kan_act_init', kan_fused='kan_fused'),
              ('kan_hidden',), 'group-rational KAN, {groups} groups', width_multiple_of='groups',
              bench_name='group-rational'),
)}
KAN_TYPES = tuple(KAN_FAMILIES)


def family_of_type(kan_type: str) -> KANFamily:
    if kan_type not in KAN_FAMILIES:
        raise ValueError(f'kan_type must be one of {KAN_TYPES}, got {kan_type!r}')
    return KAN_FAMILIES[kan_type]
