"""One extraction, checked and built, and the steps that run it: open (or resume) the journal, embed rows
into segments, assemble the store. Shared by the single-process run (:mod:`featcache.extractor`) and a rank
of a distributed launch (:mod:`featcache.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .assembly import assemble_store
from .embed import embed_batches
from .errors import CorruptInputError, StoreMismatchError
from .files import utc_now
from .journal import Journal
from .pixels import describe as describe_pixels
from .runtime import GracefulInterrupt
from .sources import Source
from .store import read_key

__all__ = ["DTYPES", "ExtractResult", "Job", "open_journal", "run_job", "run_rows", "check_existing", "up_to_date",
           "explain", "image_attrs"]

DTYPES = ("float32", "float16")  # stored feature dtypes


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
    unit: str = "images"  # what a row is: images, or texts

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
                f"{self.images_per_s:.0f} {self.unit}/s on {self.device} {self.precision}, batch {self.batch_size} "
                f"-> {self.store} ({size:.1f} MB)\nbatch size {self.batch_size}: {self.batch_size_reason}")


def explain(old: dict, new: dict) -> str:
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if "dataset_fingerprint" in diff:
        return "its input data differ (ids, labels or files changed)"
    return "it was made with different " + ", ".join(f"{k} ({old.get(k)} vs {new.get(k)})" for k in diff)


@dataclass
class Job:
    """One extraction, checked and built, ready to run (in one process, or as one rank of several)."""

    src: Source
    plan: Any  # extractor._Plan: the store path, its key and layers (not imported: extractor imports this module)
    built: object
    overwrite: bool
    requested_precision: str
    dtype: str
    strict: bool
    commit_interval: float
    t0: float
    loop: dict  # embed_batches' settings: batch size, workers, device, precision, quiet, channels_last
    embed: Callable = embed_batches  # the loop: featcache.embed for images, featcache.text_embed for texts
    attrs: dict = field(default_factory=dict)  # provenance only this modality has (image_attrs, text_attrs)

    @property
    def path(self) -> Path:
        return self.plan.path

    def assemble(self, journal: Journal, stats: dict, *, extracted: int, resumed_from: int,
                 extra: dict | None = None) -> ExtractResult:
        """Write the finished store from the journal's segments and say what was done."""
        t_assemble = time.perf_counter()
        attrs = _provenance(self.built, self.src, self.dtype, stats, self.t0, self.plan.key, self.attrs)
        attrs.update(extra or {})
        counts = assemble_store(self.path, journal, self.src, self.plan.layers, self.dtype, attrs, self.plan.key)
        stats["write_seconds"] += time.perf_counter() - t_assemble
        return self.result(stats, counts["rows"], counts["failed"], extracted=extracted, resumed_from=resumed_from)

    def result(self, stats: dict, rows: int, failed: int, *, extracted: int, resumed_from: int) -> ExtractResult:
        """What was done, from :func:`run_rows`' statistics (device, precision, batch size, loop and write time)."""
        return ExtractResult(self.path, rows, failed, extracted, time.perf_counter() - self.t0,
                             resumed_from=resumed_from, device=stats["device"], precision=stats["precision"],
                             loop_seconds=stats["loop_seconds"], batch_size=stats.get("batch_size", 0),
                             batch_size_reason=stats.get("batch_size_reason", ""),
                             write_seconds=stats["write_seconds"], unit=self.src.unit)


def open_journal(job: Job) -> Journal:
    """The journal to continue: this key's partial run, or a fresh one (an other key's only with overwrite)."""
    plan = job.plan
    journal = Journal(plan.path)
    if journal.exists() and (job.overwrite or journal.key() != plan.key):
        if not job.overwrite:
            raise StoreMismatchError(f"a partial extraction in {journal.dir} was started with other inputs: "
                                     f"{explain(journal.key() or {}, plan.key)}; use --overwrite to discard it")
        for _, _, p in journal.all_segments():
            p.unlink()
    if not journal.exists() or journal.key() != plan.key:
        journal.start(plan.key, {"source": job.src.spec, "started_at": utc_now(), "precision": job.loop["precision"]})
    _check_same_precision(journal, job.requested_precision, job.loop["precision"])
    return journal


def _provenance(built, src: Source, dtype: str, stats: dict, t0: float, key: dict, modality_attrs: dict) -> dict:
    """The store's root attributes: how its features were made (``modality_attrs``: what only images, or only
    texts, have: the input size and decoder, or the tokenizer and pooling)."""
    attrs = {
        "featcache_version": __version__,
        **built.provenance(),
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
        **{k: v for k, v in modality_attrs.items() if k != "pipeline"},
    }
    attrs["pipeline"] = {**modality_attrs.get("pipeline", {}), "workers": stats.get("workers", 0),
                         "batchnorm_folded": stats.get("batchnorm_folded", 0), "batch_size": stats.get("batch_size", 0),
                         "batch_size_reason": stats.get("batch_size_reason", "")}
    return attrs


def image_attrs(built, src: Source) -> dict:
    """What an image store records beyond the common provenance: the input size and how pixels are decoded."""
    return {"image_size": built.preprocessing.input_size, "pipeline": describe_pixels(src)}


def up_to_date(path: Path, t0: float) -> ExtractResult:
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


def check_existing(path: Path, key: dict, overwrite: bool) -> bool:
    """True if ``path`` is a finished store with this key (nothing to do); refuse anything else there
    unless ``overwrite``."""
    if not path.exists() or overwrite:
        return False
    old = read_key(path)
    if old is None:
        raise StoreMismatchError(f"{path} exists and is not a finished featcache store; use --overwrite to replace it")
    if old == key:
        return True
    raise StoreMismatchError(f"{path} already exists and {explain(old, key)}; use --overwrite to replace it")


def _rows_of(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_rows"])


def _failed_of(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_failed"])


def run_rows(job: Job, journal: Journal, start: int, stop: int | None = None, *, desc: str = "extract") -> dict:
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
        for b in job.embed(src, backbone, start, stop=stop, info=info, desc=desc, **job.loop):
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


def run_job(job: Job) -> ExtractResult:
    """Run a checked job in this process under the store's writer lock (resuming the partial run of the same key),
    then assemble the store. (One rank of a distributed launch runs :func:`featcache.distributed.extract_shard`.)"""
    from .faults import fault_point
    from .locks import store_lock

    job.path.parent.mkdir(parents=True, exist_ok=True)
    fault_point("before-lock")
    with store_lock(job.path, doing="extracting into"):
        if check_existing(job.path, job.plan.key, job.overwrite):  # another run may have finished it meanwhile
            return up_to_date(job.path, job.t0)
        journal = open_journal(job)
        start = journal.reach()
        stats = run_rows(job, journal, start)
        return job.assemble(journal, stats, extracted=len(job.src) - start, resumed_from=start)
