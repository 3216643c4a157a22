"""`auto`: candidate runs recorded by calibration, the least-error pick at the requested speedup, and
`apply(pipe, "auto", ...)` running exactly the picked policy."""

import json

import pytest
import torch

import dit_cache
from dit_cache.auto import candidate_list, choose, summarize
from dit_cache.calibration import Profile, ProfileError
from dit_cache.calibration.runner import CalibrationSettings, calibrate
from dit_cache.cli import main
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

PROMPTS = ["a red circle on stripes", "a blue square on dots"]
SETTINGS = CalibrationSettings(steps=8, call_kwargs=TINY_TEXT_CALL, seeds=(0,))
CANDIDATES = ("magcache", "taylorseer", "fora")
TARGETS = (2.0, 4.0)


def _section(runs: dict, candidates=("a", "b"), targets=(2.0, 3.0)) -> Profile:
    profile = Profile(fingerprint={"class": "X"})
    profile.policies["auto"] = {"candidates": list(candidates), "targets": list(targets), "runs": runs}
    return profile


def _runs(table: dict) -> dict:
    """{spec@target: (fraction, error)} for one job -> the profile's runs of two identical jobs."""
    job = {key: list(value) if isinstance(value, tuple) else value for key, value in table.items()}
    return {"0": job, "1": dict(job)}


# -------------------------------------------------------------------------------------------------- choosing
def test_least_error_candidate_at_the_requested_target_wins():
    profile = _section(_runs({
        "magcache@2": (0.5, 0.02), "magcache@3": (0.333, 0.05),
        "taylorseer@2": (0.5, 0.01), "taylorseer@3": (0.367, 0.02),
    }))  # fmt: skip
    two = choose(profile, 2.0)
    assert (two.candidate, two.config.speedup, two.error) == ("taylorseer", 2.0, 0.01)
    assert [name for name, _ in two.ranking] == ["taylorseer", "magcache"]
    # at 3x TaylorSeer's interval reaches only 0.367: it is not compared there, MagCache wins
    three = choose(profile, 3.0)
    assert three.candidate == "magcache" and three.fraction == pytest.approx(0.333)
    assert [name for name, _ in three.ranking] == ["magcache"]


def test_between_targets_the_prediction_is_interpolated_in_the_fraction_never_extrapolated():
    profile = _section(_runs({"magcache@2": (0.5, 0.02), "magcache@4": (0.25, 0.06)}), targets=(2.0, 4.0))
    choice = choose(profile, 3.2)  # 1/3.2 = 0.3125 = 3/4 of the way from 0.5 to 0.25
    assert choice.fraction == pytest.approx(0.3125) and choice.error == pytest.approx(0.05)
    assert choice.config.speedup == 3.2
    with pytest.raises(ValueError, match=r"reaches speedup 5 .*outside its calibrated targets.*--candidate-targets"):
        choose(profile, 5.0)


def test_interval_candidates_take_their_calibrated_interval_within_the_budget():
    profile = _section(_runs({"fora@2": (0.5, 0.03), "fora@3": (0.333, 0.05), "fora:forecast=1@2": "why"}))
    choice = choose(profile, 2.5)  # no interval gives 2.5x: FORA's interval 3 is the one within budget
    assert choice.candidate == "fora" and choice.config.interval == 3 and choice.fraction == pytest.approx(0.333)


def test_a_run_that_diverged_on_one_prompt_rules_the_candidate_out_at_that_target():
    runs = _runs({"magcache@2": (0.5, 0.02), "teacache@2": (0.5, 0.001)})
    runs["1"]["teacache@2"] = [0.5, None]
    assert set(summarize({"runs": runs})) == {"magcache"}
    assert choose(_section(runs), 2.0).candidate == "magcache"


def test_auto_without_candidate_runs_says_how_to_record_them():
    with pytest.raises(ValueError, match="--candidates default"):
        choose(Profile(fingerprint={"class": "X"}), 2.0)
    with pytest.raises(ValueError, match=r"candidates \['lemica'\] are not in the profile"):
        choose(_section(_runs({"magcache@2": (0.5, 0.02)})), 2.0, only=("lemica",))


