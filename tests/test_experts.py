"""Wan 2.2 A14B's two experts (`transformer` for the high-noise steps, `transformer_2` for the rest, switched at
`boundary_ratio`), through the real WanPipeline with tiny random experts: each keeps its own state and starts
afresh at the switch, stats say which expert ran each step, and speedup targets count the steps of both."""

import copy

import pytest
import torch

import dit_cache
from dit_cache.calibration.runner import CalibrationSettings, calibrate
from dit_cache.schedulers.budget import replay
from dit_cache.schedulers.targets import TOLERANCE
from dit_cache.state import expert_switches
from dit_cache.testing import tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 12


@pytest.fixture(scope="module")
def experts():
    """The two-expert pipeline (boundary_ratio 0.5), its experts given the same weights so that one profile
    describes both, and the first step the pipeline hands to `transformer_2` (seen by a hook, not computed)."""
    pipe = tiny_pipeline("wan22_a14b")
    pipe.transformer_2.load_state_dict(pipe.transformer.state_dict())
    timesteps = []
    handle = pipe.transformer_2.register_forward_pre_hook(lambda m, a, k: timesteps.append(k["timestep"]), with_kwargs=True)  # fmt: skip
    pipe(**tiny_inputs("wan22_a14b", cfg=False, steps=STEPS))
    handle.remove()
    switch = [float(t) for t in pipe.scheduler.timesteps].index(float(timesteps[0][0]))
    return pipe, switch


@pytest.fixture(scope="module")
def profile(experts):
    """A profile of the first expert run alone over the whole trajectory (a one-transformer WanPipeline)."""
    import diffusers

    pipe, _ = experts
    single = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=pipe.transformer,
                                   scheduler=copy.deepcopy(pipe.scheduler))  # fmt: skip
    single.set_progress_bar_config(disable=True)
    inputs = tiny_inputs("wan22_a14b", cfg=False, steps=STEPS)
    prompt = {k: v for k, v in inputs.items() if k not in ("num_inference_steps", "output_type", "generator")}
    return calibrate(single, [prompt], CalibrationSettings(steps=STEPS), progress=False)


def _run(pipe, cfg=False):
    return pipe(**tiny_inputs("wan22_a14b", cfg=cfg, steps=STEPS)).frames


def test_the_switch_is_read_from_the_pipelines_boundary(experts):
    """boundary_ratio x num_train_timesteps, against the scheduler's timesteps: the step the pipeline really
    handed to transformer_2."""
    pipe, switch = experts
    assert 0 < switch < STEPS
    with dit_cache.cached(pipe, "fora", interval=1):
        _run(pipe)
        for name in ("transformer", "transformer_2"):
            assert getattr(pipe, name)._dit_cache.engine.locator._switches == (switch,)
    boundary = 0.5 * pipe.scheduler.config.num_train_timesteps
    assert expert_switches([float(t) for t in pipe.scheduler.timesteps], boundary) == (switch,)
    assert expert_switches([900.0, 700.0, 400.0, 100.0], None) == ()


def test_each_expert_keeps_its_own_state_and_starts_afresh_at_the_switch(experts):
    """A threshold no change reaches: each expert computes its first call (no state of the other expert serves it:
    its accumulated change starts at zero there) and reuses its own residual after it (TeaCache's last step is
    always computed)."""
    pipe, switch = experts
    engines = []
    seen = []

    def at_last_step(pipeline, i, t, kwargs):  # the states live until the pipeline call ends
        if i == STEPS - 1:
            seen.extend(engine.states["cond"] for engine in engines)
        return {}

    with dit_cache.cached(pipe, "teacache", threshold=1e9, max_skip=None):
        engines.extend(getattr(pipe, name)._dit_cache.engine for name in ("transformer", "transformer_2"))
        out = pipe(**tiny_inputs("wan22_a14b", steps=STEPS), callback_on_step_end=at_last_step).frames
        stats = dit_cache.stats(pipe)
    assert engines[0].policy is not engines[1].policy
    assert seen[0] is not seen[1] and seen[0].residual[0] is not seen[1].residual[0]
    assert (seen[0].last_computed, seen[1].last_computed) == (0, STEPS - 1)  # TeaCache computes the last step
    assert torch.isfinite(out).all()
    for branch in ("cond", "uncond"):
        assert stats.computed_steps(branch, "transformer") == [0]
        assert stats.computed_steps(branch, "transformer_2") == [switch, STEPS - 1]
        # the switch call is forced (no residual yet), not decided on a change accumulated by the other expert
        first = next(r for r in stats.records if r.transformer == "transformer_2" and r.branch == branch)
        assert first.step == switch and first.indicator is None


