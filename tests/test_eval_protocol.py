"""The evaluation protocol: methods compared at exactly the same compute fraction (interpolated Pareto frontiers,
never extrapolated), and profiles calibrated on the scored samples refused or labelled."""

import json

import pytest

from dit_cache.cli import main
from dit_cache.eval.frontier import equal_compute, pareto_frontier, value_at
from dit_cache.eval.provenance import calibration_set, check_out_of_sample
from dit_cache.eval.runner import RESULTS, read_rows
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

PROMPTS = ["a red circle", "a blue square on dots"]


# ---------------------------------------------------------------------------------------------------- frontiers
def test_frontier_drops_dominated_settings_and_interpolates_exactly():
    points = [(0.25, 20.0), (0.4, 26.0), (0.45, 24.0), (0.6, 32.0), (0.6, 30.0), (0.7, 31.0)]
    # (0.45, 24) computes more than (0.4, 26) for less; (0.6, 30) is beaten at the same fraction; (0.7, 31) by (0.6, 32)
    assert pareto_frontier(points) == [(0.25, 20.0), (0.4, 26.0), (0.6, 32.0)]
    frontier = pareto_frontier(points)
    assert value_at(frontier, 0.5) == pytest.approx(29.0)  # halfway from (0.4, 26) to (0.6, 32)
    assert value_at(frontier, 0.33) == pytest.approx(20.0 + 6.0 * 0.08 / 0.15)
    assert value_at(frontier, 0.4) == 26.0 and value_at(frontier, 0.25) == 20.0 and value_at(frontier, 0.6) == 32.0


def test_frontier_is_never_extrapolated():
    frontier = pareto_frontier([(0.36, 30.0), (0.55, 35.0)])
    assert value_at(frontier, 0.33) is None  # below its least compute: not reached, whatever the slope says
    assert value_at(frontier, 0.56) is None  # above its most compute
    assert value_at(pareto_frontier([(0.5, 30.0)]), 0.5) == 30.0  # one setting exactly at the fraction
    assert value_at(pareto_frontier([(0.5, 30.0)]), 0.499) is None
    assert pareto_frontier([(1.0, float("inf")), (0.5, 30.0)]) == [(0.5, 30.0)]  # an identical output has no PSNR
    assert value_at([], 0.5) is None


def _rows(name, family, settings):
    rows = []
    for key, fraction, psnrs in settings:
        for sample, psnr in enumerate(psnrs):
            rows.append({"method": key, "sample": sample, "family": family, "name": name,
                         "compute_fraction": fraction, "psnr": psnr})  # fmt: skip
    return rows


def test_equal_compute_table_compares_the_best_of_each_side_at_exact_fractions():
    rows = [{"method": "uncached", "sample": i, "family": "reference", "name": "uncached"} for i in range(2)]
    rows += _rows("lemica", "dit_cache", [("lemica@2", 0.5, [40.0, 38.0]), ("lemica@3", 0.3, [30.0, 32.0])])
    rows += _rows("fora", "dit_cache", [("fora@2", 0.5, [35.0, 35.0])])  # one setting: reaches 0.5 only
    rows += _rows("diffusers-fbcache", "peer", [("peer:diffusers-fbcache@2", 0.52, [33.0, 33.0]),
                                                ("peer:diffusers-fbcache@3", 0.34, [25.0, 27.0])])  # fmt: skip
    rows.append({"method": "peer:diffusers-pab@2", "sample": -1, "family": "peer", "name": "diffusers-pab",
                 "error": "RuntimeError: boom"})  # fmt: skip
    table = equal_compute(rows)
    by_name = {m["method"]: m for m in table["methods"]}
    assert by_name["lemica"]["at"]["0.5"]["psnr"] == 39.0
    assert by_name["lemica"]["at"]["0.33"]["psnr"] == pytest.approx(31.0 + 8.0 * 0.03 / 0.2)
    assert by_name["fora"]["at"]["0.33"] == {"psnr": None, "reached": False}
    assert by_name["peer:diffusers-fbcache"]["at"]["0.5"]["psnr"] == pytest.approx(26.0 + 7.0 * 0.16 / 0.18)
    assert by_name["peer:diffusers-fbcache"]["at"]["0.33"] == {"psnr": None, "reached": False}  # 0.34 is not 0.33
    assert by_name["peer:diffusers-pab"]["settings"] == [] and by_name["peer:diffusers-pab"]["span"] is None
    assert by_name["peer:diffusers-pab"]["not_run"] == {"peer:diffusers-pab@2": "RuntimeError: boom"}
    best = table["best"]
    assert best["0.5"]["best_dit_cache"] == {"method": "lemica", "psnr": 39.0}
    assert best["0.5"]["best_peer"]["method"] == "peer:diffusers-fbcache"
    assert best["0.5"]["margin_db"] == pytest.approx(39.0 - 26.0 - 7.0 * 0.16 / 0.18)
    assert best["0.5"]["peers_not_reaching"] == ["peer:diffusers-pab"]
    assert best["0.33"]["best_peer"] is None and best["0.33"]["margin_db"] is None
    assert set(best["0.33"]["peers_not_reaching"]) == {"peer:diffusers-fbcache", "peer:diffusers-pab"}
    partial = _rows("diffusers-fbcache", "peer", [("peer:diffusers-fbcache@2.5", 0.45, [40.0])])  # 1 of 2 samples
    table = equal_compute(rows + partial)
    (fbcache,) = [m for m in table["methods"] if m["method"] == "peer:diffusers-fbcache"]
    assert fbcache["not_run"] == {"peer:diffusers-fbcache@2.5": "incomplete: 1 of 2 samples"}
    assert table["best"]["0.5"]["best_peer"]["psnr"] == pytest.approx(26.0 + 7.0 * 0.16 / 0.18)  # not averaged in
    rows += _rows("diffusers-fbcache", "peer", [("peer:diffusers-fbcache@2.2", 0.45, [31.0, 31.0])])
    best = equal_compute(rows)["best"]["0.5"]
    assert best["best_peer"]["psnr"] == pytest.approx(31.0 + 2.0 * 0.05 / 0.07)  # the new segment 0.45 -> 0.52


