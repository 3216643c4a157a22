"""Caching policies. Importing this package registers every policy with its config class."""

from . import block, bwcache, cfg, easycache, ertacache, forecast, hyca, mix, step, token  # noqa: F401  (registration)
from .base import ModelContext, Policy, policy_class, policy_for

__all__ = ["ModelContext", "Policy", "policy_class", "policy_for"]
