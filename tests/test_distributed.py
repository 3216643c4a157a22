"""A value-dependent skip decision must be identical on every rank of a sequence-parallel group: the indicator's
partial sums are all-reduced over the group the user passes (two gloo processes on CPU)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dummy import DummyDiT, FakeScheduler, drive

import dit_cache

STEPS = 8
# per-rank token shards whose local rel-L1 changes disagree (rank 1 barely changes, rank 0 changes a lot)
SHARDS = {
    0: [1.0, 1.5, 1.5, 2.5, 2.5, 2.5, 4.0, 4.0],
    1: [1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07],
}


def _hidden(rank: int) -> list[torch.Tensor]:
    return [torch.full((1, 2, 2), v) for v in SHARDS[rank]]


def _decisions(hidden, group=None) -> list[str]:
    model, sched = DummyDiT(), FakeScheduler(STEPS)
    dit_cache.apply(model, "fbcache", threshold=0.2, scheduler=sched, process_group=group)
    drive(model, sched, [1.0] * STEPS, hidden=hidden)
    return dit_cache.stats(model).decisions()


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue.put((rank, _decisions(_hidden(rank), dist.group.WORLD), _decisions(_hidden(rank))))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ranks_take_the_decision_of_the_whole_sequence():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (grouped, alone)) for rank, grouped, alone in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    whole = _decisions([torch.cat((a, b), dim=1) for a, b in zip(_hidden(0), _hidden(1))])
    assert results[0][0] == results[1][0] == whole  # every rank decides as if it saw every token
    assert results[0][1] != results[1][1]  # without the group, the ranks would disagree (and deadlock a real model)
