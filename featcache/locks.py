"""One writer per store: every command that writes a store (extract, split, compare's budget draws)
holds this lock for the whole read-check-write, so two runs can never both decide "nothing is there"
and then replace each other's work.

The lock is an advisory ``flock`` on ``STORE.partial/lock`` (the folder extraction keeps its journal
in). It is released by the kernel when the process dies, so a ``kill -9`` never leaves a stale lock.
The lock file may be deleted by its holder when the work is done; a process that locked a file which
was deleted in the meantime sees that the inode at the path changed and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreBusyError

__all__ = ["store_lock", "partial_dir"]


def partial_dir(store_path: Path) -> Path:
    """``STORE.partial/``: the journal of an unfinished extraction, and the lock of every writer."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".partial")


def _try_lock(lock_path: Path) -> int | None:
    """A locked fd on the file now at ``lock_path``, or None if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the holder removed the folder between our mkdir and open
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # we locked a file its previous holder has just deleted
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def store_lock(store_path: str | os.PathLike, *, wait: float = 0.0, doing: str = "writing") -> Iterator[None]:
    """Hold the store's writer lock; wait up to ``wait`` seconds for another writer, then fail clearly.

    Extraction does not wait (the other run may take hours); short edits such as ``split`` do.
    On release the lock folder is removed when nothing but the lock is left in it.
    """
    store_path = Path(store_path)
    lock_path = partial_dir(store_path) / "lock"
    deadline = time.monotonic() + wait
    told = False
    while (fd := _try_lock(lock_path)) is None:
        if wait and not told:  # say why nothing happens (and tests see that the writer waits)
            print(f"featcache: another process is {doing} {store_path}; waiting up to {wait:g} s", file=sys.stderr,
                  flush=True)
            told = True
        if time.monotonic() >= deadline:
            waited = f" (waited {wait:g} s)" if wait else ""
            raise StoreBusyError(f"another process is {doing} {store_path}{waited}; wait for it to finish")
        time.sleep(0.05)
    try:
        yield
    finally:
        folder = lock_path.parent
        with contextlib.suppress(OSError):
            if {p.name for p in folder.iterdir()} <= {"lock"}:
                lock_path.unlink(missing_ok=True)
                folder.rmdir()
        os.close(fd)
