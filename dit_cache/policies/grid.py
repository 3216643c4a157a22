"""Where tokens sit in space: the token grid of a transformer call, read from host-side shapes and arguments only
(no device read), and the spatial low-pass that CFG reuse splits its stored difference with.

The grid comes from what diffusers transformers are called with: a 4-D latent (B, C, H, W) or a 5-D one (B, C, F, H,
W; CogVideoX: B, F, C, H, W) divided by the model's patch sizes; Qwen-Image's `img_shapes`; LTX's `num_frames`,
`height`, `width`. Packed latents without such arguments (Flux) get the most square factorisation of the token count,
which is exact for square images and transposed or approximate otherwise (it only steers heuristics: which tokens
ToCa spreads its picks over, which frequencies CFG reuse calls low).

Where the call carries per-token positions (`img_ids` of Flux, Flux Kontext, FLUX.2, Chroma: one row per image
token, reference-image tokens with their own first coordinate), ToCa's cells come from those positions instead: every
token of the sequence, generated or reference, owns a cell of its own image, so the spread bonus reaches the
conditioning tokens and never merges them with generated ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch

Grid = tuple[int, ...]  # (height, width) or (frames, height, width)


def square_grid(n: int) -> Grid:
    """(h, w) with h * w = n, h <= w and h as large as possible."""
    h = max(d for d in range(1, math.isqrt(max(n, 1)) + 1) if n % d == 0)
    return (h, n // h)


def _patch(config: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes of a transformer config."""
    p = config.get("patch_size", 1) or 1
    pt = config.get("patch_size_t", None)
    if isinstance(p, (tuple, list)):
        if len(p) == 3:
            return int(p[0]), int(p[1]), int(p[2])
        p = p[-1]
    return int(pt or 1), int(p), int(p)


def token_grid(transformer: torch.nn.Module, hidden: Any, kwargs: dict) -> Grid | None:
    """The grid of the image tokens inside the blocks for a call with latent `hidden` and keyword args `kwargs`."""
    config = dict(getattr(transformer, "config", None) or {})
    pt, ph, pw = _patch(config)
    shapes = kwargs.get("img_shapes")
    if shapes:  # Qwen-Image: [(frames, h, w), ...] per batch item, or a list of such lists (edit: + references)
        images = shapes[0] if isinstance(shapes[0], list) else [shapes[0]]
        if all(isinstance(image, (tuple, list)) and len(image) == 3 for image in images):
            f, h, w = (int(v) for v in images[0])
            if all(tuple(image[1:]) == (h, w) for image in images):  # references of the same size: more frames
                f = sum(int(image[0]) for image in images)
            return (f, h, w) if f > 1 else (h, w)
    if not isinstance(hidden, torch.Tensor):
        return None
    if hidden.dim() == 4:
        return (hidden.shape[-2] // ph, hidden.shape[-1] // pw)
    if hidden.dim() == 5:
        in_channels = config.get("in_channels")
        frames = (
            hidden.shape[1] if hidden.shape[2] == in_channels and hidden.shape[1] != in_channels else hidden.shape[2]
        )
        return (max(1, frames // pt), hidden.shape[-2] // ph, hidden.shape[-1] // pw)
    if hidden.dim() == 3:
        n = hidden.shape[1]
        f, h, w = kwargs.get("num_frames"), kwargs.get("height"), kwargs.get("width")
        if all(isinstance(v, int) for v in (f, h, w)):
            for grid in ((f, h, w), (max(1, f // pt), h // ph, w // pw)):
                if math.prod(grid) == n:
                    return grid if grid[0] > 1 else grid[1:]
        return square_grid(n)
    return None


_RADIX_BITS = 15  # per position axis: coordinates in [-2^14, 2^14) pack into one int64 key for up to 4 axes


def token_positions(kwargs: dict) -> torch.Tensor | None:
    """(P, axes) position of every image token of the call (generated then reference tokens), from `img_ids` or
    from Qwen-Image's `img_shapes` (one (frames, h, w) per image, the edit pipelines' reference images after the
    generated one); None where the call has neither or they do not pack into one key (more than 4 axes)."""
    shapes = kwargs.get("img_shapes")
    if shapes and isinstance(shapes[0], list) and all(isinstance(s, (tuple, list)) and len(s) == 3 for s in shapes[0]):
        return _positions_of_shapes(shapes[0])
    ids = kwargs.get("img_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (2, 3):
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    return ids if 3 <= ids.shape[-1] <= 4 else None


def text_tokens(kwargs: dict) -> int:
    """The number of text tokens of the call (`encoder_hidden_states`), 0 where it passes none."""
    text = kwargs.get("encoder_hidden_states")
    return text.shape[1] if isinstance(text, torch.Tensor) and text.dim() == 3 else 0


def _positions_of_shapes(shapes: list) -> torch.Tensor:
    """(sum f*h*w, 3) positions (frame counted across the images, row, column) of images laid out one after the
    other in raster order."""
    parts, frame = [], 0
    for f, h, w in ((int(v) for v in shape) for shape in shapes):
        grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)
        parts.append(grid.reshape(-1, 3) + torch.tensor([frame, 0, 0]))
        frame += f
    return torch.cat(parts)


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
