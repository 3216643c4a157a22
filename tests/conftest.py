"""Fixtures shared by several test files."""

import pytest

from dit_cache.testing import tiny_text_flux


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A tiny text-prompted Flux pipeline (with its VAE) saved to a folder, one per test module."""
    path = tmp_path_factory.mktemp("pipe") / "tiny-flux"
    tiny_text_flux(vae=True).save_pretrained(path)
    return path
