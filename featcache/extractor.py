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

from .backbones import DEFAULT_BACKBONE, POOLED, parse_backbone
from .batching import memory_bound, parse_batch_size
from .distributed import extract_shard
from .errors import InputError, StoreBusyError
from .extract_job import (
    DTYPES,
    ExtractResult,
    Job,
    check_existing,
    image_attrs,
    open_journal,
    run_job,
    run_rows,
    up_to_date,
)
from .journal import Journal
from .launch import Launch
from .locks import store_lock
from .options import Interval, OneOf, check
from .runtime import PRECISIONS, resolve_device, resolve_precision
from .sources import Source, open_source
from .store import FORMAT_VERSION, read_key
from .text_encoders import is_text_backbone
from .text_extract import extract_text
from .weights import resolve_weights

__all__ = ["extract", "ExtractResult", "default_store_path", "open_journal", "run_rows"]

FINGERPRINTS = ("stat", "content")  # how files are identified: size + modification time, or their bytes' SHA-256


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
    distributed: bool = False,
    text_col: str | None = None,
    id_col: str | None = None,
    pooling: str = "auto",
    normalize: bool | None = None,
    max_length: int | None = None,
) -> ExtractResult:
    """Extract embeddings of ``layers`` for every sample of ``source`` into the HDF5 ``store``.

    Safe to re-run: a finished store with the same inputs returns at once, an interrupted
    one resumes, and a store made from other inputs is refused unless ``overwrite``.
    ``distributed=True`` in every process of a torchrun launch makes each one extract its shard
    (:mod:`featcache.distributed`; the CLI does this by itself under torchrun). Opt-in, so that a
    training script that calls ``extract`` on one rank of its own launch runs it as one process.

    Texts (a CSV with a ``text`` column and no path column, or with ``text_col`` named; a JSONL file;
    ``builtin:rotten-tomatoes``) run a sentence encoder (``backbone="hf:PATH_OR_NAME"``, default
    all-MiniLM-L6-v2) with ``pooling`` (auto, mean, cls, sentence-transformers), ``normalize`` (None: as the model
    says) and ``max_length`` (tokens; None: the model's); :mod:`featcache.text_extract`.
    """
    t0 = time.perf_counter()
    src = source if isinstance(source, Source) else open_source(
        source, path_col=path_col, label_col=label_col, split_col=split_col, group_col=group_col,
        task=task, limit=limit, text_col=text_col, id_col=id_col)
    if isinstance(source, Source) and limit:
        src = src.limit(limit)
    if src.modality == "text":
        _not_for(src, {"--image-size": image_size, "--weights": weights})
        if distributed and Launch.from_env():
            raise InputError("distributed extraction is for images; run a text extraction as one process")
        return extract_text(src, store, backbone=backbone, layers=layers, pooling=pooling, normalize=normalize,
                            max_length=max_length, batch_size=batch_size, device=device, precision=precision,
                            dtype=dtype, limit=limit, strict=strict, overwrite=overwrite, quiet=quiet,
                            commit_interval=commit_interval, t0=t0)
    if is_text_backbone(backbone):
        raise InputError(f"{backbone} is a text encoder, and {src.spec} holds images")
    _not_for(src, {"--pooling": None if pooling == "auto" else pooling, "--normalize": normalize,
                   "--max-length": max_length})
    plan = _Plan.make(src, store, backbone=backbone, weights=weights, layers=layers, image_size=image_size,
                      dtype=dtype, precision=precision, limit=limit, batch_size=batch_size, workers=workers,
                      fingerprint=fingerprint)
    if check_existing(plan.path, plan.key, overwrite):  # cheap, before torch: a re-run is free
        _discard_published_journal(plan.path, plan.key)
        return up_to_date(plan.path, t0)
    launch = Launch.from_env() if distributed else None  # under torchrun: this process is one rank of several
    # resolve the device and precision, and build (so validate backbone, weights and layers), before anything
    # is written: a refused run leaves no trace
    dev = launch.device(device) if launch else resolve_device(device)
    prec = resolve_precision(precision, dev)
    built = plan.built or _build(plan.backbone, weights, plan.layers, image_size)
    if dev.type == "cpu":  # an input size of which one image does not fit in memory is refused here, not mid-run
        memory_bound(built, built.preprocessing.input_size)
    job = Job(src, plan, built, overwrite, precision, dtype, strict, commit_interval, t0,
               dict(batch_size=batch_size, workers=workers, device=str(dev), precision=prec, quiet=quiet,
                    channels_last=channels_last), attrs=image_attrs(built, src))
    if launch:
        return extract_shard(job, launch)
    return run_job(job)


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


def _build(backbone, weights, layers, image_size):
    from .backbones import build_backbone

    return build_backbone(backbone, weights=weights, layers=layers, image_size=image_size)




def _not_for(src: Source, given: dict) -> None:
    """Refuse an option of the other modality (an image size for texts, a pooling for images) rather than ignore
    it: the user meant something by it."""
    used = [name for name, value in given.items() if value is not None]
    if used:
        raise InputError(f"{used[0]} does not apply to {src.spec}, which holds {src.unit}")
