"""HyCa's solver per unit chosen on the final output: the policy reads the assignment searched for its schedule (or
the one given), the search's coordinate descent keeps exactly the changes that lower the error, and through a tiny
real pipeline the stored assignment reproduces its stored error bitwise and never scores below a uniform one."""

import json

import pytest
from dummy import DummyDiT, FakeScheduler, drive
from test_paper_policies import _hyca_profile

import dit_cache
from dit_cache.calibration import Profile, ProfileError, hyca_search, keys
from dit_cache.calibration.hyca_search import output_errors, search_hyca, search_one
from dit_cache.calibration.runner import CalibrationSettings, calibrate, jobs_of
from dit_cache.calibration.sections import HyCaSection, hyca_schedule_key
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

UNITS = ["0.attn", "0.ff", "1.attn", "1.ff"]
SCHEDULE = hyca_schedule_key(9, [0, 1, 3, 5, 7])  # 9 steps, warm-up 2, interval 2


def _orders(model) -> dict:
    state = model._dit_cache.engine.states["batch"]
    return {key: histories[0].order for key, (histories, _) in state.histories.items()}


def _searched(solvers: list[int], schedule: str = SCHEDULE) -> dict:
    return HyCaSection(units=UNITS, prompts=1, assignments={schedule: {"solvers": solvers, "error": 0.5}}).to_dict()


def test_hyca_takes_the_assignment_searched_for_its_schedule():
    """The unit trajectories alone give (1, 0, 2, 0) (test_paper_policies); the output search's (2, 1, 0, 1) for
    this schedule wins, and the run keeps that order for each unit's history."""
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    profile = _hyca_profile(model, 9)
    profile.policies[keys.HYCA] = _searched([2, 1, 0, 1])
    dit_cache.apply(model, "hyca", interval=2, profile=profile, scheduler=sched)
    drive(model, sched, [1.0] * 9)
    policy = model._dit_cache.engine.policy
    assert list(policy._solvers.values()) == [{(0, "attn"): 2, (0, "ff"): 1, (1, "attn"): 0, (1, "ff"): 1}]
    assert list(policy.sources.values()) == ["output search"]
    assert _orders(model) == {(0, "attn"): 2, (0, "ff"): 1, (1, "attn"): 0, (1, "ff"): 1}


@pytest.mark.parametrize(
    ("searched", "options"),
    [
        (_searched([2, 1, 0, 1], hyca_schedule_key(9, [0, 1, 4, 7])), dict(interval=2)),  # another schedule
        (_searched([2, 1, 0, 1]), dict(interval=2, solvers=(0, 1, 2), warmup=1)),  # warm-up 1: 0, 2, 4, 6, 8
        (_searched([2, 1, 0, 1]), dict(interval=2, solvers=(0, 1))),  # uses order 2, not allowed here
        (_searched([2, 1, 0, 1]), dict(interval=2, choose="trajectories")),  # asked for the trajectory rule
    ],
)
def test_hyca_falls_back_to_the_unit_trajectories(searched, options):
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    profile = _hyca_profile(model, 9)
    profile.policies[keys.HYCA] = searched
    dit_cache.apply(model, "hyca", profile=profile, scheduler=sched, **options)
    drive(model, sched, [1.0] * 9)
    policy = model._dit_cache.engine.policy
    assert list(policy.sources.values()) == ["unit trajectories"]
    expected = {(0, "attn"): 1, (0, "ff"): 0, (1, "attn"): 2 if 2 in policy.config.solvers else 1, (1, "ff"): 0}
    assert list(policy._solvers.values()) == [expected]


def test_hyca_given_unit_solvers_need_no_profile():
    model, sched = DummyDiT(num_blocks=2), FakeScheduler(9)
    dit_cache.apply(model, "hyca", interval=2, unit_solvers=[0, 2, 1, 0], scheduler=sched)
    drive(model, sched, [1.0] * 9)
    assert _orders(model) == {(0, "attn"): 0, (0, "ff"): 2, (1, "attn"): 1, (1, "ff"): 0}
    assert list(model._dit_cache.engine.policy.sources.values()) == ["given"]
    dit_cache.remove(model)
    with pytest.raises(ValueError, match=r"unit_solvers has 3 solvers, this model has 4 .*0\.attn, 0\.ff, 1\.attn"):
        dit_cache.apply(model, "hyca", interval=2, unit_solvers=[0, 1, 2], scheduler=sched)
    with pytest.raises(ValueError, match=r"hyca: unit_solvers must be .* among solvers=\(0, 1\), got \[0, 2\]"):
        dit_cache.HyCa(solvers=(0, 1), unit_solvers=[0, 2])


