"""Assembling a finished store from the journal's segments, and renaming it into place.

The finished store is written under a temporary name and renamed only when complete, so a kill
during assembly leaves the journal as it was and a re-run assembles again. Features are copied
segment by segment: memory stays bounded by one segment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError, NoSpaceError
from .faults import fault_point
from .files import utc_now
from .hdf5 import STR, atomic_h5, chunk_rows, strings
from .journal import Journal
from .splits import SPLIT_CODES, SplitSpec, draw_split
from .store import FORMAT, FORMAT_VERSION, SPLIT_ENUM, write_split

__all__ = ["assemble_store"]


@dataclass
class _Committed:
    """What the journal's segments hold, in source order: the rows that decoded, the ones that failed."""

    segments: list[Path]
    rows: np.ndarray
    failed_rows: np.ndarray
    failed_reasons: list[str]
    dims: dict[str, int]

    @classmethod
    def read(cls, journal: Journal, layers: list[str]) -> _Committed:
        good, failed, reasons, dims, paths = [], [], [], {}, []
        for _, _, p in journal.segments():
            paths.append(p)
            with h5py.File(p, "r") as s:
                good.append(s["rows"][()])
                failed.append(s["failed_rows"][()])
                reasons += strings(s["failed_reasons"])
                dims.update({la: int(s[f"features/{la}"].shape[1]) for la in layers if s[f"features/{la}"].shape[0]})
        empty = np.empty(0, dtype=np.int64)
        return cls(paths, np.concatenate(good) if good else empty, np.concatenate(failed) if failed else empty,
                   reasons, dims)


def assemble_store(store_path: Path, journal: Journal, source, layers: list[str], dtype: str,
                   attrs: dict, key: dict) -> dict:
    """Write the finished store from the journal (rows, features, the official and default splits,
    failures, provenance), rename it into place and discard the journal. Returns the counts."""
    done = _Committed.read(journal, layers)
    if done.rows.size == 0:
        raise InputError("no input could be read: every sample failed (see the reasons with --strict)")
    _check_space(store_path, journal, done)
    with atomic_h5(store_path) as f:
        _write_samples(f, source, done)
        for layer in layers:
            _copy_features(f, layer, done, dtype)
        _write_splits(f, source, done.rows)
        _write_attrs(f, attrs, key, done)
        fault_point("assembly")
    fault_point("published")
    journal.discard()
    return {"rows": int(done.rows.size), "failed": int(done.failed_rows.size)}


def _check_space(store_path: Path, journal: Journal, done: _Committed) -> None:
    """Refuse before writing if the store cannot fit: HDF5 that runs out of space while writing leaves its
    library in a state where Python's exit crashes (measured: a traceback per open object, then a segfault).
    The store needs about what its segments hold, plus ids, labels and splits."""
    import shutil

    need = sum(p.stat().st_size for p in done.segments) + 256 * int(done.rows.size + done.failed_rows.size) + (1 << 20)
    free = shutil.disk_usage(store_path.parent).free
    if free < need:
        raise NoSpaceError(f"not enough free space in {store_path.parent} to assemble the store: it needs about "
                               f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB are free; the extracted rows are kept in "
                               f"{journal.dir}: free some space and re-run the same command to finish")


def _write_samples(f: h5py.File, source, done: _Committed) -> None:
    rows = done.rows
    f.create_dataset("ids", data=[source.ids[i] for i in rows], dtype=STR)
    f.create_dataset("labels", data=source.labels[rows])
    if source.label_names is not None:
        f.create_dataset("label_names", data=list(source.label_names), dtype=STR)
    if source.groups is not None:
        f.create_dataset("groups", data=[source.groups[i] for i in rows], dtype=STR)
    f.create_dataset("failures/ids", data=[source.ids[i] for i in done.failed_rows], dtype=STR)
    f.create_dataset("failures/reasons", data=done.failed_reasons, dtype=STR)


def _copy_features(f: h5py.File, layer: str, done: _Committed, dtype: str) -> None:
    """One segment at a time, so memory stays bounded by a segment whatever the store's size."""
    n, d = int(done.rows.size), done.dims[layer]
    ds = f.create_dataset(f"features/{layer}", shape=(n, d), dtype=dtype,
                          chunks=(chunk_rows(d, np.dtype(dtype).itemsize, n), d))
    pos = 0
    for p in done.segments:
        with h5py.File(p, "r") as s:
            x = s[f"features/{layer}"][()]
        if len(x):
            ds[pos : pos + len(x)] = x
        pos += len(x)


def _write_splits(f: h5py.File, source, rows: np.ndarray) -> None:
    """The dataset's own split (when it has one) and the default split every later stage reads."""
    official = None
    if source.split is not None:
        official = np.asarray([SPLIT_CODES[source.split[i]] for i in rows], dtype=np.int8)
        grp = f.create_group("splits/official")
        grp.create_dataset("assign", data=official, dtype=SPLIT_ENUM)
        grp.attrs["description"] = "the dataset's own split"
    groups = np.asarray([source.groups[i] for i in rows], dtype=object) if source.groups is not None else None
    write_split(f, "default", draw_split(source.labels[rows], source.task, SplitSpec(), official, groups), SplitSpec())


def _write_attrs(f: h5py.File, attrs: dict, key: dict, done: _Committed) -> None:
    for k, v in attrs.items():
        f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
    f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "key": json.dumps(key, sort_keys=True),
                    "n_rows": int(done.rows.size), "n_failed": int(done.failed_rows.size), "completed_at": utc_now(),
                    "complete": True})
