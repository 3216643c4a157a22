"""Typed profile sections and the one module of array keys: the shipped profiles load unchanged and round-trip
bitwise, every array key they hold is one keys.py names, the typed views agree with the JSON, and a damaged section
or array fails on load naming the entry and the fix."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dit_cache.calibration import Profile, ProfileError, builtin, keys
from dit_cache.calibration.schema import FIX
from dit_cache.calibration.sections import (
    SECTIONS,
    AutoSection,
    BranchSteps,
    LeMiCaSection,
    MagCacheDefaults,
    PromptList,
    TeaCacheFit,
)
from dit_cache.eval import zoo

ZOO = [Path(zoo.path(name)) / "dit_cache_profile.json" for name in zoo.names()]


@pytest.mark.parametrize("path", ZOO, ids=[p.parent.name for p in ZOO])
def test_shipped_zoo_profiles_round_trip_bitwise(path, tmp_path):
    profile = Profile.load(path)
    copy_path = profile.save(tmp_path / "p.json")
    assert copy_path.read_bytes() == path.read_bytes()
    assert copy_path.with_suffix(".safetensors").read_bytes() == path.with_suffix(".safetensors").read_bytes()
    again = Profile.load(copy_path)
    assert again.to_dict() == profile.to_dict() and sorted(again.arrays) == sorted(profile.arrays)
    for key, tensor in profile.arrays.items():
        assert torch.equal(again.arrays[key].view(torch.uint8), tensor.view(torch.uint8)), key  # NaN included


@pytest.mark.parametrize("name", builtin.builtin_names())
def test_builtin_profiles_round_trip_bitwise(name, tmp_path):
    profile = builtin.builtin_profile(name)
    first = profile.copy().save(tmp_path / "a.json")
    loaded = Profile.load(first)
    assert loaded.to_dict() == profile.to_dict()
    assert loaded.save(tmp_path / "b.json").read_bytes() == first.read_bytes()


@pytest.mark.parametrize("path", ZOO, ids=[p.parent.name for p in ZOO])
def test_every_array_key_of_the_shipped_profiles_is_named_by_keys(path):
    profile = Profile.load(path)
    kinds = set()
    for key in profile.arrays:
        parsed = keys.parse(key)
        assert parsed is not None, key
        if key in keys.EDGE_ARRAYS:
            rebuilt = key
        elif parsed.branch is None:
            rebuilt = keys.record_prefix(parsed.index) + parsed.kind
        elif parsed.index is None:
            rebuilt = keys.branch_array(parsed.branch, parsed.kind)
        else:
            rebuilt = keys.record_array(parsed.index, parsed.branch, parsed.kind)
        assert rebuilt == key
        kinds.add(parsed.kind)
    assert {keys.FB_PAIRS, keys.RES_PAIRS, keys.BLOCK_INPUT_CHANGE, keys.LEMICA_EDGES} <= kinds
    assert keys.lemica_edges(0) == keys.LEMICA_EDGES and keys.lemica_edges(1) == "lemica/edges_forecast1"
    assert keys.parse("something/else/entirely") is None and keys.parse("records/x/cond/fb_pairs") is None


@pytest.mark.parametrize("path", ZOO, ids=[p.parent.name for p in ZOO])
def test_typed_views_agree_with_the_json(path):
    profile = Profile.load(path)
    for name, section in profile.policies.items():
        if name in SECTIONS:
            assert profile.section(SECTIONS[name]).to_dict() == section  # the writers' form is the file's
    fit = profile.section(TeaCacheFit)
    assert fit.coefficients == profile.policies["teacache"]["coefficients"] and fit.points > 0
    lemica = profile.section(LeMiCaSection)
    assert profile.arrays[keys.LEMICA_EDGES].shape == (lemica.num_steps, lemica.num_steps)
    auto = profile.section(AutoSection)
    assert sorted(auto.runs) == sorted(profile.policies["auto"]["runs"]) and auto.targets
    assert len(profile.section(PromptList).labels) >= profile.prompts // len(profile.policies["calibration"]["seeds"])
    assert profile.section(MagCacheDefaults) is None  # calibrated profiles carry ratios, not published defaults
    records = profile.job_records()
    assert [r.index for r in records] == [r["index"] for r in profile.records]
    for record in records:
        for branch, data in record.branches.items():
            grid = profile.grid(branch)
            assert len(data.x) == len(data.steps) == len(grid)
            assert profile.record_table(record.index, branch, keys.FB_PAIRS).shape == (len(grid), len(grid))
    for name, data in profile.branches.items():
        assert BranchSteps.read(name, data, None).to_dict() == data
    assert profile.has_array(keys.RES_PAIRS, records=False) and profile.has_array(keys.RES_PAIRS, records=True)
    assert not profile.has_array(keys.UNIT_FEATURES, records=False)


def test_sections_keep_what_they_do_not_know_and_fill_the_policy_defaults():
    data = {"coefficients": [1.0, 0.0], "threshold": 0.2, "written_by": "a newer dit_cache"}
    fit = TeaCacheFit.read(data)
    assert fit.threshold == 0.2 and fit.extra == {"written_by": "a newer dit_cache"} and fit.to_dict() == data
    assert MagCacheDefaults.read({"threshold": 0.3}) == MagCacheDefaults(threshold=0.3, max_skip=2, retention=0.2)
    published = builtin.builtin_profile("wan2.1-t2v-1.3b")
    assert published.section(MagCacheDefaults).threshold == published.policies["magcache"]["threshold"]
    assert published.section(LeMiCaSection).schedules == {"17": published.policies["lemica"]["schedules"]["17"]}


# ---------------------------------------------------------------------------------------------------- damage
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The smallest shipped profile: (its JSON as a dict, its arrays, a folder for damaged copies)."""
    path = Path(zoo.path("shapes-pixart")) / "dit_cache_profile.json"
    return json.loads(path.read_text()), load_file(str(path.with_suffix(".safetensors"))), tmp_path_factory.mktemp("d")


