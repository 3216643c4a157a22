"""The ways people run diffusers pipelines, through real tiny pipelines: inference mode, no_grad and grad enabled,
CPU offloading in either order with apply, pipelines that share a patched transformer, replaced components, and
diffusers' own caches next to dit_cache."""

import pytest
import torch

import dit_cache
from dit_cache.adapters import find_spec
from dit_cache.calibration import Profile, model_fingerprint
from dit_cache.calibration.recorder import UNIT_SAMPLES, unit_keys
from dit_cache.calibration.resample import position_grid
from dit_cache.engine import build_slots
from dit_cache.testing import run, tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 6


def _profile(transformer) -> Profile:
    """MagCache ratios, residual-error tables and unit trajectories for both CFG branches, and LeMiCa edge weights,
    for a tiny Wan at STEPS steps."""
    profile = Profile(fingerprint=model_fingerprint(transformer))
    g = torch.Generator().manual_seed(0)
    units = len(unit_keys(build_slots(transformer, find_spec(transformer))))
    profile.records = [{"index": 0, "branches": {"cond": {}, "uncond": {}}}]
    for branch in ("cond", "uncond"):
        profile.branches[branch] = {"mag_ratio": [1.0] + [1.02] * (STEPS - 1), "grid": position_grid(STEPS).tolist()}
        profile.arrays[f"{branch}/res_pairs"] = torch.tril(torch.rand(STEPS, STEPS, generator=g), -1)
        profile.arrays[f"records/0/{branch}/unit_features"] = torch.rand(STEPS, units, UNIT_SAMPLES, generator=g)
    profile.policies["lemica"] = {"num_steps": STEPS}
    profile.arrays["lemica/edges"] = torch.rand(STEPS, STEPS, generator=torch.Generator().manual_seed(0))
    runs = {"magcache@2": [0.5, 0.01], "fora@2": [0.5, 0.02]}  # auto's candidate runs: it picks MagCache at 2x
    profile.policies["auto"] = {"candidates": ["magcache", "fora"], "targets": [2.0], "runs": {"0": runs}}
    return profile


def _every_policy(transformer) -> dict:
    """Options that make each registered policy cache on a tiny Wan (its compute fraction < 1)."""
    profile = _profile(transformer)
    return {
        "teacache": dict(threshold=1.0),
        "magcache": dict(threshold=1.0, retention=0.1, profile=profile),
        "fbcache": dict(threshold=10.0),
        "fora": dict(interval=2),
        "schedule": dict(steps=(0, 3)),
        "lemica": dict(budget=3, profile=profile),
        "toca": {},
        "cfg": dict(interval=2),
        "bwcache": dict(threshold=10.0),
        "taylorseer": dict(interval=2),
        "mix": dict(reuse_threshold=0.5, token_threshold=1.0),
        "easycache": dict(tolerance=10.0, warmup=0.0),
        "ertacache": dict(threshold=10.0, profile=profile),
        "hyca": dict(interval=2, warmup=1, profile=profile),
        "auto": dict(speedup=2.0, profile=profile),
    }


@pytest.fixture(scope="module")
def wan():
    return tiny_pipeline("wan")


def test_every_policy_is_covered(wan):
    assert sorted(_every_policy(wan.transformer)) == sorted(set(dit_cache.policy_names()) - {"recorder"})


def _with_grad(pipe) -> torch.Tensor:
    """The pipeline call without the `torch.no_grad()` its `__call__` is decorated with: autograd records."""
    out = type(pipe).__call__.__wrapped__(pipe, **tiny_inputs("wan", steps=STEPS))
    assert torch.is_grad_enabled()
    return out.frames


@pytest.mark.parametrize("policy", sorted(set(dit_cache.policy_names()) - {"recorder"}))
def test_every_policy_runs_under_inference_mode_no_grad_and_grad(wan, policy):
    options = _every_policy(wan.transformer)[policy]
    with dit_cache.cached(wan, policy, **options):
        with torch.inference_mode():
            inference = run(wan, "wan", steps=STEPS)
        fraction = dit_cache.stats(wan).compute_fraction
        no_grad = run(wan, "wan", steps=STEPS)
        assert dit_cache.stats(wan).compute_fraction == fraction
        with_grad = _with_grad(wan)
        assert dit_cache.stats(wan).compute_fraction == fraction
    assert fraction < 1
    assert inference.is_inference() and not no_grad.requires_grad and with_grad.requires_grad
    assert torch.equal(inference, no_grad) and torch.equal(with_grad.detach(), no_grad)


