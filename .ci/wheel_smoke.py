"""Run by .ci/run with the python of a fresh virtual environment that has only torch and the built wheel, from a
folder outside the checkout: the data the package reads at run time must have come with the wheel.

usage: python wheel_smoke.py CHECKOUT
"""

import sys
from pathlib import Path

import torch

import dit_cache
from dit_cache.eval import zoo
from dit_cache.testing import tiny_inputs, tiny_pipeline

checkout = Path(sys.argv[1]).resolve()
installed = Path(dit_cache.__file__).resolve()
if installed.is_relative_to(checkout) or "site-packages" not in installed.parts:
    sys.exit(f"dit_cache was imported from {installed}, not from the installed wheel")

# A built-in profile: a tiny transformer with Wan 2.1 T2V 1.3B's layout gets the published MagCache ratios.
pipe = tiny_pipeline("wan", layers=30, num_attention_heads=12, in_channels=16, out_channels=16)
dit_cache.apply(pipe.transformer, "magcache", scheduler=pipe.scheduler)
profile = pipe.transformer._dit_cache.engine.policy.profile
assert profile.name == "wan2.1-t2v-1.3b", profile.name
dit_cache.remove(pipe.transformer)
dit_cache.apply(pipe, "magcache")
pipe(**tiny_inputs("wan", steps=10))
fraction = dit_cache.stats(pipe).compute_fraction
assert 0 < fraction < 1, fraction
dit_cache.remove(pipe)
print(f"built-in profile {profile.name}: magcache compute fraction {fraction:.3f}")

# The zoo: a trained pipeline loads from the installed package, and its own profile is found beside it.
video = zoo.load("shapes-video")
video.set_progress_bar_config(disable=True)
dit_cache.apply(video, "magcache", speedup=2.0)
source = Path(video.transformer._dit_cache.engine.policy.profile.source)
assert source == Path(zoo.path("shapes-video")) / "dit_cache_profile.json", source
settings = zoo.settings("shapes-video")
settings["num_inference_steps"] = 6
frames = video(zoo.prompts("shapes-video")[0], generator=torch.Generator().manual_seed(0), **settings).frames[0]
assert frames.shape == (settings["num_frames"], 64, 64, 3), frames.shape
print(f"zoo shapes-video from {zoo.path('shapes-video')}: {frames.shape[0]} frames, profile {source.name}")
