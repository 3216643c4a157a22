"""Image-conditioned pipelines (Flux Kontext, FLUX.2 with a reference image, Qwen-Image-Edit, Wan 2.1 I2V, ChronoEdit)
through their real diffusers pipelines: the conditioning reaches the transformer, never-reuse settings are bitwise the unpatched
pipeline, and ToCa never drops the conditioning tokens.

"Never drop", as tested here, for a sequence that holds reference-image tokens after the generated ones:
1. every position of the sequence is a candidate of ToCa's pick, and reference tokens are picked on partial steps;
2. every position's output is its own: recomputed from its current input, or its own cached output (never
   another position's, never a zero);
3. no token, reference or generated, stays stale longer than `interval - 1` steps (full steps refresh all);
4. ToCa's spatial cells come from the tokens' positions (`img_ids`, Qwen-Image's `img_shapes`): a cell never mixes reference and generated
   tokens (or text tokens of a single-stream block), and it is a spread x spread square of one image.
(The shared checks of every family, compute cut and finite output included, are in test_families.py.)
Qwen-Image-Edit resizes its condition image to about 1024 x 1024 (`calculate_dimensions(1024 * 1024, ratio)`), too
slow for a test: its `MORE_FAMILIES` entry patches that function to 64 x 64 while the pipeline runs."""

from types import SimpleNamespace

import pytest
import torch

import dit_cache
from dit_cache.adapters import find_spec
from dit_cache.adapters.tokens import img_ids_positions, img_shapes_positions
from dit_cache.policies.grid import cell_ids
from dit_cache.policies.token import TokenMechanism, grid_of_call
from dit_cache.testing import MORE_FAMILIES, _tiny_image, tiny_inputs, tiny_pipeline

pytestmark = pytest.mark.pipeline
STEPS = 6
QWEN_EDIT = "qwen_image_edit"
CONDITIONED = ("flux_kontext", "flux2_edit", QWEN_EDIT, "wan_i2v", "chronoedit")
# generated image tokens of the pipelines whose sequence holds as many reference tokens after them, in the
# token-wise submodules ToCa picks from (Kontext: 8 x 8 packed latents; Qwen-Image-Edit: 4 x 4)
GENERATED = {"flux_kontext": 64, QWEN_EDIT: 16}


def _pipeline(name: str):
    return tiny_pipeline(name)


def _inputs(name: str, steps: int = STEPS) -> dict:
    return tiny_inputs(name, cfg=MORE_FAMILIES[name].cfg, steps=steps)  # Qwen-Image-Edit: true CFG, named


def _image_kwarg(name: str, image) -> dict:
    given = MORE_FAMILIES[name].size["image"]
    return {"image": [image] * len(given) if isinstance(given, list) else image}


def _call(pipe, name: str, **overrides) -> torch.Tensor:
    out = pipe(**{**_inputs(name), **overrides})
    return torch.as_tensor(out.frames if hasattr(out, "frames") else out.images)


@pytest.fixture(scope="module", params=CONDITIONED)
def family(request):
    """(name, pipeline, uncached output, the transformer's first call kwargs)."""
    name = request.param
    pipe = _pipeline(name)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    baseline = _call(pipe, name)
    handle.remove()
    return name, pipe, baseline, calls[0]


def test_the_condition_image_reaches_the_transformer(family):
    name, pipe, baseline, kwargs = family
    if name in ("flux_kontext", "flux2_edit", QWEN_EDIT):  # reference tokens appended, their own first position
        ids = find_spec(pipe.transformer).tokens.positions(kwargs)  # as the family's adapter reads them
        assert kwargs["hidden_states"].shape[1] == ids.shape[0] > baseline.shape[1]
        images = 1 + len(MORE_FAMILIES[name].size["image"]) if name == "flux2_edit" else 2  # FLUX.2: two references
        assert len(set(ids[:, 0].tolist())) == images
    else:  # Wan I2V, ChronoEdit: latents of the image on the channels, its CLIP embedding for the cross-attention
        assert kwargs["hidden_states"].shape[1] == 12 and kwargs["encoder_hidden_states_image"] is not None
    size = 64 if name in ("flux_kontext", "flux2_edit", QWEN_EDIT) else 32
    flipped = _tiny_image(size).transpose(0)  # PIL's FLIP_LEFT_RIGHT
    assert not torch.equal(_call(pipe, name, **_image_kwarg(name, flipped)), baseline), "the image is ignored"


