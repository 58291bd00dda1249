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

    def all_segments(self) -> list[tuple[int, int, Path]]:
        """Every committed segment file as (first row, end row, path), sorted."""
        found = []
        for p in self.dir.glob("seg-*.h5"):
            try:
                a, b = (int(x) for x in p.stem.split("-")[1:3])
            except ValueError:
                continue
            if 0 <= a < b:
                found.append((a, b, p))
        return sorted(found)

    def segments(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, int, Path]]:
        """The segments that cover source rows from ``lo`` contiguously, as far as they reach, using only
        segments inside [lo, hi).

        One process writes one chain from row 0; the ranks of a distributed run write one chain each, from
        the start of their shard. A relaunch with another world size leaves segments that straddle the new
        shards' bounds: they are not used (their rows are extracted again), so every shard's chain, and the
        store's from row 0, stays contiguous. The farthest-reaching chain is found by a breadth-first walk
        over the segments' bounds."""
        segs = [s for s in self.all_segments() if s[0] >= lo and (hi is None or s[1] <= hi)]
        starting: dict[int, list[tuple[int, int, Path]]] = {}
        for s in segs:
            starting.setdefault(s[0], []).append(s)
        came_by: dict[int, tuple[int, int, Path] | None] = {lo: None}
        frontier = [lo]
        while frontier:
            nxt = []
            for p in frontier:
                for s in starting.get(p, ()):
                    if s[1] not in came_by:
                        came_by[s[1]] = s
                        nxt.append(s[1])
            frontier = nxt
        end, chain = max(came_by), []
        while (s := came_by[end]) is not None:
            chain.append(s)
            end = s[0]
        return chain[::-1]

    def reach(self, lo: int = 0, hi: int | None = None) -> int:
        """The row after the last one committed contiguously from ``lo`` (``lo`` when none is)."""
        segs = self.segments(lo, hi)
        return segs[-1][1] if segs else lo

    def committed_rows(self) -> int:
        """Source rows committed so far (rows covered by any segment)."""
        covered, end = 0, 0
        for a, b, _ in self.all_segments():
            if b > end:
                covered += b - max(a, end)
                end = b
        return covered

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
