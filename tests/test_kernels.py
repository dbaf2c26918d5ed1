"""Fused Triton kernels against the PyTorch reference: values and gradients (CPU: Triton's interpreter)."""
import warnings
from functools import partial

import pytest
import torch
from torch import nn

from timm_kan import kernels
from timm_kan.layers import BSplineKANLinear, ChebyshevKANLinear, GroupRational, KANMlp
from timm_kan.layers.base import fused_check_case

triton = pytest.importorskip('triton')
from timm_kan.kernels import bspline_triton, chebyshev_triton, rational_triton  # noqa: E402  needs triton
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
    ref, fused = _pair(256, 384, 3, bias=True)
    x = torch.randn(1000, 256, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        yf = fused(x)
    yr = ref(x)
    assert yf.dtype == torch.bfloat16  # the bias add does not promote the output to fp32
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
    torch.manual_seed(0)
    ref = BSplineKANLinear(12, 20, grid_size=grid, spline_order=order, bias=True, fused=False).to(DEVICE)
    ref.update_grid(torch.randn(200, 12, device=DEVICE) * 0.7)  # non-uniform knots
    with torch.no_grad():
        ref.spline_weight.normal_()
        ref.bias.normal_()
    fused = BSplineKANLinear(12, 20, grid_size=grid, spline_order=order, bias=True, fused=True).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 12, device=DEVICE) * 1.2
    x[0, 0, :4] = torch.tensor([1e4, -1e4, 5.0, -5.0])  # outside the grid: spline term 0, finite gradients
    _check(ref, fused, x, TOL)


def test_gemm_weight_is_the_contiguous_basis_major_layout():
    from timm_kan.kernels._common import gemm_weight
    weight = torch.randn(5, 4, 3)  # (out, in, J), as the layers store it
    w = gemm_weight(torch.zeros(2, 4), weight)
    assert w.shape == (3, 4, 5) and w.is_contiguous()
    torch.testing.assert_close(w, weight.permute(2, 1, 0), rtol=0, atol=0)


def test_dispatch(monkeypatch):
    cpu = torch.zeros(2)
    assert kernels.use_fused(cpu, None) is False  # CPU tensors take the reference unless forced
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert kernels.use_fused(cpu, True) is True and kernels.use_fused(cpu, False) is False
    monkeypatch.delenv('TRITON_INTERPRET')
    with pytest.raises(RuntimeError, match='fused=True on a cpu tensor: .* under TRITON_INTERPRET=1'):
        kernels.use_fused(cpu, True)
    monkeypatch.setattr(kernels, 'triton_available', lambda: False)
    with pytest.raises(RuntimeError, match='fused=True needs Triton'):
        kernels.use_fused(cpu, True)


