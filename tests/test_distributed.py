"""Identical caching decisions on every rank of a context-parallel group: 2 and 4 CPU processes on gloo, every run
under a timeout so that a deadlock fails instead of hanging (the scenarios are in parallel_scenarios.py; each world
size starts its processes once, from a forkserver that imported torch and diffusers once: importing is the slow
part on a busy machine).

The sharded runs use diffusers' real `enable_parallelism` (Ulysses attention over gloo, 2 and 4 ranks): the
group is found on the transformer, and the output must equal the single-process run's."""

import pytest
import torch
from dummy import DummyDiT, FakeScheduler, drive
from parallel_scenarios import SENSITIVE, VALUE_POLICIES, outcome, spawn, suite
from parallel_scenarios import STEPS as PIPE_STEPS

import dit_cache
from dit_cache.calibration import Profile, ProfileError
from dit_cache.calibration.runner import merge_shards

STEPS = 8
# per-rank token shards whose local rel-L1 changes disagree (rank 1 barely changes, rank 0 changes a lot)
SHARDS = {
    0: [1.0, 1.5, 1.5, 2.5, 2.5, 2.5, 4.0, 4.0],
    1: [1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07],
}


def hidden_shard(rank: int) -> list[torch.Tensor]:
    return [torch.full((1, 2, 2), v) for v in SHARDS[rank]]


def shard_decisions(hidden, group=None) -> list[str]:
    model, sched = DummyDiT(), FakeScheduler(STEPS)
    dit_cache.apply(model, "fbcache", threshold=0.2, scheduler=sched, process_group=group)
    drive(model, sched, [1.0] * STEPS, hidden=hidden)
    return dit_cache.stats(model).decisions()


FOUR_POLICIES = ["teacache", "fbcache", "bwcache", "fora"]  # the value-dependent ones, and a fixed one


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("calibration"))
    return spawn(2, suite, dict(whole_sequence=None, different_shards=None, sharded_run=dict(ulysses_degree=2),
                                bad_input=None, calibrated=folder, rank_fails=1)), folder  # fmt: skip


@pytest.fixture(scope="module")
def four():
    # diffusers' ring attention needs a backend that returns the log-sum-exp (not SDPA on CPU): Ulysses over 4
    return spawn(
        4, suite, dict(different_shards=FOUR_POLICIES, sharded_run=dict(ulysses_degree=4), replicas=None, rank_fails=3)
    )


def _world(request, name):
    results = request.getfixturevalue(name)
    return results[0] if name == "two" else results


def test_ranks_take_the_decision_of_the_whole_sequence(two):
    results = two[0]
    whole = shard_decisions([torch.cat((a, b), dim=1) for a, b in zip(hidden_shard(0), hidden_shard(1))])
    grouped, alone = zip(*(results[r]["whole_sequence"] for r in range(2)))
    assert grouped[0] == grouped[1] == whole  # every rank decides as if it saw every token
    assert alone[0] != alone[1]  # without the group, the ranks would disagree (and deadlock a real model)


@pytest.mark.parametrize("world", ["two", "four"])
def test_ranks_fed_different_tokens_decide_alike_for_every_policy(world, request):
    results = _world(request, world)
    shards = {r: results[r]["different_shards"] for r in results}
    for name in VALUE_POLICIES if world == "two" else FOUR_POLICIES:
        grouped = [shards[r][name][0] for r in shards]
        assert all(g == grouped[0] for g in grouped), (name, grouped)
    for name in SENSITIVE:  # alone, these value-dependent decisions would not agree
        assert len({tuple(shards[r][name][1]) for r in shards}) > 1, name
    for r in shards:  # token policies are refused on every rank, with the reason
        kind, message = shards[r]["toca"][1:]
        assert kind == "ParallelError" and "shard of the tokens" in message and "step or block policy" in message


