"""Deterministic fault injection, so crash safety is tested at chosen moments rather than by timing.

``FEATCACHE_FAULT="POINT:N:ACTION"`` makes the N-th arrival (1-based) of this process at the named
fault point do ACTION:

- ``kill``: SIGKILL this process at once, as ``kill -9`` or the OOM killer would (nothing after it runs);
- ``pause``: print ``featcache: paused at POINT #N (pid P)`` to stderr and wait for a signal, so a test
  or ``scripts/fault_extract.py`` can send a real SIGINT or SIGKILL at a known point of the run, or
  SIGUSR1 to let it go on (to order two processes deterministically);
- ``interrupt``: raise KeyboardInterrupt there, as a Ctrl-C at exactly that moment would;
- ``raise``: raise RuntimeError there, as a bug or a failing disk would.

``FEATCACHE_FAULT_RANK=R`` limits the fault to rank R of a torchrun launch (``RANK``), so one rank of
several can be killed or made to fail.

In-process tests use :func:`inject` instead of the environment (the counts start afresh there).

Fault points (see where :func:`fault_point` is called): ``segment-write`` (a journal segment is written
under its temporary name, not yet renamed), ``segment-committed`` (a segment has just been renamed into
place), ``assembly`` (the finished store is written under its temporary name, not yet renamed),
``published`` (the store is in place, the journal not yet removed), ``before-lock`` (extraction has
checked the store path and is about to take the writer lock), ``store-edit`` (a split is written on the
copy of a store, under the lock, not yet swapped in), ``epoch-checkpointed`` (a fine-tune epoch's
checkpoint is in place), ``cell-saved`` (a compare cell's result is in place). Unset, a fault point
costs one environment lookup. SQLite and LevelDB test their crash safety the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator

__all__ = ["ENV", "POINTS", "ACTIONS", "fault_point", "inject"]

ENV = "FEATCACHE_FAULT"
POINTS = ("segment-write", "segment-committed", "assembly", "published", "before-lock", "store-edit",
          "epoch-checkpointed", "cell-saved")
ACTIONS = ("kill", "pause", "interrupt", "raise")
RANK_ENV = "FEATCACHE_FAULT_RANK"
_hits: dict[str, int] = {}
_injected: tuple[str, int, str] | None = None


def _parse(value: str) -> tuple[str, int, str]:
    try:
        point, n, action = value.split(":")
        count = int(n)
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected POINT:N:ACTION, e.g. segment-write:3:kill") from None
    if point not in POINTS or action not in ACTIONS or count < 1:
        raise ValueError(f"{ENV}={value!r}: POINT is one of {', '.join(POINTS)}, N >= 1, "
                         f"ACTION one of {', '.join(ACTIONS)}")
    return point, count, action


@contextlib.contextmanager
def inject(point: str, n: int, action: str = "interrupt") -> Iterator[None]:
    """Inside the block, the n-th arrival of this process at ``point`` does ``action``."""
    global _injected
    _injected = _parse(f"{point}:{n}:{action}")
    _hits.clear()
    try:
        yield
    finally:
        _injected = None
        _hits.clear()


def fault_point(name: str) -> None:
    """Mark a moment where a crash must be survivable; acts only when ``FEATCACHE_FAULT`` names it."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}: add it to featcache.faults.POINTS")
    value = os.environ.get(ENV)
    if not value and _injected is None:
        return
    point, count, action = _injected or _parse(value)
    if point != name:
        return
    if _injected is None and os.environ.get(RANK_ENV, "") not in ("", os.environ.get("RANK", "0")):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "interrupt":
        raise KeyboardInterrupt(f"fault injected at {name} #{count}")
    if action == "raise":
        raise RuntimeError(f"fault injected at {name} #{count}")
    _pause(f"featcache: paused at {name} #{count} (pid {os.getpid()})")


def _pause(message: str) -> None:
    """Announce the pause and wait until SIGINT or SIGTERM has been handled (SIGKILL simply ends it), or
    SIGUSR1 says go on.

    The handlers are in place before the announcement, so a signal sent as soon as it is read is never
    lost between the announcement and the wait (the race ``signal.pause()`` would have)."""
    seen: list[int] = []

    def on_signal(signum, frame) -> None:
        seen.append(signum)
        if signum == signal.SIGUSR1:
            return
        previous = before[signum]
        if callable(previous):
            previous(signum, frame)  # e.g. featcache's graceful Ctrl-C, or Python's KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    before = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        while not seen:
            time.sleep(0.01)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
