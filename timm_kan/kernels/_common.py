"""Pieces shared by the KAN GEMM kernels."""
import torch
import triton
import triton.language as tl

__all__ = ['gemm_blocks', 'accumulate_basis_dy', 'store_weight_grad']


def gemm_blocks(x: torch.Tensor):
    """(BLOCK_M, BLOCK_N, BLOCK_I): every tl.dot has 64 rows on CUDA, the least Hopper's wgmma takes (the dW
    kernels' rows are BLOCK_I); tl.dot needs at least 16, which keeps Triton's CPU interpreter fast."""
    return (64, 64, 64) if x.is_cuda else (16, 16, 16)


@triton.jit
def accumulate_basis_dy(acc, basis, DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo):
    """acc + basis^T @ dY for one row block (rows past M read dY = 0 and add nothing)."""
    dy = tl.load(DY + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyo,
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < OUT), other=0.0)
    return acc + tl.dot(tl.trans(basis.to(dy.dtype)), dy)


@triton.jit
def store_weight_grad(DW, j, acc, offs_i, offs_n, IN, OUT, stride_dwj, stride_dwi, stride_dwo):
    tl.store(DW + j * stride_dwj + offs_i[:, None] * stride_dwi + offs_n[None, :] * stride_dwo,
             acc.to(DW.dtype.element_ty), mask=(offs_i[:, None] < IN) & (offs_n[None, :] < OUT))
