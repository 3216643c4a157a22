"""Identical decisions on every rank of a context- or sequence-parallel group.

Under context parallelism each rank holds a shard of the tokens, so anything measured on tensor values (TeaCache's
indicator change, the first-block residual change, BWCache's per-block changes, the recorder's statistics) differs
per rank. A rank that skips while another computes leaves the other waiting in the attention's all-to-all: a hang,
or worse, steps mixed across ranks. The policies therefore measure sums (sum|a - b|, sum|b|; never means), and the
engine all-reduces them over the group before dividing: one all-reduce of a few floats per transformer call, and
every rank takes the decision of the whole sequence. Cached tensors stay per-rank shards; nothing is gathered.

The group is `apply(..., process_group=)`, else the one diffusers' `enable_parallelism` records on the transformer
(`_parallel_config.context_parallel_config._flattened_mesh`), found at the first call (so `apply` may come before
or after `enable_parallelism`). At that first call the ranks also compare a hash of the policy and its options.

A rank that raises inside a transformer call posts the error to the default store; peers waiting in dit-cache's
all-reduce poll for it and raise too, naming the failed rank, instead of waiting forever. (A peer blocked in the
model's own collectives is the backend's to time out; `torchrun` ends all ranks when one fails.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Wait this long in an all-reduce before looking for a failed peer in the store, then look again at this period.
FAILURE_CHECK_AFTER_S = 0.5
FAILURE_CHECK_EVERY_S = 0.25
# Polling pauses double from the first to the longest: at most about a millisecond added to a call's host read.
_FIRST_PAUSE_S, _LONGEST_PAUSE_S = 1e-5, 1e-3
_FAILED_KEY = "dit_cache/failed/"


class ParallelError(RuntimeError):
    """A problem of the parallel setup (group, disagreeing ranks, a failed peer), raised on every rank."""


def _dist():
    import torch.distributed as dist

    return dist


def context_parallel_group(transformer: torch.nn.Module) -> Any:
    """The process group of diffusers' context parallelism on `transformer` (`enable_parallelism`), or None."""
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None)
    return None if mesh is None else mesh.get_group()


def parallel_layout(transformer: torch.nn.Module) -> dict:
    """{"ring": r, "ulysses": u} of diffusers' context parallelism on `transformer`; {} without it."""
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return {}
    return {"ring": int(cp.ring_degree), "ulysses": int(cp.ulysses_degree)}


def context_parallel_rank(transformer: torch.nn.Module) -> int:
    """This process's rank in the context-parallel group of `transformer` (0 without one)."""
    group = context_parallel_group(transformer)
    return 0 if group is None else _dist().get_rank(group)


def data_parallel_rank(transformer: torch.nn.Module, rank: int, world: int) -> tuple[int, int]:
    """(rank, world size) among the replicas that share out prompts: under context parallelism the ranks of one
    group run the same prompts, so a group counts once. Groups must be blocks of consecutive ranks (diffusers'
    default mesh, or a custom one laid out that way)."""
    group = context_parallel_group(transformer)
    if group is None:
        return rank, world
    ranks = _dist().get_process_group_ranks(group)
    size = len(ranks)
    replica = rank // size
    if world % size or ranks != list(range(replica * size, replica * size + size)):
        raise ParallelError(
            f"dit_cache: the context-parallel group of rank {rank} holds ranks {ranks} of {world}; sharing prompts "
            "across groups needs groups of consecutive ranks (mesh dims ordered (data, ring, ulysses))"
        )
    return replica, world // size


def selects_tokens(config: Any) -> bool:
    """Whether a policy config picks tokens by value (ToCa, the mixture's token mode), also as an inner policy."""
    name = getattr(config, "policy_name", "")
    if name == "toca" or (name == "mix" and "token" in getattr(config, "modes", ())):
        return True
    inner = getattr(config, "step", None)
    return inner is not None and not isinstance(inner, (int, float)) and selects_tokens(inner)


def describe(config: Any) -> dict[str, str]:
    """A policy config's options as strings that are equal on two ranks exactly when the options are."""
    options = {"policy": config.policy_name}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if hasattr(value, "policy_name") and dataclasses.is_dataclass(value):
            options.update({f"{f.name}.{k}": v for k, v in describe(value).items()})
            continue
        if isinstance(value, (str, int, float, bool, tuple, type(None))):
            text = repr(value)
        elif isinstance(value, os.PathLike):
            text = os.fspath(value)
        else:  # a Profile object and the like: what it is, not where it lives in memory
            text = f"{type(value).__name__}({getattr(value, 'source', None) or getattr(value, 'name', '')})"
        options[f.name] = text
    return options


