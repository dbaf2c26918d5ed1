"""Symbolic fits of learned edge functions: y ~ a * f(b * x + c) + d for f from a small library.

Library (the KAN paper's idea, a smaller set): ``0`` (a constant), ``x``, ``x^2``, ``x^3``, ``|x|``, ``exp``,
``sin``, ``tanh``, ``gelu``, ``silu``. For each f the inner affine map (b, c) is searched on a grid (b on a
log scale of both signs, c over the data range mapped by b), and for each (b, c) the outer (a, d) is the
least-squares solution in closed form; the best (b, c) is then refined on a finer grid around it, and all
four parameters by L-BFGS on the squared error (kept only if it lowers it). The
score is R^2 = 1 - SS_res / SS_tot over the points given (the data range of the edge's input). The
simplest function within 1e-3 of the best R^2 is chosen (library order), so a straight line stays ``x``.
"""
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Sequence

import torch
from torch.nn import functional as F

__all__ = ['SYMBOLIC_LIBRARY', 'SymbolicFit', 'fit_symbolic']

SYMBOLIC_LIBRARY: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    '0': torch.zeros_like,
    'x': lambda z: z,
    'x^2': lambda z: z * z,
    'x^3': lambda z: z * z * z,
    '|x|': torch.abs,
    'exp': lambda z: torch.exp(z.clamp(max=30.0)),
    'sin': torch.sin,
    'tanh': torch.tanh,
    'gelu': F.gelu,
    'silu': F.silu,
}


@dataclass
class SymbolicFit:
    """y ~ a * f(b * x + c) + d with its R^2."""
    f: str
    a: float
    b: float
    c: float
    d: float
    r2: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * SYMBOLIC_LIBRARY[self.f](self.b * x + self.c) + self.d

    def formula(self) -> str:
        if self.f == '0':
            return f'{self.d:.3g}'
        inner = f'{self.b:.3g}x{self.c:+.3g}'
        body = {'x': f'({inner})', 'x^2': f'({inner})^2', 'x^3': f'({inner})^3', '|x|': f'|{inner}|'}.get(
            self.f, f'{self.f}({inner})')
        return f'{self.a:.3g}{body}{self.d:+.3g}'

    def as_dict(self) -> Dict[str, object]:
        return dict(asdict(self), formula=self.formula())


def _best_affine(f: Callable, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """For every (b, c) pair the least-squares (a, d) of y ~ a f(b x + c) + d; returns the best (r2, a, b, c, d)."""
    z = f(b[:, None] * x[None] + c[:, None])  # (pairs, n)
    zm, ym = z.mean(1, keepdim=True), y.mean()
    zc, yc = z - zm, y - ym
    var = (zc * zc).sum(1)
    a = torch.where(var > 1e-12, (zc * yc).sum(1) / var.clamp_min(1e-12), torch.zeros_like(var))
    d = ym - a * zm[:, 0]
    ss_res = ((a[:, None] * z + d[:, None] - y) ** 2).sum(1)
    ss_res = torch.where(torch.isfinite(ss_res), ss_res, torch.full_like(ss_res, float('inf')))
    i = int(ss_res.argmin())
    return ss_res[i].item(), a[i].item(), b[i].item(), c[i].item(), d[i].item()


def _polish(f: Callable, x: torch.Tensor, y: torch.Tensor, start):
    """L-BFGS on (a, b, c, d) from the grid's best point; the start is kept if L-BFGS does not improve it."""
    params = torch.tensor(start[1:], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=60, line_search_fn='strong_wolfe')

    def sse():
        optimizer.zero_grad()
        a, b, c, d = params
        loss = ((a * f(b * x + c) + d - y) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(sse)
        with torch.no_grad():
            a, b, c, d = params
            res = ((a * f(b * x + c) + d - y) ** 2).sum().item()
    if not math.isfinite(res) or res >= start[0]:
        return start
    return (res, *params.detach().tolist())


def _grid(x: torch.Tensor, b_values: torch.Tensor, steps: int) -> torch.Tensor:
    """(b, c) pairs: for each b, c such that b * x + c spans shifts of the data range around 0."""
    lo, hi = x.min().item(), x.max().item()
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
    shifts = torch.linspace(-2.0, 2.0, steps, dtype=x.dtype)
    b = b_values.repeat_interleave(steps)
    c = -b * mid + shifts.repeat(len(b_values)) * (b.abs() * half).clamp_min(1e-3)
    return torch.stack([b, c])


def fit_symbolic(x: torch.Tensor, y: torch.Tensor, library: Sequence[str] = tuple(SYMBOLIC_LIBRARY)) -> SymbolicFit:
    """The best a * f(b * x + c) + d over ``library`` for the points (x, y) (1-D tensors), by R^2."""
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    ss_tot = ((y - y.mean()) ** 2).sum().item()
    half = max((x.max() - x.min()).item() / 2, 1e-6)
    b_scales = torch.logspace(-1.5, 1.5, 25, dtype=x.dtype) / half
    b_values = torch.cat([b_scales, -b_scales])
    fits = []
    for name in library:
        f = SYMBOLIC_LIBRARY[name]
        if name == '0':
            fits.append(SymbolicFit('0', 0.0, 0.0, 0.0, y.mean().item(), 0.0))
            continue
        b, c = _grid(x, b_values, 21)
        res, a_, b_, c_, d_ = _best_affine(f, x, y, b, c)
        for _ in range(2):  # refine around the best pair
            bb = b_ * torch.linspace(0.8, 1.25, 15, dtype=x.dtype)
            span = max(abs(b_) * half, 1e-3) * 0.2
            cc = c_ + torch.linspace(-span, span, 15, dtype=x.dtype)
            pairs_b, pairs_c = torch.meshgrid(bb, cc, indexing='ij')
            cand = _best_affine(f, x, y, pairs_b.flatten(), pairs_c.flatten())
            if cand[0] < res:
                res, a_, b_, c_, d_ = cand
        res, a_, b_, c_, d_ = _polish(f, x, y, (res, a_, b_, c_, d_))
        r2 = 1.0 - res / ss_tot if ss_tot > 0 else (1.0 if res < 1e-12 else 0.0)
        fits.append(SymbolicFit(name, a_, b_, c_, d_, r2 if math.isfinite(r2) else -math.inf))
    best = max(f.r2 for f in fits)
    return next(f for f in fits if f.r2 >= best - 1e-3)
