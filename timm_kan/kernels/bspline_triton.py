"""Fused Triton kernels for the B-spline KAN layer's spline term.

Forward: Y = sum_j B_j(X) @ W_j, with W = spline_weight * spline_scaler laid out (grid + order, in, out).
Local support: an input x in knot interval [t_m, t_{m+1}) has only order + 1 non-zero bases,
B_{m-k} .. B_m (k = order). Each (M, in) tile finds m by comparing x with its knots (any knot vector,
e.g. after ``update_grid``) and evaluates those k + 1 values with de Boor's triangular scheme on the
2k + 2 knots around m, all in registers; basis j of the GEMM is then the one of them whose index is j
(zero for the others). Neither the (M, in, grid + order) basis tensor nor the full Cox-de Boor triangle
ever exists: the tile keeps k + 1 values instead of grid + 2k, which is what keeps the kernels out of
register spills. Backward recomputes them:
    dX = sum_j (dY @ W_j^T) * dB_j/dx,
         dB_{j,k}/dx = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}))
    dW_j = B_j(X)^T @ dY                 (one program per basis j and output tile)
The base branch and the bias stay in PyTorch. Each launch is a torch custom op (``timm_kan::bspline_kan``,
``_dx``, ``_dw``; see ``_common.kernel_op``). The reference is :class:`timm_kan.layers.BSplineKANLinear`
on its PyTorch path.
"""
from typing import Any, Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import accumulate_basis_dy, gemm_blocks, gemm_weight, kernel_op, load_tile, save_inputs, store_weight_grad

__all__ = ['bspline_kan_matmul']


# 8 warps and 32-input forward/dX tiles: ptxas (sm_90) then fits every B-spline kernel in registers,
# with no spills; the dW tile keeps 64 inputs, the rows its wgmma needs
NUM_WARPS = 8