class GroupSync:
    """The collectives of one cached transformer on one group: the first-call agreement check, the per-call
    all-reduce of the probe sums, and the failure channel."""

    def __init__(self, group: Any, where: str) -> None:
        dist = _dist()
        self.group = group
        self.where = where
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            ranks = dist.get_process_group_ranks(group)
            raise ParallelError(
                f"dit_cache: process_group for {where} has ranks {ranks}, and this process is rank "
                f"{dist.get_rank()}: it would wait for collectives it takes no part in. Pass a group that contains "
                "every rank that runs this transformer (dist.new_group(ranks=...) called on all ranks), or none"
            )
        self.size = dist.get_world_size(group)
        self.global_ranks = dist.get_process_group_ranks(group)
        backend = str(dist.get_backend(group))
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        self.key = _FAILED_KEY + "_".join(map(str, self.global_ranks))
        self.agreed = False
        self.reduces = 0  # all-reduces issued, for the docs' cost figure and the tests

    @classmethod
    def resolve(
        cls, transformer: torch.nn.Module, process_group: Any, where: str, parallel_at_apply: bool = True
    ) -> GroupSync | None:
        """The sync for `process_group`, else for diffusers' context-parallel group, else None (one process, or a
        group of one). `parallel_at_apply`: whether diffusers' parallelism was on when the policy was applied."""
        dist = _dist()
        if not dist.is_available() or not dist.is_initialized():
            if process_group is not None:
                raise ParallelError(
                    f"dit_cache: process_group was given for {where} but torch.distributed is not initialized; "
                    "call torch.distributed.init_process_group(...) first"
                )
            return None
        group = process_group if process_group is not None else context_parallel_group(transformer)
        if group is None:
            return None
        if process_group is None and not parallel_at_apply:
            # diffusers' split/gather hooks then wrap dit-cache's hooks and the cached residuals mix shards
            raise ParallelError(
                f"dit_cache: {where}.enable_parallelism(...) was called after dit_cache.apply; caching must be applied "
                "to the parallel model. Call dit_cache.remove(pipe), then dit_cache.apply(pipe, ...) again"
            )
        sync = cls(group, where)
        return sync if sync.size > 1 else None

    # ------------------------------------------------------------------------------------------ agreement
    def agree(self, config: Any) -> None:
        """At the first call: refuse what cannot run sharded, then check that every rank runs the same policy."""
        if selects_tokens(config):
            raise ParallelError(
                f"dit_cache: {config.policy_name} picks tokens by their values, and under context parallelism "
                f"({self.size} ranks in {self.where}'s group) each rank holds a shard of the tokens while the token "
                "grid that spreads the picks describes the whole sequence, and the attention's all-to-all needs the "
                "same token count on every rank. Use a step or block policy (teacache, magcache, fbcache, fora, "
                "taylorseer, bwcache, schedule, lemica; mix with modes=('step', 'cfg')), or run without parallelism"
            )
        self.check_agreement(describe(config))

    def check_agreement(self, options: dict[str, str]) -> None:
        """Raise on every rank if the ranks run different policies or options (one all-gather of a hash)."""
        dist = _dist()
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        self._wait(dist.all_gather(gathered, mine, group=self.group, async_op=True))
        if len({int(t) for t in gathered}) == 1:
            self.agreed = True
            return
        everyone: list[Any] = [None] * self.size
        dist.all_gather_object(everyone, options, group=self.group)
        keys = list(dict.fromkeys(k for o in everyone for k in o))  # the policy first
        differing = [k for k in keys if len({str(o.get(k, "<absent>")) for o in everyone}) > 1]
        details = "; ".join(
            f"{k}: " + ", ".join(f"rank {self.global_ranks[r]} {o.get(k, '<absent>')}" for r, o in enumerate(everyone))
            for k in differing
        )
        raise ParallelError(
            f"dit_cache: the ranks of {self.where}'s group apply different caching ({details}); every rank of a "
            "context-parallel group must apply the same policy with the same options, or their decisions differ"
        )

    # ------------------------------------------------------------------------------------------ per call
    def all_reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """`sums` (any shape, float) summed over the group, as float32 on `sums`' device."""
        dist = _dist()
        buffer = sums.detach().float().reshape(-1).to(self.device, copy=True)
        self._wait(dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group, async_op=True))
        self.reduces += 1
        return buffer.to(sums.device).reshape(sums.shape)

    def _wait(self, work: Any) -> None:
        """Wait for `work`, raising if a peer posted a failure meanwhile (it will never join)."""
        if not work.is_completed():
            next_check = time.monotonic() + FAILURE_CHECK_AFTER_S
            pause = _FIRST_PAUSE_S
            while not work.is_completed():
                time.sleep(pause)  # sleeping, not spinning: on CPU ranks the peer needs the core to catch up
                pause = min(2 * pause, _LONGEST_PAUSE_S)
                now = time.monotonic()
                if now >= next_check:
                    self._raise_if_peer_failed()
                    next_check = now + FAILURE_CHECK_EVERY_S
        try:
            work.wait()
        except RuntimeError as error:  # the backend saw a peer go away: say which one and why, if it told us
            self._raise_if_peer_failed(error)
            raise

    # ------------------------------------------------------------------------------------------ failures
    def post_failure(self, error: BaseException) -> None:
        """Tell the peers that this rank left a transformer call with `error` (they may be waiting on it)."""
        if isinstance(error, ParallelError):  # raised on every rank already
            return
        store = _store()
        if store is None:
            return
        try:
            if not store.check([self.key]):
                store.set(self.key, f"rank {_dist().get_rank()}: {type(error).__name__}: {error}")
        except Exception:  # the store is gone (the job is ending): nothing left to tell
            logger.debug("dit_cache: could not post a failure to the store", exc_info=True)

    def _raise_if_peer_failed(self, cause: BaseException | None = None) -> None:
        store = _store()
        try:
            if store is None or not store.check([self.key]):
                return
            message = store.get(self.key).decode(errors="replace")
        except Exception:  # the store went away with the peer
            return
        raise ParallelError(
            f"dit_cache: a peer of {self.where}'s group failed ({message}); this rank stops too instead of waiting "
            "for it in the all-reduce of the caching decision"
        ) from cause


def _store() -> Any:
    try:
        return _dist().distributed_c10d._get_default_store()
    except Exception:  # not initialized through init_process_group's store (private API of torch.distributed)
        return None