def test_stats_show_which_expert_ran_each_step(experts):
    pipe, switch = experts
    with dit_cache.cached(pipe, "fora", interval=2):
        _run(pipe)
        stats = dit_cache.stats(pipe)
    assert stats.steps_by_transformer() == {"transformer": list(range(switch)),
                                            "transformer_2": list(range(switch, STEPS))}  # fmt: skip
    assert [r.step for r in stats.records] == list(range(STEPS))  # in trajectory order, expert by expert
    text = stats.table()
    assert (
        f"transformer ran steps 0-{switch - 1}, computed {len(stats.computed_steps(transformer='transformer'))}" in text
    )
    assert f"transformer_2 ran steps {switch}-{STEPS - 1}" in text


@pytest.mark.parametrize("policy", ["magcache", "lemica"])
def test_speedup_counts_the_steps_of_both_experts(experts, profile, policy):
    """speedup=3 computes a third of all the steps of both experts, each expert planning on its own steps. A plan
    that ignores the switch (the single-model plan applied by each expert) computes one step more: the next
    expert's first (0.417 here, benchmarks/expert_targets.py)."""
    pipe, switch = experts
    with dit_cache.cached(pipe, policy, speedup=3.0, profile=profile):
        _run(pipe)
        stats = dit_cache.stats(pipe)
    computed = sorted(stats.computed_steps())
    assert switch in computed and 0 in computed
    assert abs(stats.compute_fraction - 1 / 3) <= TOLERANCE, stats.table()
    assert stats.compute_fraction == len(computed) / STEPS


def test_each_expert_plans_on_its_own_steps_starting_afresh():
    """A call's expert steps are the span between switches that holds it; the planning replay runs on them with a
    fresh state, as the expert does."""
    from dit_cache.policies.step import SegmentPolicy
    from dit_cache.state import CallInfo

    def expert_steps(step):
        return CallInfo("cond", None, step=step, num_steps=8, expert_switches=(5,)).expert_steps

    assert (expert_steps(0), expert_steps(4), expert_steps(5), expert_steps(7)) == (range(5), range(5), range(5, 8),
                                                                                    range(5, 8))  # fmt: skip
    assert CallInfo("cond", None, step=3, num_steps=8).expert_steps is None

    class Never(SegmentPolicy):  # computes only when forced (no residual yet)
        def __init__(self):
            self.max_skip, self.speedup, self.forecast_order = None, None, 0

        def rule(self, call, state):
            return "reused"

    assert replay(Never(), "cond", 8, None, lambda step, state: [], range(5, 8)) == ["computed", "reused", "reused"]


def test_each_expert_runs_on_its_own_profile(experts):
    """calibrate(transformer="transformer_2") records the second expert on its own steps; applied to each expert
    on its own, each plans on its own profile and steps, and both together reach the target."""
    pipe, switch = experts
    inputs = tiny_inputs("wan22_a14b", cfg=False, steps=STEPS)
    prompt = {k: v for k, v in inputs.items() if k not in ("num_inference_steps", "output_type", "generator")}
    settings = CalibrationSettings(steps=STEPS)
    profiles = {name: calibrate(pipe, [prompt], settings, progress=False, transformer=name)
                for name in ("transformer", "transformer_2")}  # fmt: skip
    sigmas = [float(s) for s in pipe.scheduler.sigmas[:STEPS]]
    assert profiles["transformer"].branches["cond"]["sigma"] == pytest.approx(sigmas[:switch])
    assert profiles["transformer_2"].branches["cond"]["sigma"] == pytest.approx(sigmas[switch:])
    for name, profile in profiles.items():
        dit_cache.apply(getattr(pipe, name), "magcache", speedup=2.0, profile=profile)
    try:
        _run(pipe)
        stats = [dit_cache.stats(getattr(pipe, name)) for name in profiles]
        assert [getattr(pipe, name)._dit_cache.engine.policy.profile for name in profiles] == list(profiles.values())
    finally:
        for name in profiles:
            dit_cache.remove(getattr(pipe, name))
    assert [s.steps_by_transformer() for s in stats] == [{"transformer": list(range(switch))},
                                                         {"transformer": list(range(switch, STEPS))}]  # fmt: skip
    computed = sum(len(s.computed_steps()) for s in stats)
    assert abs(computed / STEPS - 0.5) <= TOLERANCE
    assert stats[1].computed_steps()[0] == switch
