"""Every family of `dit_cache.testing.MORE_FAMILIES` through its real diffusers pipeline (tiny random transformer,
2 layers, a few steps): never-reuse settings are bitwise equal to the unpatched pipeline and see every step of every
CFG branch, remove() restores it exactly, and a step policy, a block policy, ToCa and (where the pipeline runs
CFG) CFG reuse and EasyCache cut the compute and stay finite. A new family is one `MORE_FAMILIES` entry plus its adapter.
(The eight families of `FAMILIES` get the same checks and more in test_pipelines.py / test_new_pipelines.py.)"""

import pytest
import torch

import dit_cache
from dit_cache.adapters import find_spec
from dit_cache.testing import MORE_FAMILIES, run, tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 4

NEVER = {
    "teacache": dit_cache.TeaCache(threshold=0.0),
    "fora": dit_cache.FORA(interval=1),
    "taylorseer": dit_cache.TaylorSeer(interval=1),
    "easycache": dit_cache.EasyCache(tolerance=0.0),
}
REUSE = {
    "teacache": dit_cache.TeaCache(threshold=10.0),
    "fora": dit_cache.FORA(interval=3),
    "toca": dit_cache.ToCa(fraction=0.25, interval=3),
    "cfg": dit_cache.CFGCache(interval=2, warmup=0.0),
    "easycache": dit_cache.EasyCache(tolerance=10.0, warmup=0.0),
}


@pytest.fixture(scope="module", params=list(MORE_FAMILIES))
def family(request):
    """(name, pipeline, whether it runs CFG, its uncached output)."""
    name = request.param
    for module in MORE_FAMILIES[name].requires:  # ConsisID's pipeline needs OpenCV (the `dev` extra installs it)
        pytest.importorskip(module, reason=f"{name}: its pipeline needs {module}")
    pipe = tiny_pipeline(name)
    cfg = MORE_FAMILIES[name].cfg
    return name, pipe, cfg, run(pipe, name, cfg=cfg, steps=STEPS)


def test_family_has_a_registered_adapter(family):
    name, pipe, _, _ = family
    assert not find_spec(pipe.transformer).name.startswith("generic"), f"{name}: no registered adapter"


def test_never_reuse_is_bitwise_uncached_and_remove_restores(family):
    name, pipe, cfg, baseline = family
    for policy, config in NEVER.items():
        with dit_cache.cached(pipe, config):
            out = run(pipe, name, cfg=cfg, steps=STEPS)
            stats = dit_cache.stats(pipe)
        assert torch.equal(out, baseline), f"{name} {policy}: never-reuse output differs from uncached"
        assert stats.compute_fraction == 1.0, f"{name} {policy}: {stats!r}"
        branches = {r.branch for r in stats.records}
        for branch in branches:  # every step found once per branch, from the timestep, not by counting calls
            assert sorted(stats.computed_steps(branch=branch)) == list(range(STEPS)), f"{name} {policy} {branch}"
        if cfg and len(branches) == 1:
            assert stats.calls == STEPS  # batched CFG: one call per step
    assert torch.equal(run(pipe, name, cfg=cfg, steps=STEPS), baseline), f"{name}: remove()"