# ------------------------------------------------------------------------------------------------ offloading
CPU = torch.device("cpu")


def _model_offload(pipe):
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate's CpuOffload hooks run on CPU too (cpu -> cpu)


def _group_offload(pipe):
    pipe.enable_group_offload(onload_device=CPU, offload_type="block_level", num_blocks_per_group=2)


def _leaf_offload(pipe):
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(pipe.transformer, onload_device=CPU, offload_type="leaf_level")


def _align_devices(pipe):
    """The hooks `enable_sequential_cpu_offload` puts on every submodule with weights (accelerate's
    AlignDevicesHook), without moving the weights to `meta`: accelerate cannot offload to a CPU execution device
    (its post-forward fails on plain tensors), and this machine has no accelerator."""
    from accelerate.hooks import attach_align_device_hook

    attach_align_device_hook(pipe.transformer, execution_device=CPU)


OFFLOADS = {"model": _model_offload, "group": _group_offload, "leaf": _leaf_offload, "align": _align_devices}


@pytest.fixture
def offload_hook_calls(monkeypatch):
    """Counts the pre-forward calls of every offloading hook, per module."""
    from accelerate.hooks import AlignDevicesHook, CpuOffload
    from diffusers.hooks.group_offloading import GroupOffloadingHook

    calls: dict[int, int] = {}
    for cls in (CpuOffload, AlignDevicesHook, GroupOffloadingHook):

        def counted(self, module, *args, _original=cls.pre_forward, **kwargs):
            calls[id(module)] = calls.get(id(module), 0) + 1
            return _original(self, module, *args, **kwargs)

        monkeypatch.setattr(cls, "pre_forward", counted)
    return calls


@pytest.fixture(scope="module")
def cached_reference():
    """Uncached and cached ("schedule": every third step computed) outputs of a plain tiny Wan."""
    pipe = tiny_pipeline("wan")
    uncached = run(pipe, "wan", steps=STEPS)
    with dit_cache.cached(pipe, "schedule", steps=(0, 3)):
        cached = run(pipe, "wan", steps=STEPS)
        fraction = dit_cache.stats(pipe).compute_fraction
    return uncached, cached, fraction


@pytest.mark.parametrize("order", ["offload-then-apply", "apply-then-offload"])
@pytest.mark.parametrize("offload", list(OFFLOADS))
def test_offloading_keeps_caching_on_every_call_and_remove_keeps_offloading(
    offload, order, offload_hook_calls, cached_reference
):
    uncached, cached, fraction = cached_reference
    pipe = tiny_pipeline("wan")
    blocks = list(pipe.transformer.blocks)
    if order == "offload-then-apply":
        OFFLOADS[offload](pipe)
    dit_cache.apply(pipe, "schedule", steps=(0, 3))
    if order == "apply-then-offload":
        OFFLOADS[offload](pipe)
    for _ in range(3):
        offload_hook_calls.clear()
        out = run(pipe, "wan", steps=STEPS)
        assert dit_cache.stats(pipe).compute_fraction == fraction < 1
        assert torch.equal(out, cached)
        hooked = [b for b in blocks if id(b) in offload_hook_calls]
        if offload in ("group", "align"):
            # our hooks sit innermost: offloading runs for every block of every call, skipped or not
            assert hooked == blocks and {offload_hook_calls[id(b)] for b in blocks} == {2 * STEPS}
        if offload == "model":
            assert offload_hook_calls[id(pipe.transformer)] == 2 * STEPS
    dit_cache.remove(pipe)
    offload_hook_calls.clear()
    assert torch.equal(run(pipe, "wan", steps=STEPS), uncached)
    assert offload_hook_calls, "offloading hooks must still run after remove"
    if offload == "model":
        assert offload_hook_calls[id(pipe.transformer)] == 2 * STEPS
    for module in pipe.transformer.modules():  # nothing of ours is left behind
        registry = getattr(module, "_diffusers_hook", None)
        assert registry is None or not any(name.startswith("dit_cache") for name in registry.hooks)