# ---------------------------------------------------------------------------------------------------- in sample
@pytest.fixture(scope="module")
def profiles(saved_pipeline, tmp_path_factory):
    """A profile calibrated on a scored prompt with seed 0, and one on another prompt and seed."""
    from diffusers import DiffusionPipeline

    from dit_cache.calibration.runner import CalibrationSettings, calibrate

    pipe = DiffusionPipeline.from_pretrained(saved_pipeline)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("profiles")
    made = {}
    for name, prompt, seed in (("inside", PROMPTS[1], 0), ("outside", "a green triangle", 1000)):
        settings = CalibrationSettings(steps=4, call_kwargs=TINY_TEXT_CALL, seeds=(seed,))
        made[name] = calibrate(pipe, [prompt], settings, folder / f"{name}.json", progress=False)
    return made


def test_profile_calibrated_on_scored_prompts_or_seeds_is_refused_unless_allowed(profiles):
    scored = [(PROMPTS[0], 0), (PROMPTS[1], 1)]
    assert calibration_set(profiles["inside"]) == ([PROMPTS[1]], [0])
    with pytest.raises(ValueError, match=r"1 scored prompt\(s\), e.g. 'a blue square on dots' and seed\(s\) 0"):
        check_out_of_sample(profiles["inside"], scored)
    info = check_out_of_sample(profiles["inside"], scored, allow_in_sample=True)
    assert info["in_sample"] is True and info["shared_prompts"] == [PROMPTS[1]] and info["shared_seeds"] == [0]
    with pytest.raises(ValueError, match=r"seed\(s\) 0"):  # another prompt, but a scored seed
        check_out_of_sample(profiles["inside"], [(PROMPTS[0], 0)])
    info = check_out_of_sample(profiles["outside"], scored)
    assert info["in_sample"] is False and info["calibration_seeds"] == [1000]


