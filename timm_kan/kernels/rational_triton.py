"""Triton kernels for the group-rational activation (KAT's GPU-kernel form, see ``layers.rational``).

phi(x) = P(x) / Q(x), P = sum_i a_i x^i (i <= 5), Q = 1 + sum_j |b_j| |x|^j (j = 1..4), one (a, b) per
contiguous channel group. Inputs and outputs stay in the compute dtype (bf16/fp16 under autocast); the
arithmetic runs in fp32 registers. For |x| > 1 numerator and denominator are divided by x^4 (u = 1/x),
so every power that appears is bounded, as in the PyTorch reference.

Backward: one program per (row block, group) walks that group's channels, computes dx elementwise and
sums its share of dL/da (6) and dL/db (4) in registers; the per-program sums go to a
(row blocks, groups, 10) buffer that PyTorch reduces. No per-element atomics. Each launch is a torch custom op
(``timm_kan::group_rational``, ``group_rational_backward``; see ``_common.kernel_op``).
"""
from typing import Any, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import kernel_op, save_inputs

__all__ = ['group_rational']


@triton.jit
def _coeffs(A, B, g):
    a0 = tl.load(A + g * 6 + 0)
    a1 = tl.load(A + g * 6 + 1)
    a2 = tl.load(A + g * 6 + 2)
    a3 = tl.load(A + g * 6 + 3)
    a4 = tl.load(A + g * 6 + 4)
    a5 = tl.load(A + g * 6 + 5)
    b1 = tl.abs(tl.load(B + g * 4 + 0))
    b2 = tl.abs(tl.load(B + g * 4 + 1))
    b3 = tl.abs(tl.load(B + g * 4 + 2))
    b4 = tl.abs(tl.load(B + g * 4 + 3))
    return a0, a1, a2, a3, a4, a5, b1, b2, b3, b4


@triton.jit
def _num_den(x, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4):
    """(N, D, dN/dx, dD/dx, small, u, xs): N/D = phi, direct on |x| <= 1, x^-4-scaled elsewhere."""
    small = tl.abs(x) <= 1.0
    sgn = tl.where(x < 0, -1.0, 1.0)
    xs = tl.where(small, x, 0.0)
    axs = tl.abs(xs)
    xl = tl.where(small, 1.0, x)
    u = 1.0 / xl
    au = tl.abs(u)
    n = tl.where(small, a0 + xs * (a1 + xs * (a2 + xs * (a3 + xs * (a4 + xs * a5)))),
                 a5 * xl + a4 + u * (a3 + u * (a2 + u * (a1 + u * a0))))
    d = tl.where(small, 1.0 + axs * (b1 + axs * (b2 + axs * (b3 + axs * b4))),
                 b4 + au * (b3 + au * (b2 + au * (b1 + au))))
    dn = tl.where(small, a1 + xs * (2.0 * a2 + xs * (3.0 * a3 + xs * (4.0 * a4 + xs * 5.0 * a5))),
                  5.0 * a5 + u * (4.0 * a4 + u * (3.0 * a3 + u * (2.0 * a2 + u * a1))))
    dd = sgn * tl.where(small, b1 + axs * (2.0 * b2 + axs * (3.0 * b3 + axs * 4.0 * b4)),
                        au * (4.0 * b4 + au * (3.0 * b3 + au * (2.0 * b2 + au * b1))))
    return n, d, dn, dd, small, u, xs


