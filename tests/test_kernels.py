"""Fused Triton kernels against the PyTorch reference: values and gradients (CPU: Triton's interpreter)."""
import pytest
import torch
from torch import nn

from timm_kan import kernels
from timm_kan.layers import ChebyshevKANLinear, KANMlp

triton = pytest.importorskip('triton')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def _pair(in_f, out_f, degree, **kwargs):
    torch.manual_seed(0)
    ref = ChebyshevKANLinear(in_f, out_f, degree=degree, fused=False, **kwargs).to(DEVICE)
    with torch.no_grad():
        ref.coeffs.normal_(0, 0.3)
        if ref.bias is not None:
            ref.bias.normal_()
    fused = ChebyshevKANLinear(in_f, out_f, degree=degree, fused=True, **kwargs).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _check(ref, fused, x, tol):
    xr = x.detach().clone().requires_grad_()
    xf = x.detach().clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    torch.testing.assert_close(yf, yr, rtol=tol, atol=tol)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=tol, atol=tol)
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=tol, atol=tol, msg=name)


TOL = 2e-3 if DEVICE == 'cuda' else 1e-4  # tf32 products on the GPU


@pytest.mark.parametrize('degree', [1, 3, 5])
@pytest.mark.parametrize('shape', [(37, 20, 24), (16, 16, 16)])
def test_fused_chebyshev_matches_reference(degree, shape):
    m, in_f, out_f = shape
    ref, fused = _pair(in_f, out_f, degree)
    _check(ref, fused, torch.randn(m, in_f, device=DEVICE) * 1.5, TOL)


def test_fused_chebyshev_tokens_noncontiguous_bias_and_base():
    ref, fused = _pair(18, 21, 3, bias=True, base_activation=nn.GELU)
    x = torch.randn(2, 18, 9, device=DEVICE).transpose(1, 2)  # (B, N, C) view with strides
    assert not x.is_contiguous()
    _check(ref, fused, x, TOL)


@pytest.mark.filterwarnings('ignore:overflow encountered in exp:RuntimeWarning')  # exp(2e4) = inf, by design
def test_fused_chebyshev_extreme_inputs_are_finite():
    _, fused = _pair(16, 16, 4)
    x = torch.tensor([1e4, -1e4, 9.5, -3.6] * 4, device=DEVICE).repeat(16, 1).requires_grad_()
    y = fused(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(fused.coeffs.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='bf16 autocast kernels need a GPU')
def test_fused_chebyshev_bf16_autocast_close_to_fp32_reference():
    ref, fused = _pair(256, 384, 3)
    x = torch.randn(1000, 256, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        yf = fused(x)
    yr = ref(x)
    assert ((yf.float() - yr).norm() / yr.norm()).item() < 1e-2


def test_kan_mlp_fused_option_reaches_the_layers():
    torch.manual_seed(0)
    block = KANMlp(16, 32, kan_type='chebyshev', kan_fused=True).to(DEVICE)
    ref = KANMlp(16, 32, kan_type='chebyshev', kan_fused=False).to(DEVICE)
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 16, device=DEVICE)
    torch.testing.assert_close(block(x), ref(x), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match='no fused kernel for rbf KAN yet'):
        KANMlp(16, 32, kan_type='rbf', kan_fused=True)
    assert KANMlp(16, 32, kan_type='bspline', kan_fused=True).kan2.fused is True
    from timm_kan.layers import GRKANMlp
    gr = GRKANMlp(16, 32, kan_fused=True)
    assert gr.act1.fused is True and gr.act2.fused is True


@pytest.mark.parametrize('order,grid', [(3, 5), (1, 3), (2, 6)])
def test_fused_bspline_matches_reference_on_adapted_knots(order, grid):
    from timm_kan.layers import BSplineKANLinear
    torch.manual_seed(0)
    ref = BSplineKANLinear(20, 24, grid_size=grid, spline_order=order, bias=True, fused=False).to(DEVICE)
    ref.update_grid(torch.randn(200, 20, device=DEVICE) * 0.7)  # non-uniform knots
    with torch.no_grad():
        ref.spline_weight.normal_()
        ref.bias.normal_()
    fused = BSplineKANLinear(20, 24, grid_size=grid, spline_order=order, bias=True, fused=True).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 13, 20, device=DEVICE) * 1.2
    x[0, 0, :4] = torch.tensor([1e4, -1e4, 5.0, -5.0])  # outside the grid: spline term 0, finite gradients
    _check(ref, fused, x, TOL)


def test_dispatch(monkeypatch):
    cpu = torch.zeros(2)
    assert kernels.use_fused(cpu, None) is False  # CPU tensors take the reference unless forced
    assert kernels.use_fused(cpu, True) is True and kernels.use_fused(cpu, False) is False
    monkeypatch.setattr(kernels, 'triton_available', lambda: False)
    with pytest.raises(RuntimeError, match='fused=True needs Triton'):
        kernels.use_fused(cpu, True)


_COMPILE_SM90 = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from timm_kan.kernels import chebyshev_triton as ck

def sig(names, types):
    return dict(zip(names, types))

blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_I=64)
i32 = ['i32'] * 20
kernels = {
    '_fwd_kernel': (['X', 'W', 'Y'], ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_wk', 'stride_wi',
                                      'stride_wo', 'stride_ym', 'stride_yo'], dict(DEGREE=3, **blocks)),
    '_bwd_dx_kernel': (['X', 'W', 'DY', 'DX'], ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_wk', 'stride_wi',
                                                'stride_wo', 'stride_dym', 'stride_dyo', 'stride_dxm', 'stride_dxi'],
                       dict(DEGREE=3, **blocks)),
    '_bwd_dw_kernel': (['X', 'DY', 'DW'], ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_dym', 'stride_dyo',
                                           'stride_dwk', 'stride_dwi', 'stride_dwo'], blocks),
}
for name, (ptrs, ints, consts) in kernels.items():
    ptr_types = ['*bf16'] * len(ptrs)
    if name == '_bwd_dw_kernel':
        ptr_types = ['*bf16', '*bf16', '*fp32']
    signature = dict(sig(ptrs, ptr_types), **sig(ints, i32), **{k: 'constexpr' for k in consts})
    compiled = triton.compile(ASTSource(fn=getattr(ck, name), signature=signature, constexprs=consts),
                              target=GPUTarget('cuda', 90, 32))
    assert 'wgmma.mma_async' in compiled.asm['ptx'], name
    print(name, 'ok')

from timm_kan.kernels import bspline_triton as bk
bspline = {
    '_fwd_kernel': (['X', 'GRID', 'W', 'Y'], ['*bf16', '*fp32', '*bf16', '*bf16'],
                    ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_gi', 'stride_gq', 'stride_wj', 'stride_wi',
                     'stride_wo', 'stride_ym', 'stride_yo']),
    '_bwd_dx_kernel': (['X', 'GRID', 'W', 'DY', 'DX'], ['*bf16', '*fp32', '*bf16', '*bf16', '*bf16'],
                       ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_gi', 'stride_gq', 'stride_wj',
                        'stride_wi', 'stride_wo', 'stride_dym', 'stride_dyo', 'stride_dxm', 'stride_dxi']),
    '_bwd_dw_kernel': (['X', 'GRID', 'DY', 'DW'], ['*bf16', '*fp32', '*bf16', '*fp32'],
                       ['M', 'IN', 'OUT', 'stride_xm', 'stride_xi', 'stride_gi', 'stride_gq', 'stride_dym',
                        'stride_dyo', 'stride_dwj', 'stride_dwi', 'stride_dwo']),
}
for name, (ptrs, ptr_types, ints) in bspline.items():
    consts = dict(NUM_KNOTS=12, ORDER=3, **blocks)
    signature = dict(sig(ptrs, ptr_types), **sig(ints, i32), **{k: 'constexpr' for k in consts})
    compiled = triton.compile(ASTSource(fn=getattr(bk, name), signature=signature, constexprs=consts),
                              target=GPUTarget('cuda', 90, 32))
    assert 'wgmma.mma_async' in compiled.asm['ptx'], name
    print('bspline' + name, 'ok')

from timm_kan.kernels import rational_triton as rk
rational = {
    '_fwd_kernel': (['X', 'A', 'B', 'Y'], ['*bf16', '*fp32', '*fp32', '*bf16'], ['N', 'C', 'GROUP_SIZE'],
                    dict(BLOCK=1024)),
    '_bwd_kernel': (['X', 'DY', 'A', 'B', 'DX', 'PARTIAL'], ['*bf16', '*bf16', '*fp32', '*fp32', '*bf16', '*fp32'],
                    ['M', 'C', 'GROUP_SIZE', 'GROUPS'], dict(BLOCK_M=64, BLOCK_C=64)),
}
for name, (ptrs, ptr_types, ints, consts) in rational.items():
    signature = dict(sig(ptrs, ptr_types), **sig(ints, i32), **{k: 'constexpr' for k in consts})
    compiled = triton.compile(ASTSource(fn=getattr(rk, name), signature=signature, constexprs=consts),
                              target=GPUTarget('cuda', 90, 32))
    assert compiled.asm['cubin'], name
    print('rational' + name, 'ok')
'''


def test_kernels_compile_for_hopper_with_tensor_core_instructions():
    """Without a GPU: Triton compiles each kernel for sm_90; the KAN GEMMs use wgmma (Hopper tensor cores)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-c', _COMPILE_SM90], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['_fwd_kernel', 'ok', '_bwd_dx_kernel', 'ok', '_bwd_dw_kernel', 'ok',
                                     'bspline_fwd_kernel', 'ok', 'bspline_bwd_dx_kernel', 'ok',
                                     'bspline_bwd_dw_kernel', 'ok', 'rational_fwd_kernel', 'ok',
                                     'rational_bwd_kernel', 'ok']


@pytest.mark.parametrize('shape,groups', [((3, 7, 32), 4), ((19, 24), 8)])
def test_fused_group_rational_matches_reference(shape, groups):
    from timm_kan.layers import GroupRational
    torch.manual_seed(0)
    ref = GroupRational(shape[-1], groups, 'gelu', fused=False).to(DEVICE)
    with torch.no_grad():
        ref.numerator.add_(torch.randn_like(ref.numerator) * 0.1)
        ref.denominator.add_(torch.randn_like(ref.denominator) * 0.1)  # some b < 0: the form takes |b|
        ref.denominator[0, 0] = 0.0  # b = 0 exactly: the gradient uses the +1 subgradient in both paths
    fused = GroupRational(shape[-1], groups, 'gelu', fused=True).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(*shape, device=DEVICE) * 3
    x.view(-1)[:4] = torch.tensor([1e4, -1e4, 1.0, -1.0])
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.numerator.grad, ref.numerator.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fused.denominator.grad, ref.denominator.grad, rtol=1e-4, atol=1e-3)
    assert ref.denominator.grad[0, 0] != 0