def test_hyca_section_is_checked():
    bad = HyCaSection(units=UNITS, assignments={SCHEDULE: {"solvers": [0, 1], "error": 0.1}}).to_dict()
    with pytest.raises(Exception, match=r"has 2 solvers for 4 units"):
        HyCaSection.read(bad)
    with pytest.raises(Exception, match=r"assignments"):
        HyCaSection.read({"assignments": {SCHEDULE: {"solvers": [3]}}})


def test_coordinate_descent_keeps_exactly_the_changes_that_lower_the_error(monkeypatch):
    """A synthetic additive error: unit u with solver s costs COST[u][s]. Uniform order 1 is the best uniform
    (3.0 < 3.3, 4.0), and one pass over the units moves unit 0 to order 0 and unit 2 to order 2 (each strictly
    lower), unit 1 stays (order 0 ties, order 2 is worse): 3 uniform + 2 x 3 trials."""
    cost = [[0.1, 1.0, 2.0], [1.0, 1.0, 1.5], [2.2, 1.0, 0.0]]
    seen = []

    def fake(pipe, transformer, jobs, references, call_kwargs, config):
        seen.append(config.unit_solvers)
        return [sum(cost[u][s] for u, s in enumerate(config.unit_solvers))]

    monkeypatch.setattr(hyca_search, "output_errors", fake)
    found = search_one(None, None, [], [], None, 2.0, units=3, sweeps=2)
    assert found["uniform"] == pytest.approx([3.3, 3.0, 3.5])
    assert found["solvers"] == [0, 1, 2] and found["error"] == pytest.approx(1.1)
    assert seen[:9] == [(0, 0, 0), (1, 1, 1), (2, 2, 2), (0, 1, 1), (2, 1, 1), (0, 0, 1), (0, 2, 1), (0, 1, 0),
                        (0, 1, 2)]  # fmt: skip
    assert found["evaluations"] == len(seen) == 9 + 6  # the second pass changes nothing and ends the search
    assert search_one(None, None, [], [], None, 2.0, units=3, sweeps=0)["solvers"] == [1, 1, 1]


def test_coordinate_descent_takes_no_change_that_raises_a_jobs_error(monkeypatch):
    """Two jobs: unit 0 at order 0 lowers the mean (0.5 + 2.0 < 1.5 + 1.5) but raises job 2's error: not kept;
    unit 1 at order 2 lowers both: kept."""
    errors = {(1, 1): [1.5, 1.5], (0, 1): [0.5, 2.0], (2, 1): [2.0, 2.0], (1, 0): [3.0, 3.0], (1, 2): [1.0, 1.4]}
    errors |= {(0, 0): [9.0, 9.0], (2, 2): [9.0, 9.0]}
    monkeypatch.setattr(hyca_search, "output_errors", lambda *args: errors[args[-1].unit_solvers])
    found = search_one(None, None, [], [], None, 2.0, units=2, sweeps=1)
    assert found["solvers"] == [1, 2] and found["job_errors"] == [1.0, 1.4]
    assert found["error"] == pytest.approx(1.2) and found["uniform"] == pytest.approx([9.0, 1.5, 9.0])


# ---------------------------------------------------------------------------------------------------- pipeline
PROMPTS = ["a red circle on stripes", "a blue square on dots"]
STEPS = 8


@pytest.fixture(scope="module")
def searched():
    pipe = tiny_text_flux(num_layers=1, num_single_layers=1)  # 6 units: a pass is 12 runs
    settings = CalibrationSettings(steps=STEPS, call_kwargs=TINY_TEXT_CALL, seeds=(0,))
    profile = calibrate(pipe, PROMPTS[:1], settings, progress=False, hyca_targets=[2.0], hyca_prompts=1)
    return pipe, settings, profile