def test_eval_refuses_an_in_sample_profile_and_labels_its_rows_when_allowed(saved_pipeline, profiles, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    base = ["eval", "--model", str(saved_pipeline), "--prompts", str(prompts), "--samples", "2", "--steps", "4",
            "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--policies", "magcache", "uniform", "--targets", "2",
            "--peers", "none", "--runs", "0", "--no-progress"]  # fmt: skip
    inside = profiles["inside"].source
    assert main([*base, "--profile", inside, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "calibrated on 1 scored prompt(s)" in err and "--allow-in-sample" in err
    assert not (tmp_path / "a" / RESULTS).exists()

    assert main([*base, "--profile", inside, "--allow-in-sample", "--out", str(tmp_path / "b")]) == 0
    header, rows = read_rows(tmp_path / "b" / RESULTS)
    assert header["profile"]["in_sample"] is True and header["profile"]["shared_seeds"] == [0]
    magcache = [r for r in rows if r["method"] == "magcache@2"]
    assert len(magcache) == 2 and all(r.get("profile_in_sample") is True for r in magcache)
    assert not any("profile_in_sample" in r for r in rows if r["method"] != "magcache@2")  # uniform reads none
    table = json.loads((tmp_path / "b" / "equal_compute.json").read_text())
    assert table["header"]["profile"]["in_sample"] is True and table["fractions"] == [0.5, 0.33]

    assert main([*base, "--profile", profiles["outside"].source, "--out", str(tmp_path / "c")]) == 0
    header, rows = read_rows(tmp_path / "c" / RESULTS)
    assert header["profile"]["in_sample"] is False
    assert not any("profile_in_sample" in r for r in rows)


# ---------------------------------------------------------------------------------------------------- the zoo
def test_zoo_profiles_are_calibrated_out_of_sample():
    """Every zoo model's calibration prompts and seeds are disjoint from the ones `dit-cache eval` scores (16
    samples: its prompts cycled, seeds 0-15), `dit-cache calibrate --model zoo:NAME` uses them by default, and the
    profile shipped with the model was recorded on them."""
    from dit_cache.calibration import Profile
    from dit_cache.cli import _calibration_set
    from dit_cache.eval import zoo

    for name in zoo.names():
        scored = [(zoo.prompts(name)[i % len(zoo.prompts(name))], i) for i in range(16)]
        assert not set(zoo.calibration_prompts(name)) & set(zoo.prompts(name))
        assert _calibration_set(f"zoo:{name}") == (zoo.calibration_prompts(name), zoo.calibration_seeds(name))
        shipped = Profile.load(f"{zoo.path(name)}/dit_cache_profile.json")
        info = check_out_of_sample(shipped, scored)
        assert info["in_sample"] is False
        assert info["calibration_prompts"] == zoo.calibration_prompts(name)
        assert info["calibration_seeds"] == zoo.calibration_seeds(name)


# ---------------------------------------------------------------------------------------------------- peers
def test_peers_at_full_strength_and_a_crashing_peer_is_a_row_with_its_error(tmp_path):
    """Two-call CFG Flux: FasterCache (built for a batch holding both branches) crashes and is a row with its error,
    the sweep goes on; diffusers' MagCache takes the ratios its own calibration mode records on the calibration
    jobs; diffusers' TaylorSeer forecasts every attention and MLP unit dit_cache counts, and is counted exactly."""
    from dit_cache.eval import peers
    from dit_cache.eval.runner import EvalPlan, evaluate

    pipe = tiny_text_flux(vae=True)
    call = dict(TINY_TEXT_CALL, true_cfg_scale=2.0, negative_prompt="")
    plan = EvalPlan(model="tiny", prompts=PROMPTS, samples=1, steps=6, call_kwargs=call, policies=[],
                    peers=["diffusers-fastercache", "diffusers-magcache", "diffusers-taylorseer"], targets=[2.0],
                    runs=0, calibration=[("a green triangle", 1000)])  # fmt: skip
    peers._MAG_RATIOS.clear()
    evaluate(pipe, plan, tmp_path, progress=False)
    header, rows = read_rows(tmp_path / RESULTS)
    by_key = {r["method"]: r for r in rows}
    assert by_key["peer:diffusers-fastercache@2"]["error"].startswith("IndexError")
    assert (
        by_key["peer:diffusers-fastercache@2"]["skipped"]
        == "crashed: " + by_key["peer:diffusers-fastercache@2"]["error"]
    )
    assert header["peer_calibration"] == [["a green triangle", 1000]]
    (ratios,) = peers._MAG_RATIOS.values()  # recorded once, by MagCache's calibrate mode, reused while tuning
    assert len(ratios) == 6 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert by_key["peer:diffusers-magcache@2"]["compute_fraction"] == 0.5
    knob = by_key["peer:diffusers-taylorseer@2"]["options"]["(interval, warmup, order)"]
    assert len(knob) == 3
    import re

    from dit_cache.adapters import find_spec
    from dit_cache.engine import build_slots

    names = [n for n, _ in pipe.transformer.named_modules()]
    units = peers._work_identifiers(pipe.transformer)
    slots = build_slots(pipe.transformer, find_spec(pipe.transformer))
    assert len(units) == sum(len(slot.work) for slot in slots) > 2 * len(slots)  # attention and MLP, every block
    assert all(sum(bool(re.fullmatch(u, n)) for n in names) == 1 for u in units)  # each names one module
    # every unit forecast on the same steps: the counted fraction is diffusers' schedule exactly (the units that are
    # Linears themselves, Flux's proj_mlp / proj_out, count only when their weight is used, not when called)
    interval, warmup, _ = knob
    schedule = [s for s in range(6) if s < warmup or (s - warmup - 1) % interval == 0]
    assert by_key["peer:diffusers-taylorseer@2"]["compute_fraction"] == len(schedule) / 6 < 1


def test_a_method_with_options_beyond_its_knob_is_a_frontier_of_its_own():
    rows = [{"method": "uncached", "sample": 0, "family": "reference", "name": "uncached"}]
    rows += _rows("lemica", "dit_cache", [("lemica@2", 0.5, [30.0]), ("lemica:speedup=3", 0.33, [20.0])])
    rows += _rows("lemica", "dit_cache", [("lemica:forecast=1,speedup=2", 0.5, [40.0]),
                                          ("lemica:speedup=3,forecast=1", 0.33, [35.0])])  # fmt: skip
    by_name = {m["method"]: m for m in equal_compute(rows)["methods"]}
    assert sorted(by_name) == ["lemica", "lemica:forecast=1"]
    assert by_name["lemica"]["at"]["0.33"]["psnr"] == 20.0 and by_name["lemica:forecast=1"]["at"]["0.5"]["psnr"] == 40.0
