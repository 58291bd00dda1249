"""Run a frozen backbone over a source once and write the embeddings to a feature store.

The identity of a store (its *key*) is computed before torch is imported: dataset
fingerprint, backbone, weights SHA-256, layers, input size, dtype and precision. An existing
finished store with the same key means there is nothing to do; a partial run with the same
key is resumed after its last committed segment; anything else is refused unless
``overwrite=True``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .assembly import assemble_store
from .backbones import DEFAULT_BACKBONE, POOLED, parse_backbone
from .batching import memory_bound, parse_batch_size
from .embed import embed_batches
from .errors import CorruptInputError, InputError, StoreBusyError, StoreMismatchError
from .faults import fault_point
from .files import utc_now
from .journal import Journal
from .launch import Launch
from .locks import store_lock
from .options import Interval, OneOf, check
from .pixels import describe as describe_pixels
from .runtime import PRECISIONS, GracefulInterrupt, resolve_device, resolve_precision
from .sources import Source, open_source
from .store import FORMAT_VERSION, read_key
from .weights import resolve_weights

__all__ = ["extract", "ExtractResult", "default_store_path", "open_journal", "run_rows"]

DTYPES = ("float32", "float16")
FINGERPRINTS = ("stat", "content")  # how files are identified: size + modification time, or their bytes' SHA-256


@dataclass
class ExtractResult:
    """What an extraction did; ``str()`` gives the one-line summary the CLI prints."""

    store: Path
    rows: int
    failed: int
    extracted: int  # samples processed in this call (0 when the store was up to date)
    seconds: float  # wall time of the whole call
    up_to_date: bool = False
    resumed_from: int = 0
    device: str = ""
    precision: str = ""
    loop_seconds: float = 0.0  # read, decode, transform, forward and commit: the pipeline proper
    batch_size: int = 0
    batch_size_reason: str = ""
    write_seconds: float = 0.0  # committing segments and assembling the store

    @property
    def images_per_s(self) -> float:
        """Pipeline throughput (model loading and the final assembly of the store not included)."""
        return self.extracted / self.loop_seconds if self.loop_seconds > 0 else 0.0

    def __str__(self) -> str:
        size = self.store.stat().st_size / 1e6 if self.store.exists() else 0.0
        if self.up_to_date:
            return f"up to date: {self.store} ({self.rows:,} rows, {size:.1f} MB); nothing to do"
        resumed = f", resumed at row {self.resumed_from:,}" if self.resumed_from else ""
        return (f"extracted {self.rows:,} rows ({self.failed} failed{resumed}) in {self.seconds:.1f} s, "
                f"{self.images_per_s:.0f} images/s on {self.device} {self.precision}, batch {self.batch_size} "
                f"-> {self.store} ({size:.1f} MB)\nbatch size {self.batch_size}: {self.batch_size_reason}")


def default_store_path(source: Source, backbone: str, image_size: int | None, limit: int | None) -> Path:
    arch = parse_backbone(backbone).arch
    name = source.name + (f"-{limit}" if limit else "")
    return Path("data") / "stores" / f"{name}_{arch}{f'-{image_size}px' if image_size else ''}.h5"


def _key(source: Source, backbone: str, weights_sha: str, layers: list[str], image_size: int | None,
         dtype: str, precision: str, fingerprint: str) -> dict:
    key = {
        "format_version": FORMAT_VERSION,
        "dataset_fingerprint": source.fingerprint(content=fingerprint == "content"),
        "backbone": backbone,
        "weights_sha256": weights_sha,
        "layers": layers,
        "image_size": image_size,
        "dtype": dtype,
        "precision": precision,
    }
    if fingerprint != "stat":  # only then: stores made before the option keep their identity
        key["fingerprint"] = fingerprint
    return key


def _explain(old: dict, new: dict) -> str:
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if "dataset_fingerprint" in diff:
        return "its input data differ (ids, labels or files changed)"
    return "it was made with different " + ", ".join(f"{k} ({old.get(k)} vs {new.get(k)})" for k in diff)


def extract(
    source: str | os.PathLike | Source | None = None,
    store: str | os.PathLike | None = None,
    *,
    backbone: str | None = None,
    weights: str | os.PathLike | None = None,
    layers: list[str] | str | None = None,
    image_size: int | None = None,
    batch_size: int | str = "auto",
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    dtype: str = "float32",
    limit: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    channels_last: bool | None = None,
    commit_interval: float = 5.0,
    path_col: str = "path",
    label_col: str = "label",
    split_col: str | None = None,
    group_col: str | None = None,
    task: str = "auto",
    fingerprint: str = "stat",
) -> ExtractResult:
    """Extract embeddings of ``layers`` for every sample of ``source`` into the HDF5 ``store``.

    Safe to re-run: a finished store with the same inputs returns at once, an interrupted
    one resumes, and a store made from other inputs is refused unless ``overwrite``.
    """
    t0 = time.perf_counter()
    src = source if isinstance(source, Source) else open_source(
        source, path_col=path_col, label_col=label_col, split_col=split_col, group_col=group_col,
        task=task, limit=limit)
    if isinstance(source, Source) and limit:
        src = src.limit(limit)
    plan = _Plan.make(src, store, backbone=backbone, weights=weights, layers=layers, image_size=image_size,
                      dtype=dtype, precision=precision, limit=limit, batch_size=batch_size, workers=workers,
                      fingerprint=fingerprint)
    if _check_existing(plan.path, plan.key, overwrite):  # cheap, before torch: a re-run is free
        _discard_published_journal(plan.path, plan.key)
        return _up_to_date(plan.path, t0)
    launch = Launch.from_env()  # under torchrun: this process is one rank of several
    # resolve the device and precision, and build (so validate backbone, weights and layers), before anything
    # is written: a refused run leaves no trace
    dev = launch.device(device) if launch else resolve_device(device)
    prec = resolve_precision(precision, dev)
    built = plan.built or _build(plan.backbone, weights, plan.layers, image_size)
    if dev.type == "cpu":  # an input size of which one image does not fit in memory is refused here, not mid-run
        memory_bound(built, built.preprocessing.input_size)
    job = _Job(src, plan, built, overwrite, precision, dtype, strict, commit_interval, t0,
               dict(batch_size=batch_size, workers=workers, device=str(dev), precision=prec, quiet=quiet,
                    channels_last=channels_last))
    if launch:
        from .distributed import extract_shard

        return extract_shard(job, launch)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    fault_point("before-lock")
    with store_lock(job.path, doing="extracting into"):
        if _check_existing(job.path, plan.key, overwrite):  # another run may have finished it meanwhile
            return _up_to_date(job.path, t0)
        journal = open_journal(job)
        start = journal.reach()
        stats = run_rows(job, journal, start)
        return job.assemble(journal, stats, extracted=len(src) - start, resumed_from=start)


@dataclass
class _Job:
    """One extraction, checked and built, ready to run (in one process, or as one rank of several)."""

    src: Source
    plan: _Plan
    built: object
    overwrite: bool
    requested_precision: str
    dtype: str
    strict: bool
    commit_interval: float
    t0: float
    loop: dict  # embed_batches' settings: batch size, workers, device, precision, quiet, channels_last

    @property
    def path(self) -> Path:
        return self.plan.path

    def assemble(self, journal: Journal, stats: dict, *, extracted: int, resumed_from: int,
                 extra: dict | None = None) -> ExtractResult:
        """Write the finished store from the journal's segments and say what was done."""
        t_assemble = time.perf_counter()
        attrs = _provenance(self.built, self.src, self.dtype, stats, self.t0, self.plan.key)
        attrs.update(extra or {})
        counts = assemble_store(self.path, journal, self.src, self.plan.layers, self.dtype, attrs, self.plan.key)
        stats["write_seconds"] += time.perf_counter() - t_assemble
        return ExtractResult(self.path, counts["rows"], counts["failed"], extracted, time.perf_counter() - self.t0,
                             resumed_from=resumed_from, device=stats["device"], precision=stats["precision"],
                             loop_seconds=stats["loop_seconds"], batch_size=stats.get("batch_size", 0),
                             batch_size_reason=stats.get("batch_size_reason", ""),
                             write_seconds=stats["write_seconds"])


