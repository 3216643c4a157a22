"""Calibration: profiles (format, built-in published data, resampling) and the recorders that write them."""

from .builtin import builtin_names, builtin_profile
from .profile import PROFILE_FORMAT_VERSION, Profile, ProfileError, model_fingerprint
from .resolve import resolve_profile

__all__ = [
    "PROFILE_FORMAT_VERSION",
    "Profile",
    "ProfileError",
    "builtin_names",
    "builtin_profile",
    "model_fingerprint",
    "resolve_profile",
]