@pytest.mark.parametrize("policy", list(REUSE))
def test_reuse_cuts_compute_and_stays_finite(family, policy, request):
    name, pipe, cfg, baseline = family
    if policy == "cfg" and not cfg:
        pytest.skip(f"{name}: the pipeline runs no classifier-free guidance")
    if policy == "easycache" and MORE_FAMILIES[name].components.get("transformer_2"):
        pytest.skip(f"{name}: {STEPS} steps over two transformers give each 2, both computed to measure the rate")
    gap = MORE_FAMILIES[name].known_gaps.get(policy)
    if gap:  # strict: once the gap is closed this fails, and the entry loses its note
        request.applymarker(pytest.mark.xfail(reason=f"{name}: {gap}", strict=True))
    with dit_cache.cached(pipe, REUSE[policy]):
        out = run(pipe, name, cfg=cfg, steps=STEPS)
        stats = dit_cache.stats(pipe)
    assert stats.compute_fraction < 0.9, f"{name} {policy}: {stats!r}"
    assert out.shape == baseline.shape and torch.isfinite(out).all(), f"{name} {policy}"
    assert not torch.equal(out, baseline), f"{name} {policy}: reuse changed nothing"
    if policy == "fora":  # remove() after a policy that kept per-block state (the others: test_pipelines.py)
        assert torch.equal(run(pipe, name, cfg=cfg, steps=STEPS), baseline), f"{name} {policy}: remove()"
    if policy == "cfg":  # both branches computed on every step: bitwise the uncached pipeline
        with dit_cache.cached(pipe, dit_cache.CFGCache(interval=1, warmup=0.0)):
            assert torch.equal(run(pipe, name, cfg=cfg, steps=STEPS), baseline), f"{name} cfg interval=1"


def test_unsupported_transformer_names_the_nearest_classes_and_how_to_register():
    class FluxTransformer3DModel(torch.nn.Module):  # no adapter and no block list
        pass

    with pytest.raises(TypeError) as err:
        dit_cache.apply(FluxTransformer3DModel(), "teacache")
    text = str(err.value)
    assert "Nearest supported classes: FluxTransformer2DModel" in text
    assert "register_adapter" in text and "docs/adapters.md" in text


def test_refused_transformer_is_refused_with_its_reason():
    from diffusers import CosmosTransformer3DModel

    model = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1, mlp_ratio=2.0,
        text_embed_dim=32, adaln_lora_dim=8, max_size=(4, 8, 8), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"CosmosTransformer3DModel: its pipelines pass the timestep in three"):
        dit_cache.apply(model, "teacache")
    assert not hasattr(model, "_dit_cache")


@pytest.mark.parametrize(
    "scale, offset, passed",
    [
        (1.0, 0.0, lambda t: t),  # SD3, Wan: the scheduler's timestep
        (1000.0, 0.0, lambda t: t / 1000),  # Flux, Qwen-Image
        (-1000.0, 1000.0, lambda t: (1000 - t) / 1000),  # Z-Image, Lumina 2: reversed
    ],
    ids=["identity", "flux", "reversed"],
)
@pytest.mark.parametrize("with_sigmas", [True, False], ids=["sigmas", "no-sigmas"])
def test_step_locator_maps_the_transformer_timestep_to_the_scheduler_step(scale, offset, passed, with_sigmas):
    """scheduler timestep = timestep_offset + timestep_scale * the transformer's timestep: every step of a shifted
    schedule is found from what the pipeline passes, and the sigma fallback (a scheduler without sigmas) goes
    through the same map."""
    from types import SimpleNamespace

    from dit_cache.state import CallInfo, StepLocator

    timesteps = torch.tensor([1000.0, 937.5, 812.5, 600.0, 312.5, 62.5])
    sigmas = torch.cat([timesteps / 1000, torch.zeros(1)]) if with_sigmas else None
    scheduler = SimpleNamespace(timesteps=timesteps, sigmas=sigmas)
    locator = StepLocator(lambda: scheduler, timestep_scale=scale, timestep_offset=offset)
    for step, t in enumerate(timesteps.tolist()):
        call = CallInfo(branch="batch", timestep=torch.tensor([passed(t)]))
        locator.locate(call, float(torch.tensor(passed(t), dtype=torch.float32)))
        assert (call.step, call.num_steps) == (step, len(timesteps))
        assert call.sigma == pytest.approx(t / 1000, abs=1e-6)


def test_registered_and_refused_classes_are_diffusers_classes():
    """Adapters and refusals are looked up by class name: a typo would silently never match."""
    import diffusers

    from dit_cache import adapters
    from dit_cache.adapters import catalog

    # the built-in adapters only: tests register adapters of their own dummy models in the same registry
    builtin = [m.SPEC for m in (adapters.flux, adapters.wan, adapters.hunyuan_video, adapters.cogvideox, adapters.ltx,
                                adapters.sd3, adapters.pixart, adapters.qwenimage)] + list(catalog.SPECS)  # fmt: skip
    shipped = {name for spec in builtin for name in spec.class_names}
    names = shipped | set(catalog.REFUSED)
    assert not set(catalog.REFUSED) & shipped
    missing = [name for name in sorted(names) if not hasattr(diffusers, name)]
    assert not missing, f"not diffusers classes: {missing}"


