"""KAN feed-forward block for timm's ViT ``Block``: two KAN layers in place of fc1 -> act -> fc2."""
from typing import Any, Collection, Dict, Optional, Tuple, Type

import torch
from torch import nn

from .base import HIDDEN_HELP, hidden_width
from .families import family_of_type

__all__ = ['KANMlp', 'KAN_BASES', 'check_family_options']

# 'none': no base branch (published Chebyshev KAN); 'silu': SiLU base (efficient-KAN's B-spline);
# 'mlp': identity base in layer 1 and the MLP activation in layer 2, with biases, so that copying
# fc1/fc2 into the base weights and zeroing the KAN coefficients reproduces the MLP exactly.
KAN_BASES = ('none', 'silu', 'mlp')


def check_family_options(kan_type: str, options: dict, owner: str) -> None:
    """Raise a ValueError naming each option ``kan_type``'s layers do not take, and the ones they do."""
    family = family_of_type(kan_type)
    for key in options:
        if key not in family.layer_options:
            note = f'; {family.notes[key]}' if key in family.notes else ''
            raise ValueError(f'{owner}: {family.display} takes no option {key!r} '
                             f'(its options: {", ".join(family.options)}){note}')


class KANMlp(nn.Module):
    """``kan2(norm(kan1(x)))`` on (B, N, C) tokens, with the constructor signature timm's ``Block`` uses.

    Args:
        in_features: Token width.
        hidden_features: Width between the KAN layers (timm passes ``dim * mlp_ratio``).
        out_features: Output width (defaults to ``in_features``).
        act_layer: MLP activation; the layer-2 base activation when ``kan_base='mlp'``.
        norm_layer: Set by timm when ``scale_mlp_norm`` is on; used as the between-layer norm.
        bias: timm's projection-bias flag; the KAN layers carry a bias only with ``kan_base='mlp'``.
        drop: Dropout after each KAN layer.
        kan_type: A key of ``KAN_FAMILIES`` with KAN layers: ``'chebyshev'``, ``'bspline'`` or ``'rbf'``.
        kan_base: Base branch, one of ``KAN_BASES`` (default: the published form of ``kan_type``).
        kan_mid_norm: LayerNorm between the two KAN layers (bounds the second layer's inputs).
        kan_hidden: Overrides ``hidden_features``.
        **layer_options: The family's own options (``KAN_FAMILIES[kan_type].layer_options``: degree,
            grid_size, spline_order, grid_range, rbf_basis, kan_fused); any other name is an error.
    """
    # the block's own create_model options, and the values kan_init='mlp' needs to compute the MLP exactly (the
    # 'mlp' base of KAN_BASES, and no mid norm between the layers)
    block_options = ('kan_base', 'kan_mid_norm', 'kan_hidden')
    mlp_init_options = {'kan_base': 'mlp', 'kan_mid_norm': False}
    argument_help = {
        'kan_base': 'base branch: ' + ', '.join(f'`{b}`' for b in KAN_BASES) + ' (`mlp`: identity / activation bases '
                    'with biases, so that a pretrained MLP fits exactly)',
        'kan_mid_norm': 'LayerNorm between the two KAN layers', 'kan_hidden': HIDDEN_HELP}

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Optional[Type[nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            device=None,
            dtype=None,
            kan_type: str = 'chebyshev',
            kan_base: Optional[str] = None,
            kan_mid_norm: bool = True,
            kan_hidden: Optional[int] = None,
            **layer_options: Any,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        family = family_of_type(kan_type)
        if family.layer is None:
            raise ValueError(f'kan_type={kan_type!r} has no KAN layers; its block is {family.own_block.__name__}')
        check_family_options(kan_type, layer_options, 'KANMlp')
        kan_base = kan_base or family.default_base
        if kan_base not in KAN_BASES:
            raise ValueError(f'kan_base must be one of {KAN_BASES}, got {kan_base!r}')
        hidden_features = hidden_width(in_features, hidden_features, kan_hidden)
        out_features = out_features or in_features
        self.kan_type = kan_type
        self.kan_base = kan_base

        layer_kwargs = dict(family.layer_kwargs(layer_options), bias=bias and kan_base == 'mlp', **dd)
        base1, base2 = {'none': (None, None), 'silu': (nn.SiLU, nn.SiLU), 'mlp': (nn.Identity, act_layer)}[kan_base]
        self.kan1 = family.layer(in_features, hidden_features, base_activation=base1, **layer_kwargs)
        self.drop1 = nn.Dropout(drop)
        if norm_layer is not None:
            self.norm = norm_layer(hidden_features, **dd)
        elif kan_mid_norm:
            self.norm = nn.LayerNorm(hidden_features, **dd)
        else:
            self.norm = nn.Identity()
        self.kan2 = family.layer(hidden_features, out_features, base_activation=base2, **layer_kwargs)
        self.drop2 = nn.Dropout(drop)

    @staticmethod
    def structure_from_keys(keys: Collection[str], prefix: str) -> Optional[Dict[str, Any]]:
        """The block options a checkpoint's key names show for the block at ``prefix`` (``'blocks.0.mlp.'``);
        None when the keys are not a ``KANMlp``'s."""
        if not any(k.startswith(prefix + 'kan1.') for k in keys):
            return None
        # only kan_base='mlp' layers carry a bias; 'silu' has a base weight without one; 'none' has neither
        base = 'mlp' if prefix + 'kan1.bias' in keys else 'silu' if prefix + 'kan1.base.weight' in keys else 'none'
        return dict(kan_base=base, kan_mid_norm=prefix + 'norm.weight' in keys)

    @staticmethod
    def adapt_checkpoint(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Checkpoints of other code bases in this block's layout: none are known, the keys stay."""
        return state_dict

    def explain_parts(self) -> Tuple[str, Tuple[nn.Module, nn.Module], Dict[str, nn.Module]]:
        """What explain records: the kind, the two maps (the KAN layers) and the learned activations (none)."""
        return 'kan', (self.kan1, self.kan2), {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.kan1(x))
        return self.drop2(self.kan2(self._mid_norm(x)))

    def _mid_norm(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # (TorchScript has no autocast state to ask)
            device = x.device.type
            if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
                # autocast would return the norm in fp32, and both it and kan2 would keep that fp32 copy of the
                # hidden activations for backward: run it in kan1's output dtype (statistics are fp32 inside)
                with torch.autocast(device, enabled=False):
                    return self.norm(x)
        return self.norm(x)
