"""Token cells and the spatial low-pass, on the token grid and positions a family's adapter reads from each call
(`ModelSpec.tokens`, dit_cache/adapters/tokens.py): ToCa spreads its picks over cells, CFG reuse splits its stored
difference into low and high frequencies. Where the call carries per-token positions (`img_ids`, Qwen-Image's
`img_shapes`), every token of the sequence, generated or reference, owns a cell of its own image, so the spread
bonus reaches the conditioning tokens and never merges them with generated ones.
"""

from __future__ import annotations

import math

import torch

from ..adapters.tokens import Grid, square_grid  # noqa: F401  (Grid: re-exported for the policies)

_RADIX_BITS = 15  # per position axis: coordinates in [-2^14, 2^14) pack into one int64 key for up to 4 axes


def text_tokens(kwargs: dict) -> int:
    """The number of text tokens of the call (`encoder_hidden_states`), 0 where it passes none."""
    text = kwargs.get("encoder_hidden_states")
    return text.shape[1] if isinstance(text, torch.Tensor) and text.dim() == 3 else 0


def cell_ids(
    n: int,
    grid: Grid | None,
    spread: int,
    device: torch.device,
    positions: torch.Tensor | None = None,
    text: int = 0,
) -> tuple[torch.Tensor, int]:
    """(n,) id of each token's `spread` x `spread` cell of the grid (per frame), and the number of cells (a host int,
    so that no device value is read to size the per-cell buffers; an upper bound where ids come from positions);
    raster chunks of spread^2 tokens when the token count does not match the grid (text tokens in the same
    sequence). With `positions` (P rows) and n = P, or n = `text` + P (the text tokens that Flux-style single-stream
    blocks put first): the image tokens get the cells of their positions, the text tokens raster chunks of their
    own; any other count (the text stream) the raster chunks."""
    if positions is not None and n in (positions.shape[0], positions.shape[0] + text):
        return _position_cells(n, positions.to(device), spread)
    if grid is None or math.prod(grid) != n:
        size = spread * spread
        return torch.arange(n, device=device) // size, -(-n // size)
    h, w = grid[-2:]
    frames = n // (h * w)
    index = torch.arange(n, device=device)
    f, rest = index // (h * w), index % (h * w)
    y, x = rest // w, rest % w
    cells_y, cells_x = -(-h // spread), -(-w // spread)
    return (f * cells_y + y // spread) * cells_x + x // spread, frames * cells_y * cells_x


def _position_cells(n: int, positions: torch.Tensor, spread: int) -> tuple[torch.Tensor, int]:
    """Cells from (P, axes) positions: tokens share a cell when all their coordinates agree, height and width (axes
    1 and 2, as in Flux's (t, h, w) and FLUX.2's (t, h, w, l)) divided by `spread`. Dense ids by a sort: no device
    read."""
    p = positions.shape[0]
    coords = positions.round().long()
    coords[:, 1:3] = torch.div(coords[:, 1:3], spread, rounding_mode="floor")
    key = torch.zeros(p, dtype=torch.long, device=coords.device)
    for axis in range(coords.shape[1]):
        key = (key << _RADIX_BITS) + (coords[:, axis] + (1 << (_RADIX_BITS - 1))).clamp(0, (1 << _RADIX_BITS) - 1)
    order = key.argsort()
    ordered = key[order]
    new = torch.ones(p, dtype=torch.long, device=key.device)
    new[1:] = (ordered[1:] != ordered[:-1]).long()
    image_cells = torch.empty_like(key)
    image_cells[order] = new.cumsum(0) - 1
    lead = n - p
    size = spread * spread
    text_cells = p + torch.arange(lead, device=key.device) // size
    return torch.cat([text_cells, image_cells]), p + -(-lead // size)


def low_pass(x: torch.Tensor, grid: Grid | None, radius_share: float = 0.2) -> torch.Tensor:
    """The low spatial frequencies of `x` (a circle of radius min(h, w) * radius_share around zero frequency,
    FasterCache's split): over the last two dims of a 4-D/5-D latent, or over the token grid of a packed (B, N, C)
    one. Returns float32 in `x`'s layout."""
    x32 = x.float()
    if x.dim() == 3:  # packed tokens: (B, N, C) -> (B, C, [F,] h, w)
        if grid is None or math.prod(grid) != x.shape[1]:
            grid = square_grid(x.shape[1])
        spatial = x32.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
        return _low_pass_last2(spatial, radius_share).reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)
    return _low_pass_last2(x32, radius_share)


def _low_pass_last2(x: torch.Tensor, radius_share: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    radius = int(min(h, w) * radius_share)
    fy = torch.fft.fftfreq(h, d=1.0 / h, device=x.device).abs()
    fx = torch.fft.fftfreq(w, d=1.0 / w, device=x.device).abs()
    mask = (fy[:, None] ** 2 + fx[None, :] ** 2) <= radius**2
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real
