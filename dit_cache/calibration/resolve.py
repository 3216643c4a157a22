"""Finding the profile a policy runs on: an explicit path/name/object, else a matching built-in one."""

from __future__ import annotations

import os

from torch import nn

from .builtin import builtin_names, builtin_profile, find_builtin
from .profile import Profile, ProfileError, model_fingerprint


def resolve_profile(value, transformer: nn.Module, policy: str, *, required: bool = False) -> Profile | None:
    """The profile for `policy` on `transformer`, checked against the model's fingerprint.

    value: None (look for a matching built-in profile), a built-in name ("wan2.1-t2v-1.3b" or
    "builtin:wan2.1-t2v-1.3b"), a path to a profile JSON, or a `Profile`.
    """
    if value is None:
        profile = find_builtin(transformer, policy)
        if profile is None and required:
            raise ProfileError(
                f"{policy} needs a calibration profile and no built-in profile matches this model "
                f"({model_fingerprint(transformer)}; built-in: {', '.join(builtin_names())}). Record one with "
                "`dit-cache calibrate --pipeline my_module:make_pipeline --prompts prompts.txt --out my_profile.json` "
                f"(a few prompts of uncached generation), then apply(pipe, {policy!r}, profile='my_profile.json'). "
                "See docs/calibration.md."
            )
        return profile
    if isinstance(value, Profile):
        value.check_model(transformer)
        value.validate()
        return value
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        name = text[len("builtin:") :] if text.startswith("builtin:") else text
        if name in builtin_names() or text.startswith("builtin:"):
            profile = builtin_profile(name)
            profile.check_model(transformer)
            return profile
        return Profile.load(text, model=transformer)
    raise TypeError(f"profile must be a path, a built-in profile name or a Profile, got {type(value).__name__}")