def test_stats_refuse_to_describe_a_call_that_bypassed_the_hooks():
    pipe = tiny_pipeline("wan")
    dit_cache.apply(pipe, "schedule", steps=(0, 3))
    run(pipe, "wan", steps=STEPS)
    assert dit_cache.stats(pipe).compute_fraction < 1
    transformer = pipe.transformer
    transformer.forward = type(transformer).forward.__get__(transformer)  # what an outside wrapper may do
    run(pipe, "wan", steps=STEPS)
    with pytest.raises(RuntimeError, match="the last pipeline call ran transformer without dit_cache's hooks"):
        dit_cache.stats(pipe)
    dit_cache.apply(pipe, "schedule", steps=(0, 3), replace=True)
    run(pipe, "wan", steps=STEPS)
    assert dit_cache.stats(pipe).compute_fraction < 1


# ------------------------------------------------------------------------------------------------ shared and replaced
def _other_scheduler(family: str):
    """A scheduler with other timesteps than the family's default one."""
    import diffusers

    if family == "pixart":
        return diffusers.DDIMScheduler()
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)


@pytest.mark.parametrize("family", ["sd3", "pixart", "flux"])
def test_pipelines_sharing_a_patched_transformer_locate_on_their_own_scheduler(family):
    """`from_pipe(patched, scheduler=other)` shares the patched transformer; each pipeline's calls are located on the
    scheduler of the pipeline that calls, interleaved in any order, as if each had its own patched copy."""
    options = dict(policy="teacache", threshold=0.3)
    first = tiny_pipeline(family)
    dit_cache.apply(first, **options)
    shared = type(first).from_pipe(first, scheduler=_other_scheduler(family))
    shared.set_progress_bar_config(disable=True)
    assert shared.transformer is first.transformer
    alone = tiny_pipeline(family)  # the same weights, with the other scheduler and its own patch
    alone.scheduler = _other_scheduler(family)
    dit_cache.apply(alone, **options)
    want_alone = run(alone, family, steps=STEPS)
    assert 0 < dit_cache.stats(alone).compute_fraction < 1
    want_first = run(first, family, steps=STEPS)
    assert not torch.equal(want_first, want_alone)
    for pipe, want in ((shared, want_alone), (first, want_first), (shared, want_alone)):
        assert torch.equal(run(pipe, family, steps=STEPS), want)
        assert dit_cache.stats(pipe).records == dit_cache.stats(alone if want is want_alone else first).records


def test_transformer_patched_alone_locates_on_the_calling_pipeline():
    """`apply(pipe.transformer, ...)` without `scheduler=`: the step comes from the pipeline that calls."""
    pipe, reference = tiny_pipeline("flux"), tiny_pipeline("flux")
    dit_cache.apply(pipe.transformer, "schedule", steps=(0, 3))
    dit_cache.apply(reference, "schedule", steps=(0, 3))
    assert torch.equal(run(pipe, "flux", steps=STEPS), run(reference, "flux", steps=STEPS))
    assert dit_cache.stats(pipe.transformer).records == dit_cache.stats(reference).records