@dataclass
class _Plan:
    """What an extraction will make, checked before any work: the store path and its identity (key)."""

    path: Path
    key: dict
    backbone: str
    layers: list[str]
    built: object | None  # the backbone, when it had to be built (downloaded) to know its weights' hash

    @classmethod
    def make(cls, src: Source, store, *, backbone, weights, layers, image_size, dtype, precision, limit, fingerprint,
             batch_size, workers) -> _Plan:

        parse_batch_size(batch_size)
        if src.labels is None:
            raise InputError(f"{src.spec}: a feature store needs labels (classification or regression); features "
                             "of unlabeled images come from featcache.predict or FeatureExtractor")
        check("--workers", workers, Interval(int, 0, none=True))
        check("--image-size", image_size, Interval(int, 8, none=True))
        check("--dtype", dtype, OneOf(lambda: DTYPES))
        check("--fingerprint", fingerprint, OneOf(lambda: FINGERPRINTS))
        check("--precision", precision, OneOf(lambda: PRECISIONS))
        name = parse_backbone(backbone or DEFAULT_BACKBONE).name
        layer_list = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers or [POOLED])
        spec = parse_backbone(name)
        resolved = resolve_weights(spec.library, spec.arch, weights)
        built = None
        if resolved.source == "download":  # fetch first: the key needs the real file's hash
            built = _build(name, weights, layer_list, image_size)
            resolved = built.weights
        path = Path(store) if store is not None else default_store_path(src, name, image_size, limit)
        if path.is_dir():
            raise InputError(f"--store {path} is a folder; give the path of the .h5 file to write")
        return cls(path, _key(src, name, resolved.sha256, layer_list, image_size, dtype, precision, fingerprint), name,
                   layer_list, built)