def test_search_through_a_pipeline(searched, tmp_path):
    pipe, settings, profile = searched
    section = profile.section(HyCaSection)
    with dit_cache.cached(pipe, "fora"):
        units = len(section.units)
    (key, found), *others = section.assignments.items()
    assert not others and section.prompts == 1
    with dit_cache.cached(pipe, "hyca", speedup=2.0, profile=profile):
        computed = dit_cache.cache_engine(pipe).policy.computed(STEPS)
    assert key == hyca_schedule_key(STEPS, computed)
    assert found["evaluations"] == 3 + 2 * units  # one pass (sweeps=1)
    assert found["error"] <= min(found["uniform"]) and found["error"] > 0
    # the policy reads it, and a run of it on the searched job reproduces the stored error exactly
    jobs = jobs_of(PROMPTS, (0,))[:1]
    kwargs = lambda prompt, seed: settings.pipeline_kwargs(prompt, seed)  # noqa: E731
    references = [pipe(**kwargs(prompt, seed)).images for _, prompt, seed in jobs]
    config = dit_cache.HyCa(speedup=2.0, profile=profile)
    assert output_errors(pipe, pipe.transformer, jobs, references, kwargs, config) == [found["error"]]
    with dit_cache.cached(pipe, config):
        pipe(**kwargs(PROMPTS[0], 0))
        policy = dit_cache.cache_engine(pipe).policy
        assert set(policy.sources.values()) == {"output search"}
        assert all(list(picks.values()) == found["solvers"] for picks in policy._solvers.values())
    # saved and loaded with the profile; a second search of the same schedule reruns nothing
    loaded = Profile.load(profile.save(tmp_path / "p.json"))
    assert loaded.policies[keys.HYCA] == profile.policies[keys.HYCA]
    assert search_hyca(pipe, loaded, jobs, kwargs, [2.0])["assignments"] == section.assignments


def test_search_bad_input(searched):
    pipe, settings, profile = searched
    jobs = jobs_of(PROMPTS, (0,))[:1]
    with pytest.raises(ValueError, match=r"--hyca-targets must be speedups above 1, got \[1.0\]"):
        search_hyca(pipe, profile, jobs, settings.pipeline_kwargs, [1.0])
    with pytest.raises(ValueError, match="--hyca-sweeps must be 0 or more, got -1"):
        search_hyca(pipe, profile, jobs, settings.pipeline_kwargs, [2.0], sweeps=-1)
    with pytest.raises(ValueError, match="--hyca-targets needs the whole profile"):
        calibrate(pipe, PROMPTS, settings, progress=False, world_size=2, hyca_targets=[2.0])
    bare = Profile(fingerprint=profile.fingerprint)
    with pytest.raises(ProfileError, match="--hyca-targets"):
        dit_cache.apply(pipe, "hyca", speedup=2.0, profile=bare)


def test_cli_hyca_targets(tmp_path, factory_module, capsys):
    """`--hyca-sweeps 0`: the best uniform order only (3 runs), saved in the profile and printed."""
    from dit_cache.cli import main

    pipeline = factory_module("tiny_text_flux(num_layers=1, num_single_layers=1)")
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    code = main(
        ["calibrate", "--pipeline", pipeline, "--prompts", "prompts.txt", "--steps", str(STEPS),
         "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--out", "p.json", "--hyca-targets", "2", "--hyca-prompts", "1",
         "--hyca-sweeps", "0", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    section = Profile.load(tmp_path / "p.json").section(HyCaSection)
    (found,) = section.assignments.values()
    best = min(range(3), key=lambda s: (found["uniform"][s], s))
    assert found["evaluations"] == 3 and found["solvers"] == [best] * len(section.units)
    assert found["error"] == found["uniform"][best]
    assert "hyca 2x: units by solver" in capsys.readouterr().out


def test_resumed_calibration_keeps_the_searched_assignments(searched, tmp_path, monkeypatch):
    """A resumed run keeps the schedules already searched and searches only the new targets."""
    pipe, settings, _ = searched
    out = tmp_path / "p.json"
    first = calibrate(pipe, PROMPTS[:1], settings, out, progress=False, hyca_targets=[2.0], hyca_sweeps=0)
    kept = dict(first.policies[keys.HYCA]["assignments"])
    runs = []
    real = hyca_search.output_errors
    monkeypatch.setattr(hyca_search, "output_errors", lambda *args: runs.append(args[-1].speedup) or real(*args))
    again = calibrate(pipe, PROMPTS[:1], settings, out, resume=True, progress=False, hyca_targets=[2.0, 3.0],
                      hyca_sweeps=0)  # fmt: skip
    assignments = Profile.load(out).policies[keys.HYCA]["assignments"]
    assert runs == [3.0] * 3 and len(assignments) == 2
    assert all(assignments[key] == found for key, found in kept.items())
    assert again.policies[keys.HYCA]["assignments"] == assignments
