"""Quality of a cached output against the uncached output of the same pipeline, seed and settings.

Images are float arrays in [0, 1] of shape (H, W, C); videos (T, H, W, C). PSNR and SSIM come from scikit-image;
LPIPS from the `lpips` package when its AlexNet weights can be loaded (they download on first use, so offline
machines report LPIPS as unavailable with the reason, never a made-up number).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def to_frames(output: Any) -> np.ndarray:
    """A pipeline output (PIL image(s), numpy or torch, image or video) as float32 (T, H, W, C) in [0, 1]."""
    if isinstance(output, (list, tuple)):
        frames = np.stack([_to_array(o) for o in output])
    else:
        frames = _to_array(output)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise ValueError(f"expected an image (H, W, C) or frames (T, H, W, C), got shape {frames.shape}")
    return frames


def _to_array(value: Any) -> np.ndarray:
    if hasattr(value, "convert"):  # PIL
        return np.asarray(value.convert("RGB"), dtype=np.float32) / 255.0
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.dtype == np.uint8 or array.max(initial=0) > 1.5:
        array = array / 255.0
    return array


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels (inf when identical)."""
    reference, test = _pair(reference, test)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity over frames (scikit-image, Gaussian window, colour channels last)."""
    from skimage.metrics import structural_similarity

    reference, test = _pair(to_frames(reference), to_frames(test))
    side = min(reference.shape[1:3])
    if side >= 11:  # Wang et al.'s Gaussian window (sigma 1.5, 11 x 11)
        options = {"gaussian_weights": True, "sigma": 1.5}
    else:  # tiny images: the largest odd uniform window that fits
        options = {"win_size": max(3, side - 1 if side % 2 == 0 else side)}
    values = [structural_similarity(r, t, channel_axis=-1, data_range=1.0, **options) for r, t in zip(reference, test)]
    return float(np.mean(values))


def frame_psnr(reference: np.ndarray, test: np.ndarray) -> list[float]:
    """PSNR of each frame of a video."""
    reference, test = _pair(to_frames(reference), to_frames(test))
    return [psnr(r, t) for r, t in zip(reference, test)]


def temporal_psnr(reference: np.ndarray, test: np.ndarray) -> float | None:
    """Temporal consistency: PSNR between the frame-to-frame differences of the two videos (data range 2).
    High when the cached video moves like the uncached one; None for single images."""
    reference, test = _pair(to_frames(reference), to_frames(test))
    if reference.shape[0] < 2:
        return None
    return psnr(np.diff(reference, axis=0), np.diff(test, axis=0), data_range=2.0)


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, test = np.asarray(reference), np.asarray(test)
    if reference.shape != test.shape:
        raise ValueError(f"cannot compare outputs of different shapes: {reference.shape} vs {test.shape}")
    return reference, test


class LPIPSUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _lpips_model():
    try:
        import lpips  # noqa: F401
    except Exception as e:  # ImportError, or torchvision failing to import beside this torch
        raise LPIPSUnavailable(f"the lpips package cannot be imported ({type(e).__name__}: {e})") from None
    try:
        import lpips

        model = lpips.LPIPS(net="alex", verbose=False)
    except Exception as e:  # the backbone weights download on first use
        raise LPIPSUnavailable(f"LPIPS AlexNet weights could not be loaded ({type(e).__name__}: {e})") from None
    return model.eval()


def lpips_status() -> tuple[bool, str]:
    """(available, reason)."""
    try:
        _lpips_model()
        return True, "lpips (AlexNet)"
    except LPIPSUnavailable as e:
        return False, str(e)


def lpips_distance(reference: np.ndarray, test: np.ndarray) -> float | None:
    """Mean LPIPS over frames, or None when LPIPS is unavailable (see `lpips_status`)."""
    try:
        model = _lpips_model()
    except LPIPSUnavailable:
        return None
    import torch

    reference, test = _pair(to_frames(reference), to_frames(test))

    def tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() * 2 - 1

    with torch.no_grad():
        return float(model(tensor(reference), tensor(test)).mean())


def compare(reference: Any, test: Any, *, with_lpips: bool = True) -> dict:
    """Every quality figure of `test` against `reference` (pipeline outputs or arrays)."""
    ref, out = to_frames(reference), to_frames(test)
    result = {"psnr": psnr(ref, out), "ssim": ssim(ref, out), "lpips": lpips_distance(ref, out) if with_lpips else None}
    if ref.shape[0] > 1:
        result["frame_psnr"] = frame_psnr(ref, out)
        result["temporal_psnr"] = temporal_psnr(ref, out)
    return result