def _load_damaged(small, name, change=None, arrays=None):
    data, tensors, folder = small
    data = copy.deepcopy(data)
    if change is not None:
        change(data)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    tensors = dict(tensors)
    if arrays is not None:
        arrays(tensors)
        save_file(tensors, str(path.with_suffix(".safetensors")))
    else:
        shutil.copy(Path(zoo.path("shapes-pixart")) / "dit_cache_profile.safetensors", path.with_suffix(".safetensors"))
    with pytest.raises(ProfileError) as err:
        Profile.load(path)
    text = str(err.value)
    assert text.endswith(FIX)
    return text


def _branch(small) -> str:
    return next(iter(small[0]["branches"]))


def _steps(small) -> int:
    return len(small[0]["branches"][_branch(small)]["grid"])


def test_a_record_table_off_the_grid_fails_naming_it(small):
    key = keys.record_array(0, _branch(small), keys.FB_PAIRS)
    n = _steps(small)
    text = _load_damaged(small, "pairs", arrays=lambda t: t.update({key: t[key][:-1, :-1].contiguous()}))
    assert f"arrays[{key!r}] must be ({n} x {n}) like the branch's grid, got shape ({n - 1}, {n - 1})" in text


def test_a_per_block_table_with_a_row_too_many_fails_naming_it(small):
    key = keys.record_array(1, _branch(small), keys.BLOCK_INPUT_CHANGE)
    n = _steps(small)

    def grow(tensors):
        tensors[key] = torch.cat([tensors[key], tensors[key][:1]])

    text = _load_damaged(small, "blocks", arrays=grow)
    assert f"arrays[{key!r}] must be ({n} x blocks), one row per step of the branch's grid, got shape ({n + 1}," in text


def test_unit_features_that_are_not_steps_x_units_x_samples_fail(small):
    key = keys.record_array(0, _branch(small), keys.UNIT_FEATURES)
    n = _steps(small)
    text = _load_damaged(small, "units", arrays=lambda t: t.update({key: torch.zeros(n, 4)}))
    assert f"arrays[{key!r}] must be ({n} x units x samples), one row per step of the branch's grid" in text


@pytest.mark.parametrize(
    ("name", "section", "field", "value", "message"),
    [
        ("mode", "lemica", "mode", "exact", "policies.lemica.mode must be 'proxy' or 'global', got 'exact'"),
        ("points", "teacache", "points", -3, "policies.teacache.points must be an integer >= 0, got -3"),
        ("seconds", "auto", "seconds", "long", "policies.auto.seconds must be a number of seconds, got 'long'"),
        ("labels", "calibration_prompts", "labels", "a red circle",
         "policies.calibration_prompts.labels must be a list of prompt labels, got 'a red circle'"),
    ],
)  # fmt: skip
def test_a_damaged_policy_section_fails_naming_the_field(small, name, section, field, value, message):
    def change(data):
        data["policies"][section][field] = value

    assert message in _load_damaged(small, name, change)


def test_teacache_without_its_polynomial_fails_saying_what_is_missing(small):
    text = _load_damaged(small, "nocoef", lambda d: d["policies"]["teacache"].pop("coefficients"))
    assert "policies.teacache has no coefficients (the rescaling polynomial)" in text


def test_a_profile_edited_in_memory_fails_when_its_section_is_read(small):
    profile = Profile.load(Path(zoo.path("shapes-pixart")) / "dit_cache_profile.json")
    profile.policies["magcache"] = {"max_skip": 1.5}
    with pytest.raises(ProfileError, match=r"policies.magcache.max_skip must be an integer >= 0, got 1.5; recalib"):
        profile.section(MagCacheDefaults)
    profile.records[0] = dict(profile.records[0], index="zero")
    with pytest.raises(ProfileError, match=r"records\[0\].index must be an integer, got 'zero'"):
        profile.job_records()


def test_a_new_section_is_one_class_checked_on_load(small, monkeypatch):
    from dataclasses import dataclass

    from dit_cache.calibration import sections

    monkeypatch.setattr(sections, "SECTIONS", dict(sections.SECTIONS))  # its registration ends with this test

    @dataclass(frozen=True)
    class GainFit(sections.Section):
        NAME = "gain"
        gain: float | None = sections.checked(lambda v: isinstance(v, float) and v > 0, "a number above 0")

    def add(value):
        return lambda data: data["policies"].update(gain={"gain": value})

    assert "policies.gain.gain must be a number above 0, got -1.0" in _load_damaged(small, "gain", add(-1.0))
    data, _, folder = small
    good = copy.deepcopy(data)
    add(2.5)(good)
    (folder / "good.json").write_text(json.dumps(good))
    shutil.copy(Path(zoo.path("shapes-pixart")) / "dit_cache_profile.safetensors", folder / "good.safetensors")
    assert Profile.load(folder / "good.json").section(GainFit) == GainFit(gain=2.5)
