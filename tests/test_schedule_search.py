"""Searched forecast schedules: the local search, its record in the profile (saved as it goes, resumed), and
`taylorseer:searched=True` running exactly the recorded steps; TaylorSeer's `coordinate="sigma"`."""

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import dit_cache
from dit_cache.calibration import Profile, ProfileError
from dit_cache.calibration.runner import CalibrationSettings, calibrate
from dit_cache.calibration.schedule_search import ScheduleSearch, local_search, neighbours
from dit_cache.calibration.sections import SearchedSchedules
from dit_cache.cli import main
from dit_cache.policies.taylor import TaylorHistory
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

PROMPTS = ["a red circle on stripes", "a blue square on dots"]
SETTINGS = CalibrationSettings(steps=8, call_kwargs=TINY_TEXT_CALL, seeds=(0,))
KEY = "order=1,coordinate=step"


def test_neighbours_move_one_step_by_one_and_keep_step_0():
    assert neighbours((0, 2, 3, 6), 8) == [(0, 1, 3, 6), (0, 2, 4, 6), (0, 2, 3, 5), (0, 2, 3, 7)]


def test_local_search_climbs_to_the_best_schedule_and_says_it_converged():
    target = (0, 3, 5, 7)
    score = lambda steps: -sum(abs(a - b) for a, b in zip(steps, target))  # noqa: E731
    improvements = []
    result = local_search(score, (0, 1, 2, 3), 8, budget=60, on_improve=improvements.append)
    assert result["steps"] == list(target) and result["score"] == 0 and result["converged"]
    assert [i["score"] for i in improvements] == sorted(i["score"] for i in improvements)  # each one better
    assert improvements[-1]["steps"] == list(target)
    cut = local_search(score, (0, 1, 2, 3), 8, budget=0)
    assert cut["steps"] == [0, 1, 2, 3] and not cut["converged"] and cut["tried"] == 1


def test_search_options_are_checked():
    with pytest.raises(ValueError, match="speedups above 1"):
        ScheduleSearch((1.0,))
    with pytest.raises(ValueError, match="coordinate must be one of"):
        ScheduleSearch((2.0,), coordinate="time")
    with pytest.raises(ValueError, match="--search-prompts"):
        ScheduleSearch((2.0,), prompts=0)


def test_a_sharded_calibration_refuses_the_search(pipe, tmp_path):
    with pytest.raises(ValueError, match="--search-schedules needs the whole profile"):
        calibrate(pipe, PROMPTS, SETTINGS, tmp_path / "p.json", world_size=2, search=ScheduleSearch((2.0,)))
    assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def pipe():
    return tiny_text_flux()


