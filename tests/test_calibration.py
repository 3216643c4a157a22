"""Calibration: the CLI end to end on a tiny text-prompted pipeline, profile round trips, resume and shard merge
equal to one uninterrupted run, speedup targets, bad input."""

import json
import textwrap

import pytest
import torch

import dit_cache
from dit_cache.calibration import Profile, ProfileError, model_fingerprint
from dit_cache.calibration.runner import CalibrationSettings, calibrate, merge_shards
from dit_cache.cli import main
from dit_cache.testing import TINY_TEXT_CALL, tiny_text_flux

PROMPTS = ["a red circle on stripes", "a blue square on dots", "a green triangle"]
SETTINGS = CalibrationSettings(steps=8, call_kwargs=TINY_TEXT_CALL, seeds=(0,))


@pytest.fixture(scope="module")
def pipe():
    return tiny_text_flux()


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    """One uninterrupted single-process calibration over PROMPTS."""
    return calibrate(pipe, PROMPTS, SETTINGS, tmp_path_factory.mktemp("ref") / "p.json", progress=False)


def _same(a: Profile, b: Profile) -> None:
    assert a.to_dict() == b.to_dict()
    assert sorted(a.arrays) == sorted(b.arrays)
    for key in a.arrays:
        torch.testing.assert_close(a.arrays[key], b.arrays[key], rtol=0, atol=0, equal_nan=True, msg=key)


def test_cli_calibrates_a_factory_pipeline_and_the_profile_drives_policies(tmp_path, factory_module, pipe):
    pipeline = factory_module()
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    code = main(
        ["calibrate", "--pipeline", pipeline, "--prompts", "prompts.txt", "--steps", "8",
         "--call-kwargs", json.dumps(TINY_TEXT_CALL), "--out", "out/profile.json"]
    )  # fmt: skip
    assert code == 0
    profile = Profile.load(tmp_path / "out/profile.json", model=pipe.transformer)
    assert profile.prompts == 3 and profile.grid_kind == "sigma"
    cond = profile.branches["cond"]
    assert len(cond["mag_ratio"]) == 8 and cond["mag_ratio"][0] == 1.0
    assert cond["grid"][0] == 0.0 and cond["grid"][-1] == 1.0
    assert len(profile.policies["teacache"]["coefficients"]) == 5
    assert profile.arrays["lemica/edges"].shape == (8, 8)
    # the profile's numbers are used, not re-derived
    dit_cache.apply(pipe, "teacache", profile=str(tmp_path / "out/profile.json"))
    assert pipe.transformer._dit_cache.engine.policy.coefficients == tuple(profile.policies["teacache"]["coefficients"])
    dit_cache.remove(pipe)


def test_profile_save_load_round_trip(reference, tmp_path):
    path = reference.save(tmp_path / "copy.json")
    _same(Profile.load(path), reference)


def test_resumed_calibration_equals_uninterrupted(pipe, reference, tmp_path):
    out = tmp_path / "resumed.json"
    calls = {"n": 0}

    def interrupt(module, args):
        calls["n"] += 1
        if calls["n"] == 8 + 5:  # in the middle of the second generation
            raise KeyboardInterrupt

    handle = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            calibrate(pipe, PROMPTS, SETTINGS, out, progress=False)
    finally:
        handle.remove()
    assert Profile.load(out).prompts == 1  # what was recorded before the interruption is kept
    with pytest.raises(ValueError, match="pass resume=True"):
        calibrate(pipe, PROMPTS, SETTINGS, out, progress=False)
    _same(calibrate(pipe, PROMPTS, SETTINGS, out, resume=True, progress=False), reference)
    assert not dit_cache.is_applied(pipe)


