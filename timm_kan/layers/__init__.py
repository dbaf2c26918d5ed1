"""Reusable KAN layers, and the table of KAN families built on them."""
from .base import COEFF_INITS, BaseBranch, coefficient_parameters
from .bspline import BSplineKANLinear, b_spline_basis, uniform_knots
from .chebyshev import ChebyshevKANLinear, chebyshev_basis
from .families import KAN_FAMILIES, KANFamily, add_family, block_classes, family_of_type, ffn_modules
from .kan_mlp import KAN_BASES, KANMlp, check_family_options
from .learnable_act_mlp import CONTROL_ACTS, GroupPReLU, LearnableActMlp
from .pos_embed import POS_EMBEDS, sincos2d_pos_embed
from .rational import RATIONAL_INITS, GroupRational, GRKANMlp
from .rbf import RBF_BASES, RBFKANLinear, rbf_basis
