"""Fixtures shared by several test files."""

import re

import pytest

from dit_cache.testing import tiny_text_flux


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    """A tiny text-prompted Flux pipeline (with its VAE) saved to a folder, one per test module."""
    path = tmp_path_factory.mktemp("pipe") / "tiny-flux"
    tiny_text_flux(vae=True).save_pretrained(path)
    return path


@pytest.fixture
def factory_module(tmp_path, monkeypatch, request):
    """write(expression="tiny_text_flux()") -> "MODULE:make" for `--pipeline`: a module whose make() returns the
    expression, in tmp_path (the working directory from then on). Named after the test: Python keeps an imported
    module by name, so two tests writing one name would share the first one's factory."""

    def write(expression: str = "tiny_text_flux()") -> str:
        name = "factory_" + re.sub(r"\W", "_", request.node.name)
        (tmp_path / f"{name}.py").write_text(
            f"from dit_cache.testing import tiny_text_flux\n\n\ndef make():\n    return {expression}\n"
        )
        monkeypatch.chdir(tmp_path)
        return f"{name}:make"

    return write