@pytest.fixture(scope="module")
def profile(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "p.json"
    return calibrate(pipe, PROMPTS, SETTINGS, out, progress=False, search=ScheduleSearch((2.0,), prompts=2),
                     candidates="taylorseer:searched=True,taylorseer", candidate_targets=(2.0, 4.0),
                     candidate_prompts=1)  # fmt: skip


def _generate(pipe, steps=8, seed=3):
    call = dict(TINY_TEXT_CALL, prompt="a green triangle", num_inference_steps=steps, output_type="latent")
    return pipe(**call, generator=torch.Generator().manual_seed(seed)).images


def test_the_search_is_recorded_and_saved(profile):
    section = profile.section(SearchedSchedules)
    found = section.schedules[KEY]["4"]  # 2x of 8 steps: 4 computed
    assert section.num_steps == 8 and section.jobs == [0, 1]
    assert len(found["steps"]) == 4 and found["steps"][0] == 0 and found["converged"] and found["tried"] > 1
    assert Profile.load(profile.source).policies["taylorseer"] == profile.policies["taylorseer"]


def test_searched_true_runs_exactly_the_recorded_steps(pipe, profile):
    steps = tuple(profile.section(SearchedSchedules).schedule(1, "step", 4))
    with dit_cache.cached(pipe, "taylorseer", speedup=2.0, searched=True, profile=profile):
        searched = _generate(pipe)
        computed = sorted(set(dit_cache.stats(pipe).computed_steps()))
    with dit_cache.cached(pipe, "taylorseer", steps=steps, num_steps=8):
        listed = _generate(pipe)
    assert tuple(computed) == steps
    assert torch.equal(searched, listed)
    with dit_cache.cached(pipe, "taylorseer", speedup=2.0, searched=True, corrector=0.25, profile=profile):
        corrected = _generate(pipe)  # the same schedule, FoCa's correction on its forecasts
        assert tuple(sorted(set(dit_cache.stats(pipe).computed_steps()))) == steps
    assert not torch.equal(corrected, searched)
    with dit_cache.cached(pipe, "taylorseer", speedup=2.0, searched=True, profile=profile):  # 16 steps: mapped
        _generate(pipe, steps=16)
        mapped = sorted(set(dit_cache.stats(pipe).computed_steps()))
    assert mapped == sorted({round(s * 15 / 7) for s in steps})


def test_searched_schedules_are_auto_candidates_where_they_were_searched(pipe, profile):
    runs = profile.policies["auto"]["runs"]["0"]
    fraction, error = runs["taylorseer:searched=True@2"]
    assert fraction == pytest.approx(4 / 8) and error >= 0
    assert "no schedule of 2 of 8 steps" in runs["taylorseer:searched=True@4"]  # recorded why, not run
    with dit_cache.cached(pipe, "auto", speedup=4.0, profile=profile):
        _generate(pipe)
        assert dit_cache.stats(pipe).auto["candidate"] == "taylorseer"  # the only one that ran at 4x


def test_a_schedule_not_searched_is_refused_with_the_command(pipe, profile):
    with pytest.raises(ProfileError, match="no schedule of 2 of 8 steps.*--search-schedules 4"):
        dit_cache.apply(pipe, "taylorseer", speedup=4.0, searched=True, profile=profile)
    with pytest.raises(ProfileError, match="coordinate=sigma"):
        dit_cache.apply(pipe, "taylorseer", speedup=2.0, searched=True, coordinate="sigma", profile=profile)
    with pytest.raises(ValueError, match="searched=True needs speedup="):
        dit_cache.TaylorSeer(searched=True)


def test_an_interrupted_search_resumes_from_its_best_schedule(pipe, profile, tmp_path):
    out = tmp_path / "p.json"
    short = ScheduleSearch((2.0,), prompts=2, budget=1e-9)  # scores the starts, then stops
    first = calibrate(pipe, PROMPTS, SETTINGS, out, progress=False, search=short).policies["taylorseer"]
    stopped = first["schedules"][KEY]["4"]
    assert not stopped["converged"]
    resumed = calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, progress=False,
                        search=ScheduleSearch((2.0,), prompts=2))  # fmt: skip
    done = resumed.policies["taylorseer"]["schedules"][KEY]["4"]
    assert done["converged"] and done["score"] >= stopped["score"]
    assert done["steps"] == profile.policies["taylorseer"]["schedules"][KEY]["4"]["steps"]  # same optimum
    again = calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, progress=False,
                      search=ScheduleSearch((2.0,), prompts=2))  # fmt: skip
    assert again.policies["taylorseer"] == resumed.policies["taylorseer"]  # converged: not searched again


def test_cli_search_and_a_damaged_section(pipe, tmp_path, factory_module):
    pipeline = factory_module()
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    code = main(
        ["calibrate", "--pipeline", pipeline, "--prompts", "prompts.txt", "--steps", "8",
         "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--out", "p.json", "--search-schedules", "4",
         "--search-coordinate", "sigma", "--search-budget", "30", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "p.json").read_text())
    found = data["policies"]["taylorseer"]["schedules"]["order=1,coordinate=sigma"]["2"]
    assert len(found["steps"]) == 2
    found["steps"] = [0, 9]  # out of range for 8 steps
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="out of range for num_steps=8"):
        Profile.load(tmp_path / "bad.json").validate()


def test_forecast_along_sigma_is_exact_on_trajectories_linear_in_sigma():
    """Uneven sigma gaps: a first-order forecast along the step index misses a feature linear in sigma, one along
    sigma is exact (forecast_position gives -sigma)."""
    sigmas = [1.0, 0.9, 0.6, 0.1]
    feature = lambda s: torch.full((2, 3), 2.0 - 3.0 * s)  # noqa: E731
    along_sigma, along_step = TaylorHistory(1), TaylorHistory(1)
    for step in (0, 1):
        along_sigma.update(feature(sigmas[step]), -sigmas[step])
        along_step.update(feature(sigmas[step]), step)
    assert torch.allclose(along_sigma.forecast(-sigmas[3]), feature(sigmas[3]))
    assert not torch.allclose(along_step.forecast(3), feature(sigmas[3]))


def test_taylorseer_sigma_coordinate_follows_the_sigma_schedule():
    """On even sigmas the two axes are affine maps of each other (the same forecast); a shift makes them differ."""
    pipe = tiny_text_flux()
    outputs = {}
    for shift in (1.0, 3.0):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
        for coordinate in ("step", "sigma"):
            with dit_cache.cached(pipe, "taylorseer", interval=3, coordinate=coordinate):
                outputs[shift, coordinate] = _generate(pipe)
    assert torch.allclose(outputs[1.0, "step"], outputs[1.0, "sigma"], atol=1e-5)
    assert not torch.allclose(outputs[3.0, "step"], outputs[3.0, "sigma"], atol=1e-3)
    with pytest.raises(ValueError, match="coordinate must be one of"):
        dit_cache.TaylorSeer(coordinate="time")
