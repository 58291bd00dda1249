"""The HDF5 feature store: layout, crash-safe writing, and reading.

Layout of a finished store (any HDF5 client can read it; see README)::

    /ids                (N,)   utf-8 strings, sample ids in source order
    /labels             (N,)   int64 class index (classification) or float64 target (regression)
    /label_names        (K,)   utf-8 class names (classification only)
    /groups             (N,)   utf-8 group ids (when the source has a group column)
    /features/<layer>   (N, D) float32|float16, chunked by rows (~1 MiB chunks)
    /splits/<scheme>/assign (N,) int8 enum: unassigned=-1, train=0, val=1, test=2
    /splits/<scheme>/rank   (N,) int32 per-class rank of train rows for nested label budgets
    /failures/ids, /failures/reasons   inputs that could not be read, and why
    root attributes: provenance (backbone, weights SHA-256, preprocessing, dataset fingerprint, ...)

Crash safety: a run writes row segments into ``STORE.partial/``; each segment is its own HDF5
file, written to a temporary name, fsync'ed and renamed, so it is either absent or complete.
The store itself is assembled from the segments and renamed into place at the end. A kill -9
at any moment therefore leaves either the previous state or the new one, never a torn file,
and a re-run resumes after the last committed segment. Changes to a finished store (new
splits) are made on a copy that replaces the original atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError, StoreIncompleteError, UnknownLayerError
from .faults import fault_point
from .files import atomic_path, utc_now
from .locks import partial_dir, store_lock
from .splits import SPLIT_CODES, SplitDraw, SplitSpec, budget_rank, check_split_name, draw_split, split_counts

__all__ = ["FeatureStore", "Journal", "load", "describe", "SPLIT_CODES", "atomic_h5", "edit_store", "add_split",
           "chunk_rows"]

FORMAT = "featcache-store"
FORMAT_VERSION = 1
SPLIT_ENUM = h5py.enum_dtype(SPLIT_CODES, basetype="i1")
STR = h5py.string_dtype("utf-8")
EDIT_WAIT_SECONDS = 60.0  # a split or budget draw waits this long for another writer of the same store


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


def _strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


class FeatureStore:
    """Read access to a finished store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            partial = Journal(self.path)
            if partial.exists():
                raise StoreIncompleteError(
                    f"{self.path} is not finished: {partial.committed_rows()} rows committed in "
                    f"{partial.dir}; re-run the same extract command to resume")
            raise InputError(f"store not found: {self.path}")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path} is not a readable HDF5 file ({exc})") from exc
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise InputError(f"{self.path} is not a featcache store")
        if not bool(self._f.attrs.get("complete", False)):
            self._f.close()
            raise StoreIncompleteError(f"{self.path} is marked incomplete; re-run extract to finish it")

    @classmethod
    def _over(cls, f: h5py.File, path: Path) -> FeatureStore:
        """A view over an already open file (the copy an edit works on)."""
        fs = cls.__new__(cls)
        fs.path, fs._f = Path(path), f
        return fs

    # -- context management
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata
    @property
    def attrs(self) -> dict:
        """Provenance, with JSON-encoded attributes decoded."""
        out = {}
        for k, v in self._f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v[:1] in "[{":
                with contextlib.suppress(ValueError):
                    v = json.loads(v)
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    @property
    def key(self) -> dict:
        return json.loads(self._f.attrs["key"])

    @property
    def fingerprint(self) -> str:
        return str(self._f.attrs["dataset_fingerprint"])

    @property
    def n_rows(self) -> int:
        return int(self._f["ids"].shape[0])

    @property
    def task(self) -> str:
        return str(self._f.attrs["task"])

    @property
    def layers(self) -> list[str]:
        return list(json.loads(self._f.attrs["layers"]))

    @property
    def label_names(self) -> list[str] | None:
        return _strings(self._f["label_names"]) if "label_names" in self._f else None

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(_strings(self._f["ids"]), dtype=object)

    @property
    def labels(self) -> np.ndarray:
        return self._f["labels"][()]

    @property
    def groups(self) -> np.ndarray | None:
        return np.asarray(_strings(self._f["groups"]), dtype=object) if "groups" in self._f else None

    @property
    def failures(self) -> list[tuple[str, str]]:
        if "failures" not in self._f:
            return []
        return list(zip(_strings(self._f["failures/ids"]), _strings(self._f["failures/reasons"]), strict=True))

    def dim(self, layer: str | None = None) -> int:
        return int(self._dataset(layer).shape[1])

    # -- features
    def _dataset(self, layer: str | None):
        layer = layer or self.layers[0]
        if layer not in self.layers:
            raise UnknownLayerError(f"{self.path} has no layer {layer!r} (it has: {', '.join(self.layers)})")
        return self._f["features"][layer]

    def features(self, layer: str | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of ``layer`` (default: the first stored) for ``rows`` (default: all), as float32."""
        ds = self._dataset(layer)
        if rows is None:
            return ds[()].astype(np.float32, copy=False)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, ds.shape[1]), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((rows.size, ds.shape[1]), dtype=np.float32)
        # read in row chunks: h5py fancy indexing is slow; contiguous slices are fast
        step = ds.chunks[0] if ds.chunks else 4096
        start = 0
        while start < sorted_rows.size:
            lo = sorted_rows[start]
            hi = lo + step * 8
            stop = np.searchsorted(sorted_rows, hi, side="left")
            block = ds[lo : min(hi, ds.shape[0])]
            out[order[start:stop]] = block[sorted_rows[start:stop] - lo]
            start = stop
        return out

    def iter_features(self, layer: str | None = None, chunk: int = 8192) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream ``(rows, X)`` blocks for work on stores larger than memory."""
        ds = self._dataset(layer)
        for lo in range(0, ds.shape[0], chunk):
            hi = min(lo + chunk, ds.shape[0])
            yield slice(lo, hi), ds[lo:hi].astype(np.float32, copy=False)

    # -- splits
    def split_names(self) -> list[str]:
        return sorted(self._f["splits"]) if "splits" in self._f else []

    def default_split(self) -> str | None:
        names = self.split_names()
        for preferred in ("default", "official"):
            if preferred in names:
                return preferred
        return names[0] if names else None

    def split_assign(self, scheme: str | None = None) -> np.ndarray:
        scheme = scheme or self.default_split()
        if scheme is None or scheme not in self.split_names():
            raise InputError(f"{self.path} has no split {scheme!r} (it has: {', '.join(self.split_names()) or 'none'};"
                             " make one with `featcache split`)")
        return self._f["splits"][scheme]["assign"][()]

    def split_rank(self, scheme: str | None = None) -> np.ndarray | None:
        scheme = scheme or self.default_split()
        grp = self._f["splits"][scheme]
        return grp["rank"][()] if "rank" in grp else None

    def split_digest(self, scheme: str | None = None) -> str:
        """SHA-256 of a scheme's assignment and budget order: a head or a cell records it, so work fitted
        on one draw of a split is never scored on another (whose test rows it may have trained on)."""
        h = hashlib.sha256(np.ascontiguousarray(self.split_assign(scheme), dtype=np.int8).tobytes())
        rank = self.split_rank(scheme)
        if rank is not None:
            h.update(np.ascontiguousarray(rank, dtype=np.int32).tobytes())
        return h.hexdigest()

    def split_attrs(self, scheme: str | None = None) -> dict:
        scheme = scheme or self.default_split()
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._f["splits"][scheme].attrs.items()}

    def rows(self, split: str | None = None, per_class: int | None = None) -> np.ndarray:
        """Row indices of ``split`` ("train", "val", "test", or "scheme:part"; None means all rows).

        ``per_class`` keeps the first n train rows of each class in the scheme's budget order,
        so budgets are nested: the 10-per-class set contains the 5-per-class set.
        """
        if split is None:
            if per_class is not None:
                raise InputError("a per-class budget needs a split")
            return np.arange(self.n_rows)
        scheme, _, part = split.rpartition(":")
        scheme = scheme or None
        if part not in ("train", "val", "test"):
            raise InputError(f"unknown split part {part!r}: use train, val or test (optionally scheme:part)")
        assign = self.split_assign(scheme)
        mask = assign == SPLIT_CODES[part]
        if per_class is not None:
            if part != "train":
                raise InputError("label budgets (--per-class) are drawn from the train split only")
            rank = self.split_rank(scheme)
            if rank is None:
                raise InputError(f"split {scheme or self.default_split()!r} has no budget order")
            if per_class < 1:
                raise InputError(f"a per-class budget must be at least 1, got {per_class}")
            labels = self.labels
            if self.task == "classification":
                have = np.bincount(labels[mask], minlength=len(self.label_names or []))
                if have.min() < per_class:
                    small = (self.label_names or [])[int(have.argmin())]
                    raise InputError(f"a budget of {per_class} per class is more than the train split has: "
                                     f"class {small!r} has {int(have.min())} train rows")
            elif mask.sum() < per_class:
                raise InputError(f"a budget of {per_class} is more than the {int(mask.sum())} train rows")
            mask &= (rank >= 0) & (rank < per_class)
        return np.flatnonzero(mask)


