"""Extraction as one rank of a ``torchrun`` launch (one node or many; ``srun torchrun`` on SLURM).

Every rank runs the same command. Rank ``r`` of ``W`` extracts the contiguous rows
``[N*r//W, N*(r+1)//W)`` of the source — no sampler padding, so no id twice — and commits them to the
store's journal as a single process does (segments named by source row, so a relaunch resumes each
shard after its last committed segment). When every rank is done, rank 0 assembles the one store from
all segments in row order, exactly as a single process assembles its own (a streamed merge, not HDF5
virtual datasets: the store stays one self-contained file that can be copied anywhere, and the copy
costs little next to the extraction; ``scripts/bench_scale.py`` measures it).

Ranks exchange small Python objects (status, errors, settings) over gloo on CPU; on CUDA the
group is ``cpu:gloo,cuda:nccl``, so those objects still travel over gloo and each rank's GPU is its own
(``LOCAL_RANK``). The two meetings before the work have a timeout (``FEATCACHE_DIST_TIMEOUT`` seconds,
default 1800); at the end each rank writes a "done" file and rank 0 waits for all of them without a
deadline (a slow rank is only slow; a rank that dies makes torchrun stop the others). Any rank's error
before the work is raised on every rank, so the launch ends with that error.
The store's folder must be on a filesystem every node sees: rank 0 leaves a token in the journal and
every rank checks it can read it before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import replace
from datetime import timedelta

from . import errors
from .errors import FeatcacheError, InputError
from .extract_job import ExtractResult, Job, check_existing, open_journal, run_rows, up_to_date
from .faults import fault_point
from .files import atomic_write_json, utc_now
from .journal import Journal
from .launch import TIMEOUT_ENV, Launch, shard_bounds
from .locks import store_lock

__all__ = ["extract_shard", "RankFailedError"]

POLL = 0.2  # seconds between rank 0's looks for the other ranks' "done" files
SEEN_GRACE = 60.0  # seconds rank 0 keeps looking for segments a network filesystem has not shown it yet


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

    if dist.is_initialized():
        raise InputError("a torch.distributed process group already exists: featcache makes its own for a "
                         "distributed extraction; call extract(distributed=False) on one rank instead")
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=_timeout())
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def _outcome(fn):
    """``("ok", fn())``, or ``("error", class name, message)`` for any exception: every rank then raises it,
    so one failing rank ends the launch with its own error rather than leaving the others waiting."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - passed to every rank and raised there
        return ("error", type(exc).__name__, str(exc))


def _raise(outcome: tuple, who: str) -> None:
    if outcome[0] == "error":
        cls = getattr(errors, outcome[1], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, FeatcacheError) else RankFailedError
        text = outcome[2] if cls is not RankFailedError else f"{outcome[1]}: {outcome[2]}"
        raise cls(text if who == "" else f"{who}: {text}")


