"""Procedural data for the zoo: coloured shapes on textured grey backgrounds.

Images are ``uint8`` arrays of shape ``(H, W, 3)``; clips are ``(F, H, W, 3)`` with the shape moving in a straight
line. Backgrounds are always grey (unsaturated), so the only saturated pixels belong to the shape: that is what
:func:`dominant_colour` and :func:`motion_direction` rely on.

Prompt vocabulary::

    a {colour} {shape} on {background}                 (image)
    a {colour} {shape} moving {direction} on {background}   (video)

The ``on {background}`` clause may be left out (the model then picks a background itself).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (232, 212, 40),
    "green": (40, 185, 60),
    "cyan": (30, 200, 215),
    "blue": (40, 80, 230),
    "purple": (185, 45, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "dots", "checker")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy), y grows down

#: every word a prompt may contain (the tokenizer's vocabulary is built from this)
VOCAB: tuple[str, ...] = (
    ("a", "an", "the", "on", "moving", "and", "with", "background", "shape")
    + tuple(COLOURS)
    + SHAPES
    + BACKGROUNDS
    + DIRECTIONS
)


@dataclass(frozen=True)
class Spec:
    """What one sample shows (``direction`` is ``None`` for still images)."""

    colour: str
    shape: str
    background: str
    direction: str | None = None

    def prompt(self, with_background: bool = True) -> str:
        text = f"a {self.colour} {self.shape}"
        if self.direction is not None:
            text += f" moving {self.direction}"
        if with_background:
            text += f" on {self.background}"
        return text


def image_prompt(colour: str, shape: str, background: str | None = None) -> str:
    return Spec(colour, shape, background or "plain").prompt(background is not None)


def video_prompt(colour: str, shape: str, direction: str, background: str | None = None) -> str:
    return Spec(colour, shape, background or "plain", direction).prompt(background is not None)


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """The colour/shape/background/direction words found in ``prompt`` (``None`` where absent)."""
    words = prompt.lower().replace(",", " ").split()

    def first(options):
        return next((w for w in words if w in options), None)

    return {
        "colour": first(COLOURS),
        "shape": first(SHAPES),
        "background": first(BACKGROUNDS),
        "direction": first(DIRECTIONS),
    }


def all_image_specs() -> list[Spec]:
    return [Spec(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def all_video_specs() -> list[Spec]:
    return [Spec(c, s, b, d) for c in COLOURS for s in SHAPES for b in BACKGROUNDS for d in DIRECTIONS]


# ----------------------------------------------------------------------------------------------------------------
# drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx + 0.5, yy + 0.5  # pixel centres


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey texture as a float array ``(H, W)`` in [0, 1]."""
    xx, yy = _grid(size)
    dark = rng.uniform(0.18, 0.40)
    light = rng.uniform(0.58, 0.82)
    if rng.random() < 0.5:
        dark, light = light, dark
    if kind == "plain":
        return np.full((size, size), rng.uniform(0.25, 0.75), dtype=np.float32)
    if kind == "stripes":
        period = float(rng.choice([8.0, 12.0]))
        coord = xx if rng.random() < 0.5 else yy
        phase = rng.uniform(0, period)
        on = np.clip(np.abs(((coord + phase) % period) - period / 2) - period / 4 + 0.5, 0.0, 1.0)
        return (dark + (light - dark) * on).astype(np.float32)
    if kind == "dots":
        spacing = float(rng.choice([8.0, 10.0]))
        radius = rng.uniform(1.6, 2.4)
        ox, oy = rng.uniform(0, spacing, size=2)
        dx = ((xx + ox) % spacing) - spacing / 2
        dy = ((yy + oy) % spacing) - spacing / 2
        on = np.clip(radius - np.sqrt(dx * dx + dy * dy) + 0.5, 0.0, 1.0)
        return (dark + (light - dark) * on).astype(np.float32)
    if kind == "checker":
        cell = float(rng.choice([8.0, 12.0]))
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        cx = np.floor((xx + ox) / cell)
        cy = np.floor((yy + oy) / cell)
        on = ((cx + cy) % 2).astype(np.float32)
        return (dark + (light - dark) * on).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}; valid: {BACKGROUNDS}")