def open_journal(job: _Job) -> Journal:
    """The journal to continue: this key's partial run, or a fresh one (an other key's only with overwrite)."""
    plan = job.plan
    journal = Journal(plan.path)
    if journal.exists() and (job.overwrite or journal.key() != plan.key):
        if not job.overwrite:
            raise StoreMismatchError(f"a partial extraction in {journal.dir} was started with other inputs: "
                                     f"{_explain(journal.key() or {}, plan.key)}; use --overwrite to discard it")
        for _, _, p in journal.all_segments():
            p.unlink()
    if not journal.exists() or journal.key() != plan.key:
        journal.start(plan.key, {"source": job.src.spec, "started_at": utc_now(), "precision": job.loop["precision"]})
    _check_same_precision(journal, job.requested_precision, job.loop["precision"])
    return journal


def _provenance(built, src: Source, dtype: str, stats: dict, t0: float, key: dict) -> dict:
    """The store's root attributes: how its features were made."""
    return {
        "featcache_version": __version__,
        **built.provenance(),
        "image_size": built.preprocessing.input_size,
        "dtype": dtype,
        "precision": stats["precision"],
        "device": stats["device"],
        "dataset": src.spec,
        "dataset_fingerprint": key["dataset_fingerprint"],
        "fingerprint": key.get("fingerprint", "stat"),
        "task": src.task,
        "created_at": utc_now(),
        "extract_seconds": round(time.perf_counter() - t0, 3),
        "extract_loop_seconds": round(stats["loop_seconds"], 3),
        "pipeline": {**describe_pixels(src), "workers": stats.get("workers", 0),
                     "batchnorm_folded": stats.get("batchnorm_folded", 0),
                     "batch_size": stats.get("batch_size", 0), "batch_size_reason": stats.get("batch_size_reason", "")},
    }


def _discard_published_journal(path: Path, key: dict) -> None:
    """A kill between the finished store's rename and the journal's removal leaves the journal of a finished
    store behind: remove it, under the writer lock (busy: another writer owns the folder now, leave it)."""
    journal = Journal(path)
    if not journal.exists() or journal.key() != key:
        return
    try:
        with store_lock(path, doing="tidying"):
            if read_key(path) == key and journal.key() == key:
                journal.discard()
    except StoreBusyError:
        pass