def load(store: str | os.PathLike, layer: str | None = None, split: str | None = None,
         per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, ids)`` as numpy arrays, ready for any scikit-learn estimator."""
    with FeatureStore(store) as fs:
        rows = fs.rows(split, per_class)
        X = fs.features(layer, rows)
        return X, fs.labels[rows], fs.ids[rows]


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
        from .files import atomic_write_json

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


def publish(store_path: Path, journal: Journal, source, layers: list[str], dtype: str,
            attrs: dict, key: dict) -> dict:
    """Assemble the committed segments into the finished store and rename it into place.

    Features are copied segment by segment, so memory stays bounded by one segment.
    Returns counts for the summary.
    """
    segs = journal.segments()
    good: list[np.ndarray] = []
    failed_rows: list[np.ndarray] = []
    failed_reasons: list[str] = []
    dims: dict[str, int] = {}
    for _, _, p in segs:
        with h5py.File(p, "r") as s:
            good.append(s["rows"][()])
            failed_rows.append(s["failed_rows"][()])
            failed_reasons += _strings(s["failed_reasons"])
            for layer in layers:
                if s[f"features/{layer}"].shape[0]:
                    dims[layer] = int(s[f"features/{layer}"].shape[1])
    rows = np.concatenate(good) if good else np.empty(0, dtype=np.int64)
    frows = np.concatenate(failed_rows) if failed_rows else np.empty(0, dtype=np.int64)
    n = int(rows.size)
    if n == 0:
        raise InputError("no input could be read: every sample failed (see the reasons with --strict)")
    itemsize = np.dtype(dtype).itemsize
    ids = [source.ids[i] for i in rows]
    with atomic_h5(store_path) as f:
        f.create_dataset("ids", data=ids, dtype=STR)
        f.create_dataset("labels", data=source.labels[rows])
        if source.label_names is not None:
            f.create_dataset("label_names", data=list(source.label_names), dtype=STR)
        if source.groups is not None:
            f.create_dataset("groups", data=[source.groups[i] for i in rows], dtype=STR)
        for layer in layers:
            d = dims[layer]
            ds = f.create_dataset(f"features/{layer}", shape=(n, d), dtype=dtype,
                                  chunks=(chunk_rows(d, itemsize, n), d))
            pos = 0
            for _, _, p in segs:
                with h5py.File(p, "r") as s:
                    x = s[f"features/{layer}"][()]
                if len(x):
                    ds[pos : pos + len(x)] = x
                pos += len(x)
        official = None
        if source.split is not None:
            official = np.asarray([SPLIT_CODES[source.split[i]] for i in rows], dtype=np.int8)
            grp = f.create_group("splits/official")
            grp.create_dataset("assign", data=official, dtype=SPLIT_ENUM)
            grp.attrs["description"] = "the dataset's own split"
        # the default split every later stage reads, made once here (see featcache.splits)
        groups = np.asarray([source.groups[i] for i in rows], dtype=object) if source.groups is not None else None
        _write_split(f, "default", draw_split(source.labels[rows], source.task, SplitSpec(), official, groups),
                     SplitSpec())
        f.create_dataset("failures/ids", data=[source.ids[i] for i in frows], dtype=STR)
        f.create_dataset("failures/reasons", data=failed_reasons, dtype=STR)
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["key"] = json.dumps(key, sort_keys=True)
        f.attrs["n_rows"] = n
        f.attrs["n_failed"] = int(frows.size)
        f.attrs["completed_at"] = utc_now()
        f.attrs["complete"] = True
        fault_point("assembly")
    fault_point("published")
    journal.discard()
    return {"rows": n, "failed": int(frows.size)}


def _write_split(f: h5py.File, name: str, draw: SplitDraw, spec: SplitSpec) -> None:
    """Write ``/splits/<name>`` into an open, writable store file (replacing it if present)."""
    if f"splits/{name}" in f:
        del f[f"splits/{name}"]
    grp = f.create_group(f"splits/{name}")
    grp.create_dataset("assign", data=draw.assign, dtype=SPLIT_ENUM)
    grp.create_dataset("rank", data=draw.rank)
    grp.attrs.update(spec.attrs(draw.grouped))


class EditableStore(FeatureStore):
    """The copy of a store that :func:`edit_store` works on: read it like a store, add splits to it."""

    def write_split(self, name: str, draw: SplitDraw, spec: SplitSpec) -> None:
        _write_split(self._f, name, draw, spec)


@contextlib.contextmanager
def edit_store(path: str | os.PathLike, *, wait: float = EDIT_WAIT_SECONDS) -> Iterator[EditableStore]:
    """Change a finished store under its writer lock, on a copy swapped in atomically at the end.

    Whatever is read inside the block is the store as it is under the lock, so a check followed by
    a write cannot race another writer; an exception leaves the store untouched.
    """
    path = Path(path)
    FeatureStore(path).close()  # a missing, partial or foreign file fails here with its usual message
    with store_lock(path, wait=wait, doing="writing"), atomic_h5(path, "r+", copy_from=path) as f:
        yield EditableStore._over(f, path)
        fault_point("store-edit")


def add_split(store: str | os.PathLike, name: str, spec: SplitSpec | None = None, *, overwrite: bool = False,
              budgets_of: str | None = None) -> dict[str, int]:
    """Add (or with ``overwrite`` replace) the split scheme ``name``; returns its row counts.

    With ``budgets_of``, the scheme keeps that scheme's train/val/test rows and only draws a new
    budget order with ``spec.seed`` (compare's seeds); one already drawn from the base scheme as it is
    now is kept, one drawn from an older version of it is drawn again.
    """
    check_split_name(name)
    spec = spec or SplitSpec()
    spec.check()
    with edit_store(store) as fs:
        if name in fs.split_names():
            if budgets_of is not None and np.array_equal(fs.split_assign(name), fs.split_assign(budgets_of)):
                return split_counts(fs.split_assign(name))  # already drawn from the current base scheme
            if budgets_of is None and not overwrite:
                raise InputError(f"{store} already has a split {name!r}; use --overwrite to replace it")
        if budgets_of is not None:
            assign, base = fs.split_assign(budgets_of), fs.split_attrs(budgets_of)
            spec = SplitSpec(float(base.get("val", spec.val)), float(base.get("test", spec.test)), spec.seed)
            draw = SplitDraw(assign, budget_rank(fs.labels, fs.task, assign, spec.seed), bool(base.get("grouped")))
        else:
            official = fs.split_assign("official") if "official" in fs.split_names() else None
            draw = draw_split(fs.labels, fs.task, spec, official, fs.groups)
        fs.write_split(name, draw, spec)
    return split_counts(draw.assign)


def read_key(store_path: Path) -> dict | None:
    """The identity of a finished store, or None if it is not a complete featcache store."""
    try:
        with h5py.File(store_path, "r") as f:
            if f.attrs.get("format") != FORMAT or not bool(f.attrs.get("complete", False)):
                return None
            return json.loads(f.attrs["key"])
    except (OSError, KeyError, ValueError):
        return None


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary of a store (finished or partial): layout, counts, provenance, failures."""
    path = Path(path)
    journal = Journal(path)
    if not path.exists() and journal.exists():
        key = journal.key() or {}
        return (f"{path}: partial extraction, {journal.committed_rows():,} source rows committed in {journal.dir}\n"
                f"  backbone: {key.get('backbone')}  layers: {', '.join(key.get('layers', []))}\n"
                "  re-run the same `featcache extract` command to resume")
    with FeatureStore(path) as fs:
        a = fs.attrs
        lines = [f"{path}  ({path.stat().st_size / 1e6:.1f} MB, featcache store v{a.get('format_version')})",
                 f"  rows: {fs.n_rows:,}   failed inputs: {a.get('n_failed', 0)}   task: {fs.task}"]
        if fs.label_names is not None:
            counts = np.bincount(fs.labels, minlength=len(fs.label_names))
            classes = ", ".join(f"{n} ({c})" for n, c in zip(fs.label_names, counts, strict=True))
            lines.append(f"  classes ({len(fs.label_names)}): {classes}")
        else:
            y = fs.labels
            lines.append(f"  targets: min {y.min():.4g}, mean {y.mean():.4g}, max {y.max():.4g}")
        for layer in fs.layers:
            ds = fs._dataset(layer)
            lines.append(f"  features/{layer}: {ds.shape[0]:,} x {ds.shape[1]} {ds.dtype}, chunks {ds.chunks}")
        for name in fs.split_names():
            assign = fs.split_assign(name)
            parts = ", ".join(f"{p} {int((assign == c).sum()):,}" for p, c in SPLIT_CODES.items()
                              if (assign == c).any())
            lines.append(f"  split {name}: {parts}")
        lines.append(f"  dataset: {a.get('dataset')}  fingerprint {str(a.get('dataset_fingerprint'))[:16]}")
        lines.append(f"  backbone: {a.get('backbone')}  weights: {a.get('weights_source')}"
                     f"  sha256 {str(a.get('weights_sha256'))[:16]}")
        lines.append(f"  preprocessing: {json.dumps(a.get('preprocessing'))}")
        lines.append(f"  precision: {a.get('precision')} on {a.get('device')}   created {a.get('created_at')}"
                     f"   featcache {a.get('featcache_version')}")
        fails = fs.failures
        if fails:
            lines.append(f"  failures ({len(fails)}):")
            lines += [f"    {reason}" for _, reason in fails[:20]]
            if len(fails) > 20:
                lines.append(f"    ... and {len(fails) - 20} more")
        return "\n".join(lines)
