"""HDF5 helpers shared by the store, its journal and its assembly: atomic files, chunking, strings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py

from .files import atomic_path

__all__ = ["STR", "atomic_h5", "chunk_rows", "strings"]

STR = h5py.string_dtype("utf-8")


def chunk_rows(dim: int, itemsize: int, n_rows: int, target_bytes: int = 1 << 20) -> int:
    """Rows per HDF5 chunk so that one chunk is about 1 MiB (h5py's guidance: 10 KiB-1 MiB)."""
    return max(1, min(n_rows, target_bytes // max(1, dim * itemsize)))


@contextlib.contextmanager
def atomic_h5(path: Path, mode: str = "w", copy_from: Path | None = None) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name and rename it into place only when complete.

    With ``copy_from`` the temporary file starts as a copy of that file (edit-on-a-copy).
    """
    with atomic_path(path, copy_from=copy_from) as tmp, h5py.File(tmp, mode) as f:
        yield f


def strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]