def test_shard_merge_equals_single_process(pipe, reference, tmp_path):
    shards = [
        calibrate(pipe, PROMPTS, SETTINGS, tmp_path / f"shard{r}.json", rank=r, world_size=2, progress=False)
        for r in range(2)
    ]
    assert [s.prompts for s in shards] == [2, 1]
    merged = merge_shards([tmp_path / "shard0.json", tmp_path / "shard1.json"], tmp_path / "merged.json")
    merged.source = reference.source
    _same(merged, reference)
    assert main(["calibrate", "merge", str(tmp_path / "shard0.json"), str(tmp_path / "shard1.json"),
                 "--out", str(tmp_path / "cli.json")]) == 0  # fmt: skip
    _same(Profile.load(tmp_path / "cli.json"), Profile.load(tmp_path / "merged.json"))


def test_merging_shards_of_different_settings_is_refused(pipe, reference, tmp_path):
    other = calibrate(pipe, PROMPTS[:1], CalibrationSettings(steps=6, call_kwargs=TINY_TEXT_CALL), progress=False)
    with pytest.raises(ProfileError, match="different sampler"):
        from dit_cache.calibration.fit import merge_profiles

        merge_profiles([reference, other])


@pytest.mark.parametrize("policy", ["teacache", "magcache", "fbcache", "lemica"])
def test_speedup_target_uses_the_profile(pipe, reference, policy):
    """On the calibration prompts, speedup=2 gives a compute fraction near 1/2 (8 steps: coarse granularity)."""
    fractions = []
    dit_cache.apply(pipe, policy, speedup=2.0, profile=reference)
    try:
        for prompt in PROMPTS:
            pipe(**SETTINGS.pipeline_kwargs(prompt, 0, None))
            fractions.append(dit_cache.stats(pipe).compute_fraction)
    finally:
        dit_cache.remove(pipe)
    assert abs(sum(fractions) / len(fractions) - 0.5) <= 0.1


def test_reapplying_a_speedup_target_reuses_its_search(pipe, reference, monkeypatch):
    """What speedup= resolved to is shared by later applications of the same config to the same transformer (the
    evaluation re-applies between timed runs): same decisions, no second search; another target searches again."""
    from dit_cache.policies import step

    searches = []
    original = step.search_threshold
    monkeypatch.setattr(step, "search_threshold", lambda *a, **k: searches.append(1) or original(*a, **k))
    decisions = []
    for speedup in (2.5, 2.5, 1.7):
        with dit_cache.cached(pipe, "teacache", speedup=speedup, profile=reference):
            pipe(**SETTINGS.pipeline_kwargs(PROMPTS[0], 0, None))
            decisions.append(dit_cache.stats(pipe).decisions())
    assert len(searches) == 2 and decisions[0] == decisions[1]


def test_speedup_at_another_step_count(pipe, reference):
    dit_cache.apply(pipe, "magcache", speedup=2.0, profile=reference)
    try:
        pipe(prompt=PROMPTS[0], num_inference_steps=16, output_type="latent", **TINY_TEXT_CALL)
        stats = dit_cache.stats(pipe)
    finally:
        dit_cache.remove(pipe)
    assert stats.calls == 16 and abs(stats.compute_fraction - 0.5) <= 0.1


def test_speedup_above_what_the_schedule_allows(pipe, reference):
    # LeMiCa solves for each call's own step count (issue 10): what 8 steps cannot reach fails on the first 8-step call
    dit_cache.apply(pipe, "lemica", speedup=6.0, profile=reference)
    with pytest.raises(ValueError, match="out of reach at 8 steps: the closest setting gives compute fraction 0.250"):
        pipe(prompt=PROMPTS[0], num_inference_steps=8, output_type="latent", **TINY_TEXT_CALL)
    dit_cache.remove(pipe)
    dit_cache.apply(pipe, "teacache", speedup=7.0, profile=reference)
    with pytest.raises(ValueError, match="above what this policy can reach"):
        pipe(prompt=PROMPTS[0], num_inference_steps=8, output_type="latent", **TINY_TEXT_CALL)
    dit_cache.remove(pipe)


