"""Extraction as one rank of a ``torchrun`` launch (one node or many; ``srun torchrun`` on SLURM).

Every rank runs the same command. Rank ``r`` of ``W`` extracts the contiguous rows
``[N*r//W, N*(r+1)//W)`` of the source — no sampler padding, so no id twice — and commits them to the
store's journal as a single process does (segments named by source row, so a relaunch resumes each
shard after its last committed segment). When every rank is done, rank 0 assembles the one store from
all segments in row order, exactly as a single process assembles its own (a streamed merge, not HDF5
virtual datasets: the store stays one self-contained file that can be copied anywhere, and the copy
costs little next to the extraction; ``scripts/bench_scale.py`` measures it).

Ranks only exchange small Python objects (status, errors, statistics), over gloo on CPU; on CUDA the
group is ``cpu:gloo,cuda:nccl``, so those objects still travel over gloo and each rank's GPU is its own
(``LOCAL_RANK``). Every meeting point has a timeout (``FEATCACHE_DIST_TIMEOUT`` seconds, default 1800):
a rank that dies makes torchrun stop the others, and a rank that hangs cannot hold the rest forever.
The store's folder must be on a filesystem every node sees: rank 0 leaves a token in the journal and
every rank checks it can read it before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from . import errors
from .errors import FeatcacheError, InputError
from .extractor import ExtractResult, _check_existing, _up_to_date, open_journal, run_rows
from .faults import fault_point
from .files import atomic_write_json, utc_now
from .journal import Journal
from .launch import TIMEOUT_ENV, Launch, shard_bounds
from .locks import store_lock

if TYPE_CHECKING:
    from .extractor import _Job

__all__ = ["extract_shard", "RankFailedError"]


class RankFailedError(FeatcacheError):
    """Another rank of the launch failed; its error is in the message."""


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise InputError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def _group(device_type: str):
    """The launch's process group, torn down on the way out whatever happens."""
    import torch.distributed as dist

    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=_timeout())
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def _outcome(fn):
    """``("ok", fn())``, or ``("error", class name, message)`` for a featcache error: every rank then raises it."""
    try:
        return ("ok", fn())
    except FeatcacheError as exc:
        return ("error", type(exc).__name__, str(exc))


def _raise(outcome: tuple, who: str) -> None:
    if outcome[0] == "error":
        cls = getattr(errors, outcome[1], RankFailedError)
        raise cls(outcome[2] if who == "" else f"{who}: {outcome[2]}")


def extract_shard(job: _Job, launch: Launch) -> ExtractResult:
    """Extract this rank's shard; rank 0 also assembles the store. Every rank returns the launch's result."""
    n = len(job.src)
    lo, hi = shard_bounds(n, launch.rank, launch.world_size)
    with _group(job.loop["device"].split(":")[0]) as dist, contextlib.ExitStack() as held:
        def one(obj):  # rank 0's object, on every rank
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        def every(obj) -> list:  # every rank's object, on every rank
            box = [None] * launch.world_size
            dist.all_gather_object(box, obj)
            return box

        # 1. rank 0 takes the writer lock for the whole launch and opens (or starts) the journal
        def begin():
            job.path.parent.mkdir(parents=True, exist_ok=True)
            fault_point("before-lock")
            held.enter_context(store_lock(job.path, doing="extracting into"))
            if _check_existing(job.path, job.plan.key, job.overwrite):
                return None
            journal = open_journal(job)
            token = f"launch-{uuid.uuid4().hex}.json"
            atomic_write_json(journal.dir / token, {"world_size": launch.world_size, "host": launch.host,
                                                    "at": utc_now()})
            return token

        started = one(_outcome(begin) if launch.is_main else None)
        _raise(started, "" if launch.is_main else "rank 0")
        token = started[1]
        if token is None:  # another launch finished it meanwhile
            return _up_to_date(job.path, job.t0)

        # 2. every rank must see rank 0's journal: the store's folder is shared, or nothing can be assembled
        journal = Journal(job.path)

        def visible():
            if not (journal.dir / token).is_file():
                raise InputError(f"{launch.label()} on {launch.host} cannot see {journal.dir / token}, written by "
                                 "rank 0: the store must be on a filesystem every node sees (NFS, Lustre, GPFS, ...)")
            return journal.reach(lo, hi), job.loop["precision"]

        seen = every(_outcome(visible))
        for r, o in enumerate(seen):
            _raise(o, "" if r == launch.rank else f"rank {r}/{launch.world_size}")
        precisions = {o[1][1] for o in seen}
        if len(precisions) > 1:  # auto resolves per machine: one store must not mix precisions
            raise InputError(f"the ranks would compute in different precisions ({', '.join(sorted(precisions))}); "
                             "pass --precision to choose one for all")
        start = seen[launch.rank][1][0]

        # 3. this rank's shard, resumed after its last committed segment
        loop = {**job.loop, "quiet": job.loop["quiet"] or not launch.is_main}
        stats = run_rows(_with_loop(job, loop), journal, start, hi, desc=f"extract {launch.label()}")
        stats.update(rank=launch.rank, host=launch.host, rows=[lo, hi], resumed_from=start, extracted=hi - start)

        # 4. rank 0 checks that every shard is there, then assembles; the others are done
        ranks = every(stats)
        extracted = sum(s["extracted"] for s in ranks)
        if not launch.is_main:
            mine = ranks[launch.rank]
            return ExtractResult(job.path, hi - lo, 0, mine["extracted"], time.perf_counter() - job.t0,
                                 resumed_from=start, device=mine["device"], precision=mine["precision"],
                                 loop_seconds=mine["loop_seconds"], batch_size=mine.get("batch_size", 0),
                                 batch_size_reason=mine.get("batch_size_reason", ""),
                                 write_seconds=mine["write_seconds"])
        (journal.dir / token).unlink(missing_ok=True)
        reach = journal.reach(0, n)
        if reach < n:
            missing = [r for r, s in enumerate(ranks) if journal.reach(*s["rows"]) < s["rows"][1]]
            raise InputError(f"rank 0 cannot see the committed rows of rank(s) {missing} (rows from {reach:,} of "
                             f"{n:,} are missing): the store must be on a filesystem every node sees")
        merged = dict(ranks[0], loop_seconds=max(s["loop_seconds"] for s in ranks),
                      write_seconds=max(s["write_seconds"] for s in ranks))
        extra = {"distributed": {
            "world_size": launch.world_size, "backend": dist.get_backend(),
            "ranks": [{k: s.get(k) for k in ("rank", "host", "device", "rows", "resumed_from", "extracted",
                                              "loop_seconds", "batch_size")} for s in ranks]}}
        done_before = sum(s["resumed_from"] - s["rows"][0] for s in ranks)  # rows committed by earlier launches
        return job.assemble(journal, merged, extracted=extracted, resumed_from=done_before, extra=extra)


def _with_loop(job: _Job, loop: dict) -> _Job:
    from dataclasses import replace

    return replace(job, loop=loop)
