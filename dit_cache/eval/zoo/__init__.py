"""The zoo: small *trained* diffusers pipelines for measuring what caching does to real denoising trajectories.

Each model is a complete diffusers pipeline folder shipped inside this package (tokenizer, text encoders, VAE,
scheduler, transformer), trained here on procedural data (coloured shapes on grey textures, see :mod:`.shapes`) by
``python -m dit_cache.eval.zoo.train --name NAME``.

=====================  ========================  ============================  ==========================
name                   pipeline                  transformer                   output
=====================  ========================  ============================  ==========================
``shapes-image``       ``FluxPipeline``          ``FluxTransformer2DModel``    64x64 images
``shapes-video``       ``WanPipeline``           ``WanTransformer3DModel``     9 frames of 64x64
``shapes-pixart``      ``PixArtSigmaPipeline``   ``PixArtTransformer2DModel``  64x64 images (batched CFG)
=====================  ========================  ============================  ==========================

Typical use::

    from dit_cache.eval import zoo
    pipe = zoo.load("shapes-image")
    images = pipe(zoo.prompts("shapes-image"), **zoo.settings("shapes-image")).images
    zoo.dominant_colour(images[0])  # -> "red"

Always pass :func:`settings`: the models were trained with ``max_sequence_length`` text tokens, at one
resolution, and with classifier-free guidance against the empty prompt; the pipelines' own defaults
(512 text tokens, 512x512 or 480x832 pixels) are far outside what they know.
"""

from __future__ import annotations

import copy
import os

from .shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    dominant_colour,
    motion_direction,
    parse_prompt,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "dominant_colour",
    "load",
    "motion_direction",
    "names",
    "parse_prompt",
    "calibration_prompts",
    "calibration_seeds",
    "path",
    "prompts",
    "settings",
]

_HERE = os.path.dirname(os.path.abspath(__file__))

#: text tokens every prompt is padded/truncated to (training and inference must agree)
MAX_SEQUENCE_LENGTH = 12

_PROMPTS: dict[str, list[str]] = {
    "shapes-image": [
        "a red circle on stripes",
        "a green square on dots",
        "a blue triangle on checker",
        "a yellow circle on plain",
        "a cyan square on stripes",
        "a purple triangle on dots",
        "a red square on checker",
        "a green triangle on plain",
        "a blue circle on dots",
        "a yellow triangle on stripes",
        "a cyan circle on checker",
        "a purple square on plain",
    ],
    "shapes-video": [
        "a red circle moving left on stripes",
        "a green square moving right on dots",
        "a blue triangle moving up on checker",
        "a yellow circle moving down on plain",
        "a cyan square moving left on checker",
        "a purple triangle moving right on plain",
        "a red square moving up on dots",
        "a green circle moving down on stripes",
        "a blue square moving left on plain",
        "a yellow triangle moving right on checker",
        "a cyan circle moving up on stripes",
        "a purple circle moving down on dots",
    ],
    "shapes-pixart": [
        "a red triangle on dots",
        "a green circle on checker",
        "a blue square on stripes",
        "a yellow square on dots",
        "a cyan triangle on plain",
        "a purple circle on stripes",
        "a red circle on plain",
        "a green square on stripes",
        "a blue triangle on dots",
        "a yellow circle on checker",
        "a cyan square on dots",
        "a purple triangle on checker",
    ],
}

#: prompts the shipped profiles are calibrated on: none of them is a scored prompt of `prompts(name)` (an
#: evaluation on the prompts a profile was fitted to flatters the policies that read it); same grammar, every colour,
#: shape and background, other combinations
_CALIBRATION_PROMPTS: dict[str, list[str]] = {
    "shapes-image": [
        "a red triangle on dots",
        "a green circle on checker",
        "a blue square on stripes",
        "a yellow square on dots",
        "a cyan triangle on plain",
        "a purple circle on stripes",
        "a red circle on plain",
        "a green square on checker",
    ],
    "shapes-video": [
        "a red triangle moving right on checker",
        "a green circle moving up on plain",
        "a blue circle moving down on dots",
        "a yellow square moving left on stripes",
        "a cyan triangle moving down on dots",
        "a purple square moving up on checker",
        "a red circle moving left on plain",
        "a green triangle moving right on stripes",
    ],
    "shapes-pixart": [  # the prompts its shipped profile was recorded on (seed 1000)
        "a red square on stripes",
        "a green triangle on dots",
        "a blue circle on plain",
        "a yellow triangle on stripes",
        "a cyan circle on checker",
        "a purple square on dots",
        "a red triangle on checker",
        "a green circle on plain",
    ],
}

#: seeds of the calibration runs: the evaluation scores sample i with seed i, so these are far above any sample count
_CALIBRATION_SEEDS: tuple[int, ...] = (1000,)

_SETTINGS: dict[str, dict] = {
    # FluxPipeline: no guidance embedder (guidance_scale is ignored); classifier-free guidance is "true CFG"
    # against the empty negative prompt, which the model was trained on (10% condition dropout).
    "shapes-image": {
        "num_inference_steps": 30,
        "true_cfg_scale": 4.0,
        "negative_prompt": "",
        "height": 64,
        "width": 64,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
    # WanPipeline: classifier-free guidance with guidance_scale against the (empty) negative prompt.
    "shapes-video": {
        "num_inference_steps": 30,
        "guidance_scale": 4.0,
        "negative_prompt": "",
        "height": 64,
        "width": 64,
        "num_frames": 9,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
    # PixArtSigmaPipeline: CFG batched into one transformer call of batch 2 ([uncond, cond]) against the empty
    # negative prompt; no resolution binning (its bins start at 256 px) and no caption cleaning (needs bs4/ftfy).
    "shapes-pixart": {
        "num_inference_steps": 20,
        "guidance_scale": 4.0,
        "negative_prompt": "",
        "height": 64,
        "width": 64,
        "use_resolution_binning": False,
        "clean_caption": False,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
}


def names() -> list[str]:
    """Names of the zoo models."""
    return list(_PROMPTS)


def _check(name: str) -> str:
    if name not in _PROMPTS:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(names())}")
    return name


def path(name: str) -> str:
    """Folder of the saved diffusers pipeline ``name`` inside the package."""
    return os.path.join(_HERE, _check(name))


def prompts(name: str) -> list[str]:
    """The model's own evaluation prompts."""
    return list(_PROMPTS[_check(name)])


def calibration_prompts(name: str) -> list[str]:
    """Prompts to calibrate ``name``'s profile on, disjoint from :func:`prompts` (the scored ones)."""
    if _check(name) not in _CALIBRATION_PROMPTS:
        raise ValueError(f"zoo model {name!r} has no calibration prompts; add them to _CALIBRATION_PROMPTS")
    return list(_CALIBRATION_PROMPTS[name])


def calibration_seeds(name: str) -> list[int]:
    """Seeds to calibrate ``name``'s profile with, disjoint from the evaluation's (sample i uses seed i)."""
    _check(name)
    return list(_CALIBRATION_SEEDS)


def settings(name: str) -> dict:
    """Default pipeline call kwargs for ``name`` (a fresh copy: safe to modify)."""
    return copy.deepcopy(_SETTINGS[_check(name)])


def load(name: str, **kw):
    """``DiffusionPipeline.from_pretrained(path(name), **kw)``."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path(name), **kw)
