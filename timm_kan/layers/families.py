"""The KAN families, one table entry each: what every other module (blocks, models, CLI, tables, bench,
explain, pretrained loading, model cards) knows about a family comes from its entry and its layer's or block's
methods.

Adding a family means writing its layer (or block) file and one ``KANFamily`` entry: ``register_family`` in
``timm_kan.models`` adds it to ``KAN_FAMILIES`` and registers its models with timm; the registry, ``create_model``
options, compare, bench, explain, the README tables and display names follow from the entry.
"""
import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

from torch import nn

from .bspline import BSplineKANLinear
from .chebyshev import ChebyshevKANLinear
from .learnable_act_mlp import LearnableActMlp
from .rational import GRKANMlp
from .rbf import RBFKANLinear

__all__ = ['KANFamily', 'KAN_FAMILIES', 'add_family', 'block_classes', 'family_of_type', 'ffn_modules']


@dataclass(frozen=True)
class KANFamily:
    """One KAN family.

    Args:
        kan_type: Short type name (``KANMlp(kan_type=...)``, model cards).
        prefix: Model-name prefix registered with timm (``chebykan_vit`` -> ``chebykan_vit_base_patch16_224``).
        display: Human name used in tables, logs and model cards.
        layer_options: ``create_model`` option -> argument of the module that takes it (``configured``).
        summary: Format string of the family's main options, e.g. ``'Chebyshev KAN, degree {degree}'``.
        layer: The family's KAN linear layer (a ``KANLinearBase``), two of which ``KANMlp`` builds; None for a
            family that brings its own block.
        own_block: The family's feed-forward block when it is not ``KANMlp`` around ``layer`` (group-rational).
        default_base: Base branch of the published form (``kan_base`` default) of a ``KANMlp`` family.
        notes: Extra words for an option the family refuses (why it has no such option).
        width_multiple_of: The option whose value every hidden width must be a multiple of (group-rational:
            ``groups``, its coefficient groups), for parameter matching and pruning; None: any width.
        bench_name: The family's name in ``timm-kan bench`` rows (``'<bench_name> reference'`` / ``fused``).
        control: Not a KAN but the control of one (the MLP with a learnable activation): the Results tables show
            how much of each family's gain over the ViT it already gives.
        saved_target: The most activations its reference FFN may keep for backward per token, as a multiple of
            the MLP's, eager and compiled (checked by the bench and the tests); None: no target.
    """
    kan_type: str
    prefix: str
    display: str
    layer_options: Mapping[str, str]
    summary: str
    layer: Optional[Type[nn.Module]] = None
    own_block: Optional[Type[nn.Module]] = None
    default_base: Optional[str] = None
    notes: Mapping[str, str] = field(default_factory=dict)
    width_multiple_of: Optional[str] = None
    bench_name: str = ''
    control: bool = False
    saved_target: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.layer is None) == (self.own_block is None):
            raise ValueError(f'KANFamily {self.kan_type!r}: give exactly one of layer (a KAN layer KANMlp builds '
                             'twice) and own_block (a whole feed-forward block)')
        if self.layer is not None and self.default_base is None:
            raise ValueError(f'KANFamily {self.kan_type!r}: a KAN-layer family needs default_base (its published '
                             'base branch)')

    @property
    def any_model(self) -> str:
        """The registered name that gives any timm model (``base=``) this family's feed-forward blocks: the prefix
        without its ``_vit`` (``chebykan``)."""
        return self.prefix.removesuffix('_vit')

    @property
    def configured(self) -> Type[nn.Module]:
        """The module the family's ``layer_options`` configure: its layer, or its own block."""
        return self.layer or self.own_block

    @property
    def block_class(self) -> Type[nn.Module]:
        """The class of the feed-forward block a ViT block builds: ``KANMlp``, or the family's own block."""
        from .kan_mlp import KANMlp  # the block module reads this table

        return self.own_block or KANMlp

    @property
    def block(self) -> Callable[..., nn.Module]:
        """The feed-forward block a ViT block builds (``mlp_layer``): ``KANMlp`` around the family's layer, or the
        family's own block."""
        return self.own_block or partial(self.block_class, kan_type=self.kan_type)

    @property
    def block_options(self) -> Tuple[str, ...]:
        """Options of the surrounding block (``kan_base``, ``kan_mid_norm``, ``kan_hidden`` for ``KANMlp``)."""
        return self.block_class.block_options

    @property
    def mlp_init_options(self) -> Dict[str, Any]:
        """The block options ``kan_init='mlp'`` needs to reproduce a pretrained MLP exactly."""
        return dict(self.block_class.mlp_init_options)

    @property
    def has_kernel(self) -> bool:
        """Whether the family has fused kernels (its ``kan_fused`` option)."""
        return 'kan_fused' in self.layer_options

    def bench_variant(self, fused: bool) -> str:
        """The bench row of the family's block: fused where it has kernels and ``fused``, else the reference."""
        return f'{self.bench_name} {"fused" if fused and self.has_kernel else "reference"}'

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
        """Default of every option, read from the signatures that apply them (one source of truth); the base
        branch's is the family's published one."""
        layer = inspect.signature(self.configured).parameters
        block = inspect.signature(self.block_class).parameters
        out = {opt: block[opt].default for opt in self.block_options}
        if 'kan_base' in out:
            out['kan_base'] = self.default_base
        out.update({opt: layer[arg].default for opt, arg in self.layer_options.items()})
        return out

    def option_help(self) -> Dict[str, str]:
        """What each option means, from the ``argument_help`` of the layer (or block) and the block that take it."""
        layer, block = self.configured.argument_help, self.block_class.argument_help
        out = {opt: block[opt] for opt in self.block_options}
        out.update({opt: layer[arg] for opt, arg in self.layer_options.items()})
        return out

    def layer_kwargs(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """Layer options renamed to the layer's own arguments (``kan_fused`` -> ``fused``)."""
        return {self.layer_options[k]: v for k, v in options.items()}

    def describe(self, options: Optional[Mapping[str, Any]] = None) -> str:
        """``summary`` filled with the defaults overridden by ``options``."""
        return self.summary.format(**dict(self.defaults(), **(options or {})))


KAN_FAMILIES: Dict[str, KANFamily] = {}


def add_family(family: KANFamily) -> KANFamily:
    """Add ``family`` to ``KAN_FAMILIES`` (``timm_kan.models.register_family`` also registers its models)."""
    for other in KAN_FAMILIES.values():
        if family.kan_type == other.kan_type or family.prefix == other.prefix:
            raise ValueError(f'KANFamily {family.kan_type!r} (prefix {family.prefix!r}) clashes with the registered '
                             f'{other.kan_type!r} (prefix {other.prefix!r})')
    missing = [opt for opt in family.layer_options if family.layer_options[opt] not in family.configured.argument_help]
    missing += [opt for opt in family.block_options if opt not in family.block_class.argument_help]
    if missing:
        raise ValueError(f'KANFamily {family.kan_type!r}: no help for option(s) {", ".join(missing)}; add each '
                         f"argument's meaning to {family.configured.__name__}.argument_help")
    KAN_FAMILIES[family.kan_type] = family
    return family


def block_classes() -> Tuple[Type[nn.Module], ...]:
    """The feed-forward block classes of the registered families (``KANMlp`` and the families' own blocks)."""
    return tuple(dict.fromkeys(f.block_class for f in KAN_FAMILIES.values()))


def ffn_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every feed-forward block of ``model`` in module order: a family's block, or timm's
    ``Mlp`` (a ViT's ``blocks.N.mlp``, a kanified model's blocks wherever its architecture keeps them)."""
    from timm.layers import Mlp

    kan_blocks = block_classes()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kan_blocks) or type(m) is Mlp]


def family_of_type(kan_type: str) -> KANFamily:
    if kan_type not in KAN_FAMILIES:
        raise ValueError(f'kan_type must be one of {tuple(KAN_FAMILIES)}, got {kan_type!r}')
    return KAN_FAMILIES[kan_type]


for _family in (
        KANFamily('bspline', 'kan_vit', 'B-spline KAN',
                  dict(grid_size='grid_size', spline_order='spline_order', grid_range='grid_range',
                       kan_coeff_init='coeff_init', kan_fused='fused', kan_recompute='recompute'),
                  'B-spline KAN, grid {grid_size}, order {spline_order}', layer=BSplineKANLinear, default_base='silu',
                  bench_name='bspline', saved_target=2.0),
        KANFamily('chebyshev', 'chebykan_vit', 'Chebyshev KAN',
                  dict(degree='degree', kan_coeff_init='coeff_init', kan_fused='fused'),
                  'Chebyshev KAN, degree {degree}', layer=ChebyshevKANLinear, default_base='none',
                  bench_name='chebyshev', saved_target=1.5),
        KANFamily('rbf', 'rbfkan_vit', 'RBF KAN',
                  dict(grid_size='grid_size', rbf_basis='basis', grid_range='grid_range', kan_coeff_init='coeff_init'),
                  'RBF KAN, {grid_size} {rbf_basis} bases', layer=RBFKANLinear, default_base='silu',
                  notes=dict(kan_fused='there is no fused kernel for rbf KAN yet'), bench_name='rbf',
                  saved_target=2.0),
        KANFamily('rational', 'grkan_vit', 'group-rational KAN',
                  dict(groups='groups', kan_act_init='kan_act_init', kan_fused='kan_fused'),
                  'group-rational KAN, {groups} groups', own_block=GRKANMlp, width_multiple_of='groups',
                  bench_name='group-rational', saved_target=1.5),
        KANFamily('rational_mlp', 'ratmlp_vit', 'MLP + learnable activation',
                  dict(groups='groups', kan_fused='kan_fused'), 'MLP + learnable activation, {control_act}, {groups} '
                  'groups', own_block=LearnableActMlp, width_multiple_of='groups', bench_name='rational mlp',
                  control=True),
):
    add_family(_family)
