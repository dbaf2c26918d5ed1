"""Pieces shared by the KAN kernels: their registration as torch custom ops, and the GEMM kernels' tiles."""
from typing import Any, Callable, Sequence

import torch
import triton
import triton.language as tl
from torch.library import CustomOpDef, infer_schema, triton_op

__all__ = ['NAMESPACE', 'kernel_op', 'save_inputs', 'gemm_blocks', 'gemm_weight', 'load_tile',
           'accumulate_basis_dy', 'store_weight_grad']

# the ops are torch.ops.timm_kan.<name>
NAMESPACE = 'timm_kan'


def kernel_op(name: str, outputs: Callable[..., Any],
              constants: Sequence[str] = ()) -> Callable[[Callable[..., Any]], CustomOpDef]:
    """Decorator: ``fn`` (Triton launches through ``wrap_triton``) as the op ``timm_kan::name``, whose schema is
    read from ``fn``'s annotations. As a ``triton_op`` it is one node that torch.export keeps and whose launches
    torch.compile traces into its graph (CUDA). ``outputs`` allocates the op's outputs from its arguments: ``fn``
    writes into them, and it is the fake implementation too, so fake and real metadata agree by construction
    (the default fake, ``fn`` on FakeTensors, would launch Triton's CPU interpreter on tensors with no data).
    ``constants``: int arguments that are kernel constexprs, ``int`` in the schema (a graph specialises on
    them) where annotations give ``SymInt``."""
    def register(fn: Callable[..., Any]) -> CustomOpDef:
        schema = infer_schema(fn, mutates_args=())
        for arg in constants:
            schema = schema.replace(f'SymInt {arg}', f'int {arg}')
        op = triton_op(f'{NAMESPACE}::{name}', fn, mutates_args=(), schema=schema)
        op.register_fake(outputs)
        return op
    return register


def save_inputs(ctx: Any, inputs: Sequence[Any], output: Any) -> None:
    """``setup_context`` of the forward ops: the backward kernels recompute the bases from the forward's inputs,
    so those are all it keeps (tensors saved, other arguments as ``ctx.constants``)."""
    ctx.save_for_backward(*(a for a in inputs if isinstance(a, torch.Tensor)))
    ctx.constants = tuple(a for a in inputs if not isinstance(a, torch.Tensor))


def gemm_blocks(cuda: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_I): every tl.dot has 64 rows on CUDA, the least Hopper's wgmma takes (the dW
    kernels' rows are BLOCK_I); tl.dot needs at least 16, which keeps Triton's CPU interpreter fast."""
    return (64, 64, 64) if cuda else (16, 16, 16)


def gemm_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A layer's (out, in, J) coefficients as the kernels' contiguous (J, in, out) operand, in the autocast
    dtype under autocast (else the weight's): one copy, and the tiles the kernels load are rows along
    ``out`` (coalesced, vectorised) instead of gathers with stride J."""
    dtype = weight.dtype
    if x.device.type != 'cpu' and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    w = weight.permute(2, 1, 0)
    return w.contiguous() if dtype == w.dtype else w.to(dtype, memory_format=torch.contiguous_format)


@triton.jit
def load_tile(P, offs_r, offs_c, R, C, stride_r, stride_c):
    """The (rows, cols) tile of a 2-D tensor; entries past R rows or C columns read 0."""
    return tl.load(P + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
                   mask=(offs_r[:, None] < R) & (offs_c[None, :] < C), other=0.0)


@triton.jit
def accumulate_basis_dy(acc, basis, DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo):
    """acc + basis^T @ dY for one row block (rows past M read dY = 0 and add nothing)."""
    dy = load_tile(DY, offs_m, offs_n, M, OUT, stride_dym, stride_dyo)
    return acc + tl.dot(tl.trans(basis.to(dy.dtype)), dy)


@triton.jit
def store_weight_grad(DW, j, acc, offs_i, offs_n, IN, OUT, stride_dwj, stride_dwi, stride_dwo):
    tl.store(DW + j * stride_dwj + offs_i[:, None] * stride_dwi + offs_n[None, :] * stride_dwo,
             acc.to(DW.dtype.element_ty), mask=(offs_i[:, None] < IN) & (offs_n[None, :] < OUT))