def launch_blocks(cuda: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_I of the forward and dX kernels, BLOCK_I of the dW kernel)."""
    bm, bn, bi = gemm_blocks(cuda)
    return bm, bn, (32 if cuda else bi), bi


@triton.jit
def _local_bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                 NUM_KNOTS: tl.constexpr, ORDER: tl.constexpr):
    """For an (M, in) tile: the knot interval m of each x; the ORDER + 1 bases B_{m-ORDER+r} (r = 0..ORDER)
    of order ORDER and the ORDER bases B_{m-ORDER+1+r} of order ORDER - 1 (tuples of tiles); and the knots
    t_{m-ORDER+o}, o = 0..2 ORDER + 1. Slots whose basis index is outside 0..NUM_KNOTS-2-ORDER (x near or
    past the ends of the knot vector) may hold anything, even NaN: callers select by index."""
    x = load_tile(X, offs_m, offs_i, M, IN, stride_xm, stride_xi).to(tl.float32)
    knots = ()
    for q in tl.static_range(NUM_KNOTS):
        # inputs past IN get distinct dummy knots (q): their valid slots stay finite
        knots = knots + (tl.load(GRID + offs_i * stride_gi + q * stride_gq, mask=offs_i < IN, other=q * 1.0)[None, :],)
    m = tl.full(x.shape, -1, tl.int32)
    for q in tl.static_range(NUM_KNOTS):
        m += (x >= knots[q]).to(tl.int32)
    near = ()
    for o in tl.static_range(2 * ORDER + 2):
        t = tl.zeros(x.shape, tl.float32)
        for q in tl.static_range(NUM_KNOTS):
            t = tl.where(m + (o - ORDER) == q, knots[q], t)
        near = near + (t,)
    # de Boor: level d holds B_{m-d+r, d}, r = 0..d; each is built from the two of level d - 1 it blends
    bases = (tl.full(x.shape, 1.0, tl.float32),)
    lower = bases
    for d in tl.static_range(1, ORDER + 1):
        lower = bases
        carried = tl.zeros(x.shape, tl.float32)
        level = ()
        for r in tl.static_range(d):
            t_hi = near[ORDER + r + 1]
            t_lo = near[ORDER + 1 - d + r]
            share = lower[r] / (t_hi - t_lo)
            level = level + (carried + (t_hi - x) * share,)
            carried = (x - t_lo) * share
        bases = level + (carried,)
    return m, bases, lower, near


@triton.jit
def _pick(m, values, j, ORDER: tl.constexpr):
    """Basis j of the tile: the value of ``values`` (indexed m - ORDER + r) whose index is j, else 0."""
    out = tl.zeros(m.shape, tl.float32)
    for r in tl.static_range(ORDER + 1):
        out = tl.where(m - ORDER + r == j, values[r], out)
    return out


@triton.jit
def _fwd_kernel(
        X, GRID, W, Y, M, IN, OUT,
        stride_xm, stride_xi, stride_gi, stride_gq, stride_wj, stride_wi, stride_wo, stride_ym, stride_yo,
        NUM_KNOTS: tl.constexpr, ORDER: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i0 in range(0, IN, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        m, bases, _, _ = _local_bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                                      NUM_KNOTS, ORDER)
        for j in tl.static_range(NUM_KNOTS - 1 - ORDER):
            w = load_tile(W + j * stride_wj, offs_i, offs_n, IN, OUT, stride_wi, stride_wo)
            acc += tl.dot(_pick(m, bases, j, ORDER).to(w.dtype), w)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yo, acc.to(Y.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < OUT))


@triton.jit
def _bwd_dx_kernel(
        X, GRID, W, DY, DX, M, IN, OUT,
        stride_xm, stride_xi, stride_gi, stride_gq, stride_wj, stride_wi, stride_wo, stride_dym, stride_dyo,
        stride_dxm, stride_dxi,
        NUM_KNOTS: tl.constexpr, ORDER: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    m, _, lower, near = _local_bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                                     NUM_KNOTS, ORDER)
    # dB_{m-ORDER+r}/dx, r = 0..ORDER, from the order ORDER - 1 bases (lower[r] is B_{m-ORDER+1+r})
    dbases = ()
    for r in tl.static_range(ORDER + 1):
        d = tl.zeros(m.shape, tl.float32)
        if r > 0:
            d += lower[r - 1] / (near[ORDER + r] - near[r])
        if r < ORDER:
            d -= lower[r] / (near[ORDER + r + 1] - near[r + 1])
        dbases = dbases + (ORDER * d,)
    acc = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
    for n0 in range(0, OUT, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = load_tile(DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
        for j in tl.static_range(NUM_KNOTS - 1 - ORDER):
            wt = load_tile(W + j * stride_wj, offs_n, offs_i, OUT, IN, stride_wo, stride_wi)
            acc += tl.dot(dy.to(wt.dtype), wt) * _pick(m, dbases, j, ORDER)
    tl.store(DX + offs_m[:, None] * stride_dxm + offs_i[None, :] * stride_dxi, acc.to(DX.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_i[None, :] < IN))


@triton.jit
def _bwd_dw_kernel(
        X, GRID, DY, DW, M, IN, OUT,
        stride_xm, stride_xi, stride_gi, stride_gq, stride_dym, stride_dyo, stride_dwj, stride_dwi, stride_dwo,
        NUM_KNOTS: tl.constexpr, ORDER: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.program_id(2)
    acc = tl.zeros((BLOCK_I, BLOCK_N), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m, bases, _, _ = _local_bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                                      NUM_KNOTS, ORDER)
        # rows past M read dY = 0 and add nothing
        acc = accumulate_basis_dy(acc, _pick(m, bases, j, ORDER), DY, offs_m, offs_n, M, OUT, stride_dym,
                                  stride_dyo)
    store_weight_grad(DW, j, acc, offs_i, offs_n, IN, OUT, stride_dwj, stride_dwi, stride_dwo)


def _launch(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, order: int,
            weight_grad: bool = False) -> Tuple[int, int, int, Dict[str, int]]:
    """(M, in, out, the kernels' constexprs and warps) of a launch on X (M, in) and W (grid + order, in, out)."""
    bm, bn, bi, bi_dw = launch_blocks(x.is_cuda)
    meta = dict(NUM_KNOTS=grid.shape[1], ORDER=order, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi_dw if weight_grad else bi)
    return x.shape[0], x.shape[1], w.shape[2], dict(meta, num_warps=NUM_WARPS)


def _forward_out(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[2], dtype=w.dtype)


@kernel_op('bspline_kan', _forward_out, constants=('order',))
def _forward(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
    """Y (M, out) = sum_j B_j(X) @ W_j for X (M, in), fp32 knots (in, grid + 2 order + 1), in W's dtype."""
    y = _forward_out(x, grid, w, order)
    m, n_in, n_out, meta = _launch(x, grid, w, order)
    wrap_triton(_fwd_kernel)[(triton.cdiv(m, meta['BLOCK_M']), triton.cdiv(n_out, meta['BLOCK_N']))](
        x, grid, w, y, m, n_in, n_out, *x.stride(), *grid.stride(), *w.stride(), *y.stride(), **meta)
    return y


def _input_grad_out(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, dy: torch.Tensor,
                    order: int) -> torch.Tensor:
    return torch.empty_like(x)


@kernel_op('bspline_kan_dx', _input_grad_out, constants=('order',))
def _input_grad(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, order: int) -> torch.Tensor:
    """dX (M, in), in X's dtype, of the forward for the output gradient dY (M, out)."""
    dx = _input_grad_out(x, grid, w, dy, order)
    m, n_in, n_out, meta = _launch(x, grid, w, order)
    wrap_triton(_bwd_dx_kernel)[(triton.cdiv(m, meta['BLOCK_M']), triton.cdiv(n_in, meta['BLOCK_I']))](
        x, grid, w, dy, dx, m, n_in, n_out, *x.stride(), *grid.stride(), *w.stride(), *dy.stride(), *dx.stride(),
        **meta)
    return dx


def _weight_grad_out(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, dy: torch.Tensor,
                     order: int) -> torch.Tensor:
    # fp32: the accumulators are stored as they are, the autograd formula casts to the weight's dtype
    return w.new_empty(w.shape, dtype=torch.float32)


@kernel_op('bspline_kan_dw', _weight_grad_out, constants=('order',))
def _weight_grad(x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, order: int) -> torch.Tensor:
    """dW (grid + order, in, out) in fp32 for the output gradient dY (M, out); W gives only its shape."""
    dw = _weight_grad_out(x, grid, w, dy, order)
    m, n_in, n_out, meta = _launch(x, grid, w, order, weight_grad=True)
    wrap_triton(_bwd_dw_kernel)[(triton.cdiv(n_in, meta['BLOCK_I']), triton.cdiv(n_out, meta['BLOCK_N']), w.shape[0])](
        x, grid, dy, dw, m, n_in, n_out, *x.stride(), *grid.stride(), *dy.stride(), *dw.stride(), **meta)
    return dw


def _backward(ctx: Any, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, Optional[torch.Tensor], None]:
    x, grid, w = ctx.saved_tensors
    order, = ctx.constants
    dx = _input_grad(x, grid, w, dy, order) if ctx.needs_input_grad[0] else None
    dw = _weight_grad(x, grid, w, dy, order).to(w.dtype) if ctx.needs_input_grad[2] else None
    return dx, None, dw, None


_forward.register_autograd(_backward, setup_context=save_inputs)


def bspline_kan_matmul(x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor, order: int) -> torch.Tensor:
    """``sum_i sum_j B_j(x_i) * weight[o, i, j]`` for x (..., in), knots ``grid`` (in, G + 2k + 1) and
    weight (out, in, G + k). Products in the autocast dtype under autocast, else the weight's dtype
    (the op ``timm_kan::bspline_kan``; differentiable in ``x`` and ``weight``)."""
    lead = x.shape[:-1]
    y = _forward(x.reshape(-1, x.shape[-1]), grid.float().contiguous(), gemm_weight(x, weight), order)
    return y.reshape(*lead, weight.shape[0])
