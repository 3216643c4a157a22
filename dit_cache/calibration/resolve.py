"""Finding the profile a policy runs on: an explicit path/name/object, else the profile saved with the model
(`dit_cache_profile.json` in the pipeline folder it was loaded from), else a matching built-in one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from .builtin import builtin_names, builtin_profile, find_builtin
from .profile import Profile, ProfileError, model_fingerprint

logger = logging.getLogger(__name__)
SAVED_PROFILE = "dit_cache_profile.json"  # beside model_index.json (or in the transformer's own folder)


def saved_profile(transformer: nn.Module) -> Profile | None:
    """The profile saved with `transformer`'s checkpoint: SAVED_PROFILE in the folder it was loaded from
    (`config._name_or_path`, the transformer subfolder) or the pipeline folder above it, if it fits this model."""
    origin = (getattr(transformer, "config", None) or {}).get("_name_or_path")
    if not origin or not os.path.isdir(origin):
        return None  # built in code, or loaded from a hub id
    for folder in (Path(origin), Path(origin).parent):
        path = folder / SAVED_PROFILE
        if path.is_file():
            profile = Profile.load(path)
            if profile.matches(transformer):
                return profile
            logger.warning("%s was saved for another model (%s); not using it", path, profile.fingerprint)
    return None


def resolve_profile(value, transformer: nn.Module, policy: str, *, required: bool = False) -> Profile | None:
    """The profile for `policy` on `transformer`, checked against the model's fingerprint.

    value: None (the profile saved with the model, else a matching built-in one), a built-in name
    ("wan2.1-t2v-1.3b" or "builtin:wan2.1-t2v-1.3b"), a path to a profile JSON, or a `Profile`.
    """
    if value is None:
        profile = saved_profile(transformer) or find_builtin(transformer, policy)
        if profile is None and required:
            raise ProfileError(
                f"{policy} needs a calibration profile and no built-in profile matches this model "
                f"({model_fingerprint(transformer)}; built-in: {', '.join(builtin_names())}), nor was one saved "
                f"with it ({SAVED_PROFILE} in its pipeline folder). Record one with "
                "`dit-cache calibrate --pipeline my_module:make_pipeline --prompts prompts.txt --out my_profile.json` "
                f"(a few prompts of uncached generation), then apply(pipe, {policy!r}, profile='my_profile.json'), "
                f"or save it as {SAVED_PROFILE} in the pipeline folder. See docs/calibration.md."
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
