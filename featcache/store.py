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

This module reads finished stores (:class:`FeatureStore`, :func:`load`) and edits them (split schemes,
on a copy swapped in atomically, under the store's writer lock). Writing a store is the journal's
(:mod:`featcache.journal`, crash-safe row segments) and the assembly's (:mod:`featcache.assembly`);
``featcache info`` is :mod:`featcache.describe`.
"""


from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError, StoreIncompleteError, UnknownLayerError
from .faults import fault_point
from .hdf5 import atomic_h5, strings
from .journal import Journal
from .locks import store_lock
from .splits import SPLIT_CODES, SplitDraw, SplitSpec, budget_rank, check_split_name, draw_split, split_counts

__all__ = ["FeatureStore", "EditableStore", "load", "opened", "recorded_store", "edit_store", "add_split", "read_key",
           "write_split", "SPLIT_CODES", "FORMAT", "FORMAT_VERSION"]

FORMAT = "featcache-store"
FORMAT_VERSION = 1
SPLIT_ENUM = h5py.enum_dtype(SPLIT_CODES, basetype="i1")
EDIT_WAIT_SECONDS = 60.0  # a split or budget draw waits this long for another writer of the same store


REQUIRED_ATTRS = ("key", "layers", "task", "dataset_fingerprint", "dataset", "backbone", "n_rows", "n_failed")


def _walk(f: h5py.File) -> None:
    """Touch every group, dataset and attribute's metadata, and read every dataset but the features (ids,
    labels, splits: small), so a damaged file fails here with one message, not in the middle of a command."""
    def visit(name: str, obj) -> None:
        dict(obj.attrs)
        if isinstance(obj, h5py.Dataset):
            _ = obj.shape, obj.dtype, obj.chunks
            if not name.startswith("features/"):
                obj[()]

    attrs = dict(f.attrs)
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise ValueError(f"no attribute {', '.join(missing)}")
    layers, key = json.loads(attrs["layers"]), json.loads(attrs["key"])
    if not isinstance(key, dict) or not isinstance(layers, list) or any(f"features/{la}" not in f for la in layers):
        raise ValueError("its key or its list of layers does not match its content")
    f.visititems(visit)
    n = f["ids"].shape[0]
    sizes = {name: f[name].shape[0] for name in ("labels", *(f"features/{la}" for la in f["features"]))}
    if any(k != n for k in sizes.values()):
        raise ValueError(f"{n} ids but {sizes}")
    if "label_names" in f and n:
        labels = f["labels"][()]
        if labels.min() < 0 or labels.max() >= f["label_names"].shape[0]:
            raise ValueError("labels outside the list of classes")


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
        try:
            is_store = self._f.attrs.get("format") == FORMAT
            complete = bool(self._f.attrs.get("complete", False))
            if is_store and complete:
                _walk(self._f)
        except Exception as exc:  # HDF5 reports damage as KeyError, RuntimeError, OSError, ValueError...
            self._f.close()
            raise InputError(f"{self.path} is damaged ({exc.__class__.__name__}: {exc}); extract it again") from None
        if not is_store:
            self._f.close()
            raise InputError(f"{self.path} is not a featcache store")
        if not complete:
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
        return strings(self._f["label_names"]) if "label_names" in self._f else None

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(strings(self._f["ids"]), dtype=object)

    @property
    def labels(self) -> np.ndarray:
        return self._f["labels"][()]

    @property
    def groups(self) -> np.ndarray | None:
        return np.asarray(strings(self._f["groups"]), dtype=object) if "groups" in self._f else None

    @property
    def failures(self) -> list[tuple[str, str]]:
        if "failures" not in self._f:
            return []
        return list(zip(strings(self._f["failures/ids"]), strings(self._f["failures/reasons"]), strict=True))

    def layout(self, layer: str | None = None) -> tuple[tuple[int, ...], np.dtype, tuple[int, ...] | None]:
        """How ``layer`` is stored: shape, dtype on disk (float32 or float16) and HDF5 chunk shape."""
        ds = self._dataset(layer)
        return tuple(ds.shape), ds.dtype, ds.chunks

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

    def identity(self, scheme: str | None = None) -> dict:
        """What work fitted on this store records, so it can tell later whether the store and the split it
        used are still the same: path, fingerprint, extraction key, and the scheme with its digest."""
        scheme = scheme or self.default_split()
        return {"store": str(self.path.resolve()), "store_fingerprint": self.fingerprint, "store_key": self.key,
                "split": scheme, "split_sha256": self.split_digest(scheme)}

    def split_attrs(self, scheme: str | None = None) -> dict:
        scheme = scheme or self.default_split()
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._f["splits"][scheme].attrs.items()}

    def row_indices(self, split: str | None = None, per_class: int | None = None) -> np.ndarray:
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



@contextlib.contextmanager
def opened(store: str | os.PathLike | FeatureStore) -> Iterator[FeatureStore]:
    """The store as a reader: an open :class:`FeatureStore` is borrowed (left open), a path is opened and
    closed. Work that reads one store in several steps opens it once and hands the reader down."""
    if isinstance(store, FeatureStore):
        yield store
        return
    with FeatureStore(store) as fs:
        yield fs


def recorded_store(record: dict, given: str | os.PathLike | None = None) -> Path:
    """The store a head or a fine-tune names in its record (``record["store"]``), unless one is given."""
    return Path(given) if given is not None else Path(record["store"])


def load(store: str | os.PathLike, layer: str | None = None, split: str | None = None,
         per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, ids)`` as numpy arrays, ready for any scikit-learn estimator."""
    with FeatureStore(store) as fs:
        rows = fs.row_indices(split, per_class)
        X = fs.features(layer, rows)
        return X, fs.labels[rows], fs.ids[rows]


def write_split(f: h5py.File, name: str, draw: SplitDraw, spec: SplitSpec) -> None:
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
        write_split(self._f, name, draw, spec)


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
    if budgets_of is not None:
        with FeatureStore(store) as fs:  # read-only: an up-to-date budget scheme costs no copy of the store
            if name in fs.split_names() and np.array_equal(fs.split_assign(name), fs.split_assign(budgets_of)):
                return split_counts(fs.split_assign(name))
    with edit_store(store) as fs:
        if name in fs.split_names() and budgets_of is None and not overwrite:
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