def test_sequential_cfg_without_cache_context_keeps_the_branches_apart():
    """Chroma runs its unconditional branch as a second call of each step and names neither. Where its embeddings
    cannot be read (the spec names none here), the second call of a step gets its own state (never the other
    branch's features), so caching works and matches a run whose calls are named by cache_context."""
    from dataclasses import replace

    pipe = tiny_pipeline("chroma")
    transformer = pipe.transformer
    original = type(transformer)
    names = []

    class Named(original):  # the same model, its calls named the way Wan's pipeline names them
        def __call__(self, *args, **kwargs):
            names.append("uncond" if kwargs["encoder_hidden_states"] is self.negative else "cond")
            with self.cache_context(names[-1]):
                return super().__call__(*args, **kwargs)

    def guided():
        kw = {**tiny_inputs("chroma", cfg=True, steps=6), "guidance_scale": 4.0}
        transformer.negative = kw["negative_prompt_embeds"]
        return pipe(**kw).images

    with dit_cache.cached(pipe, "fora", interval=2):
        engine = transformer._dit_cache.engine
        spec, engine.spec = engine.spec, replace(engine.spec, cfg_embeds=())
        plain = guided()
        stats = dit_cache.stats(pipe)
        engine.spec = spec
        transformer.__class__ = Named
        try:
            named = guided()
        finally:
            transformer.__class__ = original
    assert names == ["cond", "uncond"] * 6
    assert {r.branch for r in stats.records} == {"batch", "batch:2"}
    assert stats.compute_fraction == 0.5
    assert torch.isfinite(plain).all()
    assert torch.equal(plain, named)


def test_a_branch_whose_batch_changes_mid_trajectory_starts_afresh():
    """Z-Image's cfg_truncation drops the unconditional half of its batched CFG call on the late steps: features
    kept at batch 2 cannot serve batch 1, so the branch starts afresh there (a reused residual used to broadcast to
    two images, and FORA's to crash the pipeline's unpatchify)."""
    pipe = tiny_pipeline("z_image")

    def truncated():
        return pipe(**{**tiny_inputs("z_image", cfg=True, steps=6), "cfg_truncation": 0.5}).images

    batches = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    baseline = truncated()
    handle.remove()
    switch = 4  # the first step whose (1000 - t) / 1000 exceeds 0.5 (not a step FORA computes anyway)
    assert batches == [2] * switch + [1] * (6 - switch)
    with dit_cache.cached(pipe, "teacache", threshold=0.0):
        assert torch.equal(truncated(), baseline)
    with dit_cache.cached(pipe, "fora", interval=3):
        out = truncated()
        stats = dit_cache.stats(pipe)
    assert stats.computed_steps() == [0, 3, switch]
    assert out.shape == baseline.shape and torch.isfinite(out).all()


def test_guider_branch_names_are_read_as_cond_and_uncond():
    """HunyuanVideo 1.5's guider names its CFG calls `pred_cond` / `pred_uncond`: CFG reuse rebuilds the
    unconditional one, and stats name the branches as every other pipeline's."""
    pipe = tiny_pipeline("hunyuan_video15")
    with dit_cache.cached(pipe, "cfg", interval=2):
        run(pipe, "hunyuan_video15", steps=4)
        records = dit_cache.stats(pipe).records
    assert {r.branch for r in records} == {"cond", "uncond"}
    assert any(r.branch == "uncond" and r.decision == "reused" for r in records)


