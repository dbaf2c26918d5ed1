"""Non-finite inputs give non-finite outputs, never an exception, in every KAN family, forward and backward.

Each batch is [clean, bad, clean] with one element of the middle sample replaced by NaN, +-inf or a huge finite
value. Nothing may raise; a NaN sample must come out NaN (not a silently finite number); the clean samples must
stay finite and equal to running them alone, outputs and input gradients: the layers work per token, and the
whole models (eval mode) per sample.
"""
import math
from typing import Callable, Dict

import pytest
import timm
import torch
from torch import nn

import timm_kan  # noqa: F401  registers the models
from timm_kan.layers import BSplineKANLinear, ChebyshevKANLinear, GroupRational, GRKANMlp, KANMlp, RBFKANLinear

BAD_VALUES = {'nan': math.nan, '+inf': math.inf, '-inf': -math.inf, '1e20': 1e20, '-1e30': -1e30}
CLEAN = [0, 2]  # the samples of the batch that hold only finite, moderate values


def _nonuniform_bspline() -> nn.Module:
    # update_grid moves the knots off the uniform grid: the Cox-de Boor path
    layer = BSplineKANLinear(8, 6, fused=False)
    layer.update_grid(torch.randn(64, 8, generator=torch.Generator().manual_seed(1)) * 1.5)
    return layer


# name -> (factory, whether the module mixes channels, so that one NaN input makes its whole token NaN)
LAYERS: Dict[str, tuple] = {
    'bspline': (lambda: BSplineKANLinear(8, 6, fused=False), True),
    'bspline_no_base': (lambda: BSplineKANLinear(8, 6, base_activation=None, fused=False), True),
    'bspline_nonuniform': (_nonuniform_bspline, True),
    'bspline_kanmlp': (lambda: KANMlp(8, 12, kan_type='bspline', kan_fused=False), True),
    'chebyshev': (lambda: ChebyshevKANLinear(8, 6, fused=False), True),
    'chebyshev_kanmlp': (lambda: KANMlp(8, 12, kan_type='chebyshev', kan_fused=False), True),
    'rbf': (lambda: RBFKANLinear(8, 6), True),
    'rbf_no_base': (lambda: RBFKANLinear(8, 6, base_activation=None), True),
    'rbf_kanmlp': (lambda: KANMlp(8, 12, kan_type='rbf'), True),
    'rational_identity': (lambda: GroupRational(8, groups=2, init='identity', fused=False), False),
    'rational_gelu': (lambda: GroupRational(8, groups=2, init='gelu', fused=False), False),
    'rational_grkanmlp': (lambda: GRKANMlp(8, 12, groups=2, kan_fused=False), True),
}

# family prefix -> extra create_model options (rbf has no kernel, hence no kan_fused option)
MODELS: Dict[str, dict] = {
    'kan_vit': dict(kan_fused=False),
    'chebykan_vit': dict(kan_fused=False),
    'rbfkan_vit': {},
    'grkan_vit': dict(kan_fused=False),
}


def _forward_backward(module: nn.Module, x: torch.Tensor):
    """(output, input gradient) of ``module`` at ``x``, the gradient of the plain sum of the outputs."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def _check(module: nn.Module, x: torch.Tensor, bad: float, where: tuple, mixes: bool,
           run: Callable = _forward_backward) -> None:
    """Put ``bad`` at ``x[where]`` (a position of sample 1) and check the batch against the clean samples alone."""
    x = x.clone()
    x[where] = bad
    y, dx = run(module, x)  # must not raise
    module.zero_grad(set_to_none=True)
    y_alone, dx_alone = run(module, x[CLEAN])
    assert torch.isfinite(y[CLEAN]).all() and torch.isfinite(dx[CLEAN]).all()
    torch.testing.assert_close(y[CLEAN], y_alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dx[CLEAN], dx_alone, rtol=1e-4, atol=1e-5)
    if math.isnan(bad):
        # the token (a layer) or the whole sample (a model) that holds the NaN; an elementwise activation
        # makes only that element NaN
        out = y[where[:2]] if y.dim() == 3 else y[where[0]]
        assert (out.isnan().all() if mixes else out.isnan().any()), out
        assert dx[where].isnan(), dx[where]


@pytest.mark.parametrize('bad', BAD_VALUES.values(), ids=BAD_VALUES.keys())
@pytest.mark.parametrize('name', LAYERS)
def test_layer_nonfinite_input(name, bad):
    factory, mixes = LAYERS[name]
    torch.manual_seed(0)
    layer = factory()
    x = torch.randn(3, 4, 8)  # (samples, tokens, channels)
    _check(layer, x, bad, (1, 2, 3), mixes)


@pytest.mark.parametrize('name', LAYERS)
def test_layer_all_nonfinite_values_in_one_batch(name):
    """Every bad value at once, one per token of the middle sample."""
    factory, mixes = LAYERS[name]
    torch.manual_seed(0)
    layer = factory()
    x = torch.randn(3, len(BAD_VALUES), 8)
    for t, bad in enumerate(BAD_VALUES.values()):
        x[1, t, t % 8] = bad
    y, dx = _forward_backward(layer, x)
    layer.zero_grad(set_to_none=True)
    y_alone, dx_alone = _forward_backward(layer, x[CLEAN])
    assert torch.isfinite(y[CLEAN]).all()
    torch.testing.assert_close(y[CLEAN], y_alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dx[CLEAN], dx_alone, rtol=1e-4, atol=1e-5)
    nan_out = y[1, 0]
    assert nan_out.isnan().all() if mixes else nan_out.isnan().any()


@pytest.mark.parametrize('bad', BAD_VALUES.values(), ids=BAD_VALUES.keys())
@pytest.mark.parametrize('prefix', MODELS)
def test_model_nonfinite_input(prefix, bad):
    torch.manual_seed(0)
    model = timm.create_model(f'{prefix}_tiny_patch16_224', img_size=32, patch_size=8, depth=1, num_classes=3,
                              **MODELS[prefix]).eval()
    x = torch.randn(3, 3, 32, 32)
    _check(model, x, bad, (1, 0, 5, 7), mixes=True)
