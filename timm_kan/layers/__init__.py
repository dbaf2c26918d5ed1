"""Reusable KAN layers."""
from .base import BaseBranch
from .bspline import BSplineKANLinear, b_spline_basis, uniform_knots
from .chebyshev import ChebyshevKANLinear, chebyshev_basis
from .kan_mlp import KAN_BASES, KAN_TYPES, KANMlp, default_kan_base
from .rational import RATIONAL_INITS, GroupRational, GRKANMlp
from .rbf import RBF_BASES, RBFKANLinear, rbf_basis