def test_qwenimage21_kv_cache_steps_change_the_token_count():
    """Qwen-Image 2.1's KV cache (use_kv_cache=True, the pipeline's default) runs step 0 on the whole sequence and
    later steps on the target tokens only: the branch's state starts afresh where its token count changes."""
    pipe = tiny_pipeline("qwenimage21")

    def cached_run():
        return pipe(**{**tiny_inputs("qwenimage21", steps=4), "use_kv_cache": True}).images

    baseline = cached_run()
    with dit_cache.cached(pipe, "taylorseer", interval=1):
        assert torch.equal(cached_run(), baseline)  # never-reuse: bitwise
    for policy, options in (("fora", dict(interval=3)), ("teacache", dict(threshold=10.0)), ("toca", {})):
        with dit_cache.cached(pipe, policy, **options):
            out = cached_run()
            stats = dit_cache.stats(pipe)
        assert stats.compute_fraction < 0.9 and torch.isfinite(out).all(), policy


@pytest.mark.parametrize("name", ["cogvideox_i2v", "consisid"])
def test_image_and_face_conditioning_reach_the_transformer(name):
    """CogVideoX I2V's image latents (on the channels) and ConsisID's face features (cross-attended between blocks)
    change the output, uncached and cached: the entries exercise the conditioning their adapters must carry."""
    for module in MORE_FAMILIES[name].requires:
        pytest.importorskip(module, reason=f"{name}: its pipeline needs {module}")
    from dit_cache.testing import _tiny_image

    pipe = tiny_pipeline(name)
    if name == "consisid":
        other = {"id_cond": -MORE_FAMILIES[name].size["id_cond"]}
    else:
        other = {"image": _tiny_image(64).transpose(0)}  # flipped left-right

    def call(**overrides):
        return pipe(**{**tiny_inputs(name, steps=STEPS), **overrides}).frames

    assert not torch.equal(call(), call(**other)), f"{name}: the condition is ignored"
    with dit_cache.cached(pipe, "fora", interval=2):
        assert not torch.equal(call(), call(**other)), f"{name}: the condition is ignored when cached"


SEQUENTIAL_CFG = ["chroma", "flux_kontext", "kandinsky5", "chronoedit", "krea2", "glm_image", "lumina2",
                  "hunyuan_video_framepack", "bria_fibo2"]  # fmt: skip


@pytest.mark.parametrize("name", SEQUENTIAL_CFG)
def test_sequential_cfg_branch_is_read_from_the_pipelines_own_embeddings(name):
    """These pipelines run CFG as two calls per step and set no cache_context: a call given the pipeline's
    `negative_prompt_embeds` is "uncond", one given its `prompt_embeds` "cond" (not the calls' order), so CFG reuse
    rebuilds the unconditional calls. Checked against the calls' real arguments, read by a hook."""
    pipe = tiny_pipeline(name)
    kw = tiny_inputs(name, cfg=True, steps=STEPS)
    negative = next(kw[key] for key in ("negative_prompt_embeds", "negative_prompt_embeds_qwen") if key in kw)
    got_negative = []

    def hook(module, args, kwargs):
        got_negative.append(any(value is negative for value in (*args, *kwargs.values())))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with dit_cache.cached(pipe, "cfg", interval=2, warmup=0.0):
            pipe(**kw)
            records = sorted(dit_cache.stats(pipe).records, key=lambda r: r.step)
    finally:
        handle.remove()
    # the hook runs before dit_cache's, on every call, rebuilt or not (FramePack: one trajectory per video section;
    # Krea 2 and Bria FIBO 2 pass embeddings derived from the ones given, so the given one never reaches the
    # transformer: the branch is still read from the pipeline's locals of those names)
    calls = len(got_negative)
    assert calls % (2 * STEPS) == 0 and calls > 0
    derived = name in ("krea2", "bria_fibo2")  # they pass embeddings derived from the given ones, under the same names
    assert got_negative == ([False] * calls if derived else [False, True] * (calls // 2))
    assert [(r.step, r.branch) for r in records] == [(s, b) for s in range(STEPS) for b in ("cond", "uncond")]
    assert [r.decision for r in records if r.branch == "uncond"] == ["computed", "reused"] * (STEPS // 2)