def test_replacing_a_patched_transformer_is_reported_and_leaves_no_patched_orphan():
    pipe = tiny_pipeline("wan")
    dit_cache.apply(pipe, "schedule", steps=(0, 3))
    old, new = pipe.transformer, tiny_pipeline("wan", seed=1).transformer
    pipe.transformer = new
    uncached = run(pipe, "wan", steps=STEPS)  # what happens: the new module runs uncached
    with pytest.raises(RuntimeError, match=r"pipe.transformer \(patched WanTransformer3DModel at 0x[0-9a-f]+, now "):
        dit_cache.stats(pipe)
    with pytest.warns(RuntimeWarning, match="was replaced after dit_cache.apply: the new module runs uncached"):
        assert not dit_cache.is_applied(pipe)
    with pytest.warns(RuntimeWarning, match="dit_cache.remove takes the patch off the replaced module"):
        dit_cache.remove(pipe)
    assert not hasattr(old, "_dit_cache") and not hasattr(old, "_diffusers_hook")
    assert torch.equal(run(pipe, "wan", steps=STEPS), uncached)

    dit_cache.apply(pipe, "schedule", steps=(0, 3))  # apply after a replacement takes the orphan's patch off too
    pipe.transformer = old
    with pytest.warns(RuntimeWarning, match="dit_cache.apply takes the patch off the replaced module"):
        dit_cache.apply(pipe, "schedule", steps=(0, 3))
    assert not hasattr(new, "_dit_cache") and dit_cache.is_applied(pipe)
    run(pipe, "wan", steps=STEPS)
    assert dit_cache.stats(pipe).compute_fraction < 1
    dit_cache.remove(pipe)


def test_diffusers_cache_is_refused_in_both_orders_naming_it():
    from diffusers import FirstBlockCacheConfig
    from diffusers.models.cache_utils import CacheMixin

    pipe = tiny_pipeline("wan")
    baseline = run(pipe, "wan", steps=STEPS)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(RuntimeError, match=r"transformer has a diffusers cache enabled \(FirstBlockCacheConfig\)"):
        dit_cache.apply(pipe, "teacache")
    pipe.transformer.disable_cache()

    dit_cache.apply(pipe, "teacache", threshold=0.0)
    with pytest.raises(
        RuntimeError, match="transformer has dit_cache's 'teacache' applied; diffusers' FirstBlockCache"
    ):
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    assert not pipe.transformer.is_cache_enabled
    assert torch.equal(run(pipe, "wan", steps=STEPS), baseline)
    CacheMixin.enable_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))  # around the guard
    with pytest.raises(RuntimeError, match="diffusers' FirstBlockCacheConfig would cache the same blocks"):
        run(pipe, "wan", steps=STEPS)
    pipe.transformer.disable_cache()
    dit_cache.remove(pipe)
    assert "enable_cache" not in vars(pipe.transformer)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))  # allowed again once dit_cache is off
    pipe.transformer.disable_cache()


def test_a_compiled_wrapper_is_not_a_replacement():
    """`pipe.transformer = torch.compile(pipe.transformer)` keeps the patched module under the wrapper."""
    import warnings

    pipe = tiny_pipeline("wan")
    dit_cache.apply(pipe, "schedule", steps=(0, 3))
    run(pipe, "wan", steps=STEPS)
    patched = pipe.transformer
    pipe.transformer = torch.compile(patched)  # compiled lazily, on the first call (not made here)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dit_cache.is_applied(pipe)
        assert dit_cache.stats(pipe).compute_fraction < 1
        dit_cache.remove(pipe)
    assert not hasattr(patched, "_dit_cache")


def test_diffusers_cache_hooks_placed_without_enable_cache_are_refused():
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks import apply_first_block_cache

    pipe = tiny_pipeline("wan")
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(RuntimeError, match=r"diffusers cache hooks \('fbc_leader_block_hook' on blocks.0\)"):
        dit_cache.apply(pipe, "fora")
    assert not dit_cache.is_applied(pipe)


def test_stats_of_a_call_that_ran_one_of_two_transformers_describe_that_call():
    """Wan 2.2 hands steps under a boundary to `transformer_2`; a call whose steps all stay above it leaves
    transformer_2 unrun, and stats then hold only that call's records (none of transformer_2's older ones)."""
    pipe = tiny_pipeline("wan22_a14b")  # two experts, boundary_ratio 0.5
    dit_cache.apply(pipe, "schedule", steps=(0, 3))
    run(pipe, "wan", steps=STEPS)
    assert {r.transformer for r in dit_cache.stats(pipe).records} == {"transformer", "transformer_2"}
    pipe.register_to_config(boundary_ratio=0.0)  # every step above the boundary: transformer only
    run(pipe, "wan", steps=STEPS)
    records = dit_cache.stats(pipe).records
    assert {r.transformer for r in records} == {"transformer"}
    assert sorted({r.step for r in records}) == list(range(STEPS))
    dit_cache.remove(pipe)