def test_candidate_lists():
    assert candidate_list("magcache, fora:forecast=1") == ("magcache", "fora:forecast=1")
    assert "magcache:forecast=1" in candidate_list("default")
    every = candidate_list("all")
    assert set(candidate_list("default")) < set(every) and "toca" in every and "auto" not in every
    with pytest.raises(ValueError, match="unknown policy 'magcash'"):
        candidate_list("magcash")
    with pytest.raises(ValueError, match="no speedup of its own"):
        candidate_list("schedule")
    with pytest.raises(TypeError, match="unknown option"):
        candidate_list("magcache:forcast=1")


def test_relative_error_of_tensors_and_of_per_sample_lists():
    from dit_cache.auto import relative_error

    reference = torch.tensor([[1.0, -1.0], [2.0, 0.0]])  # mean square 1.5
    assert relative_error(reference + 0.5, reference) == pytest.approx(0.25 / 1.5)
    assert relative_error(list(reference + 0.5), list(reference)) == pytest.approx(0.25 / 1.5)


def test_auto_config_needs_a_speedup():
    with pytest.raises(ValueError, match="auto needs speedup="):
        dit_cache.Auto()


# ------------------------------------------------------------------------------------------ through calibration
@pytest.fixture(scope="module")
def pipe():
    return tiny_text_flux()


@pytest.fixture(scope="module")
def profile(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "p.json"
    return calibrate(pipe, PROMPTS, SETTINGS, out, progress=False, candidates=",".join(CANDIDATES),
                     candidate_targets=TARGETS, candidate_prompts=2)  # fmt: skip


def test_calibration_records_every_candidate_at_every_target(profile):
    section = profile.policies["auto"]
    assert section["candidates"] == list(CANDIDATES) and section["targets"] == list(TARGETS)
    assert sorted(section["runs"]) == ["0", "1"]
    for job in section["runs"].values():
        assert sorted(job) == sorted(f"{c}@{t:g}" for c in CANDIDATES for t in TARGETS)
        fraction, error = job["fora@4"]
        assert fraction == pytest.approx(2 / 8) and error > 0  # FORA interval 4 on 8 steps: steps 0 and 4
    assert Profile.load(profile.source).policies["auto"] == section  # saved with the profile


def test_apply_auto_runs_exactly_the_picked_policy(pipe, profile):
    choice = choose(profile, 2.0)
    call = dict(TINY_TEXT_CALL, prompt="a green triangle", num_inference_steps=8, output_type="latent")
    with dit_cache.cached(pipe, "auto", speedup=2.0, profile=profile):
        auto = pipe(**call, generator=torch.Generator().manual_seed(3)).images
        stats = dit_cache.stats(pipe)
    with dit_cache.cached(pipe, choice.config):
        picked = pipe(**call, generator=torch.Generator().manual_seed(3)).images
        fraction = dit_cache.stats(pipe).compute_fraction
    assert torch.equal(auto, picked)
    assert stats.auto["candidate"] == choice.candidate and stats.policy == choice.config.policy_name
    assert stats.compute_fraction == fraction < 1
    assert f"auto picked {choice.candidate}" in stats.table()
    assert json.loads(json.dumps(stats.to_dict()))["auto"]["candidate"] == choice.candidate


def test_eval_rows_record_what_auto_picked(profile, tmp_path):
    from dit_cache.eval.report import markdown_table
    from dit_cache.eval.report import summarize as summarize_results
    from dit_cache.eval.runner import RESULTS, EvalPlan, evaluate, read_rows

    pipe = tiny_text_flux(vae=True)  # the same transformer as the profile's, and a VAE to decode what eval scores
    plan = EvalPlan(model="tiny", prompts=["a green triangle"], samples=1, steps=8, call_kwargs=TINY_TEXT_CALL,
                    policies=["auto", "magcache"], targets=[2.0, 4.0], runs=0)  # fmt: skip
    evaluate(pipe, plan, tmp_path, profile=profile, progress=False)
    rows = {r["method"]: r for r in read_rows(tmp_path / RESULTS)[1]}
    for target in (2.0, 4.0):
        assert rows[f"auto@{target:g}"]["auto_picked"] == choose(profile, target).candidate
        assert "auto_picked" not in rows[f"magcache@{target:g}"]  # only `auto` picks
    table = markdown_table(summarize_results(list(rows.values())))
    assert f"| auto@2 ({choose(profile, 2.0).candidate}) |" in table and "| magcache@2 |" in table  # the report says


def test_resume_runs_only_the_missing_candidate_jobs(pipe, profile, tmp_path):
    out = tmp_path / "p.json"
    kwargs = dict(progress=False, candidates=",".join(CANDIDATES), candidate_targets=TARGETS)
    calibrate(pipe, PROMPTS, SETTINGS, out, candidate_prompts=1, **kwargs)
    assert sorted(Profile.load(out).policies["auto"]["runs"]) == ["0"]
    calls = {"n": 0}
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        resumed = calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, candidate_prompts=2, **kwargs)
    finally:
        handle.remove()
    assert resumed.policies["auto"]["runs"] == profile.policies["auto"]["runs"]
    per_generation = 2 * 8  # CFG: two transformer calls a step
    assert calls["n"] < (1 + len(CANDIDATES) * len(TARGETS)) * per_generation  # job 1 only (cached runs: fewer)
    with pytest.raises(ProfileError, match="candidate runs were made for"):
        calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, progress=False, candidates="magcache")


