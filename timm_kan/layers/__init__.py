"""Reusable KAN layers."""
from .base import BaseBranch
from .bspline import BSplineKANLinear, b_spline_basis, uniform_knots
from .chebyshev import ChebyshevKANLinear, chebyshev_basis
from .kan_mlp import KAN_BASES, KAN_TYPES, KANMlp, default_kan_base