class _Meeting:
    """The launch's short meetings (small objects, over gloo): rank 0's word, and every rank's."""

    def __init__(self, dist, launch: Launch):
        self.dist, self.launch = dist, launch

    def from_main(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_all(self, outcome) -> list:
        box = [None] * self.launch.world_size
        self.dist.all_gather_object(box, outcome)
        for r, o in enumerate(box):
            _raise(o, "" if r == self.launch.rank else f"rank {r}/{self.launch.world_size}")
        return [o[1] for o in box]


def extract_shard(job: Job, launch: Launch) -> ExtractResult:
    """Extract this rank's shard; rank 0 then waits for every rank's "done" file and assembles the store.

    Only rank 0's result describes the finished store: the other ranks return once their shard is committed
    (a script that reads the store on every rank must wait for rank 0, e.g. with a barrier of its own)."""
    n = len(job.src)
    lo, hi = shard_bounds(n, launch.rank, launch.world_size)
    with _group(job.loop["device"].split(":")[0]) as dist, contextlib.ExitStack() as held:
        meet = _Meeting(dist, launch)
        token = _begin(job, launch, meet, held)
        if token is None:  # another launch finished it meanwhile
            return up_to_date(job.path, job.t0)
        journal = Journal(job.path)
        start = _agree(job, launch, meet, journal, token, lo, hi)
        loop = {**job.loop, "quiet": job.loop["quiet"] or not launch.is_main}
        stats = run_rows(replace(job, loop=loop), journal, start, hi, desc=f"extract {launch.label()}")
        stats.update(rank=launch.rank, host=launch.host, rows=[lo, hi], resumed_from=start, extracted=hi - start)
        atomic_write_json(journal.dir / f"done-{token}-{launch.rank}.json", stats)
        if not launch.is_main:
            return job.result(stats, hi - lo, 0, extracted=hi - start, resumed_from=start)
        return _finish(job, launch, journal, token, dist.get_backend())


def _begin(job: Job, launch: Launch, meet: _Meeting, held: contextlib.ExitStack) -> str | None:
    """Rank 0 takes the writer lock for the whole launch and opens (or starts) the journal, leaving a token
    in it; every rank gets the token (None: the store is finished already)."""

    def begin():
        job.path.parent.mkdir(parents=True, exist_ok=True)
        fault_point("before-lock")
        held.enter_context(store_lock(job.path, doing="extracting into"))
        if check_existing(job.path, job.plan.key, job.overwrite):
            return None
        journal = open_journal(job)
        for stale in [*journal.dir.glob("launch-*.json"), *journal.dir.glob("done-*.json")]:
            stale.unlink(missing_ok=True)  # an earlier launch's, killed
        token = uuid.uuid4().hex
        atomic_write_json(journal.dir / f"launch-{token}.json", {"world_size": launch.world_size,
                                                                   "host": launch.host, "at": utc_now()})
        return token

    started = meet.from_main(_outcome(begin) if launch.is_main else None)
    _raise(started, "" if launch.is_main else "rank 0")
    return started[1]


def _agree(job: Job, launch: Launch, meet: _Meeting, journal: Journal, token: str, lo: int, hi: int) -> int:
    """Every rank sees rank 0's journal (the store's folder is shared), reads the same input and settings,
    and computes in the same precision; returns where this rank's shard resumes."""

    def check():
        if not (journal.dir / f"launch-{token}.json").is_file():
            raise InputError(f"{launch.label()} on {launch.host} cannot see {journal.dir}/launch-{token}.json, "
                             "written by rank 0: the store must be on a filesystem every node sees (NFS, Lustre, ...)")
        return {"key": job.plan.key, "rows": len(job.src), "precision": job.loop["precision"]}

    seen = meet.from_all(_outcome(check))
    for r, s in enumerate(seen):
        if s["key"] != seen[0]["key"] or s["rows"] != seen[0]["rows"]:
            what = "number of rows" if s["rows"] != seen[0]["rows"] else "dataset, weights or settings"
            raise InputError(f"rank {r}/{launch.world_size} on its node sees another {what} than rank 0 "
                             f"({s['rows']:,} vs {seen[0]['rows']:,} rows): every node must read the same data "
                             "and weights (a shared path, or identical copies)")
    precisions = {s["precision"] for s in seen}
    if len(precisions) > 1:  # auto resolves per machine: one store must not mix precisions
        raise InputError(f"the ranks would compute in different precisions ({', '.join(sorted(precisions))}); "
                         "pass --precision to choose one for all")
    return journal.reach(lo, hi)


def _finish(job: Job, launch: Launch, journal: Journal, token: str, backend: str) -> ExtractResult:
    """Rank 0: wait for every rank's "done" file (no deadline: a rank that dies ends the launch through
    torchrun, one that works slowly is only slow), check that every row is there, assemble the store."""
    import json

    n = len(job.src)
    done = [journal.dir / f"done-{token}-{r}.json" for r in range(launch.world_size)]
    while not all(p.is_file() for p in done):
        time.sleep(POLL)
    ranks = [json.loads(p.read_text()) for p in done]
    deadline = time.monotonic() + SEEN_GRACE
    while journal.reach(0, n) < n and time.monotonic() < deadline:  # a network filesystem may show files late
        time.sleep(1.0)
    reach = journal.reach(0, n)
    if reach < n:
        missing = [r for r, s in enumerate(ranks) if journal.reach(*s["rows"]) < s["rows"][1]]
        raise InputError(f"rank 0 cannot see the committed rows of rank(s) {missing} (rows from {reach:,} of "
                         f"{n:,} are missing): the store must be on a filesystem every node sees")
    for p in [*done, journal.dir / f"launch-{token}.json"]:
        p.unlink(missing_ok=True)
    merged = dict(ranks[0], loop_seconds=max(s["loop_seconds"] for s in ranks),
                  write_seconds=max(s["write_seconds"] for s in ranks))
    extra = {"distributed": {
        "world_size": launch.world_size, "backend": backend,
        "ranks": [{k: s.get(k) for k in ("rank", "host", "device", "rows", "resumed_from", "extracted",
                                          "loop_seconds", "batch_size")} for s in ranks]}}
    return job.assemble(journal, merged, extracted=sum(s["extracted"] for s in ranks),
                        resumed_from=sum(s["resumed_from"] - s["rows"][0] for s in ranks), extra=extra)