def test_more_candidates_are_added_to_the_recorded_runs(pipe, profile, tmp_path):
    """A profile calibrated with fewer candidates at the same targets gets the new ones on the jobs it has; the runs
    it had are kept as they were (not rerun), and the result equals calibrating all candidates at once."""
    out = tmp_path / "p.json"
    kwargs = dict(progress=False, candidate_targets=TARGETS, candidate_prompts=2)
    first = calibrate(pipe, PROMPTS, SETTINGS, out, candidates=CANDIDATES[0], **kwargs).policies["auto"]
    calls = {"n": 0}
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        extended = calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, candidates=",".join(CANDIDATES), **kwargs)
    finally:
        handle.remove()
    section = extended.policies["auto"]
    assert section["candidates"] == list(CANDIDATES)
    assert section["runs"] == profile.policies["auto"]["runs"]  # the same figures as all candidates at once
    for job, runs in first["runs"].items():
        assert {k: section["runs"][job][k] for k in runs} == runs
    per_generation = 2 * 8  # CFG: two transformer calls a step
    assert calls["n"] < len(PROMPTS) * (1 + (len(CANDIDATES) - 1) * len(TARGETS)) * per_generation + 1
    assert Profile.load(out).policies["auto"] == section
    with pytest.raises(ProfileError, match="candidate runs were made for"):  # other targets: not comparable
        calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, progress=False, candidates=",".join(CANDIDATES),
                  candidate_targets=(3.0,))  # fmt: skip


def test_bad_candidate_options_fail_before_any_generation(pipe, tmp_path):
    with pytest.raises(ValueError, match="unknown policy"):
        calibrate(pipe, PROMPTS, SETTINGS, tmp_path / "p.json", progress=False, candidates="nope")
    with pytest.raises(ValueError, match="merge them, then"):
        calibrate(pipe, PROMPTS, SETTINGS, tmp_path / "p.json", progress=False, candidates="default", world_size=2)
    assert not (tmp_path / "p.json").exists()


def test_cli_candidates(pipe, tmp_path, factory_module):
    pipeline = factory_module()
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    code = main(
        ["calibrate", "--pipeline", pipeline, "--prompts", "prompts.txt", "--steps", "8",
         "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--out", "p.json", "--candidates", "magcache,fora",
         "--candidate-targets", "2", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    section = Profile.load(tmp_path / "p.json").policies["auto"]
    assert section["candidates"] == ["magcache", "fora"] and sorted(section["runs"]["0"]) == ["fora@2", "magcache@2"]


def test_a_damaged_auto_section_fails_on_load(profile, tmp_path):
    data = json.loads(open(profile.source).read())
    data["policies"]["auto"]["runs"]["0"]["magcache@2"] = [1.5, 0.1]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    (tmp_path / "bad.safetensors").write_bytes(open(profile.source.replace(".json", ".safetensors"), "rb").read())
    with pytest.raises(ValueError, match=r"policies\.auto\.runs"):
        Profile.load(path)
