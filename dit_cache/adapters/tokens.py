"""Where a call's image tokens sit in space, per family (`ModelSpec.tokens`): the token grid that ToCa spreads its
picks over and CFG reuse low-passes its stored difference on, and, where the call carries them, per-token positions.
Read from host-side shapes and arguments only (no device read).

The default reads a 4-D latent (B, C, H, W) or a 5-D one (B, C, F, H, W) divided by the model's patch sizes, and
gives packed (B, N, C) latents the most square factorisation of N (exact for square images, transposed or
approximate otherwise: it only steers heuristics). Families whose calls say more declare it in their adapter:
CogVideoX's frames-first latents (B, F, C, H, W), LTX's `num_frames` / `height` / `width`, Qwen-Image's
`img_shapes`, the per-token `img_ids` of Flux-style models (every token, generated or reference image, then owns a
cell of its own image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


def _config(transformer: nn.Module) -> dict:
    return dict(getattr(transformer, "config", None) or {})


# ------------------------------------------------------------------------------------------------------ grids
def latent_grid(transformer: nn.Module, hidden: Any, kwargs: dict) -> Grid | None:
    """From the latent's layout: (B, C, H, W), (B, C, F, H, W), or packed (B, N, C) as the squarest (h, w)."""
    if not isinstance(hidden, torch.Tensor):
        return None
    pt, ph, pw = _patch(_config(transformer))
    if hidden.dim() == 4:
        return (hidden.shape[-2] // ph, hidden.shape[-1] // pw)
    if hidden.dim() == 5:
        return (max(1, hidden.shape[2] // pt), hidden.shape[-2] // ph, hidden.shape[-1] // pw)
    if hidden.dim() == 3:
        return square_grid(hidden.shape[1])
    return None


def frames_first_grid(transformer: nn.Module, hidden: Any, kwargs: dict) -> Grid | None:
    """CogVideoX's (B, F, C, H, W) latents."""
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 5:
        pt, ph, pw = _patch(_config(transformer))
        return (max(1, hidden.shape[1] // pt), hidden.shape[-2] // ph, hidden.shape[-1] // pw)
    return latent_grid(transformer, hidden, kwargs)


def frame_args_grid(transformer: nn.Module, hidden: Any, kwargs: dict) -> Grid | None:
    """LTX's packed tokens with `num_frames`, `height`, `width` (in latent pixels or in patches) passed along."""
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
        f, h, w = kwargs.get("num_frames"), kwargs.get("height"), kwargs.get("width")
        if all(isinstance(v, int) for v in (f, h, w)):
            pt, ph, pw = _patch(_config(transformer))
            for grid in ((f, h, w), (max(1, f // pt), h // ph, w // pw)):
                if math.prod(grid) == hidden.shape[1]:
                    return grid if grid[0] > 1 else grid[1:]
    return latent_grid(transformer, hidden, kwargs)


def img_shapes_grid(transformer: nn.Module, hidden: Any, kwargs: dict) -> Grid | None:
    """Qwen-Image's `img_shapes`: [(frames, h, w), ...] per batch item, or a list of such lists (edit pipelines:
    the generated image, then reference images; references of the same size count as more frames)."""
    shapes = kwargs.get("img_shapes")
    if shapes:
        images = shapes[0] if isinstance(shapes[0], list) else [shapes[0]]
        if all(isinstance(image, (tuple, list)) and len(image) == 3 for image in images):
            f, h, w = (int(v) for v in images[0])
            if all(tuple(image[1:]) == (h, w) for image in images):
                f = sum(int(image[0]) for image in images)
            return (f, h, w) if f > 1 else (h, w)
    return latent_grid(transformer, hidden, kwargs)


# -------------------------------------------------------------------------------------------------- positions
def no_positions(kwargs: dict) -> torch.Tensor | None:
    return None


def img_ids_positions(kwargs: dict) -> torch.Tensor | None:
    """(P, axes) positions of every image token from `img_ids` (Flux, Kontext, FLUX.2, Chroma...: reference-image
    tokens with their own first coordinate); None where they do not pack into one key (more than 4 axes)."""
    ids = kwargs.get("img_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (2, 3):
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    return ids if 3 <= ids.shape[-1] <= 4 else None


def img_shapes_positions(kwargs: dict) -> torch.Tensor | None:
    """(sum f*h*w, 3) positions from Qwen-Image's `img_shapes` (the images one after the other in raster order,
    frames counted across them)."""
    shapes = kwargs.get("img_shapes")
    if not (shapes and isinstance(shapes[0], list) and all(isinstance(s, (tuple, list)) and len(s) == 3
                                                           for s in shapes[0])):  # fmt: skip
        return None
    parts, frame = [], 0
    for f, h, w in ((int(v) for v in shape) for shape in shapes[0]):
        grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1)
        parts.append(grid.reshape(-1, 3) + torch.tensor([frame, 0, 0]))
        frame += f
    return torch.cat(parts)


@dataclass(frozen=True)
class TokenLayout:
    """How a family's calls place their image tokens: `grid(transformer, hidden, kwargs)` and `positions(kwargs)`."""

    grid: Callable[[nn.Module, Any, dict], Grid | None] = latent_grid
    positions: Callable[[dict], torch.Tensor | None] = no_positions


LATENT = TokenLayout()
FRAMES_FIRST = TokenLayout(frames_first_grid)
FRAME_ARGS = TokenLayout(frame_args_grid)
IMG_IDS = TokenLayout(latent_grid, img_ids_positions)
IMG_SHAPES = TokenLayout(img_shapes_grid, img_shapes_positions)