_COMPILE_SM90 = r'''
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from timm_kan.kernels import bspline_triton as bk, chebyshev_triton as ck, rational_triton as rk
from timm_kan.kernels._common import gemm_blocks


def compile_sm90(fn, args, consts, num_warps=4):
    # specialised as a launch with these arguments would be: ints equal to 1 become constants, pointers
    # (given by element type) and ints divisible by 16 are marked so
    signature, attrs, consts = {}, {}, {k: v for k, v in consts.items() if k in fn.arg_names}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = 'constexpr'
        elif isinstance(args[name], str):
            signature[name] = args[name]
            attrs[(i,)] = [['tt.divisibility', 16]]
        elif args[name] == 1:
            signature[name] = 'constexpr'
            consts[name] = 1
        else:
            signature[name] = 'i32'
            if args[name] % 16 == 0:
                attrs[(i,)] = [['tt.divisibility', 16]]
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                          target=GPUTarget('cuda', 90, 32), options=dict(num_warps=num_warps)).asm['ptx']


def spilled_bytes(ptx):
    # ptxas -v, as Triton runs it for sm_90a, reports the register spill stores
    with tempfile.NamedTemporaryFile('w', suffix='.ptx') as f:
        f.write(ptx)
        f.flush()
        out = subprocess.run([get_ptxas(90).path, '-v', '--gpu-name', 'sm_90a', f.name, '-o', '/dev/null'],
                             capture_output=True, text=True, check=True).stderr
    return int(re.search(r'(\d+) bytes spill stores', out).group(1))


# the second KAN layer of a ViT-B FFN on 12,608 tokens, bf16, as the wrappers lay the tensors out
M, IN, OUT, KNOTS = 12608, 3072, 768, 12
args = dict(X='*bf16', W='*bf16', Y='*bf16', DY='*bf16', DX='*bf16', DW='*fp32', GRID='*fp32', M=M, IN=IN, OUT=OUT,
            stride_xm=IN, stride_xi=1, stride_wk=IN * OUT, stride_wj=IN * OUT, stride_wi=OUT, stride_wo=1,
            stride_ym=OUT, stride_yo=1, stride_dym=OUT, stride_dyo=1, stride_dxm=IN, stride_dxi=1,
            stride_dwk=IN * OUT, stride_dwj=IN * OUT, stride_dwi=OUT, stride_dwo=1, stride_gi=KNOTS, stride_gq=1)
bm, bn, bi = gemm_blocks(True)
_, _, bi_bspline, bi_bspline_dw = bk.launch_blocks(True)
launches = [
    (ck, '_fwd_kernel', dict(DEGREE=3, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi), 4),
    (ck, '_bwd_dx_kernel', dict(DEGREE=3, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi), 4),
    (ck, '_bwd_dw_kernel', dict(DEGREE=3, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi), 4),
]
spline = dict(NUM_KNOTS=KNOTS, ORDER=3, BLOCK_M=bm, BLOCK_N=bn)
launches += [
    (bk, '_fwd_kernel', dict(spline, BLOCK_I=bi_bspline), bk.NUM_WARPS),
    (bk, '_bwd_dx_kernel', dict(spline, BLOCK_I=bi_bspline), bk.NUM_WARPS),
    (bk, '_bwd_dw_kernel', dict(spline, BLOCK_I=bi_bspline_dw), bk.NUM_WARPS),
]
for module, name, consts, num_warps in launches:
    ptx = compile_sm90(getattr(module, name), args, consts, num_warps)
    # tensor-core GEMM, operands copied asynchronously (pipelined), no scalar 16-bit gathers, no spills
    print(module.__name__.split('.')[-1], name, 'wgmma.mma_async' in ptx, 'cp.async' in ptx,
          len(re.findall(r'ld\.global\.b16', ptx)), spilled_bytes(ptx))

rational = dict(X='*bf16', DY='*bf16', Y='*bf16', DX='*bf16', A='*fp32', B='*fp32', PARTIAL='*fp32',
                N=M * OUT, M=M, C=OUT, GROUP_SIZE=OUT // 8, GROUPS=8)
block, bm_rational, bc_rational = rk.launch_blocks(True)
for name, consts, num_warps in (('_fwd_kernel', dict(BLOCK=block), 4),
                                ('_bwd_kernel', dict(BLOCK_M=bm_rational, BLOCK_C=bc_rational), rk.BWD_NUM_WARPS)):
    print('rational_triton', name, spilled_bytes(compile_sm90(getattr(rk, name), rational, consts, num_warps)))
'''


