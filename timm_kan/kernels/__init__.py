"""Fused GPU kernels (Triton) for the KAN layers; each sits beside its PyTorch reference in ``layers``.

A layer's ``fused`` option: ``False`` forces the PyTorch reference; ``True`` forces the kernel (CPU tensors run
under ``TRITON_INTERPRET=1``; a case a gating rule refuses is an error naming the rule); ``None`` (default)
takes the kernel only where every rule of ``GATING_RULES`` lets it, and the reference elsewhere, silently.

First-use self-check (``fused=None`` only): the first time a kernel would run for a (kernel, compute dtype,
device capability) combination in a process, it is compared with the reference on a small problem (outputs
and gradients, ``SELF_CHECK_TOLERANCE`` per dtype). A mismatch, or an error compiling or launching it, gives
one warning naming the kernel, the error or the measured difference, and that combination uses the
reference for the rest of the process. The result is cached per process; ``TIMM_KAN_SELF_CHECK=0`` turns the
check off. ``self_test()`` (``timm-kan bench --check``) runs every kernel x dtype once and returns the table.

Each launch is a torch custom op, ``torch.ops.timm_kan.*`` (registered when its ``*_triton`` module is imported):
a ``triton_op`` with a fake implementation and an autograd formula that calls the backward ops, so torch.export
keeps it as one node and torch.compile traces its launches (CUDA). On CPU the interpreter cannot run on the
FakeTensors that decomposition traces with: there the ops compile as opaque nodes, with
``torch._functorch.config.decompose_custom_triton_ops = False`` (see tests/test_custom_ops.py).
"""
import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ['GATING_RULES', 'SELF_CHECK_TOLERANCE', 'CheckResult', 'device_capability', 'register_check_case',
           'self_test', 'triton_available', 'unsupported_reason', 'use_fused']

# kernels compiled for these only: bf16 tl.dot, the cp.async pipelines and the tile sizes need Ampere or newer
MIN_CAPABILITY = (8, 0)
MIN_TRITON = (3, 0)
# fp64 would run in fp32 inside the kernels: the reference keeps fp64's precision
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the kernels index with 32-bit offsets
MAX_ELEMENTS = 2 ** 31 - 1
# max |fused - reference| / max |reference| over outputs and gradients; fp32 allows for TF32 in tl.dot
SELF_CHECK_TOLERANCE = {torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}
SELF_CHECK_ENV = 'TIMM_KAN_SELF_CHECK'


# asked on every forward: looked up once, at import (find_spec does not import triton), as a plain value that
# torch.compile reads without the warning it gives for tracing through an lru_cache
_TRITON_FOUND = importlib.util.find_spec('triton') is not None


def triton_available() -> bool:
    return _TRITON_FOUND


@functools.lru_cache(maxsize=None)
def triton_version() -> Tuple[int, ...]:
    from importlib.metadata import version
    return tuple(int(p) for p in version('triton').split('.')[:2] if p.isdigit())


def device_capability(x: torch.Tensor) -> Optional[Tuple[int, int]]:
    """CUDA compute capability of ``x``'s device, None for other devices (tests replace this function)."""
    return torch.cuda.get_device_capability(x.device) if x.is_cuda else None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the kernels compute in: the autocast dtype under autocast, else ``x``'s."""
    device = x.device.type
    if x.is_floating_point() and torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _version(v: Tuple[int, ...]) -> str:
    return '.'.join(map(str, v))


# (rule, reason the kernel does not apply, or None); checked in order, the first reason is reported (the device
# first: a CPU tensor never looks Triton up, so torch.compile traces nothing of it)
GATING_RULES: Tuple[Tuple[str, Callable[[torch.Tensor], Optional[str]]], ...] = (
    ('device', lambda x: None if device_capability(x) is not None else
        f'on a {x.device.type} tensor: the Triton kernels run on CUDA, or on CPU under TRITON_INTERPRET=1 set '
        'before triton is imported'),
    ('triton', lambda x: None if triton_available() else 'Triton is not installed (pip install triton)'),
    ('triton version', lambda x: None if triton_version() >= MIN_TRITON else
        f'Triton {_version(triton_version())} is older than {_version(MIN_TRITON)}'),
    ('capability', lambda x: None if device_capability(x) >= MIN_CAPABILITY else
        f'compute capability {_version(device_capability(x))} is below {_version(MIN_CAPABILITY)} '
        '(bf16 tensor-core dot and the kernels\' tiles need Ampere or newer)'),
    ('dtype', lambda x: None if compute_dtype(x) in FUSED_DTYPES else
        f'{compute_dtype(x)} is not computed by the kernels (float32, float16, bfloat16)'),
    ('size', lambda x: None if x.numel() <= MAX_ELEMENTS else
        f'{x.numel():,} elements exceed the kernels\' 32-bit indexing'),
)


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    """Why the kernels do not apply to ``x`` (the first failing rule of ``GATING_RULES``), or None."""
    for _, rule in GATING_RULES:
        reason = rule(x)
        if reason is not None:
            return reason
    return None


def _interpreted(x: torch.Tensor) -> bool:
    return not x.is_cuda and os.environ.get('TRITON_INTERPRET') == '1'


