"""Extracting a text source: the plan (store path and identity) of a sentence-encoder run.

The text counterpart of :class:`featcache.extractor._Plan`. The identity of a text store (its key) is computed
before torch or transformers is imported: the dataset fingerprint (the texts themselves), the model's weights and
its configuration files (tokenizer, pooling), the requested layers, pooling, normalisation and maximum length,
dtype and precision. Everything after the plan (journal, resume, assembly, locking) is the image run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .batching import parse_batch_size
from .errors import InputError
from .extract_job import DTYPES, ExtractResult, Job, check_existing, run_job, up_to_date
from .options import OneOf, check
from .runtime import PRECISIONS, resolve_device, resolve_precision
from .sources import Source
from .store import FORMAT_VERSION
from .text_encoders import (
    DEFAULT_TEXT_BACKBONE,
    POOLED,
    POOLINGS,
    config_sha256,
    is_text_backbone,
    resolve_model_dir,
    weights_file,
)
from .weights import sha256_file

__all__ = ["extract_text", "TextPlan", "text_store_path"]


def text_store_path(source: Source, backbone: str, limit: int | None) -> Path:
    slug = backbone[3:].rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] or "model"
    return Path("data") / "stores" / f"{source.name}{f'-{limit}' if limit else ''}_{slug}.h5"


@dataclass
class TextPlan:
    """What a text extraction will make, checked before any work: the store path and its key."""

    path: Path
    key: dict
    backbone: str
    layers: list[str]

    @classmethod
    def make(cls, src: Source, store, *, backbone: str | None, layers, pooling: str, normalize: bool | None,
             max_length: int | None, dtype: str, precision: str, limit: int | None) -> TextPlan:
        check("--dtype", dtype, OneOf(lambda: DTYPES))
        check("--precision", precision, OneOf(lambda: PRECISIONS))
        check("--pooling", pooling, OneOf(lambda: POOLINGS))
        if src.labels is None:
            raise InputError(f"{src.spec}: a feature store needs labels; embeddings of new sentences come from "
                             "featcache.predict or BackboneFeatures")
        name = backbone or DEFAULT_TEXT_BACKBONE
        if not is_text_backbone(name):
            raise InputError(f"{src.spec} holds texts: use a text backbone (hf:PATH_OR_NAME; default "
                             f"{DEFAULT_TEXT_BACKBONE}), not {name}")
        layer_list = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers or [POOLED])
        folder, _ = resolve_model_dir(name)
        path = Path(store) if store is not None else text_store_path(src, name, limit)
        if path.is_dir():
            raise InputError(f"--store {path} is a folder; give the path of the .h5 file to write")
        key = {"format_version": FORMAT_VERSION, "dataset_fingerprint": src.fingerprint(), "backbone": name,
               "weights_sha256": sha256_file(weights_file(folder)), "config_sha256": config_sha256(folder),
               "layers": layer_list, "pooling": pooling, "normalize": normalize, "max_length": max_length,
               "dtype": dtype, "precision": precision}
        return cls(path, key, name, layer_list)


def extract_text(src: Source, store=None, *, backbone: str | None = None, layers=None, pooling: str = "auto",
                 normalize: bool | None = None, max_length: int | None = None, batch_size: int | str = "auto",
                 device: str = "auto", precision: str = "auto", dtype: str = "float32", limit: int | None = None,
                 strict: bool = False, overwrite: bool = False, quiet: bool = False, commit_interval: float = 5.0,
                 t0: float | None = None) -> ExtractResult:
    """Embed every text of ``src`` into the HDF5 ``store`` (see :func:`featcache.extract`)."""
    from .text_embed import embed_texts, text_batch_size
    from .text_encoders import build_text_encoder

    t0 = time.perf_counter() if t0 is None else t0
    parse_batch_size(batch_size)
    plan = TextPlan.make(src, store, backbone=backbone, layers=layers, pooling=pooling, normalize=normalize,
                         max_length=max_length, dtype=dtype, precision=precision, limit=limit)
    if check_existing(plan.path, plan.key, overwrite):  # cheap: no torch, no transformers
        return up_to_date(plan.path, t0)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    built = build_text_encoder(plan.backbone, plan.layers, pooling=pooling, normalize=normalize,
                               max_length=max_length)
    job = Job(src, plan, built, overwrite, precision, dtype, strict, commit_interval, t0,
              dict(batch_size=batch_size, device=str(dev), precision=prec, quiet=quiet), embed=embed_texts,
              attrs=text_attrs(built, src, text_batch_size(batch_size, dev.type)[0]))
    return run_job(job)


def text_attrs(built, src: Source, batch_size: int) -> dict:
    """What a text store records beyond the common provenance: how its source's columns are read again, and how
    texts are batched: the padding share and the texts cut at the maximum length, computed from every text (so a
    resumed run records what an uninterrupted one does); the tokenizer, pooling and maximum length are in
    ``built.provenance()``."""
    from .text_embed import padding_figures

    figures = padding_figures(built.lengths(src.texts), batch_size, built.settings.max_length)
    return {"source_options": {**getattr(src, "columns", {}), "task": src.task},
            "pipeline": {"decoder": f"{built.settings.tokenizer} (truncated at {built.settings.max_length} tokens)",
                         "resize": "texts sorted by token length within windows, each batch padded to its longest",
                         **figures}}
