"""Fused Triton kernels for the Chebyshev KAN layer.

Forward: Y = sum_k T_k(tanh X) @ W_k with the basis built in registers inside the GEMM's K loop, so the
(M, in * (degree + 1)) basis is never written to memory. Backward recomputes the basis:
    dW_k = T_k(t)^T @ dY                                      (one program per k and output tile)
    dX   = (1 - t^2) * sum_k (dY @ W_k^T) * T'_k(t)           (T'_{k+1} = 2 T_k + 2 t T'_k - T'_{k-1})
with t = tanh(X). ``W`` is laid out (degree + 1, in, out). Products run in the weight dtype (bf16/fp16
under autocast) with fp32 accumulation; the basis recurrence runs in fp32.

Each launch is a torch custom op (``timm_kan::chebyshev_kan``, ``_dx``, ``_dw``; see ``_common.kernel_op``), the
forward's autograd formula calling the two backward ops. The PyTorch reference is
:class:`timm_kan.layers.ChebyshevKANLinear` on its reference path; the tests compare the two (on CPU through
``TRITON_INTERPRET=1``).
"""
from typing import Any, Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import accumulate_basis_dy, gemm_blocks, gemm_weight, kernel_op, load_tile, save_inputs, store_weight_grad

__all__ = ['chebyshev_kan_matmul']


@triton.jit
def _tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact limits +-1 for large |x| (exp overflows to inf or underflows to 0)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _load_tanh(X, offs_m, offs_i, M, IN, stride_xm, stride_xi):
    """tanh of an X tile in fp32; rows past M and inputs past IN read 0."""
    return _tanh(load_tile(X, offs_m, offs_i, M, IN, stride_xm, stride_xi).to(tl.float32))


@triton.jit
def _fwd_kernel(
        X, W, Y, M, IN, OUT,
        stride_xm, stride_xi, stride_wk, stride_wi, stride_wo, stride_ym, stride_yo,
        DEGREE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i0 in range(0, IN, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        t = _load_tanh(X, offs_m, offs_i, M, IN, stride_xm, stride_xi)
        # T_0 = 1: masked-out inputs meet zero weights, so they add nothing
        w = load_tile(W, offs_i, offs_n, IN, OUT, stride_wi, stride_wo)
        t_prev = tl.full((BLOCK_M, BLOCK_I), 1.0, tl.float32)
        acc += tl.dot(t_prev.to(w.dtype), w)
        t_cur = t
        w = load_tile(W + stride_wk, offs_i, offs_n, IN, OUT, stride_wi, stride_wo)
        acc += tl.dot(t_cur.to(w.dtype), w)
        for k in tl.static_range(2, DEGREE + 1):
            t_next = 2.0 * t * t_cur - t_prev
            t_prev = t_cur
            t_cur = t_next
            w = load_tile(W + k * stride_wk, offs_i, offs_n, IN, OUT, stride_wi, stride_wo)
            acc += tl.dot(t_cur.to(w.dtype), w)
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < OUT)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yo, acc.to(Y.dtype.element_ty), mask=y_mask)