@pytest.mark.parametrize(
    "config",
    [dit_cache.TeaCache(threshold=0.0), dit_cache.FORA(interval=1), dit_cache.ToCa(fraction=1.0),
     dit_cache.ToCa(fraction=0.25, interval=1)],
    ids=["teacache-0", "fora-1", "toca-fraction-1", "toca-interval-1"],
)  # fmt: skip
def test_never_reuse_is_bitwise_the_unpatched_pipeline(family, config):
    name, pipe, baseline, _ = family
    with dit_cache.cached(pipe, config):
        out = _call(pipe, name)
        assert dit_cache.stats(pipe).compute_fraction == 1.0
    assert torch.equal(out, baseline), f"{name} {config.policy_name}"
    assert torch.equal(_call(pipe, name), baseline), f"{name}: remove()"


@pytest.mark.parametrize("config", [dit_cache.ToCa(fraction=0.25, interval=3), dit_cache.FORA(interval=3)],
                         ids=["toca", "fora"])  # fmt: skip
def test_reuse_keeps_the_conditioned_output_whole(family, config):
    name, pipe, baseline, _ = family
    with dit_cache.cached(pipe, config):
        out = _call(pipe, name)
        fraction = dit_cache.stats(pipe).compute_fraction
    assert fraction < 0.9
    assert out.shape == baseline.shape and torch.isfinite(out).all()
    assert not torch.equal(out, baseline)


@pytest.mark.parametrize("name", list(GENERATED))
def test_toca_never_drops_reference_tokens(monkeypatch, name):
    """Through the pipeline, on every partial step of every token-wise place holding the reference tokens: (1) they
    are picked, (2) each position gets its own recomputed or cached output, (3) none is older than interval - 1
    steps, (4) the cells ToCa spreads its picks over are those of the call's token positions."""
    interval, generated = 3, GENERATED[name]
    pipe = _pipeline(name)
    seen = {"partial": 0, "reference_picks": 0, "generated_picks": 0, "max_age": 0}
    pick, scatter = TokenMechanism._pick, dit_cache.kernels.token_scatter_gate

    def recording_pick(self, place, x, count):
        index = pick(self, place, x, count)
        if x.shape[1] == 2 * generated:  # the image stream of the double blocks: generated then reference
            assert torch.equal(place.cells, cell_ids(2 * generated, None, 2, x.device, positions[-1])[0])
            seen["max_age"] = max(seen["max_age"], int(place.age.max()))
            seen["reference_picks"] += int((index >= generated).sum())
            seen["generated_picks"] += int((index < generated).sum())
        return index

    def checked_scatter(zeros, cached, index, rows):
        out = scatter(zeros, cached, index, rows)
        seen["partial"] += 1
        assert torch.equal(out.index_select(1, index), rows)  # recomputed rows land on their own positions
        kept = torch.ones(cached.shape[1], dtype=torch.bool)
        kept[index] = False
        assert torch.equal(out[:, kept], cached[:, kept])  # the others keep their own cached output
        return out

    positions = []
    read = find_spec(pipe.transformer).tokens.positions  # the family's reader, as ToCa uses it
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: positions.append(read(kw)), with_kwargs=True)
    monkeypatch.setattr(TokenMechanism, "_pick", recording_pick)
    monkeypatch.setattr("dit_cache.policies.token.kernels.token_scatter_gate", checked_scatter)
    with dit_cache.cached(pipe, dit_cache.ToCa(fraction=0.25, interval=interval)):
        out = _call(pipe, name)
    assert seen["partial"] > 0 and torch.isfinite(out).all()
    assert seen["reference_picks"] > 0 and seen["generated_picks"] > 0
    assert seen["max_age"] <= interval - 2  # steps since refresh before this step's pick: at most interval - 1 after