# ---------------------------------------------------------------------------------------------------- bad input
def test_profile_files_that_cannot_be_used(reference, tmp_path, pipe):
    path = reference.save(tmp_path / "p.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ProfileError, match="truncated or corrupted"):
        Profile.load(path)
    data = json.loads(text)
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="format version 99"):
        Profile.load(path)
    path.write_text(text)
    (tmp_path / "p.safetensors").write_bytes(b"garbage")
    with pytest.raises(ProfileError, match="missing or corrupted"):
        Profile.load(path)
    other = tiny_text_flux(num_layers=3)
    reference.save(tmp_path / "q.json")
    with pytest.raises(ProfileError) as err:
        Profile.load(tmp_path / "q.json", model=other.transformer)
    assert str(model_fingerprint(other.transformer)["config_hash"]) in str(err.value)
    assert reference.fingerprint["config_hash"] in str(err.value)


def test_cli_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "sidefx.py").write_text(
        textwrap.dedent(
            """
            import pathlib
            def make():
                pathlib.Path("factory-ran").write_text("")
                from dit_cache.testing import tiny_text_flux
                return tiny_text_flux()
            def nothing():
                return None
            """
        )
    )
    base = ["calibrate", "--pipeline", "sidefx:make", "--out", "p.json"]
    assert main([*base, "--prompts", "missing.txt"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--prompts", "empty.txt"]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert main([*base, "--prompts", "prompts.txt", "--steps", "1"]) == 2
    assert "at least 2 steps" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["calibrate", "--pipeline", "sidefx:make", "--prompts", "prompts.txt", "--out", "file/p.json"]) == 2
    assert "cannot write the profile" in capsys.readouterr().err
    assert not (tmp_path / "factory-ran").exists()  # every error above came before any model was built
    with pytest.raises(SystemExit, match="returned NoneType, not a diffusers pipeline"):
        main(["calibrate", "--pipeline", "sidefx:nothing", "--prompts", "prompts.txt", "--out", "p.json"])


def test_block_traces_on_request(pipe):
    settings = CalibrationSettings(steps=4, call_kwargs=TINY_TEXT_CALL, block_traces=True)
    profile = calibrate(pipe, PROMPTS[:1], settings, progress=False)
    table = profile.arrays["cond/block_residual_change"]
    assert table.shape == (4, 4)  # steps x blocks (2 double + 2 single)
    assert torch.isnan(table[0]).all() and torch.isfinite(table[1:]).all()
    assert "cond/block_residual_change" not in calibrate(pipe, PROMPTS[:1], SETTINGS, progress=False).arrays


def test_global_edges_replayed_equal_full_regeneration(pipe, monkeypatch):
    """LeMiCa's global edges replay the reference run's transformer outputs up to step i: bitwise the weights that
    regenerating every segment in full gives, with fewer transformer calls; the transformer is left as it was."""
    from dit_cache.calibration.replay import Replay
    from dit_cache.calibration.runner import global_edges
    from dit_cache.eval.counting import WorkCounter

    settings = CalibrationSettings(steps=6, call_kwargs=TINY_TEXT_CALL, lemica="global", lemica_max_span=3)
    with WorkCounter(pipe) as replayed_calls:
        replayed = global_edges(pipe, settings, "a red circle", 0)
    assert "forward" not in pipe.transformer.__dict__  # the class's forward again

    class NoReplay(Replay):
        def replaying(self, until):
            return super().replaying(0)

    monkeypatch.setattr("dit_cache.calibration.runner.Replay", NoReplay)
    with WorkCounter(pipe) as full_calls:
        full = global_edges(pipe, settings, "a red circle", 0)
    assert (replayed == full).all()  # inf where no edge, equal floats elsewhere
    assert replayed_calls.calls < full_calls.calls


def test_global_edges_with_forecast_replay_exactly_and_differ_from_plain_reuse(pipe, monkeypatch):
    """Edges for LeMiCa(forecast=1) run each segment with the forecast, replaying one step less (the forecast's
    history must run through dit_cache): bitwise the full regeneration; and not the plain-reuse edges."""
    from dit_cache.calibration.replay import Replay
    from dit_cache.calibration.runner import global_edges

    settings = CalibrationSettings(steps=6, call_kwargs=TINY_TEXT_CALL, lemica="global", lemica_max_span=3)
    replayed = global_edges(pipe, settings, "a red circle", 0, forecast=1)
    plain = global_edges(pipe, settings, "a red circle", 0)

    class NoReplay(Replay):
        def replaying(self, until):
            return super().replaying(0)

    monkeypatch.setattr("dit_cache.calibration.runner.Replay", NoReplay)
    assert (replayed == global_edges(pipe, settings, "a red circle", 0, forecast=1)).all()
    finite = torch.isfinite(torch.as_tensor(replayed)) & (torch.as_tensor(replayed) > 0)
    assert finite.any() and not (torch.as_tensor(replayed)[finite] == torch.as_tensor(plain)[finite]).all()


def test_lemica_with_forecast_solves_on_the_edges_measured_with_it(pipe, tmp_path):
    settings = CalibrationSettings(steps=6, call_kwargs=TINY_TEXT_CALL, lemica="global", lemica_max_span=3,
                                   lemica_forecast=(1, 0))  # fmt: skip
    assert settings.lemica_forecast == (0, 1) and settings.to_dict()["lemica_forecast"] == [0, 1]
    assert "lemica_forecast" not in SETTINGS.to_dict()  # the default keeps older profiles resumable
    profile = calibrate(pipe, PROMPTS[:1], settings, tmp_path / "p.json", progress=False)
    loaded = Profile.load(tmp_path / "p.json")
    assert loaded.arrays["lemica/edges_forecast1"].shape == (6, 6)
    assert not torch.equal(loaded.arrays["lemica/edges_forecast1"], loaded.arrays["lemica/edges"])
    dit_cache.apply(pipe, "lemica", speedup=2.0, forecast=1, profile=profile)
    try:
        assert pipe.transformer._dit_cache.engine.policy.edges is profile.arrays["lemica/edges_forecast1"]
    finally:
        dit_cache.remove(pipe)
    with pytest.raises(ValueError, match="lemica_forecast must list forecast orders 0, 1 or 2"):
        CalibrationSettings(lemica_forecast=(3,))


def test_resume_on_another_prompt_list_is_refused_naming_the_first_difference(pipe, reference, tmp_path):
    out = reference.save(tmp_path / "done.json")
    assert Profile.load(out).policies["calibration_prompts"]["labels"] == PROMPTS
    changed = [PROMPTS[0], "a yellow star", PROMPTS[2]]
    with pytest.raises(ProfileError, match="the first difference is prompt 2: 'a blue square on dots' in the "
                                           "profile, 'a yellow star' in this run"):  # fmt: skip
        calibrate(pipe, changed, SETTINGS, out, resume=True, progress=False)
    with pytest.raises(
        ProfileError, match=r"prompt 3: 'a green triangle' in the profile, none \(this list is shorter\)"
    ):
        calibrate(pipe, PROMPTS[:2], SETTINGS, out, resume=True, progress=False)
    with pytest.raises(
        ProfileError, match=r"prompt 4: none \(its list is shorter\) in the profile, 'a cat' in this run"
    ):
        calibrate(pipe, [*PROMPTS, "a cat"], SETTINGS, out, resume=True, progress=False)
    # a profile written before prompt lists were kept: its recorded jobs are compared
    legacy = reference.copy()
    del legacy.policies["calibration_prompts"]
    out = legacy.save(tmp_path / "legacy.json")
    with pytest.raises(ProfileError, match="prompt 2: 'a blue square on dots' in the profile, 'a yellow star'"):
        calibrate(pipe, changed, SETTINGS, out, resume=True, progress=False)
    assert not dit_cache.is_applied(pipe)


def test_cli_refuses_call_kwargs_the_pipeline_does_not_take(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "factory.py").write_text("from dit_cache.testing import tiny_text_flux\n\ndef make():\n"
                                         "    return tiny_text_flux()\n")  # fmt: skip
    base = ["calibrate", "--pipeline", "factory:make", "--prompts", "prompts.txt", "--out", "sub/p.json"]
    assert main([*base, "--call-kwargs", '{"bogus_kw": 1}']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dit-cache: error: --call-kwargs: FluxPipeline takes no argument 'bogus_kw'; remove it")
    assert main([*base, "--call-kwargs", '{"true_cfg_scal": 2}']) == 2
    assert "(did you mean true_cfg_scal -> true_cfg_scale?)" in capsys.readouterr().err
    assert main([*base, "--call-kwargs", "not json"]) == 2
    assert "--call-kwargs 'not json' is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()  # no profile, and no folder for it


@pytest.mark.pipeline
def test_cli_calibrates_a_zoo_model_with_its_own_settings(tmp_path, monkeypatch):
    """`--model zoo:NAME` calls the pipeline with the zoo's settings (64x64, 9 frames, 12 text tokens, CFG 4), as
    eval and demo do; --call-kwargs overrides them."""
    from dit_cache.eval import zoo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "p.txt").write_text("a red circle moving left on stripes\n")
    base = ["calibrate", "--model", "zoo:shapes-video", "--prompts", str(tmp_path / "p.txt"), "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "zoo.json")]) == 0
    profile = Profile.load(tmp_path / "zoo.json")
    expected = zoo.settings("shapes-video")
    del expected["num_inference_steps"]
    assert profile.policies["calibration"]["call_kwargs"] == expected
    assert profile.sampler["steps"] == 2 and sorted(profile.branches) == ["cond", "uncond"]  # CFG against ""
    assert main([*base, "--call-kwargs", '{"guidance_scale": 1.0}', "--out", str(tmp_path / "nocfg.json")]) == 0
    profile = Profile.load(tmp_path / "nocfg.json")
    assert profile.policies["calibration"]["call_kwargs"] == dict(expected, guidance_scale=1.0)
    assert "uncond" not in profile.branches  # the override reached the pipeline


def test_merging_shards_of_different_prompt_lists_is_refused(pipe, tmp_path):
    calibrate(pipe, PROMPTS[:2], SETTINGS, tmp_path / "s0.json", rank=0, world_size=2, progress=False)
    calibrate(pipe, ["a cat", "a dog"], SETTINGS, tmp_path / "s1.json", rank=1, world_size=2, progress=False)
    with pytest.raises(ProfileError, match="different prompt lists"):
        merge_shards([tmp_path / "s0.json", tmp_path / "s1.json"], tmp_path / "merged.json")
    assert not (tmp_path / "merged.json").exists()


def test_unit_features_can_be_kept_for_the_first_jobs_only(pipe):
    """HyCa's unit features cost a few MB a job on big models: `unit_feature_prompts` keeps those of the first N."""
    settings = CalibrationSettings(steps=4, call_kwargs=TINY_TEXT_CALL, block_traces=True, unit_feature_prompts=1)
    profile = calibrate(pipe, PROMPTS[:2], settings, progress=False)
    kept = sorted({key.split("/")[1] for key in profile.arrays if key.endswith("/unit_features")})
    assert kept == ["0"] and any(key.startswith("records/1/") for key in profile.arrays)
    assert settings.to_dict()["unit_feature_prompts"] == 1 and "unit_feature_prompts" not in SETTINGS.to_dict()
    with pytest.raises(ValueError, match="unit_feature_prompts must be 0 or more"):
        CalibrationSettings(unit_feature_prompts=-1)
