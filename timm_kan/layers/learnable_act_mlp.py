"""The MLP with a learnable activation: the control that says how much of a KAN's gain is the learnable function.

KAT's ablation (Yang & Wang, "Kolmogorov-Arnold Transformer", arXiv:2409.10594, Table 8: ViT-T on ImageNet-1k)
keeps the MLP's fc1 and fc2 and replaces GELU by a learnable activation: PReLU (72.7 -> 73.2), a learnable
rational, PAU (73.6), against GR-KAN (74.6). This block is that MLP:

    fc2(norm(act(fc1(x)))),

- ``control_act='rational'`` (default, the PAU row): ``GroupRational``, the same P/Q of order (5, 4) as the
  group-rational KAN (``timm_kan.layers.rational``), its coefficients shared within ``groups`` contiguous
  groups of the hidden channels and fitted to GELU (SiLU for a SiLU model) at the start. Padé Activation Units:
  Molina et al., arXiv:1907.06732.
- ``control_act='prelu'`` (KAT's cheaper row): ``GroupPReLU``, one slope per group (``groups=1``: one slope, the
  channel-shared form; ``groups`` = the hidden width: the channel-wise one). PReLU: He et al., "Delving Deep into
  Rectifiers", arXiv:1502.01852.

fc1/fc2 keep timm's names, so a ViT checkpoint loads into them as it is: with ``kan_init='mlp'`` the model
computes the ViT up to the rational's GELU fit (0.0040 off at worst on [-8, 8]). Its parameters are the ViT's plus
the activations' coefficients (10 per group and block for the rational, 1 for PReLU).
"""
from typing import Any, Collection, Dict, Optional, Tuple, Type

import torch
from torch import nn

from .base import FUSED_HELP, HIDDEN_HELP, check_positive, hidden_width
from .rational import GroupRational

__all__ = ['GroupPReLU', 'LearnableActMlp', 'CONTROL_ACTS']

CONTROL_ACTS = ('rational', 'prelu')


class GroupPReLU(nn.Module):
    """PReLU, ``max(0, x) + a min(0, x)``, with one slope ``a`` per contiguous channel group (last dimension).

    The slopes start at He et al.'s 0.25. As in the paper they get no weight decay: they are not among the
    ``coefficient_names`` a trainer gives the KAN coefficients' decay, and timm's groups exempt 1-d tensors.

    Args:
        num_channels: Size of the last dimension.
        groups: Number of contiguous channel groups (must divide ``num_channels``).
        init_slope: The slopes' initial value.
    """

    def __init__(self, num_channels: int, groups: int = 1, init_slope: float = 0.25, device=None,
                 dtype=None) -> None:
        super().__init__()
        check_positive('groups', groups)
        if num_channels % groups:
            raise ValueError(f'groups must divide num_channels={num_channels}, got groups={groups}')
        self.num_channels = num_channels
        self.groups = groups
        self.init_slope = init_slope
        self.init = f'PReLU, slope {init_slope:g}'  # what explain labels the start with
        self.weight = nn.Parameter(torch.empty(groups, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init_slope)

    def init_weights(self) -> None:
        """Hook called by timm's ViT weight init."""
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's prelu reads dimension 1 as the channels; these are the last dimension of (B, N, C) tokens
        slope = self.weight.repeat_interleave(self.num_channels // self.groups).to(x.dtype)
        return torch.where(x >= 0, x, slope * x)

    @torch.no_grad()
    def group_functions(self, u: torch.Tensor) -> torch.Tensor:
        """Each group's function on the values u (n,) -> (groups, n)."""
        slope = self.weight.float()[:, None].to(u.device)
        return torch.where(u >= 0, u, slope * u).float()

    def initial_functions(self, u: torch.Tensor) -> torch.Tensor:
        """Each group's function at initialisation on the values u (n,) -> (groups, n)."""
        return GroupPReLU(self.groups, self.groups, self.init_slope).group_functions(u.cpu())

    def extra_repr(self) -> str:
        return f'num_channels={self.num_channels}, groups={self.groups}'


class LearnableActMlp(nn.Module):
    """timm's ``Mlp`` (fc1 -> act -> norm -> fc2) with a learnable activation; timm ``Block`` signature.

    Args:
        in_features, hidden_features, out_features, bias, drop: as timm's ``Mlp``.
        act_layer: timm's MLP activation; the rational starts as its fit (SiLU: the SiLU fit, else GELU's).
        norm_layer: Set by timm with ``scale_mlp_norm``; applied after the activation.
        groups: Coefficient groups of the activation over the hidden channels.
        control_act: 'rational' (group-rational P/Q, the PAU row) or 'prelu'.
        kan_hidden: Overrides ``hidden_features``.
        kan_fused: Triton kernel for the rational (True), PyTorch (False), or the kernel on CUDA (None).
    """
    # fc1/fc2 keep a ViT's names and the rational starts as the GELU fit: kan_init='mlp' needs only the rational
    block_options = ('control_act', 'kan_hidden')
    mlp_init_options: Dict[str, Any] = {'control_act': 'rational'}
    argument_help = {
        'groups': 'activation coefficient groups over the hidden channels: one rational or one PReLU slope per '
                  'group (every hidden width is a multiple)',
        'control_act': '`rational` (the group-rational P/Q fitted to GELU: KAT\'s PAU row) or `prelu` (a slope '
                       'per group)',
        'kan_fused': FUSED_HELP, 'kan_hidden': HIDDEN_HELP}

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
            groups: int = 8,
            control_act: str = 'rational',
            kan_hidden: Optional[int] = None,
            kan_fused: Optional[bool] = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden_features = hidden_width(in_features, hidden_features, kan_hidden)
        out_features = out_features or in_features
        if control_act not in CONTROL_ACTS:
            raise ValueError(f'control_act must be one of {CONTROL_ACTS}, got {control_act!r}')
        check_positive('groups', groups)
        if hidden_features % groups:
            raise ValueError(f'groups must divide the hidden width {hidden_features}, got groups={groups}')
        if control_act == 'prelu' and kan_fused:
            raise ValueError("kan_fused=True: control_act='prelu' has no fused kernel (the rational has one)")
        self.control_act = control_act
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **dd)
        if control_act == 'rational':
            init = 'silu' if act_layer in (nn.SiLU,) else 'gelu'
            self.act = GroupRational(hidden_features, groups, init, fused=kan_fused, **dd)
        else:
            self.act = GroupPReLU(hidden_features, groups, **dd)
        self.drop1 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    @staticmethod
    def structure_from_keys(keys: Collection[str], prefix: str) -> Optional[Dict[str, Any]]:
        """The block options a checkpoint's key names show for the block at ``prefix``: none are taken from them
        (``control_act`` is given or recorded in config.json); None when the keys are not this block's (a ViT's
        MLP has no ``act.`` tensors)."""
        return {} if any(k.startswith(prefix + 'act.') for k in keys) else None

    @staticmethod
    def adapt_checkpoint(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Checkpoints of other code bases in this block's layout: none are known, the keys stay."""
        return state_dict

    def explain_parts(self) -> Tuple[str, Tuple[nn.Module, nn.Module], Dict[str, nn.Module]]:
        """What explain records: the kind (the activation's), the two maps (linear) and the learned activation."""
        return self.control_act, (self.fc1, self.fc2), {'act': self.act}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))