def test_cfg_reuse_on_qwen_image_edit_sees_both_images_as_frames():
    """Qwen-Image-Edit names its CFG calls: CFG reuse cuts the compute, and its low-pass split sees the generated
    and the reference image as two 4 x 4 frames (not one 4 x 8 image mixing their rows)."""
    pipe, grids = _pipeline(QWEN_EDIT), []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: grids.append(grid_of_call(SimpleNamespace(transformer=m, spec=find_spec(m)), a, kw)),
        with_kwargs=True,
    )
    baseline = _call(pipe, QWEN_EDIT)
    assert grids[0] == (2, 4, 4)
    with dit_cache.cached(pipe, dit_cache.CFGCache(interval=2, warmup=0.0)):
        out = _call(pipe, QWEN_EDIT)
        stats = dit_cache.stats(pipe)
    assert stats.compute_fraction < 0.9 and {r.branch for r in stats.records} >= {"cond", "uncond"}
    assert out.shape == baseline.shape and torch.isfinite(out).all() and not torch.equal(out, baseline)


def _positions(name: str) -> torch.Tensor:
    pipe = _pipeline(name)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    pipe(**_inputs(name, steps=1))
    return find_spec(pipe.transformer).tokens.positions(calls[0])


@pytest.mark.parametrize("name", list(GENERATED))
@pytest.mark.parametrize("text", [0, 8], ids=["image-stream", "single-stream"])
def test_toca_cells_follow_the_token_positions(text, name):
    positions = _positions(name)  # (image, row, column[, ...]): generated image first, then the reference image
    generated = GENERATED[name]
    n = text + positions.shape[0]
    cells, count = cell_ids(n, None, 2, torch.device("cpu"), positions, text=8)
    assert cells.shape == (n,) and int(cells.max()) < count
    text_cells, image_cells = cells[:text], cells[text:]
    assert not set(image_cells[:generated].tolist()) & set(image_cells[generated:].tolist())
    assert not set(text_cells.tolist()) & set(image_cells.tolist())
    for cell in image_cells.unique():  # a 2 x 2 square of one image
        members = positions[image_cells == cell]
        assert len(members) == 4 and len(members[:, 0].unique()) == 1
        assert len((members[:, 1] // 2).unique()) == 1 and len((members[:, 2] // 2).unique()) == 1


def test_a_sequence_of_another_length_gets_no_position_cells():
    """A text stream as long as the image, plus a few: its tokens are not image tokens, whatever their count."""
    positions = _positions("flux_kontext")
    for n in (positions.shape[0] + 3, positions.shape[0] + 16):
        cells, count = cell_ids(n, None, 2, torch.device("cpu"), positions, text=8)
        assert torch.equal(cells, torch.arange(n) // 4) and count == -(-n // 4)  # the raster chunks


def test_token_positions_come_from_img_ids_or_img_shapes():
    assert img_ids_positions({}) is None and img_shapes_positions({}) is None
    assert img_ids_positions({"img_ids": torch.zeros(4, 5)}) is None  # more axes than one key packs
    ids = torch.tensor([[0, 0, 0], [0, 0, 1]])
    assert torch.equal(img_ids_positions({"img_ids": ids[None]}), ids)  # a batched (B, N, axes) layout
    shapes = {"img_shapes": [[(1, 1, 2), (2, 1, 1)]]}  # a 1 x 2 image, then a 2-frame 1 x 1 one
    assert img_shapes_positions(shapes).tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [2, 0, 0]]


def test_each_family_reads_its_own_token_layout():
    """The token rules live in the adapters: the families whose calls carry positions or frame layouts say so."""
    import importlib

    from dit_cache.adapters import tokens

    def spec_by_name(name):
        return importlib.import_module(f"dit_cache.adapters.{name}").SPEC

    expected = {"flux": tokens.IMG_IDS, "flux2": tokens.IMG_IDS, "chroma": tokens.IMG_IDS, "qwenimage": tokens.IMG_SHAPES,
                "qwenimage21": tokens.IMG_SHAPES, "cogvideox": tokens.FRAMES_FIRST, "consisid": tokens.FRAMES_FIRST,
                "ltx": tokens.FRAME_ARGS, "ltx2": tokens.FRAME_ARGS, "wan": tokens.LATENT, "sd3": tokens.LATENT}  # fmt: skip
    assert {name: spec_by_name(name).tokens for name in expected} == expected