def test_kernels_compile_for_hopper_with_tensor_core_instructions():
    """Without a GPU: Triton compiles each kernel for sm_90 as a ViT-B launch specialises it, with the launch's
    tiles and warps; the KAN GEMMs use wgmma (Hopper tensor cores) and asynchronous copies, never gather 16-bit
    operands one by one (which a weight laid out with the basis index innermost did), and ptxas fits every
    kernel in registers (the B-spline kernels that built all grid + 2k Cox-de Boor bases spilled 8-20 kB)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-c', _COMPILE_SM90], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [f'{m} {k} True True 0 0' for m in ('chebyshev_triton', 'bspline_triton')
                for k in ('_fwd_kernel', '_bwd_dx_kernel', '_bwd_dw_kernel')]
    expected += ['rational_triton _fwd_kernel 0', 'rational_triton _bwd_kernel 0']
    assert result.stdout.splitlines() == expected


@pytest.mark.parametrize('shape,groups', [((3, 7, 32), 4), ((19, 24), 8)])
def test_fused_group_rational_matches_reference(shape, groups):
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


# ---- capability gating and the first-use self-check (interpreted on CPU, capabilities faked) ----

@pytest.fixture
def fake_gpu(monkeypatch):
    """CPU tensors look like a device of compute capability 9.0; the kernels run through the interpreter."""
    if torch.cuda.is_available():
        pytest.skip('fakes a GPU on CPU tensors')
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.setattr(kernels, 'device_capability', lambda x: (9, 0))
    monkeypatch.setattr(kernels, '_CHECKED', {})
    calls = []
    original = kernels.check_kernel
    monkeypatch.setattr(kernels, 'check_kernel', lambda *a: calls.append(a[0]) or original(*a))
    return calls


@pytest.mark.parametrize('capability,dtype,reason', [
    ((7, 5), torch.float32, 'compute capability 7.5 is below 8.0'),
    ((9, 0), torch.float64, 'torch.float64 is not computed by the kernels'),
    ((8, 0), torch.bfloat16, None),
    (None, torch.float32, 'on a cpu tensor'),
])
def test_gating_rules_with_faked_capabilities(monkeypatch, capability, dtype, reason):
    monkeypatch.setattr(kernels, 'device_capability', lambda x: capability)
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setenv(kernels.SELF_CHECK_ENV, '0')
    x = torch.zeros(4, 8, dtype=dtype)
    found = kernels.unsupported_reason(x)
    assert (found is None) if reason is None else (reason in found)
    assert kernels.use_fused(x, None, 'chebyshev') is (reason is None)
    if reason is not None:
        with pytest.raises(RuntimeError, match=f'fused=True.*{reason}'):
            kernels.use_fused(x, True, 'chebyshev')


def test_gating_follows_the_autocast_dtype(monkeypatch):
    monkeypatch.setattr(kernels, 'device_capability', lambda x: (9, 0))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert kernels.compute_dtype(torch.zeros(2, dtype=torch.float64)) == torch.bfloat16
    assert 'float64' in kernels.unsupported_reason(torch.zeros(2, dtype=torch.float64))


def test_correct_kernel_passes_once_and_is_not_rechecked(fake_gpu):
    torch.manual_seed(0)
    layer = ChebyshevKANLinear(16, 24, degree=3)  # fused=None: the default path
    reference = ChebyshevKANLinear(16, 24, degree=3, fused=False)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 16)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        y = layer(x)
        layer(x)
    assert fake_gpu == ['chebyshev'] and torch.equal(torch.get_rng_state(), state)
    result = kernels._CHECKED[('chebyshev', torch.float32, (9, 0))]
    assert result.ok and result.max_error < kernels.SELF_CHECK_TOLERANCE[torch.float32]
    torch.testing.assert_close(y, reference(x), rtol=TOL, atol=TOL)


@pytest.mark.parametrize('fault', ['wrong', 'raises'])
@pytest.mark.parametrize('kernel', ['chebyshev', 'bspline', 'rational'])
def test_broken_kernel_warns_and_falls_back_to_the_reference(fake_gpu, monkeypatch, kernel, fault):
    module = {'chebyshev': chebyshev_triton, 'bspline': bspline_triton, 'rational': rational_triton}[kernel]
    entry = {'chebyshev': 'chebyshev_kan_matmul', 'bspline': 'bspline_kan_matmul', 'rational': 'group_rational'}
    original = getattr(module, entry[kernel])

    def broken(*args):
        if fault == 'raises':
            raise RuntimeError('PTX compile failed: out of shared memory')
        return original(*args) * 2

    monkeypatch.setattr(module, entry[kernel], broken)
    torch.manual_seed(0)
    make = {'chebyshev': lambda f: ChebyshevKANLinear(16, 24, fused=f),
            'bspline': lambda f: BSplineKANLinear(16, 24, fused=f),
            'rational': lambda f: GroupRational(16, groups=4, init='gelu', fused=f)}[kernel]
    layer, reference = make(None), make(False)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 16)
    # the first-use check on this test's problem (the self-test test runs the registered one): the interpreter is slow
    monkeypatch.setitem(kernels._CHECK_CASES, kernel, partial(
        fused_check_case, lambda fused, device: make(fused).to(device), x.shape))
    with pytest.warns(RuntimeWarning, match=f'fused {kernel} kernel failed its first-use check') as record:
        y = layer(x)
    message = str(record[0].message)
    assert ('out of shared memory' in message) if fault == 'raises' else ('max relative difference' in message)
    assert torch.equal(y, reference(x))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once per process: no second warning, no second check
        assert torch.equal(layer(x), reference(x))
    assert fake_gpu == [kernel]


def test_self_check_can_be_turned_off(fake_gpu, monkeypatch):
    monkeypatch.setenv(kernels.SELF_CHECK_ENV, '0')
    ChebyshevKANLinear(16, 24)(torch.randn(3, 16))
    assert fake_gpu == []


def test_self_test_table_and_bench_check(fake_gpu, capsys, monkeypatch):
    rows = kernels.self_test('cpu')
    assert sorted(r.kernel for r in rows) == ['bspline', 'chebyshev', 'rational']  # float32 only on CPU
    assert all(r.dtype == 'float32' and r.ok and r.max_error < 1e-2 for r in rows), rows
    from timm_kan.cli import main as cli_main
    asked = []  # bench --check prints the table of the self-test it runs (these rows: the interpreter is slow)
    monkeypatch.setattr(kernels, 'self_test', lambda device: asked.append(device) or rows)
    assert cli_main(['bench', '--check', '--device', 'cpu']) == 0 and asked == ['cpu']
    out = capsys.readouterr().out
    assert '| kernel | dtype | device | ok | max error | reason |' in out
    assert '| chebyshev | float32 | cpu | yes |' in out
