"""The forecasting history every forecasting policy shares: the derivatives, at the newest computed step, of the
polynomial through a place's last `order + 1` computed values; a forecast is that polynomial's Taylor expansion.

Why not TaylorSeer's plain finite differences (`kernels.taylor_update`, D_i = (D_(i-1)^new - D_(i-1)^old) / gap): they
are exact for order 1 only and assume evenly spaced computations, while schedules here are uneven (warm-up steps,
adaptive policies). For order <= 1 that kernel is exact and is used; for higher orders the history takes an exact
Newton step instead: the new interpolating polynomial differs from the old one by a multiple of the polynomial that
vanishes on the nodes they share, so the update needs only the old derivatives, the new value and the node steps
(host integers): `order + 1` tensors per place, as TaylorSeer. Forecasts use `kernels.taylor_forecast`.

FoCa-style calibration (`corrector` > 0): the error the forecast made at a refresh (computed value minus the
forecast of it) calibrates later forecasts: F(t + s) = P(t + s) + corrector * e * C(s / g + k, k + 1), g the gap that
error was made over and k the order. That term is the next Newton term estimated from the observed error: with
corrector = 1 the forecast is exact on evenly computed polynomial trajectories of degree k + 1, and for long skips it
accounts for the curvature a plain order-k forecast misses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import kernels


class TaylorHistory:
    """The forecasting history of one feature (one tensor of one place).

    update(feature, step) on computed steps; forecast(step) on the others (any step after the newest node). A "step"
    is a position on the forecast axis: the step index, or -sigma (`forecast_position`).
    """

    def __init__(self, order: int, corrector: float = 0.0) -> None:
        self.order = order
        self.corrector = corrector
        self.derivatives: list[torch.Tensor] = []
        self.filled = 0
        self.nodes: list[int] = []  # computed steps, newest first, at most order + 1
        self.error: torch.Tensor | None = None  # last refresh's forecast error (calibration)
        self.error_gap = 0
        self.buffer: torch.Tensor | None = None  # forecasts are written here: no allocation per forecast

    @property
    def ready(self) -> bool:
        return self.filled > 0

    def update(self, feature: torch.Tensor, step: int) -> None:
        feature = feature.detach()
        d = self.derivatives
        if not d or d[0].shape != feature.shape or d[0].dtype != feature.dtype or d[0].device != feature.device:
            self.derivatives = d = [torch.zeros_like(feature) for _ in range(self.order + 1)]
            self.filled, self.nodes, self.error = 0, [], None
        if self.nodes and step <= self.nodes[0]:
            raise ValueError(f"forecast history: step {step} is not after the last computed step {self.nodes[0]}")
        gap = step - self.nodes[0] if self.nodes else 1
        if self.order <= 1 and not self.corrector:
            self.filled = kernels.taylor_update(d, feature, float(gap), self.filled)
        else:
            self._newton_update(feature, step, gap)
        self.nodes = [step, *self.nodes][: self.order + 1]

    def _newton_update(self, feature: torch.Tensor, step: int, gap: int) -> None:
        d, filled = self.derivatives, self.filled
        if filled == 0:
            d[0].copy_(feature)
            self.filled = 1
            return
        # 1. the old polynomial's derivatives at the new step (a Taylor shift by `gap`, in place, low orders first)
        for i in range(filled):
            for m in range(i + 1, filled):
                d[i].add_(d[m], alpha=gap ** (m - i) / math.factorial(m - i))
        error = feature - d[0]  # what the old polynomial forecast at this step missed
        # 2. add error * q(t) / q(step), q vanishing on the nodes the new polynomial keeps; q in s = t - step
        new_filled = min(filled + 1, self.order + 1)
        q = np.poly1d([1.0])
        for node in self.nodes[: new_filled - 1]:
            q = q * np.poly1d([1.0, float(step - node)])
        coefficients = q.coeffs[::-1]  # ascending powers of s
        for i in range(new_filled):
            d[i].add_(error, alpha=math.factorial(i) * float(coefficients[i]) / float(coefficients[0]))
        calibrated = self.corrector and filled == self.order + 1  # an error of a full-order forecast
        self.error, self.error_gap = (error, gap) if calibrated else (None, 0)
        self.filled = new_filled

    def forecast(self, step: int) -> torch.Tensor:
        """The forecast at `step`, in a buffer this history reuses (valid until its next forecast)."""
        if not self.filled:
            raise RuntimeError("forecast history is empty: a place must be computed before it can be forecast")
        distance = float(step - self.nodes[0])
        if self.buffer is None or self.buffer.shape != self.derivatives[0].shape or torch.is_grad_enabled():
            self.buffer = torch.empty_like(self.derivatives[0])
        result = kernels.taylor_forecast(self.derivatives, self.filled, distance, self.buffer)
        if self.error is not None:
            k, x = self.order, distance / self.error_gap
            weight = self.corrector * math.prod(x + j for j in range(k + 1)) / math.factorial(k + 1)
            result.add_(self.error, alpha=weight)
        return result


COORDINATES = ("step", "sigma")


def forecast_position(call, coordinate: str) -> float:
    """Where a call lies on the axis a forecast extrapolates along: its step index ("step", TaylorSeer's), or its
    noise level ("sigma": -sigma, increasing along the trajectory; the scheduler's sigma, or timestep / 1000 where
    it has none). Forecasts are invariant to affine maps of the axis, so no scale is needed. With a flow-matching
    shift the sigma gaps between steps differ up to tenfold: the features move smoothly in sigma, not in steps."""
    if coordinate == "step":
        return call.step
    if call.sigma is None:
        raise ValueError(
            "forecast coordinate='sigma' needs each call's sigma, which this pipeline's scheduler does not give; "
            "use coordinate='step'"
        )
    return -float(call.sigma)


_SLOT = object()


def flatten(output) -> tuple[list[torch.Tensor], tuple | None]:
    """The tensors of a submodule's output (a tensor, or a tuple of tensors and other values) and its layout."""
    if isinstance(output, torch.Tensor):
        return [output], None
    if isinstance(output, tuple):
        return [o for o in output if isinstance(o, torch.Tensor)], tuple(
            _SLOT if isinstance(o, torch.Tensor) else o for o in output
        )
    raise TypeError(f"cannot forecast a submodule output of type {type(output).__name__}")


def unflatten(tensors: list[torch.Tensor], layout: tuple | None):
    if layout is None:
        return tensors[0]
    it = iter(tensors)
    return tuple(next(it) if item is _SLOT else item for item in layout)
