"""Fused Triton kernels for the B-spline KAN layer's spline term.

Forward: Y = sum_j B_j(X) @ W_j, with W = spline_weight * spline_scaler laid out (grid + order, in, out).
The bases of an (M, in) tile are built in registers by the Cox-de Boor recursion on that tile's knots
(any knot vector, e.g. after ``update_grid``), so the (M, in, grid + order) basis tensor never exists in
memory. Backward recomputes them:
    dX = sum_j (dY @ W_j^T) * dB_j/dx,
         dB_{j,k}/dx = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}))
    dW_j = B_j(X)^T @ dY                 (one program per basis j and output tile)
The base branch and the bias stay in PyTorch. The reference is :class:`timm_kan.layers.BSplineKANLinear`
on its PyTorch path.
"""
import torch
import triton
import triton.language as tl

from ._common import accumulate_basis_dy, gemm_blocks, gemm_weight, load_tile, store_weight_grad

__all__ = ['bspline_kan_matmul']


@triton.jit
def _bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
           NUM_KNOTS: tl.constexpr, ORDER: tl.constexpr):
    """Tuples of the tile's bases of order ORDER and ORDER - 1, and its knots (unused ones compile away)."""
    x = load_tile(X, offs_m, offs_i, M, IN, stride_xm, stride_xi).to(tl.float32)
    knots = ()
    for q in tl.static_range(NUM_KNOTS):
        # inputs past IN get distinct dummy knots (q) so that no division is 0 / 0
        knots = knots + (tl.load(GRID + offs_i * stride_gi + q * stride_gq, mask=offs_i < IN, other=q * 1.0)[None, :],)
    level = ()
    for q in tl.static_range(NUM_KNOTS - 1):
        level = level + (tl.where((x >= knots[q]) & (x < knots[q + 1]), 1.0, 0.0),)
    lower = level
    for k in tl.static_range(1, ORDER + 1):
        lower = level
        nxt = ()
        for q in tl.static_range(NUM_KNOTS - 1 - k):
            left = (x - knots[q]) / (knots[q + k] - knots[q]) * level[q]
            right = (knots[q + k + 1] - x) / (knots[q + k + 1] - knots[q + 1]) * level[q + 1]
            nxt = nxt + (left + right,)
        level = nxt
    return level, lower, knots


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
        bases, _, _ = _bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                             NUM_KNOTS, ORDER)
        w_ptr = W + offs_i[:, None] * stride_wi + offs_n[None, :] * stride_wo
        w_mask = (offs_i[:, None] < IN) & (offs_n[None, :] < OUT)
        for j in tl.static_range(NUM_KNOTS - 1 - ORDER):
            w = tl.load(w_ptr + j * stride_wj, mask=w_mask, other=0.0)
            acc += tl.dot(bases[j].to(w.dtype), w)
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
    _, lower, knots = _bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                             NUM_KNOTS, ORDER)
    dbases = ()
    for j in tl.static_range(NUM_KNOTS - 1 - ORDER):
        dbases = dbases + (ORDER * (lower[j] / (knots[j + ORDER] - knots[j])
                                    - lower[j + 1] / (knots[j + ORDER + 1] - knots[j + 1])),)
    acc = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
    for n0 in range(0, OUT, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = load_tile(DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
        wt_ptr = W + offs_n[:, None] * stride_wo + offs_i[None, :] * stride_wi
        wt_mask = (offs_n[:, None] < OUT) & (offs_i[None, :] < IN)
        for j in tl.static_range(NUM_KNOTS - 1 - ORDER):
            wt = tl.load(wt_ptr + j * stride_wj, mask=wt_mask, other=0.0)
            acc += tl.dot(dy.to(wt.dtype), wt) * dbases[j]
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
        bases, _, _ = _bases(X, GRID, offs_m, offs_i, M, IN, stride_xm, stride_xi, stride_gi, stride_gq,
                             NUM_KNOTS, ORDER)
        # the basis of this program's j (a runtime index into a compile-time tuple)
        basis = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
        for jj in tl.static_range(NUM_KNOTS - 1 - ORDER):
            basis = tl.where(j == jj, bases[jj], basis)
        acc = accumulate_basis_dy(acc, basis, DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
    store_weight_grad(DW, j, acc, offs_i, offs_n, IN, OUT, stride_dwj, stride_dwi, stride_dwo)


class _BSplineKANMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
        m, n_in = x.shape
        n_out = w.shape[2]
        y = torch.empty(m, n_out, device=x.device, dtype=w.dtype)
        bm, bn, bi = gemm_blocks(x)
        _fwd_kernel[(triton.cdiv(m, bm), triton.cdiv(n_out, bn))](
            x, grid, w, y, m, n_in, n_out, x.stride(0), x.stride(1), grid.stride(0), grid.stride(1),
            w.stride(0), w.stride(1), w.stride(2), y.stride(0), y.stride(1),
            NUM_KNOTS=grid.shape[1], ORDER=order, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi)
        ctx.save_for_backward(x, grid, w)
        ctx.order = order
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, grid, w = ctx.saved_tensors
        m, n_in = x.shape
        n_out = w.shape[2]
        bm, bn, bi = gemm_blocks(x)
        common = dict(NUM_KNOTS=grid.shape[1], ORDER=ctx.order, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            _bwd_dx_kernel[(triton.cdiv(m, bm), triton.cdiv(n_in, bi))](
                x, grid, w, dy, dx, m, n_in, n_out, x.stride(0), x.stride(1), grid.stride(0), grid.stride(1),
                w.stride(0), w.stride(1), w.stride(2), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
                **common)
        if ctx.needs_input_grad[2]:
            dw = torch.empty(w.shape, device=w.device, dtype=torch.float32)
            _bwd_dw_kernel[(triton.cdiv(n_in, bi), triton.cdiv(n_out, bn), w.shape[0])](
                x, grid, dy, dw, m, n_in, n_out, x.stride(0), x.stride(1), grid.stride(0), grid.stride(1),
                dy.stride(0), dy.stride(1), dw.stride(0), dw.stride(1), dw.stride(2), **common)
            dw = dw.to(w.dtype)
        return dx, None, dw, None


def bspline_kan_matmul(x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor, order: int) -> torch.Tensor:
    """``sum_i sum_j B_j(x_i) * weight[o, i, j]`` for x (..., in), knots ``grid`` (in, G + 2k + 1) and
    weight (out, in, G + k). Products in the autocast dtype under autocast, else the weight's dtype."""
    lead = x.shape[:-1]
    y = _BSplineKANMatmul.apply(x.reshape(-1, x.shape[-1]), grid.float().contiguous(), gemm_weight(x, weight), order)
    return y.reshape(*lead, weight.shape[0])