@pytest.mark.parametrize("world", ["two", "four"])
def test_context_parallel_run_equals_the_single_process_run(world, request):
    results = _world(request, world)
    for rank in results:
        result = results[rank]["sharded_run"]
        assert result["none"]["difference"] < 1e-5  # the parallel run itself matches (the baseline tolerance)
        for name in ("fbcache", "teacache", "fora"):
            alone, sharded = result[name]["decisions"]
            assert sharded == alone, (rank, name)
            assert result[name]["difference"] < 1e-5, (rank, name, result[name]["difference"])
        assert "reused" in result["fbcache"]["decisions"][0][0]  # the check is not vacuous: steps were skipped
        (alone,), (sharded,) = result["fbcache"]["cached"]  # the cached residual is this rank's shard, not gathered
        assert alone and sharded and all(s[1] * len(results) == a[1] for s, a in zip(sharded, alone)), (alone, sharded)
        # found without process_group: one all-reduce per call that has a previous step to compare with
        assert result["fbcache"]["reduces"] == result["teacache"]["reduces"] == PIPE_STEPS - 1
        assert result["fora"]["reduces"] == 0  # nothing value-dependent, nothing to reduce


def test_context_parallel_groups_of_a_larger_mesh_are_replicas(four):
    """A (data 2 x ulysses 2) mesh: each group syncs only its own two ranks and takes its own share of prompts."""
    for rank, result in four.items():
        assert result["replicas"]["replica"] == (rank // 2, 2)
        assert result["replicas"]["reduces"] == PIPE_STEPS - 1
    assert four[0]["replicas"]["decisions"] == four[1]["replicas"]["decisions"]
    assert four[2]["replicas"]["decisions"] == four[3]["replicas"]["decisions"]


def test_bad_input_is_a_clear_error_on_every_rank(two):
    results = {r: two[0][r]["bad_input"] for r in range(2)}
    assert results[0]["outside"] == "applied"  # a group of one: nothing to sync
    kind, message = results[1]["outside"][1:]
    assert kind == "ParallelError" and "ranks [0]" in message and "rank 1" in message
    for rank in range(2):
        kind, message = results[rank]["options"][1:]
        assert kind == "ParallelError" and "(threshold: rank 0 0.1, rank 1 0.2)" in message
        kind, message = results[rank]["policy"][1:]
        assert kind == "ParallelError" and "(policy: rank 0 taylorseer, rank 1 fora;" in message
        assert results[rank]["after"] == results[0]["after"]
        kind, message = results[rank]["parallel_after_apply"][1:]
        assert kind == "ParallelError" and "enable_parallelism(...) was called after dit_cache.apply" in message


@pytest.mark.parametrize("world", ["two", "four"])
def test_one_rank_raising_makes_every_rank_fail(world, request):
    results = _world(request, world)
    failing = len(results) - 1
    assert results[failing]["rank_fails"][:2] == ("raised", "ValueError")
    for rank in range(failing):
        kind, message = results[rank]["rank_fails"][1:]
        assert kind == "ParallelError" and f"rank {failing}: ValueError: out of memory" in message


def test_context_parallel_calibration_records_global_statistics(two):
    results, folder = two
    assert results[0]["calibrated"] == ["alone.json", "sharded.json"]  # rank 0 wrote the parallel profile
    assert results[1]["calibrated"] == []  # rank 1 wrote nothing
    alone, sharded = Profile.load(f"{folder}/alone.json"), Profile.load(f"{folder}/sharded.json")
    assert sharded.policies["parallel_layout"] == {"ring": 1, "ulysses": 2}
    compared = 0
    for branch, data in alone.branches.items():
        for key, values in data.items():
            if isinstance(values, list) and values and all(isinstance(v, float) for v in values):
                torch.testing.assert_close(torch.tensor(sharded.branches[branch][key]), torch.tensor(values),
                                           rtol=1e-4, atol=1e-6, msg=f"{branch}/{key}")  # fmt: skip
                compared += 1
    assert compared >= 3
    error = outcome(lambda: merge_shards([f"{folder}/alone.json", f"{folder}/sharded.json"], f"{folder}/m.json"))
    assert error[:2] == ("raised", ProfileError.__name__)
    assert "different parallel layouts" in error[2] and "'ulysses': 2" in error[2] and "one process" in error[2]
