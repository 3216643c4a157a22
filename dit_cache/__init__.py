"""dit-cache: training-free caching for the diffusion transformers of Hugging Face diffusers pipelines.

import dit_cache
dit_cache.apply(pipe, "teacache")          # or dit_cache.MagCache(threshold=0.12, max_skip=3)
image = pipe(prompt).images[0]
print(dit_cache.stats(pipe))
dit_cache.remove(pipe)
"""

from .adapters import ModelSpec, register_adapter, supported_classes
from .api import apply, cache_engine, cached, is_applied, recorded_traces, remove, stats
from .auto import Auto
from .calibration import Profile, ProfileError
from .config import PolicyConfig, policy_names
from .policies.bwcache import BWCache
from .policies.cfg import CFGCache
from .policies.easycache import EasyCache
from .policies.ertacache import ERTACache
from .policies.fbcache import FBCache
from .policies.fora import FORA
from .policies.forecast import TaylorSeer
from .policies.hyca import HyCa
from .policies.lemica import LeMiCa
from .policies.magcache import MagCache
from .policies.mix import MixCache
from .policies.schedule import Schedule
from .policies.teacache import TeaCache
from .policies.token import ToCa
from .schedulers import SpeedupError
from .stats import Stats

__version__ = "0.1.0"

__all__ = [
    "Auto",
    "BWCache",
    "CFGCache",
    "ERTACache",
    "EasyCache",
    "FBCache",
    "FORA",
    "HyCa",
    "LeMiCa",
    "MagCache",
    "MixCache",
    "ModelSpec",
    "PolicyConfig",
    "Profile",
    "ProfileError",
    "Schedule",
    "SpeedupError",
    "Stats",
    "TaylorSeer",
    "TeaCache",
    "ToCa",
    "apply",
    "cache_engine",
    "cached",
    "is_applied",
    "policy_names",
    "recorded_traces",
    "register_adapter",
    "remove",
    "stats",
    "supported_classes",
]
