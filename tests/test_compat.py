"""diffusers internals go through dit_cache/compat.py only, and fail there with the supported versions; the public
way to reach a transformer's engine and the recorder's traces."""

import ast
import re
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import dit_cache
from dit_cache import compat
from dit_cache.calibration.recorder import Recorder, collect
from dit_cache.testing import run, tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dit_cache"
STEPS = 4


def test_supported_range_is_the_pyproject_pin_and_holds_the_installed_diffusers():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in dependencies if re.match(r"diffusers\b", d))
    assert pin == "diffusers" + compat.SUPPORTED_DIFFUSERS
    assert Version(compat.diffusers_version()) in SpecifierSet(compat.SUPPORTED_DIFFUSERS)


@pytest.mark.parametrize(
    ("module", "name"), [("diffusers.hooks.hooks", "NoSuchHook"), ("diffusers.hooks._no_such_module", "Registry")]
)
def test_a_missing_internal_names_itself_the_installed_and_the_supported_versions(module, name):
    with pytest.raises(compat.DiffusersInternalError) as err:
        compat.internal(module, name)
    text = str(err.value)
    assert f"dit_cache needs {module}.{name}, which the installed diffusers {compat.diffusers_version()} lacks" in text
    assert text.endswith("tested with diffusers>=0.42,<0.43: pip install 'diffusers>=0.42,<0.43'")
    assert isinstance(err.value, ImportError)  # optional uses (the generic adapter) fall back as on any ImportError


def test_the_internals_are_the_objects_diffusers_uses():
    from diffusers.hooks import HookRegistry
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.attention import FeedForward
    from diffusers.models.cache_utils import CacheMixin

    assert compat.HookRegistry is HookRegistry and compat.transformer_block_registry() is TransformerBlockRegistry
    assert compat.cache_mixin() is CacheMixin and compat.attention_classes()[1] == (FeedForward,)
    assert "^blocks.*attn" in compat.taylorseer_default_identifiers()


def _private(module: str) -> bool:
    """A diffusers module that is not its public API: a private segment, or anything below diffusers.hooks and
    diffusers.models (their packages export the public names)."""
    parts = module.split(".")
    return any(p.startswith("_") for p in parts) or (len(parts) > 2 and parts[1] in ("hooks", "models"))


def test_no_module_but_compat_imports_diffusers_internals():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffusers":
                private_names = [a.name for a in node.names if a.name.startswith("_")]
                if _private(node.module) or private_names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "diffusers" and _private(a.name)
                ]
            elif isinstance(node, ast.Attribute) and node.attr == "_TRANSFORMER_BLOCK_IDENTIFIERS":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not found, "diffusers internals imported outside dit_cache/compat.py:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------------- public access
@pytest.fixture(scope="module")
def recorded():
    pipe = tiny_pipeline("flux")
    dit_cache.apply(pipe, Recorder())
    run(pipe, "flux", steps=STEPS)
    yield pipe
    dit_cache.remove(pipe)


def test_cache_engine_is_the_engine_the_hooks_drive(recorded):
    engine = dit_cache.cache_engine(recorded)
    assert engine is recorded.transformer._dit_cache.engine
    assert dit_cache.cache_engine(recorded.transformer) is engine
    assert dit_cache.cache_engine(recorded, component="transformer") is engine
    assert engine.policy.name == "recorder" and len(engine.records) == 2 * STEPS  # cond and uncond, every step


def test_recorded_traces_are_the_recorders_per_branch_lists(recorded):
    traces = dit_cache.recorded_traces(recorded)
    engine = dit_cache.cache_engine(recorded)
    assert sorted(traces) == ["cond", "uncond"]
    assert traces["cond"]["steps"] == list(range(STEPS)) and traces["cond"]["x"][0] is None
    assert all(v > 0 for v in traces["cond"]["x"][1:])
    expected = collect(engine.states or engine.policy.finished, engine.sync)
    assert traces.keys() == expected.keys()
    for branch in traces:
        assert {k: v for k, v in traces[branch].items() if k != "unit_features"} == {
            k: v for k, v in expected[branch].items() if k != "unit_features"
        }


def test_engine_access_on_the_wrong_target_names_the_fix():
    pipe = tiny_pipeline("wan22_a14b")
    with pytest.raises(ValueError, match="no dit_cache policy is applied to this WanPipeline; apply one first"):
        dit_cache.cache_engine(pipe)
    dit_cache.apply(pipe, "teacache", threshold=0.0)
    try:
        with pytest.raises(ValueError, match=r"several patched transformers \('transformer', 'transformer_2'\)"):
            dit_cache.cache_engine(pipe)
        assert dit_cache.cache_engine(pipe, "transformer_2") is pipe.transformer_2._dit_cache.engine
        with pytest.raises(ValueError, match="transformer_2 runs 'teacache'. Apply dit_cache.calibration.recorder"):
            dit_cache.recorded_traces(pipe, "transformer_2")
        with pytest.raises(ValueError, match="on its 'transformer_3'"):
            dit_cache.cache_engine(pipe, "transformer_3")
    finally:
        dit_cache.remove(pipe)
