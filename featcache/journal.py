"""The partial state of an extraction: ``STORE.partial/run.json`` (what is being made) and row segments.

Each segment is its own small HDF5 file, written to a temporary name, fsync'ed and renamed, so it is
either absent or complete; a kill -9 at any moment loses at most the rows not yet committed, and a
re-run resumes after the last committed segment. :mod:`featcache.assembly` turns the segments into
the finished store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .faults import fault_point
from .files import atomic_write_json
from .hdf5 import STR, atomic_h5
from .locks import partial_dir

__all__ = ["Journal"]


class Journal:
    """The partial state of an extraction: ``run.json`` (what is being made) and row segments."""

    def __init__(self, store_path: Path):
        self.store_path = Path(store_path)
        self.dir = partial_dir(self.store_path)

    def exists(self) -> bool:
        return (self.dir / "run.json").is_file()

    def key(self) -> dict | None:
        try:
            return json.loads((self.dir / "run.json").read_text())["key"]
        except (OSError, ValueError, KeyError):
            return None

    def meta(self) -> dict:
        """What the run recorded when it started (source, start time, the precision that ran)."""
        try:
            return dict(json.loads((self.dir / "run.json").read_text()).get("meta", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def start(self, key: dict, meta: dict) -> None:
        """Begin a fresh journal for ``key`` (the caller has checked nothing else is there)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / "run.json", {"key": key, "meta": meta})

    def segments(self) -> list[tuple[int, int, Path]]:
        """Committed segments that form a contiguous prefix from row 0 (stray ones are ignored)."""
        found = []
        for p in self.dir.glob("seg-*.h5"):
            try:
                a, b = (int(x) for x in p.stem.split("-")[1:3])
            except ValueError:
                continue
            found.append((a, b, p))
        found.sort()
        out, expect = [], 0
        for a, b, p in found:
            if a != expect:
                break
            out.append((a, b, p))
            expect = b
        return out

    def committed_rows(self) -> int:
        segs = self.segments()
        return segs[-1][1] if segs else 0

    def commit(self, start: int, stop: int, rows: np.ndarray, feats: dict[str, np.ndarray],
               failed: list[tuple[int, str]], dtype: str) -> None:
        """Durably record source rows [start, stop): the good rows' features and the failures."""
        path = self.dir / f"seg-{start:010d}-{stop:010d}.h5"
        with atomic_h5(path) as f:
            f.create_dataset("rows", data=np.asarray(rows, dtype=np.int64))
            for layer, x in feats.items():
                f.create_dataset(f"features/{layer}", data=x.astype(dtype, copy=False))
            f.create_dataset("failed_rows", data=np.asarray([i for i, _ in failed], dtype=np.int64))
            f.create_dataset("failed_reasons", data=[r for _, r in failed], dtype=STR)
            fault_point("segment-write")
        fault_point("segment-committed")

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
