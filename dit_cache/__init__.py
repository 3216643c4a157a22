"""dit-cache: training-free caching for diffusers DiTs."""

__version__ = "0.1.0"