def use_fused(x: torch.Tensor, fused: Optional[bool], kernel: Optional[str] = None) -> bool:
    """Whether a layer with option ``fused`` runs the Triton ``kernel`` on ``x``."""
    if fused is False:
        return False
    if fused:
        if not triton_available():
            raise RuntimeError('fused=True needs Triton (pip install triton); use fused=None to fall back to PyTorch')
        reason = None if _interpreted(x) else unsupported_reason(x)
        if reason is not None:
            sep = ' ' if reason.startswith('on a ') else ': '
            raise RuntimeError(f'fused=True{sep}{reason}; use fused=None (or False) to run the PyTorch reference')
        return True
    if unsupported_reason(x) is not None:
        return False
    return kernel is None or _passes_self_check(kernel, x)


# ---- first-use self-check ----

@dataclass
class CheckResult:
    """One kernel x dtype comparison with the reference."""
    kernel: str
    dtype: str
    device: str
    ok: bool
    max_error: Optional[float] = None
    reason: str = ''


# kernel name -> factory of (fused module, reference module, input) on a device, registered by the layers
_CHECK_CASES: Dict[str, Callable[[torch.device], Tuple[nn.Module, nn.Module, torch.Tensor]]] = {}
# (kernel, dtype, capability) -> result, once per process
_CHECKED: Dict[Tuple[str, torch.dtype, Optional[Tuple[int, int]]], CheckResult] = {}


def register_check_case(kernel: str, make_case: Callable[[torch.device], Tuple[nn.Module, nn.Module, torch.Tensor]]):
    """Register how to build a small (fused, reference, input) problem for ``kernel``'s self-check."""
    _CHECK_CASES[kernel] = make_case


def _passes_self_check(kernel: str, x: torch.Tensor) -> bool:
    if os.environ.get(SELF_CHECK_ENV, '1') == '0' or kernel not in _CHECK_CASES:
        return True
    key = (kernel, compute_dtype(x), device_capability(x))
    if key not in _CHECKED:
        result = check_kernel(kernel, x.device, key[1])
        _CHECKED[key] = result
        if not result.ok:
            warnings.warn(f'timm_kan: the fused {kernel} kernel failed its first-use check on {result.device} in '
                          f'{result.dtype} ({result.reason}); this process uses the PyTorch reference for it. '
                          f'Set {SELF_CHECK_ENV}=0 to skip the check.', RuntimeWarning, stacklevel=3)
    return _CHECKED[key].ok


def _run(module: nn.Module, x: torch.Tensor, grad_out_seed: int) -> List[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed)).to(y.device, y.dtype)
    y.backward(g)
    return [y.detach().float(), x.grad.float()] + [p.grad.float() for p in module.parameters()]


def check_kernel(kernel: str, device: torch.device, dtype: torch.dtype) -> CheckResult:
    """Compare ``kernel`` with its reference on the registered small problem, in ``dtype`` on ``device``.

    The global random generators are left as they were (the check must not change a seeded run)."""
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type
    devices = [device] if device.type == 'cuda' else []
    try:
        with torch.random.fork_rng(devices=devices), torch.autocast(device.type, enabled=False):
            torch.manual_seed(0)
            fused, reference, x = _CHECK_CASES[kernel](device)
            fused, reference, x = fused.to(device, dtype), reference.to(device, dtype), x.to(device, dtype)
            got, want = _run(fused, x, 1), _run(reference, x, 1)
    except Exception as e:  # a kernel that does not compile or launch here: reported, then the reference runs
        return CheckResult(kernel, str(dtype).replace('torch.', ''), name, False, None, f'{type(e).__name__}: {e}')
    error = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(got, want))
    tolerance = SELF_CHECK_TOLERANCE[dtype]
    ok = error <= tolerance and all(torch.isfinite(a).all() for a in got)
    reason = '' if ok else f'max relative difference {error:.3g} > {tolerance:g}'
    return CheckResult(kernel, str(dtype).replace('torch.', ''), name, ok, error, reason)


def self_test(device: Optional[str] = None, dtypes: Optional[Sequence[torch.dtype]] = None) -> List[CheckResult]:
    """Every registered kernel x dtype once against the reference (the CUDA device if there is one; the layers
    register their cases when ``timm_kan`` is imported, so kernels never import layers); a row per case with
    the reason a case is not run (gating) or fails. ``dtypes`` defaults to ``FUSED_DTYPES`` on CUDA and to
    float32 on CPU, where Triton's interpreter emulates half precision too slowly to be worth it."""
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtypes = dtypes or (FUSED_DTYPES if dev.type == 'cuda' else (torch.float32,))
    rows = []
    for kernel in sorted(_CHECK_CASES):
        for dtype in dtypes:
            probe = torch.empty(1, device=dev, dtype=dtype)
            reason = None if _interpreted(probe) else unsupported_reason(probe)
            if reason is not None:
                rows.append(CheckResult(kernel, str(dtype).replace('torch.', ''), dev.type, False, None,
                                        f'not run, reference used: {reason}'))
                continue
            rows.append(check_kernel(kernel, dev, dtype))
    return rows