@triton.jit
def _bwd_dx_kernel(
        X, W, DY, DX, M, IN, OUT,
        stride_xm, stride_xi, stride_wk, stride_wi, stride_wo, stride_dym, stride_dyo, stride_dxm, stride_dxi,
        DEGREE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_i = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    t = _load_tanh(X, offs_m, offs_i, M, IN, stride_xm, stride_xi)
    acc = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
    for n0 in range(0, OUT, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = load_tile(DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
        # W_k^T tile: (BLOCK_N, BLOCK_I)
        # k = 1: T'_1 = 1
        wt = load_tile(W + stride_wk, offs_n, offs_i, OUT, IN, stride_wo, stride_wi)
        acc += tl.dot(dy.to(wt.dtype), wt)
        t_prev = tl.full((BLOCK_M, BLOCK_I), 1.0, tl.float32)
        t_cur = t
        d_prev = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
        d_cur = tl.full((BLOCK_M, BLOCK_I), 1.0, tl.float32)
        for k in tl.static_range(2, DEGREE + 1):
            d_next = 2.0 * t_cur + 2.0 * t * d_cur - d_prev
            t_next = 2.0 * t * t_cur - t_prev
            d_prev = d_cur
            d_cur = d_next
            t_prev = t_cur
            t_cur = t_next
            wt = load_tile(W + k * stride_wk, offs_n, offs_i, OUT, IN, stride_wo, stride_wi)
            acc += tl.dot(dy.to(wt.dtype), wt) * d_cur
    dx = acc * (1.0 - t * t)
    tl.store(DX + offs_m[:, None] * stride_dxm + offs_i[None, :] * stride_dxi, dx.to(DX.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_i[None, :] < IN))


@triton.jit
def _bwd_dw_kernel(
        X, DY, DW, M, IN, OUT,
        stride_xm, stride_xi, stride_dym, stride_dyo, stride_dwk, stride_dwi, stride_dwo,
        DEGREE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_n = tl.program_id(1)
    k = tl.program_id(2)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_I, BLOCK_N), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        t = _load_tanh(X, offs_m, offs_i, M, IN, stride_xm, stride_xi)
        # T_k for this program's k, selected from the unrolled recurrence (a loop bounded by the runtime k
        # would keep Triton from pipelining the loads of this loop)
        t_prev = tl.full((BLOCK_M, BLOCK_I), 1.0, tl.float32)
        t_cur = t
        basis = tl.where(k == 0, t_prev, t_cur)
        for kk in tl.static_range(2, DEGREE + 1):
            t_next = 2.0 * t * t_cur - t_prev
            t_prev = t_cur
            t_cur = t_next
            basis = tl.where(k == kk, t_cur, basis)
        # rows past M read dY = 0, so their T_0 = 1 adds nothing
        acc = accumulate_basis_dy(acc, basis, DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
    store_weight_grad(DW, k, acc, offs_i, offs_n, IN, OUT, stride_dwk, stride_dwi, stride_dwo)


def _launch(x: torch.Tensor, w: torch.Tensor) -> Tuple[int, int, int, Dict[str, int]]:
    """(M, in, out, the kernels' constexprs) of a launch on X (M, in) and W (degree + 1, in, out)."""
    bm, bn, bi = gemm_blocks(x.is_cuda)
    return x.shape[0], x.shape[1], w.shape[2], dict(DEGREE=w.shape[0] - 1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_I=bi)


def _forward_out(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[2], dtype=w.dtype)


@kernel_op('chebyshev_kan', _forward_out)
def _forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Y (M, out) = sum_k T_k(tanh X) @ W_k for X (M, in) and W (degree + 1, in, out), in W's dtype."""
    y = _forward_out(x, w)
    m, n_in, n_out, meta = _launch(x, w)
    wrap_triton(_fwd_kernel)[(triton.cdiv(m, meta['BLOCK_M']), triton.cdiv(n_out, meta['BLOCK_N']))](
        x, w, y, m, n_in, n_out, *x.stride(), *w.stride(), *y.stride(), **meta)
    return y


def _input_grad_out(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@kernel_op('chebyshev_kan_dx', _input_grad_out)
def _input_grad(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dX (M, in), in X's dtype, of the forward for the output gradient dY (M, out)."""
    dx = _input_grad_out(x, w, dy)
    m, n_in, n_out, meta = _launch(x, w)
    wrap_triton(_bwd_dx_kernel)[(triton.cdiv(m, meta['BLOCK_M']), triton.cdiv(n_in, meta['BLOCK_I']))](
        x, w, dy, dx, m, n_in, n_out, *x.stride(), *w.stride(), *dy.stride(), *dx.stride(), **meta)
    return dx


def _weight_grad_out(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # fp32: the accumulators are stored as they are, the autograd formula casts to the weight's dtype
    return w.new_empty(w.shape, dtype=torch.float32)


@kernel_op('chebyshev_kan_dw', _weight_grad_out)
def _weight_grad(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dW (degree + 1, in, out) in fp32 for the output gradient dY (M, out); W gives only its shape."""
    dw = _weight_grad_out(x, w, dy)
    m, n_in, n_out, meta = _launch(x, w)
    grid = (triton.cdiv(n_in, meta['BLOCK_I']), triton.cdiv(n_out, meta['BLOCK_N']), w.shape[0])
    wrap_triton(_bwd_dw_kernel)[grid](x, dy, dw, m, n_in, n_out, *x.stride(), *dy.stride(), *dw.stride(), **meta)
    return dw


def _backward(ctx: Any, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    x, w = ctx.saved_tensors
    dx = _input_grad(x, w, dy) if ctx.needs_input_grad[0] else None
    dw = _weight_grad(x, w, dy).to(w.dtype) if ctx.needs_input_grad[1] else None
    return dx, dw


_forward.register_autograd(_backward, setup_context=save_inputs)


def chebyshev_kan_matmul(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``sum_i sum_k T_k(tanh x_i) * coeffs[o, i, k]`` for x of shape (..., in) and coeffs (out, in, degree + 1).

    Under autocast the products run in the autocast dtype (coefficients cast to it); otherwise in the
    coefficients' dtype. Differentiable in ``x`` and ``coeffs`` (the op ``timm_kan::chebyshev_kan``).
    """
    lead = x.shape[:-1]
    y = _forward(x.reshape(-1, x.shape[-1]), gemm_weight(x, coeffs))
    return y.reshape(*lead, coeffs.shape[0])
