"""Writing files so that a crash never leaves a torn one, and never writing over what is not ours.

Every file featcache writes (stores, segments, heads, sidecars, checkpoints, results, reports, CSVs)
goes through :func:`atomic_path`: written under a temporary name in the same folder, fsync'ed, then
renamed over the target (``os.replace`` is atomic on POSIX), and the folder fsync'ed so the rename
itself survives a power cut. A reader sees the old file or the new one, never half of one.

:func:`check_output` is the other half of "nothing is lost": a command replaces only its own kind
of output unless the user says ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "check_output", "fsync_dir", "utc_now"]


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with seconds, as every record featcache writes has it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path``: same filesystem (so the rename is atomic), unique per writer."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, copy_from: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. With ``copy_from`` the
    temporary file starts as a copy of that file (edit on a copy).
    """
    import shutil

    path = Path(path)
    tmp = temp_name(path)
    try:
        if copy_from is not None:
            shutil.copyfile(copy_from, tmp)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def check_output(path: str | os.PathLike, *, kind: str, is_own: Callable[[Path], bool], overwrite: bool,
                 folder: bool = False) -> Path:
    """Refuse to write over anything that is not ``kind`` (featcache's own output of that kind) unless
    ``overwrite``: a mistyped ``--out`` must not turn a feature store into a head file."""
    path = Path(path)
    if not path.exists():
        return path
    if path.is_dir() != folder:
        raise OutputExistsError(f"{path} is a {'file' if folder else 'folder'}; the {kind} needs a "
                                f"{'folder' if folder else 'file'} path")
    if not overwrite and not is_own(path):
        raise OutputExistsError(f"{path} exists and is not a {kind}; choose another path, or use --overwrite "
                                "to replace it")
    return path