def _shape_alpha(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` in [0, 1] of a shape of 'radius' ``r`` centred at (cx, cy)."""
    xx, yy = _grid(size)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    elif shape == "triangle":
        # equilateral, pointing up, circumradius 1.2 r, centroid at (cx, cy)
        R = 1.2 * r
        sdf = dy - R / 2  # bottom edge
        for ang in (np.deg2rad(30.0), np.deg2rad(150.0)):  # outward normals of the two slanted edges
            nx, ny = np.cos(ang), -np.sin(ang)
            sdf = np.maximum(sdf, dx * nx + dy * ny - R / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def _compose(bg: np.ndarray, alpha: np.ndarray, colour: str) -> np.ndarray:
    rgb = np.asarray(COLOURS[colour], dtype=np.float32) / 255.0
    out = bg[..., None] * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def draw_image(spec: Spec, size: int = 64, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of ``spec`` (position, size and texture phase drawn from ``rng``)."""
    rng = np.random.default_rng(rng)
    bg = _background(spec.background, size, rng)
    r = rng.uniform(0.14, 0.22) * size
    m = 1.25 * r + 2
    cx, cy = rng.uniform(m, size - m, size=2)
    return _compose(bg, _shape_alpha(spec.shape, size, cx, cy, r), spec.colour)


def draw_video(
    spec: Spec, num_frames: int = 9, size: int = 64, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """A ``(num_frames, size, size, 3)`` uint8 clip: the shape slides in ``spec.direction`` over a still background."""
    if spec.direction not in _STEP:
        raise ValueError(f"video specs need a direction in {DIRECTIONS}, got {spec.direction!r}")
    rng = np.random.default_rng(rng)
    bg = _background(spec.background, size, rng)
    r = rng.uniform(0.12, 0.18) * size
    m = 1.25 * r + 2
    travel = rng.uniform(0.4, 0.6) * (size - 2 * m)  # px over the whole clip
    speed = travel / max(num_frames - 1, 1)
    sx, sy = _STEP[spec.direction]
    # start so that the whole path stays inside the frame
    lo_x, hi_x = (m + travel, size - m) if sx < 0 else (m, size - m - travel) if sx > 0 else (m, size - m)
    lo_y, hi_y = (m + travel, size - m) if sy < 0 else (m, size - m - travel) if sy > 0 else (m, size - m)
    x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    frames = [
        _compose(bg, _shape_alpha(spec.shape, size, x0 + sx * speed * f, y0 + sy * speed * f, r), spec.colour)
        for f in range(num_frames)
    ]
    return np.stack(frames)


# ----------------------------------------------------------------------------------------------------------------
# checking samples


def to_uint8_array(image_or_frames) -> np.ndarray:
    """PIL image(s), numpy arrays (uint8 or float in [0, 1]) or torch tensors -> ``(..., H, W, 3)`` uint8."""
    if isinstance(image_or_frames, (list, tuple)):
        return np.stack([to_uint8_array(x) for x in image_or_frames])
    if hasattr(image_or_frames, "detach"):  # torch tensor
        image_or_frames = image_or_frames.detach().cpu().float().numpy()
    arr = np.asarray(image_or_frames)
    if arr.ndim >= 3 and arr.shape[-1] not in (3, 4) and arr.shape[-3] in (3, 4):  # channels first
        arr = np.moveaxis(arr, -3, -1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return arr


def _hue_sat_val(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rgb.reshape(-1, 3).astype(np.float32) / 255.0
    mx, mn = x.max(1), x.min(1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0)) * 60.0
    return hue, sat, mx


def _palette_hues(colours) -> dict[str, float]:
    names = list(COLOURS) if colours is None else list(colours)
    table = colours if isinstance(colours, dict) else COLOURS
    return {n: colorsys.rgb_to_hsv(*(c / 255.0 for c in table[n]))[0] * 360.0 for n in names}


def colour_mask(image_or_frames, min_saturation: float = 0.4, min_value: float = 0.25) -> np.ndarray:
    """Boolean mask ``(..., H, W)`` of saturated (shape) pixels."""
    arr = to_uint8_array(image_or_frames)
    _, sat, val = _hue_sat_val(arr)
    return ((sat >= min_saturation) & (val >= min_value)).reshape(arr.shape[:-1])


def colour_votes(image_or_frames, colours=None, min_saturation: float = 0.4, min_value: float = 0.25) -> dict[str, int]:
    """How many saturated pixels fall nearest (in hue) to each palette colour."""
    arr = to_uint8_array(image_or_frames)
    hue, sat, val = _hue_sat_val(arr)
    keep = (sat >= min_saturation) & (val >= min_value)
    hues = _palette_hues(colours)
    names = list(hues)
    if not keep.any():
        return dict.fromkeys(names, 0)
    ref = np.array([hues[n] for n in names], dtype=np.float32)
    dist = np.abs(hue[keep][:, None] - ref[None, :])
    dist = np.minimum(dist, 360.0 - dist)
    counts = np.bincount(dist.argmin(1), minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


def dominant_colour(
    image_or_frames,
    colours=None,
    min_saturation: float = 0.4,
    min_value: float = 0.25,
    min_fraction: float = 0.01,
) -> str:
    """Name of the colour of the shape in an image (or in all frames of a clip together).

    Only saturated pixels count (backgrounds are grey); each votes for the palette colour nearest in hue.
    ``colours`` restricts the palette (names from :data:`COLOURS`, or a dict name -> RGB). Returns ``"none"`` when
    fewer than ``min_fraction`` of the pixels are saturated.
    """
    arr = to_uint8_array(image_or_frames)
    votes = colour_votes(arr, colours, min_saturation, min_value)
    total_pixels = int(np.prod(arr.shape[:-1]))
    if sum(votes.values()) < max(1, min_fraction * total_pixels):
        return "none"
    return max(votes, key=votes.get)


def shape_centroid(image, min_saturation: float = 0.4, min_value: float = 0.25) -> tuple[float, float] | None:
    """(x, y) centre of the saturated pixels of one image, or ``None`` if there are none."""
    mask = colour_mask(image, min_saturation, min_value)
    if mask.ndim != 2:
        raise ValueError("shape_centroid takes one image")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.mean()), float(ys.mean())


def motion_direction(frames, min_shift: float = 2.0) -> str:
    """Which way the shape moves between the first and last frames: left/right/up/down, or ``"none"``."""
    arr = to_uint8_array(frames)
    if arr.ndim == 5:  # (1, F, H, W, 3) as returned by the video pipelines
        arr = arr[0]
    a, b = shape_centroid(arr[0]), shape_centroid(arr[-1])
    if a is None or b is None:
        return "none"
    dx, dy = b[0] - a[0], b[1] - a[1]
    if max(abs(dx), abs(dy)) < min_shift:
        return "none"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
