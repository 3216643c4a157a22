"""Shared data and tolerances of the kernel tests.

References are the PyTorch twins run in float64 on the very values the kernel saw (inputs are rounded to the test
dtype first, then upcast), so the tolerance only has to cover what the kernel itself rounds:

* the final rounding of each output to its dtype: half an ulp, `eps(dtype) / 2 * |ref|` (we allow a full eps);
* float32 arithmetic before it: a few `eps(float32)` times the size of the operands (`scale`);
* for reductions, float32 accumulation: `(sequential terms per lane + tree depth) * eps(float32)` relative.
"""

from __future__ import annotations

import math

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = ("fp32", "bf16", "fp16")

# one row, one element, primes, non-powers of two, a leading batch dim; all small for the interpreter
SHAPES = ((1, 1), (1, 7), (3, 129), (13, 31), (2, 5, 97))
SHAPE_IDS = ("1x1", "1x7", "3x129", "13x31", "2x5x97")

EPS32 = torch.finfo(torch.float32).eps


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def make(shape, dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def f64(t):
    if isinstance(t, torch.Tensor):
        return t.double()
    return t


def check_elementwise(got: torch.Tensor, ref: torch.Tensor, scale: float, extra: float = 0.0) -> None:
    """|got - ref| <= eps(got.dtype) * |ref| + 8 * eps32 * scale + extra, elementwise."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = (got.double() - ref).abs()
    bound = eps(got.dtype) * ref.abs() + 8 * EPS32 * scale + extra
    bad = err > bound
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{int(bad.sum())} of {err.numel()} elements out of tolerance; first at flat {i}: got "
            f"{got.flatten()[i].item()!r}, ref {ref.flatten()[i].item()!r}, bound {bound.flatten()[i].item():.3g}"
        )


def reduction_rtol(n_terms: int, sequential: int) -> float:
    """Relative bound of a float32 sum of n positive terms: sequential adds per lane plus the tree depth."""
    return (sequential + math.ceil(math.log2(max(n_terms, 2))) + 2) * EPS32