def _up_to_date(path: Path, t0: float) -> ExtractResult:
    return ExtractResult(path, _rows_of(path), _failed_of(path), 0, time.perf_counter() - t0, up_to_date=True)


def _check_same_precision(journal: Journal, requested: str, resolved: str) -> None:
    """A resumed run computes in the precision its committed rows were computed in: ``auto`` can resolve
    differently on another machine (bf16 where the CPU has it, fp32 elsewhere), and a store must not be a mix."""
    started = journal.meta().get("precision")
    if started is None or started == resolved or journal.committed_rows() == 0:
        return
    hint = (f"finish it where auto gives {started} (FEATCACHE_CPU_BF16={int(started == 'bf16')} forces that on a CPU)"
            if requested == "auto" else f"finish it with --precision {started}")
    raise StoreMismatchError(f"the partial extraction in {journal.dir} computed its rows in {started}, but this run "
                             f"would use {resolved}; {hint}, or use --overwrite to start over")


def _check_existing(path: Path, key: dict, overwrite: bool) -> bool:
    """True if ``path`` is a finished store with this key (nothing to do); refuse anything else there
    unless ``overwrite``."""
    if not path.exists() or overwrite:
        return False
    old = read_key(path)
    if old is None:
        raise StoreMismatchError(f"{path} exists and is not a finished featcache store; use --overwrite to replace it")
    if old == key:
        return True
    raise StoreMismatchError(f"{path} already exists and {_explain(old, key)}; use --overwrite to replace it")


def _rows_of(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_rows"])


def _failed_of(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_failed"])


def _build(backbone, weights, layers, image_size):
    from .backbones import build_backbone

    return build_backbone(backbone, weights=weights, layers=layers, image_size=image_size)


def run_rows(job: _Job, journal: Journal, start: int, stop: int | None = None, *, desc: str = "extract") -> dict:
    """Embed source rows [start, stop) and commit them to the journal in segments, at least every
    ``commit_interval`` s. Returns what ran (device, precision, batch size and why, loop and write seconds)."""
    src, backbone, dtype, strict, commit_interval = job.src, job.built, job.dtype, job.strict, job.commit_interval
    info: dict = {"loop_seconds": 0.0, "write_seconds": 0.0}
    t_loop = time.perf_counter()
    buf_rows: list[int] = []
    buf_feats: dict[str, list[np.ndarray]] = {la: [] for la in backbone.layers}
    buf_failed: list[tuple[int, str]] = []
    seg_start, pos, last_commit = start, start, time.monotonic()

    def commit() -> None:
        nonlocal seg_start, last_commit
        if pos == seg_start:
            return
        t_commit = time.perf_counter()
        feats = {la: (np.concatenate(v) if v else np.empty((0, 0), np.float32)) for la, v in buf_feats.items()}
        journal.commit(seg_start, pos, np.asarray(buf_rows, dtype=np.int64), feats, buf_failed, dtype)
        buf_rows.clear()
        buf_failed.clear()
        for v in buf_feats.values():
            v.clear()
        seg_start, last_commit = pos, time.monotonic()
        info["write_seconds"] += time.perf_counter() - t_commit


    with GracefulInterrupt() as interrupt:
        for b in embed_batches(src, backbone, start, stop=stop, info=info, desc=desc, **job.loop):
            if b.failed and strict:
                commit()  # keep what is done; the user can fix the file and re-run with --overwrite
                raise CorruptInputError(b.failed[0][1])
            for la, x in b.feats.items():
                buf_feats[la].append(x)
            buf_rows.extend(b.good)
            buf_failed.extend(b.failed)
            pos = b.index[-1] + 1
            if interrupt.requested:  # Ctrl-C: keep every finished batch, then stop
                commit()
                raise KeyboardInterrupt
            if time.monotonic() - last_commit >= commit_interval:
                commit()
    commit()
    info["loop_seconds"] = time.perf_counter() - t_loop
    return info
