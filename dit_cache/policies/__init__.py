"""Caching policies, one file each (its config, state and policy class, registered by `register_policy`).
Importing this package imports every module in it, so every policy is registered whatever was imported first;
the two policies that live elsewhere (`auto`, which picks one of these; the calibration recorder) are imported too."""

import importlib
import pkgutil

from .base import ModelContext, Policy, policies_where, policy_class, policy_info, register_policy

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
importlib.import_module("dit_cache.auto")
importlib.import_module("dit_cache.calibration.recorder")

__all__ = ["ModelContext", "Policy", "policies_where", "policy_class", "policy_info", "register_policy"]
