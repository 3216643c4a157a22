"""torch.compile with dit_cache, through real pipelines: the policies' decisions run outside compiled graphs, the
blocks' own compute inside the user's compilation (whole model: `transformer.compile()` or `torch.compile(transformer)`;
regional: `compile_repeated_blocks()`), whichever comes first. dynamo's "eager" backend captures the same graphs as
inductor without generating code (fast enough for tests; benchmarks/compile.py times inductor), so outputs match
the uncompiled ones exactly."""

import pytest
import torch
from torch._dynamo.utils import counters

import dit_cache
from dit_cache.testing import run, tiny_pipeline

POLICIES = {"schedule": dict(steps=(0, 2, 4)), "fora": dict(interval=2)}  # a step policy, a block policy: 0.5


class Recorder:
    """A dynamo backend that runs graphs as captured (like "eager") and counts the calls of those that contain
    attention: the model's own compute, proven compiled."""

    def __init__(self) -> None:
        self.graphs: list[str] = []
        self.attention_calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm.code)
        if "scaled_dot_product_attention" not in gm.code:
            return gm.forward

        def counted(*args):
            self.attention_calls += 1
            return gm.forward(*args)

        return counted


def compile_transformer(pipe, mode: str, **options) -> None:
    options.setdefault("backend", "eager")
    if mode == "whole":
        pipe.transformer.compile(**options)
    elif mode == "wrapped":
        pipe.transformer = torch.compile(pipe.transformer, **options)
    else:
        pipe.transformer.compile_repeated_blocks(**options)


def new_graphs() -> int:
    return counters["stats"]["unique_graphs"] + sum(counters["recompiles"].values())


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def eager():
    """Uncompiled outputs per family: uncached, and cached per policy with its compute fraction."""
    out = {}
    for family in ("wan", "flux"):
        pipe = tiny_pipeline(family)
        out[family, None] = run(pipe, family), 1.0
        for name, options in POLICIES.items():
            with dit_cache.cached(pipe, name, **options):
                out[family, name] = run(pipe, family), dit_cache.stats(pipe).compute_fraction
    return out


@pytest.mark.parametrize(
    "family, policy, mode, order",
    [
        ("wan", "fora", "whole", "compile_first"),
        ("wan", "fora", "wrapped", "apply_first"),
        ("wan", "fora", "wrapped", "compile_first"),
        ("wan", "fora", "regional", "apply_first"),
        ("wan", "fora", "regional", "compile_first"),
        ("wan", "schedule", "whole", "apply_first"),
        ("wan", "schedule", "regional", "compile_first"),
        ("flux", "fora", "whole", "compile_first"),
        ("flux", "fora", "regional", "apply_first"),
        ("flux", "schedule", "wrapped", "compile_first"),
    ],
)
def test_compiled_cached_equals_eager_cached_and_never_recompiles(family, policy, mode, order, eager):
    pipe, recorder = tiny_pipeline(family), Recorder()
    if order == "apply_first":
        dit_cache.apply(pipe, policy, **POLICIES[policy])
        compile_transformer(pipe, mode, backend=recorder)
    else:
        compile_transformer(pipe, mode, backend=recorder)
        dit_cache.apply(pipe, policy, **POLICIES[policy])
    expected, fraction = eager[family, policy]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):  # a frame per shape only
        first = run(pipe, family)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    assert dit_cache.stats(pipe).compute_fraction == fraction == 0.5
    counters.clear()
    recorder.attention_calls = 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = run(pipe, family)
    assert new_graphs() == 0
    assert recorder.attention_calls > 0  # the blocks' compute ran compiled
    assert torch.equal(second, first)
    assert dit_cache.stats(pipe).compute_fraction == 0.5


@pytest.mark.parametrize("mode, policy, fullgraph", [("regional", "schedule", True), ("whole", "fora", False)])
def test_blocks_compile_once_per_class(mode, policy, fullgraph):
    """The graphs do not multiply with the blocks: a block class compiles once, whatever each block decided; with
    regional compilation and a per-step policy the one graph is the whole block (fullgraph=True works)."""
    graphs = {}
    for layers in (2, 4):
        torch._dynamo.reset()
        pipe, recorder = tiny_pipeline("wan", layers=layers), Recorder()
        dit_cache.apply(pipe, policy, **POLICIES[policy])
        compile_transformer(pipe, mode, backend=recorder, fullgraph=fullgraph)
        run(pipe, "wan")
        graphs[layers] = recorder.graphs
    assert len(graphs[2]) == len(graphs[4])
    assert any("scaled_dot_product_attention" in code for code in graphs[4])  # the attention is compiled
    if fullgraph:
        assert len(graphs[4]) == 1


@pytest.mark.parametrize("mode, policy", [("whole", "schedule"), ("regional", "fora")])
def test_fullgraph_with_a_break_names_the_fix(mode, policy):
    """fullgraph=True cannot hold a decision: whole-model graphs and blocks whose attention/MLP are hooked break
    at the hook, and torch's error carries our reason."""
    pipe = tiny_pipeline("wan")
    dit_cache.apply(pipe, policy, **POLICIES[policy])
    compile_transformer(pipe, mode, fullgraph=True)
    with pytest.raises(Exception, match="dit_cache takes its caching decisions outside compiled graphs"):
        run(pipe, "wan")


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_remove_leaves_the_compiled_model_uncached(mode, eager):
    pipe, recorder = tiny_pipeline("wan"), Recorder()
    compile_transformer(pipe, mode, backend=recorder)
    blocks = list(pipe.transformer.blocks)
    compiled_calls = [block._compiled_call_impl for block in blocks]
    dit_cache.apply(pipe, "fora", **POLICIES["fora"])
    run(pipe, "wan")
    dit_cache.remove(pipe)
    assert [block._compiled_call_impl for block in blocks] == compiled_calls
    assert not any("forward" in block.__dict__ for block in blocks)
    recorder.attention_calls = 0
    out = run(pipe, "wan")
    assert recorder.attention_calls > 0
    torch.testing.assert_close(out, eager["wan", None][0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sequential_cfg_branches_are_read_from_embeddings_under_compile():
    """Chroma names neither CFG call: under `torch.compile(transformer)` the branch is still read from the calling
    pipeline's embeddings (outside the graph), and CFG reuse gives the uncompiled result."""
    pipe = tiny_pipeline("chroma")
    with dit_cache.cached(pipe, "cfg", interval=2, warmup=0.0):
        eager_out = run(pipe, "chroma", steps=2)
    compile_transformer(pipe, "wrapped")
    with dit_cache.cached(pipe, "cfg", interval=2, warmup=0.0):
        out = run(pipe, "chroma", steps=2)
        stats = dit_cache.stats(pipe)
    assert {r.branch for r in stats.records} == {"cond", "uncond"} and stats.compute_fraction == 0.75
    assert torch.equal(out, eager_out)