@triton.jit
def _fwd_kernel(X, A, B, Y, N, C, GROUP_SIZE, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = (offs % C) // GROUP_SIZE
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _coeffs(A, B, g)
    n, d, _, _, _, _, _ = _num_den(x, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
    tl.store(Y + offs, (n / d).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(X, DY, A, B, DX, PARTIAL, M, C, GROUP_SIZE, GROUPS,
                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    a0, a1, a2, a3, a4, a5, b1, b2, b3, b4 = _coeffs(A, B, g)
    sb1 = tl.where(tl.load(B + g * 4 + 0) < 0, -1.0, 1.0)
    sb2 = tl.where(tl.load(B + g * 4 + 1) < 0, -1.0, 1.0)
    sb3 = tl.where(tl.load(B + g * 4 + 2) < 0, -1.0, 1.0)
    sb4 = tl.where(tl.load(B + g * 4 + 3) < 0, -1.0, 1.0)
    da0 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    da1 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    da2 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    da3 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    da4 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    da5 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    db1 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    db2 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    db3 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    db4 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for c0 in range(0, GROUP_SIZE, BLOCK_C):
        cols = g * GROUP_SIZE + c0 + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < M) & ((c0 + tl.arange(0, BLOCK_C))[None, :] < GROUP_SIZE)
        ptr = rows[:, None] * C + cols[None, :]
        x = tl.load(X + ptr, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + ptr, mask=mask, other=0.0).to(tl.float32)
        n, d, dn, dd, small, u, xs = _num_den(x, a0, a1, a2, a3, a4, a5, b1, b2, b3, b4)
        inv_d = 1.0 / d
        dx = (dn - n * dd * inv_d) * inv_d
        tl.store(DX + ptr, (dy * dx).to(DX.dtype.element_ty), mask=mask)
        # dphi/da_i = x^i / Q (x^(i-4) / Qs when |x| > 1); dphi/d|b_j| = -phi / Q * |x|^j (|x|^(j-4) / Qs)
        w = dy * inv_d
        r = -dy * n * inv_d * inv_d
        ax = tl.abs(xs)
        au = tl.abs(u)
        da0 += w * tl.where(small, 1.0, u * u * u * u)
        da1 += w * tl.where(small, xs, u * u * u)
        da2 += w * tl.where(small, xs * xs, u * u)
        da3 += w * tl.where(small, xs * xs * xs, u)
        da4 += w * tl.where(small, xs * xs * xs * xs, 1.0)
        da5 += w * tl.where(small, xs * xs * xs * xs * xs, x)
        db1 += r * tl.where(small, ax, au * au * au)
        db2 += r * tl.where(small, ax * ax, au * au)
        db3 += r * tl.where(small, ax * ax * ax, au)
        db4 += r * tl.where(small, ax * ax * ax * ax, 1.0)
    out = PARTIAL + (pid_m * GROUPS + g) * 10
    tl.store(out + 0, tl.sum(tl.sum(da0, 1), 0))
    tl.store(out + 1, tl.sum(tl.sum(da1, 1), 0))
    tl.store(out + 2, tl.sum(tl.sum(da2, 1), 0))
    tl.store(out + 3, tl.sum(tl.sum(da3, 1), 0))
    tl.store(out + 4, tl.sum(tl.sum(da4, 1), 0))
    tl.store(out + 5, tl.sum(tl.sum(da5, 1), 0))
    tl.store(out + 6, sb1 * tl.sum(tl.sum(db1, 1), 0))
    tl.store(out + 7, sb2 * tl.sum(tl.sum(db2, 1), 0))
    tl.store(out + 8, sb3 * tl.sum(tl.sum(db3, 1), 0))
    tl.store(out + 9, sb4 * tl.sum(tl.sum(db4, 1), 0))


# the backward keeps ten (BLOCK_M, BLOCK_C) fp32 accumulators: with 64 x 32 tiles over 8 warps ptxas (sm_90)
# fits them in registers (64 x 64 over 4 warps spilled 1.5 kB)
BWD_NUM_WARPS = 8


def launch_blocks(cuda: bool):
    """(BLOCK of the forward, BLOCK_M and BLOCK_C of the backward)."""
    return (1024, 64, 32) if cuda else (64, 8, 8)


def _forward_out(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # contiguous whatever x's strides: the kernels index elements by their flat offset
    return x.new_empty(x.shape)


@kernel_op('group_rational', _forward_out)
def _forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """phi(x), in x's dtype, per channel group of x's last dimension; numerator (groups, 6), denominator
    (groups, 4) in any float dtype (read in fp32)."""
    y = _forward_out(x, numerator, denominator)
    c = x.shape[-1]
    block, _, _ = launch_blocks(x.is_cuda)
    wrap_triton(_fwd_kernel)[(triton.cdiv(x.numel(), block),)](
        x.contiguous(), numerator.float().contiguous(), denominator.float().contiguous(), y, x.numel(), c,
        c // numerator.shape[0], BLOCK=block)
    return y


def _backward_out(x: torch.Tensor, dy: torch.Tensor, numerator: torch.Tensor,
                  denominator: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """dx, and each (row block, group)'s fp32 sums of dL/da (6) then dL/db (4)."""
    _, bm, _ = launch_blocks(x.is_cuda)
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty(triton.cdiv(rows, bm), numerator.shape[0], 10, dtype=torch.float32)


@kernel_op('group_rational_backward', _backward_out)
def _backward_kernel(x: torch.Tensor, dy: torch.Tensor, numerator: torch.Tensor,
                     denominator: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dx, per-block coefficient-gradient sums, see ``_backward_out``) for the output gradient dy."""
    dx, partial = _backward_out(x, dy, numerator, denominator)
    c = x.shape[-1]
    groups = numerator.shape[0]
    _, bm, bc = launch_blocks(x.is_cuda)
    wrap_triton(_bwd_kernel)[(partial.shape[0], groups)](
        x.contiguous(), dy.contiguous(), numerator.float().contiguous(), denominator.float().contiguous(), dx,
        partial, x.numel() // c, c, c // groups, groups, BLOCK_M=bm, BLOCK_C=bc, num_warps=BWD_NUM_WARPS)
    return dx, partial


def _backward(ctx: Any, dy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, numerator, denominator = ctx.saved_tensors
    dx, partial = _backward_kernel(x, dy, numerator, denominator)
    grads = partial.sum(0)
    return dx, grads[:, :6].to(numerator.dtype), grads[:, 6:].to(denominator.dtype)


_forward.register_autograd(_backward, setup_context=save_inputs)


def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """phi(x) per channel group of the last dimension; numerator (groups, 6), denominator (groups, 4)
    (the op ``timm_kan::group_rational``; differentiable in all three)."""
    return _forward(x, numerator, denominator)
